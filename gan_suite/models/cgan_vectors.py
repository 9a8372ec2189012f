"""Conditional GAN, multimodal model (Mirza & Osindero 2014, section 4.2): image features ->
tag word vectors.

G(z | image features) generates word vectors and D(word vector | image features) judges them,
trained as :class:`~gan_suite.models.cgan.CGAN` (eq. 2, the same SGD schedules), on
:class:`~datamodules.vectors.VectorDataModule` arrays. An image is tagged by
:func:`~gan_suite.eval.tags.generated_tags`: many generated vectors vote for their nearest
vocabulary words.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gan_suite.eval.protocol import TaggedVectors
from gan_suite.models.cgan import ConditionalGANBase
from gan_suite.nets.cgan_nets import (
    ConditionalMLPDiscriminator,
    ConditionalMLPGenerator,
    init_uniform,
)


class CGANVectors(ConditionalGANBase):
    """Section 4.2: G(z | image features) -> word vector, D(word vector | image features).

    G: z (100, Gaussian) -> 500 ReLU, features (4096) -> 2000 ReLU, joined by a linear layer
    that outputs the 200-d word vector. D: word vector -> 500 ReLU, features -> 1200 ReLU,
    joint maxout 1000 x 3, one logit. Training as :class:`CGAN` (same SGD schedules).

    Evaluation (the Evaluation callback, :class:`~gan_suite.eval.tags.TagScorer`): for each
    evaluated item ``samples_per_item`` word vectors vote for their ``k_nearest`` words
    (cosine); the ``top_words`` most voted are its tags. Reported: ``tags/tag_hit``, the share
    of items whose true word is among its tags, and ``tags/cosine``; test writes ``tags.tsv``.

    Args:
        feature_dim: F (4096: the convolutional image features). word_dim: W (200).
        z_dim, noise: noise prior (100, ``gaussian``).
        g_z_hidden (500), g_cond_hidden (2000), g_dropout (0.5): G's layers.
        d_x_units (500), d_cond_units (1200), d_joint_units (1000), d_joint_pieces (3),
        d_dropout (0.5), d_input_dropout (0.5): D's layers.
        g_init_range, d_init_range, optimizer, lr, lr_decay_factor, min_lr, momentum,
        final_momentum, momentum_start_epoch, momentum_saturate_epoch, adam_betas: as CGAN.
        samples_per_item (100), k_nearest (20), top_words (10), eval_seed.
        compile, adam_impl: as CGAN.
    """

    def __init__(
        self,
        feature_dim: int = 4096,
        word_dim: int = 200,
        z_dim: int = 100,
        noise: str = "gaussian",
        g_z_hidden: int = 500,
        g_cond_hidden: int = 2000,
        g_dropout: float = 0.5,
        d_x_units: int = 500,
        d_cond_units: int = 1200,
        d_joint_units: int = 1000,
        d_joint_pieces: int = 3,
        d_dropout: float = 0.5,
        d_input_dropout: float = 0.5,
        g_init_range: float = 0.05,
        d_init_range: float = 0.005,
        optimizer: str = "sgd",
        lr: float = 0.1,
        lr_decay_factor: float = 1.00004,
        min_lr: float = 1e-6,
        momentum: float = 0.5,
        final_momentum: float = 0.7,
        momentum_start_epoch: int = 1,
        momentum_saturate_epoch: int = 250,
        adam_betas: tuple[float, float] = (0.5, 0.999),
        samples_per_item: int = 100,
        k_nearest: int = 20,
        top_words: int = 10,
        eval_seed: int = 0,
        compile: bool = False,
        adam_impl: str = "auto",
    ) -> None:
        super().__init__(compile=compile, adam_impl=adam_impl)
        self.save_hyperparameters()
        self.G = init_uniform(
            ConditionalMLPGenerator(
                z_dim, feature_dim, word_dim, g_z_hidden, g_cond_hidden, None, g_dropout, "linear"
            ),
            g_init_range,
        )
        self.D = init_uniform(
            ConditionalMLPDiscriminator(
                word_dim,
                feature_dim,
                d_x_units,
                None,
                d_cond_units,
                None,
                d_joint_units,
                d_joint_pieces,
                d_dropout,
                d_input_dropout,
            ),
            d_init_range,
        )

    def generate(self, z: Tensor, cond: Tensor) -> Tensor:
        return self.G(z, cond)

    def discriminate(self, x: Tensor, cond: Tensor) -> Tensor:
        return self.D(x, cond)

    def forward(self, features: Tensor, z: Tensor | None = None) -> Tensor:
        """Word vectors (N, W) for image features (N, F)."""
        z = self.sample_noise(len(features)) if z is None else z
        return self.generate(z, features.to(self.device))

    def real_and_condition(self, batch: dict) -> tuple[Tensor, Tensor]:
        return batch["word_vector"], batch["features"]

    def setup(self, stage: str) -> None:
        super().setup(stage)
        from datamodules import VectorDataModule

        dm = getattr(self.trainer, "datamodule", None) if self._trainer else None
        if isinstance(dm, VectorDataModule) and "train" in dm.splits:  # set up by Lightning
            hp = self.hparams
            if (dm.feature_dim, dm.word_dim) != (hp.feature_dim, hp.word_dim):
                raise ValueError(
                    f"the arrays in {str(dm.root)!r} have F={dm.feature_dim}, W={dm.word_dim}; "
                    f"the model has feature_dim={hp.feature_dim}, word_dim={hp.word_dim}: set "
                    "model.init_args.feature_dim / word_dim"
                )

    def sample_panels(self, batch: dict) -> dict[str, list[Tensor]]:
        raise NotImplementedError("CGANVectors generates word vectors: no SampleGrid")

    @torch.no_grad()
    def evaluation_outputs(self, batch: dict) -> list[TaggedVectors]:
        """For the Evaluation callback: ``samples_per_item`` generated word vectors per item
        (seeded by the item's index), to be voted into tags (section 4.2)."""
        hp, dm = self.hparams, self.trainer.datamodule
        features, index = batch["features"], batch["index"]
        g = torch.Generator().manual_seed(hp.eval_seed + int(index[0]))
        n, s = len(features), hp.samples_per_item
        cond = features.to(self.device).repeat_interleave(s, dim=0)  # (n*s, F)
        vectors = self.generate(self.sample_noise(n * s, g), cond).view(n, s, -1)
        return [
            TaggedVectors(
                "tags",
                vectors,
                batch["word_vector"],
                dm.vocab_vectors,
                dm.words,
                index,
                hp.k_nearest,
                hp.top_words,
            )
        ]
