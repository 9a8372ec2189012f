"""FID and KID over one shared feature extractor, on torchmetrics, DDP-aware.

FID (Heusel et al. 2017): ||mu_r - mu_f||^2 + Tr(S_r + S_f - 2 (S_r S_f)^(1/2)).
KID (Binkowski et al. 2018): unbiased MMD^2 with the kernel k(x, y) = (x.y / d + 1)^3,
averaged over random subsets.

Use on every rank (the metric states are gathered by torchmetrics over ``torch.distributed``,
so ``compute()`` is a collective call and gives the same number for any number of processes):

    metric = FIDKID(make_feature_extractor("inception"))
    for real in real_loader: metric.update_real(real)     # once per run
    for fake in fakes:       metric.update_fake(fake)
    scores = metric.compute(); metric.reset_fake()        # real features are kept
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance, poly_mmd
from torchmetrics.utilities.data import dim_zero_cat


class _PrecomputedFeatures(nn.Module):
    """Identity ``feature=`` module: the metrics receive features, not images.

    torchmetrics 1.9 has no ``update(features=...)``: both metrics run their ``feature`` module
    inside ``update``. Giving each the real extractor would run the (expensive) network twice
    per batch, so FIDKID runs it once and hands both metrics the same (N, D) features through
    this identity. ``num_features`` keeps FID from probing it with a 299x299 dummy image.
    """

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        return features


def _canonical_order(features: Tensor) -> Tensor:
    """Rows sorted by a fixed random projection: an order that depends only on the set.

    torchmetrics gathers KID's list state element by element (batch 0 of every rank, then
    batch 1, ...), so the row order, and with it any random subset, would change with the
    number of processes. Sorting first makes the subsets a function of the feature set alone.
    (Rows whose keys tie are equal or nearly so, and then their order does not matter.)
    """
    g = torch.Generator().manual_seed(0)
    direction = torch.randn(features.shape[1], generator=g, dtype=torch.float64)
    keys = features.double() @ direction.to(features.device)
    return features[torch.argsort(keys, stable=True)]


class _ClippedKID(KernelInceptionDistance):
    """torchmetrics' KID with the subset size clipped to the samples available, seeded subsets
    and a subset draw that does not depend on the number of processes.

    ``compute`` runs after torchmetrics has gathered the features of all ranks, so the clipping
    uses the global counts. The subsets come from a generator seeded with ``seed`` over the
    rows in :func:`_canonical_order`, so every rank, rerun and world size draws the same ones.
    """

    def __init__(self, *args: object, seed: int = 0, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.seed = seed
        self.n_real = 0
        self.n_fake = 0

    def compute(self) -> tuple[Tensor, Tensor]:
        real = dim_zero_cat(self.real_features) if self.real_features else torch.empty(0, 0)
        fake = dim_zero_cat(self.fake_features) if self.fake_features else torch.empty(0, 0)
        self.n_real, self.n_fake = int(real.shape[0]), int(fake.shape[0])
        if min(self.n_real, self.n_fake) < 2:
            raise RuntimeError(
                f"KID needs at least 2 real and 2 fake images, got {self.n_real} and {self.n_fake}"
            )
        real, fake = _canonical_order(real), _canonical_order(fake)
        size = min(self.subset_size, self.n_real, self.n_fake)
        # When every subset would hold all samples, all subsets give the same (permutation-
        # invariant) MMD: compute it once, std 0.
        subsets = 1 if size == self.n_real == self.n_fake else self.subsets
        g = torch.Generator().manual_seed(self.seed)
        scores = []
        for _ in range(subsets):
            pick_real = torch.randperm(self.n_real, generator=g)[:size].to(real.device)
            pick_fake = torch.randperm(self.n_fake, generator=g)[:size].to(fake.device)
            scores.append(
                poly_mmd(real[pick_real], fake[pick_fake], self.degree, self.gamma, self.coef)
            )
        stacked = torch.stack(scores)
        return stacked.mean(), stacked.std(unbiased=False)


class FIDKID(nn.Module):
    """FID and KID of fake images against real ones, sharing ONE feature pass per batch.

    Args:
        extractor: maps [-1, 1] images (N, 3, H, W) to (N, D) features; normally a
            :class:`~gan_suite.eval.features.FeatureWrapper` from ``make_feature_extractor``.
        num_features: D; read from ``extractor.num_features`` when ``None``.
        kid_subsets: number of random subsets KID averages over (paper/torch-fidelity: 100).
        kid_subset_size: images per KID subset (1000), clipped to the images available.
        kid_seed: seed of the KID subsets, so all ranks and reruns agree.
        name: reported as ``extractor``; defaults to ``extractor.name`` or the class name.

    Features enter the metrics as float64 (FID's sums are float64 anyway; KID's cubic kernel
    loses digits in float32). KID keeps every feature: 8*D bytes per image and set, 16 KiB for
    Inception, i.e. ~160 MiB per 10k images.
    """

    def __init__(
        self,
        extractor: nn.Module,
        num_features: int | None = None,
        kid_subsets: int = 100,
        kid_subset_size: int = 1000,
        kid_seed: int = 0,
        name: str | None = None,
    ) -> None:
        super().__init__()
        if num_features is None:
            num_features = getattr(extractor, "num_features", None)
            if num_features is None:
                raise ValueError(
                    "FIDKID needs `num_features` when the extractor has no `num_features` "
                    "attribute (wrap it in gan_suite.eval.features.FeatureWrapper)"
                )
        self.extractor = extractor
        self.name = name or getattr(extractor, "name", type(extractor).__name__)
        identity = _PrecomputedFeatures(int(num_features))
        self.fid = FrechetInceptionDistance(feature=identity, reset_real_features=False)
        with warnings.catch_warnings():
            # The "KID stores all features" warning is known and sized in the docstring.
            warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
            self.kid = _ClippedKID(
                feature=identity,
                subsets=kid_subsets,
                subset_size=kid_subset_size,
                reset_real_features=False,
                seed=kid_seed,
            )

    @torch.no_grad()
    def features(self, images: Tensor) -> Tensor:
        """(N, 3, H, W) images in [-1, 1] -> (N, D) float64 features on the metrics' device."""
        feats = self.extractor(images)
        return feats.reshape(feats.shape[0], -1).to(self.fid.device, torch.float64)

    def update_features(self, features: Tensor, real: bool) -> None:
        """Add precomputed (N, D) features to the real or the fake set."""
        features = features.to(self.fid.device, torch.float64)
        self.fid.update(features, real=real)
        self.kid.update(features, real=real)

    def update_real(self, images: Tensor) -> None:
        """Add a batch of real images (N, 3, H, W) in [-1, 1]."""
        self.update_features(self.features(images), real=True)

    def update_fake(self, images: Tensor) -> None:
        """Add a batch of generated images (N, 3, H, W) in [-1, 1]."""
        self.update_features(self.features(images), real=False)

    @property
    def has_real(self) -> bool:
        """Whether this rank already holds real features (so a run computes them only once)."""
        return int(self.fid.real_features_num_samples) > 0

    def compute(self) -> dict[str, float | int | str]:
        """FID and KID over the images of all ranks; call it on every rank (it is collective)."""
        fid = float(self.fid.compute())
        kid_mean, kid_std = self.kid.compute()
        return {
            "fid": fid,
            "kid_mean": float(kid_mean),
            "kid_std": float(kid_std),
            "n_real": self.kid.n_real,
            "n_fake": self.kid.n_fake,
            "extractor": self.name,
        }

    def reset_fake(self) -> None:
        """Forget the fake images, keep the real features for the next evaluation."""
        self.fid.reset()
        self.kid.reset()

    def reset(self) -> None:
        """Forget real and fake images."""
        for metric in (self.fid, self.kid):
            metric.reset_real_features = True
            metric.reset()
            metric.reset_real_features = False
