"""IC-GAN (Casanova, Careil, Verbeek, Drozdzal & Romero-Soriano, NeurIPS 2021):
instance-conditioned GAN.

The data density is modelled as a mixture of local densities around every training instance
x_i, each described by h_i = f(x_i), the L2-normalised features of a frozen extractor f
(section 2). Its neighbourhood A_i = the k nearest neighbours of h_i by cosine similarity.
Training (section 2.1, eq. 2): sample an instance i, a neighbour j in A_i and z ~ N(0, I);
D learns to tell (x_j, h_i) from (G(z, h_i), h_i); hinge loss, BigGAN backbone. The
class-conditional variant (section 3.3) also conditions G and D on the neighbour's label y_j.
At test time any image, also one outside the training set, gives an h: G(z, h) then samples
its neighbourhood (:meth:`ICGAN.generate_from_image`).

One device:  gan-suite fit --config experiments/icgan.yaml [--data.init_args.data_dir D]
Multi-GPU:   gan-suite fit --config experiments/icgan.yaml --config experiments/presets/ddp.yaml
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor

from gan_suite.eval.neighbours import (
    extract_features,
    knn_cosine,
    knn_cosine_query,
    load_resnet50_features,
)
from gan_suite.losses import discriminator_adv_loss, generator_adv_loss
from gan_suite.models.base import GANModule
from gan_suite.nets.biggan import BigGANDiscriminator, BigGANGenerator

FEATURE_EXTRACTORS = {"evaluator": 128, "resnet50": 2048}  # name -> default feature size


# ------------------------------------------------------------------ helpers outside the nets
def _eval_copy(dataset):
    """The training items without augmentation (features must not see random flips)."""
    from datamodules.labelled_data import LabelledDataset, LabelledTransform

    if isinstance(dataset, LabelledDataset):
        t = dataset.transform
        size = t.pipeline.transforms[0].height if hasattr(t.pipeline.transforms[0], "height") else None
        if size is not None:
            tf = LabelledTransform(
                size, flip=False, train=False, channels=t.channels, normalize=t.normalize
            )
            return LabelledDataset(dataset.split, tf, dataset.labelled)
    return dataset
