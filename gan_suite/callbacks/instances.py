"""IC-GAN's instances and neighbourhoods, prepared once per run before training.

:class:`InstanceNeighbourhoods` computes h_i = f(x_i) / ||f(x_i)|| for every training image
(unaugmented) with the model's feature extractor f, and each instance's k nearest neighbours
by cosine similarity (exact by default, or through faiss: ``neighbour_search``; the instance
itself excluded, as the official code does), or
reads both from the feature cache; then hands them to the data module, whose loader workers
serve (h_i, x_j) pairs (:class:`~datamodules.instances.NeighbourhoodDataset`), and to the
model, for evaluation. Under DDP rank 0 computes and writes the cache (atomically, under a
file lock) while the others wait at a barrier, then every rank reads the same file.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from gan_suite.eval.judge import fill_evaluator_cache, has_evaluator
from gan_suite.eval.neighbours import extract_features, knn_search
from gan_suite.utils import atomic_write, file_lock


class InstanceNeighbourhoods(L.Callback):
    """Features and k-NN neighbourhoods of the training instances (IC-GAN, section 2.1).

    Reads the model's ``k``, ``include_self``, ``feature_extractor``, ``feature_dim``,
    ``feature_cache`` (``auto`` = ``<run dir>/instance_features.pt``, a path, or None),
    ``nn_chunk_size``, ``neighbour_search`` / ``neighbour_nlist`` / ``neighbour_nprobe``,
    ``feature_batch_size`` and ``n_d_steps`` (neighbours drawn per item).

    Raises:
        ValueError: the data module cannot serve instances (it needs
            ``set_instance_neighbourhoods``, as ``LabelledDataModule`` has).
    """

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            self._reload_for_evaluation(trainer, pl_module)
            return
        dm = trainer.datamodule
        if not hasattr(dm, "set_instance_neighbourhoods"):
            raise ValueError(
                f"InstanceNeighbourhoods needs a data module that serves instances "
                f"(datamodules.LabelledDataModule); got {type(dm).__name__}"
            )
        hp = pl_module.hparams
        train_f = hp.feature_extractor == "evaluator" and not hp.evaluator_checkpoint
        if trainer.world_size > 1 and train_f and has_evaluator(dm):
            # f is the data's evaluator: rank 0 trains a missing one in a clean subprocess (a
            # Trainer nested in a DDP process would deadlock), the others wait
            if trainer.is_global_zero:
                fill_evaluator_cache(dm)
            trainer.strategy.barrier("gan_suite_feature_extractor")
        cache = self._cache_path(trainer, hp.feature_cache)
        dataset = dm.unaugmented_train_set()
        key = {
            "n": len(dataset),
            # which data: a user cache path must not be reused for another dataset of size n
            "data": repr([getattr(dm, a, None) for a in ("source", "data_dir", "embedded")]),
            "extractor": hp.feature_extractor,
            "dim": hp.feature_dim,
            "k": hp.k,
            "include_self": hp.include_self,
        }
        search = hp.get("neighbour_search", "exact")
        if search != "exact":  # (an exact search's key stays as before: its caches stay valid)
            key["search"] = [search, hp.get("neighbour_nlist"), hp.get("neighbour_nprobe", 4)]
        if cache is None:
            stored = self._compute(pl_module, dataset, key)  # every rank: deterministic
        else:
            if trainer.is_global_zero:
                cache.parent.mkdir(parents=True, exist_ok=True)
                with file_lock(cache.with_suffix(".lock")):
                    if self._read(cache, key) is None:
                        state = self._compute(pl_module, dataset, key)
                        atomic_write(cache, lambda p: torch.save(state, p))
            trainer.strategy.barrier("gan_suite_instance_features")
            stored = self._read(cache, key)
        dm.set_instance_neighbourhoods(
            stored["features"], stored["neighbours"], draws=int(hp.n_d_steps)
        )
        pl_module.set_instances(stored["features"], stored["labels"])
        rank_zero_info(f"IC-GAN: {key['n']} instances, {hp.k}-NN neighbourhoods ready")

    def _reload_for_evaluation(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """``test``/``validate`` of a checkpoint: the training run's cached instance features
        (``auto``: in the run directory, the parent of the test directory) give the
        evaluation its neighbourhood purity; without a cache the evaluation goes on without."""
        if getattr(pl_module, "instance_features", None) is not None:
            return
        cache = self._cache_path(trainer, pl_module.hparams.feature_cache)
        if cache is not None and not cache.is_file() and pl_module.hparams.feature_cache == "auto":
            cache = cache.parent.parent / cache.name  # runs/<name>/<id>/test-<id>/ -> <id>/
        if cache is not None and cache.is_file():
            stored = torch.load(cache, weights_only=True)
            pl_module.set_instances(stored["features"], stored["labels"])

    @staticmethod
    def _cache_path(trainer: L.Trainer, feature_cache: str | None) -> Path | None:
        if feature_cache == "auto":
            return Path(trainer.default_root_dir) / "instance_features.pt"
        return Path(feature_cache) if feature_cache else None

    @staticmethod
    def _read(cache: Path, key: dict) -> dict | None:
        if not cache.is_file():
            return None
        stored = torch.load(cache, weights_only=True)
        return stored if stored.get("key") == key else None

    @staticmethod
    def _compute(pl_module, dataset, key: dict) -> dict:
        hp = pl_module.hparams
        feats, labels = extract_features(
            pl_module.feature_net(), dataset, hp.feature_batch_size, pl_module.device
        )
        pl_module.embed_instances(dataset[0]["image"][None])  # checks feature_dim
        nn_idx = knn_search(
            feats,
            hp.k,
            search=hp.get("neighbour_search", "exact"),
            chunk_size=hp.nn_chunk_size,
            nlist=hp.get("neighbour_nlist"),
            nprobe=hp.get("neighbour_nprobe", 4),
            include_self=hp.include_self,
            normalized=True,
        )
        return {
            "key": key,
            "features": feats.cpu(),
            "labels": labels,
            "neighbours": nn_idx.cpu(),
        }
