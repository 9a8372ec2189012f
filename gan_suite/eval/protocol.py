"""What a model produced for one evaluation batch: the records of the evaluation protocol.

Every paper's LightningModule implements one method,

    evaluation_outputs(batch: dict) -> list[Translation | ClassSamples | InstanceSamples
                                           | AttributeTranslation | SegmentationOutput]

and the :class:`~gan_suite.callbacks.Evaluation` callback does the rest: it owns the metric
state, the evaluator network, DDP sharding and the reports. Each record type has its scorer
(:mod:`gan_suite.eval.scorers`); metric keys are ``<record.name>/<metric>``. Images are
(N, 3, H, W) floats in [-1, 1] (a model maps its own range and channels there first).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from gan_suite.eval.metrics import Translation, two_way_translations

__all__ = [
    "AttributeTranslation",
    "ClassSamples",
    "InstanceSamples",
    "SegmentationOutput",
    "TaggedVectors",
    "Translation",
    "two_way_translations",
]


@dataclass
class ClassSamples:
    """Class-conditional samples G(z, y) (cGAN), one per real image of the batch.

    Attributes:
        name: key prefix, e.g. ``"samples"``.
        output: generated images (N, 3, H, W), ``output[i]`` generated for ``labels[i]``.
        labels: requested classes (N,) int64.
        real: the batch's real images (N', 3, H, W), for FID/KID and the evaluator's accuracy
            on real images.
        real_labels: their classes (N',).
        class_names: names for the per-class keys ``class_acc/<name>`` (else indices).
        parzen_samples_per_class: > 0 asks for the Parzen-window log-likelihood of the real
            images under that many samples per class from :meth:`sample_classes` of the model
            (Mirza & Osindero 2014, Table 1), bandwidth chosen on the validation images.
    """

    name: str
    output: Tensor
    labels: Tensor
    real: Tensor
    real_labels: Tensor
    class_names: list[str] | None = None
    parzen_samples_per_class: int = 0


@dataclass
class InstanceSamples:
    """Instance-conditioned samples G(z, h(x)) (IC-GAN), ``n`` per conditioning image.

    Attributes:
        name: key prefix, e.g. ``"samples"``.
        output: samples (B * n, 3, S, S), the n of instance i at rows i*n .. i*n + n - 1.
        instances: the conditioning images (B, 3, H, W) (FID/KID's real side).
        n: samples per instance.
        instance_labels: classes of the instances (B,), or None: the evaluator's class of each
            instance stands in.
        other_output: samples conditioned on another instance (B * n, ...), judged against
            this instance's class: the chance level of ``class_agreement``; or None.
        neighbour_labels: classes of each instance's k nearest training neighbours (B, k), for
            the neighbourhoods' own class purity (the ceiling the features set); or None.
    """

    name: str
    output: Tensor
    instances: Tensor
    n: int = 1
    instance_labels: Tensor | None = None
    other_output: Tensor | None = None
    neighbour_labels: Tensor | None = None


@dataclass
class AttributeTranslation:
    """Attribute-conditioned translations G(x, c) (StarGAN, MatchGAN).

    Attributes:
        name: key prefix.
        output: translated images (N, 3, H, W).
        source: the input images (N, 3, H, W) (FID/KID's real side).
        source_attributes: the inputs' binary attributes (N, A).
        target_attributes: the requested attributes (N, A); where they differ from the source's
            the attribute must change, elsewhere it must be preserved.
        attribute_names: names of the A attributes, for per-attribute keys.
        single_choice: the A "attributes" are one-hot classes (RaFD's expressions): a class
            evaluator judges them by its argmax instead of an attribute evaluator.
        requested: int64 (N,) index of the attribute each translation asks for (StarGAN's
            test protocol), or None: then every changed attribute counts as requested.
    """

    name: str
    output: Tensor
    source: Tensor
    source_attributes: Tensor
    target_attributes: Tensor
    attribute_names: list[str] | None = None
    single_choice: bool = False
    requested: Tensor | None = None


@dataclass
class SegmentationOutput:
    """A segmentation model's prediction (BDL's M) against ground-truth label maps.

    Attributes:
        name: key prefix, e.g. ``"target"``.
        prediction: (N, C, H, W) logits or (N, H, W) int64 labels.
        target: (N, H, W) int64 labels, ``ignore_index`` where unlabelled.
        n_classes: C.
        ignore_index: label of unlabelled pixels (255 in Cityscapes/GTA5).
        class_names: names for the per-class keys ``iou/<name>``.
    """

    name: str
    prediction: Tensor
    target: Tensor
    n_classes: int
    ignore_index: int = 255
    class_names: list[str] | None = None


@dataclass
class TaggedVectors:
    """Generated word vectors of a multimodal conditional model (cGAN, section 4.2).

    Attributes:
        name: key prefix.
        generated: (n, s, W) s generated word vectors per item.
        real: (n, W) the items' real word vectors.
        vocabulary: (V, W) the vocabulary's word vectors; ``words`` its V words.
        index: (n,) item indices (rows of ``tags.tsv``).
        k_nearest: words each generated vector votes for (20). top_words: tags kept (10).
    """

    name: str
    generated: Tensor
    real: Tensor
    vocabulary: Tensor
    words: list[str]
    index: Tensor
    k_nearest: int = 20
    top_words: int = 10
