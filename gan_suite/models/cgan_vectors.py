"""Conditional GAN, multimodal model (Mirza & Osindero 2014, section 4.2): image features ->
tag word vectors.

G(z | image features) generates word vectors and D(word vector | image features) judges them,
trained as :class:`~gan_suite.models.cgan.CGAN` (eq. 2, the same SGD schedules), on
:class:`~datamodules.vectors.VectorDataModule` arrays. An image is tagged by
:func:`generated_tags`: many generated vectors vote for their nearest vocabulary words.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from gan_suite.models.cgan import ConditionalGANBase
from gan_suite.nets.cgan_nets import (
    ConditionalMLPDiscriminator,
    ConditionalMLPGenerator,
    init_uniform,
)


@torch.no_grad()
def generated_tags(
    samples: Tensor, vocab_vectors: Tensor, k_nearest: int = 20, top: int = 10
) -> tuple[Tensor, Tensor]:
    """Section 4.2's tagging: per item, its generated word vectors vote for their
    ``k_nearest`` vocabulary words by cosine similarity; the ``top`` most voted words win.

    Args:
        samples: (n_items, n_samples, W) generated word vectors (the paper: 100 per image).
        vocab_vectors: (V, W).

    Returns:
        (n_items, top) word indices, most voted first (ties: lower index first), and their
        (n_items, top) vote counts.
    """
    n, s, _ = samples.shape
    k = min(k_nearest, len(vocab_vectors))
    sims = F.normalize(samples.float(), dim=-1) @ F.normalize(vocab_vectors.float(), dim=-1).T
    nearest = sims.topk(k, dim=-1).indices.reshape(n, s * k)  # (n, s*k)
    votes = torch.zeros(n, len(vocab_vectors), dtype=torch.long, device=samples.device)
    votes.scatter_add_(1, nearest, torch.ones_like(nearest))
    # a total order: more votes first, then the lower word index
    index = torch.arange(len(vocab_vectors), device=samples.device)
    key = votes.double() * len(vocab_vectors) - index
    order = key.topk(min(top, len(vocab_vectors)), dim=1).indices
    return order, votes.gather(1, order)


class CGANVectors(ConditionalGANBase):
    """Section 4.2: G(z | image features) -> word vector, D(word vector | image features).

    G: z (100, Gaussian) -> 500 ReLU, features (4096) -> 2000 ReLU, joined by a linear layer
    that outputs the 200-d word vector. D: word vector -> 500 ReLU, features -> 1200 ReLU,
    joint maxout 1000 x 3, one logit. Training as :class:`CGAN` (same SGD schedules).

    Evaluation: for each of the first ``eval_n_items`` items of the split, ``samples_per_item``
    word vectors vote for their ``k_nearest`` words (cosine); the ``top_words`` most voted are
    its tags (:func:`generated_tags`). Logged: ``tag_hit`` = share of items whose true word
    (the vocabulary word nearest its real word vector) is among its tags, and ``cosine`` =
    mean cosine similarity of a generated to the real word vector. Test also writes
    ``tags.tsv`` (item, true word, tags with votes).

    Args:
        feature_dim: F (4096: the convolutional image features). word_dim: W (200).
        z_dim, noise: noise prior (100, ``gaussian``).
        g_z_hidden (500), g_cond_hidden (2000), g_dropout (0.5): G's layers.
        d_x_units (500), d_cond_units (1200), d_joint_units (1000), d_joint_pieces (3),
        d_dropout (0.5), d_input_dropout (0.5): D's layers.
        g_init_range, d_init_range, optimizer, lr, lr_decay_factor, min_lr, momentum,
        final_momentum, momentum_start_epoch, momentum_saturate_epoch, adam_betas: as CGAN.
        eval_every_n_epochs: evaluation interval at validation (0: only at test).
        eval_n_items (100), samples_per_item (100), k_nearest (20), top_words (10), eval_seed.
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
        eval_every_n_epochs: int = 1,
        eval_n_items: int = 100,
        samples_per_item: int = 100,
        k_nearest: int = 20,
        top_words: int = 10,
        eval_seed: int = 0,
    ) -> None:
        super().__init__()
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
        if isinstance(dm, VectorDataModule):
            dm.setup(stage)
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
    def tag(self, features: Tensor, seed: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(tag indices, votes, generated vectors (n, samples, W)) for features (n, F)."""
        hp, dm = self.hparams, self.trainer.datamodule
        g = torch.Generator().manual_seed(hp.eval_seed if seed is None else seed)
        n, s = len(features), hp.samples_per_item
        cond = features.to(self.device).repeat_interleave(s, dim=0)  # (n*s, F)
        vectors = self.generate(self.sample_noise(n * s, g), cond).view(n, s, -1)
        vocab = dm.vocab_vectors.to(self.device)
        tags, votes = generated_tags(vectors, vocab, hp.k_nearest, hp.top_words)
        return tags, votes, vectors

    @torch.no_grad()
    def evaluate(self, split: str) -> dict[str, dict]:
        hp, dm = self.hparams, self.trainer.datamodule
        was_training = self.training
        self.eval()
        feats, words = (t[: hp.eval_n_items] for t in dm.splits[split])
        vocab = dm.vocab_vectors.to(self.device)
        truth = (F.normalize(words.to(self.device), dim=1) @ F.normalize(vocab, dim=1).T).argmax(1)
        tags, votes, vectors = self.tag(feats)
        hit = (tags == truth[:, None]).any(1).float()
        cos = F.cosine_similarity(vectors, words.to(self.device)[:, None, :], dim=-1)
        n, info = len(feats), {"extractor": "word_vectors"}
        results = {
            "tag_hit": {"value": float(hit.mean()), "n_images": n, "top": hp.top_words, **info},
            "cosine": {"value": float(cos.mean()), "n_images": n, **info},
        }
        self._last_tags = (truth.cpu(), tags.cpu(), votes.cpu())
        self.train(was_training)
        return results

    def _write_reports(self, results: dict[str, dict]) -> None:
        super()._write_reports(results)
        words = self.trainer.datamodule.words
        truth, tags, votes = self._last_tags
        lines = ["item\ttrue_word\ttags (votes)"]
        for i, (t, row, v) in enumerate(zip(truth, tags, votes)):
            shown = ", ".join(f"{words[j]} ({c})" for j, c in zip(row.tolist(), v.tolist()))
            lines.append(f"{i}\t{words[int(t)]}\t{shown}")
        (Path(self.trainer.default_root_dir) / "tags.tsv").write_text("\n".join(lines) + "\n")
