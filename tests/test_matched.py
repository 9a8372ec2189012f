"""The data side of MatchGAN (Sun et al. 2020): the labelled subset drawn evenly over classes,
the labelled-list file that pins it, and the alternating class-grouped batches (also under
Lightning's DDP re-instantiation of the batch sampler)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest_data import save, solid
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler

from datamodules import AnnotationError, LabelledDataModule
from datamodules.labelled_data import LabelledSplit, even_labelled_mask, strata
from datamodules.matched import EpochSampler, MatchedBatchSampler

EMBEDDED = {"n_train": 24, "n_test": 4, "image_size": 24}

pytestmark = pytest.mark.usefixtures("shared_digits")


def labelled(source: str = "digits", root: Path | None = None, **kwargs) -> LabelledDataModule:
    defaults = {"num_workers": 0, "batch_size": 16, "image_size": 8}
    if source == "shapes":
        defaults["embedded"] = EMBEDDED
    elif source == "digits":
        defaults["domain"] = "B"  # the UCI digits: fewer images, as these tests need
    return LabelledDataModule(source, str(root) if root else None, **{**defaults, **kwargs})


def imbalanced(sizes=(50, 10, 2), groups: bool = False) -> LabelledSplit:
    labels = np.repeat(np.arange(len(sizes)), sizes)
    rng = np.random.default_rng(0)
    labels = labels[rng.permutation(len(labels))]  # classes interleaved, as in real data
    images = np.zeros((len(labels), 2, 2), dtype=np.uint8)
    if not groups:
        return LabelledSplit(images=images, labels=labels)
    # every item twice (an A and a B image of one scene)
    n = len(labels)
    return LabelledSplit(
        images=np.concatenate([images, images]),
        labels=np.tile(labels, 2),
        groups=np.tile(np.arange(n), 2),
    )


def counts(split: LabelledSplit, mask: np.ndarray) -> list[int]:
    return [int(mask[split.labels == c].sum()) for c in np.unique(split.labels)]


# ------------------------------------------------------------------ even sampling
def test_even_split_is_round_robin_over_classes() -> None:
    split = imbalanced()
    mask = even_labelled_mask(split, 12 / 62, seed=0)
    assert counts(split, mask) == [5, 5, 2]  # the rare class gives all it has
    assert sorted(counts(split, even_labelled_mask(split, 13 / 62, seed=0))) == [2, 5, 6]
    assert counts(split, even_labelled_mask(split, 1 / 62, seed=0)) == [1, 1, 1]  # >= 1 each
    assert even_labelled_mask(split, 1.0, seed=0).all()
    # seed-stable and seed-dependent (same counts, other examples)
    assert (even_labelled_mask(split, 12 / 62, seed=0) == mask).all()
    other = even_labelled_mask(split, 12 / 62, seed=1)
    assert counts(split, other) == [5, 5, 2] and (other != mask).any()


def test_even_split_takes_scenes_whole() -> None:
    split = imbalanced(groups=True)
    mask = even_labelled_mask(split, 12 / 62, seed=3)
    assert counts(split, mask) == [10, 10, 4]  # 12 scenes = 24 images, 5/5/2 scenes
    for group in np.unique(split.groups):
        assert len(set(mask[split.groups == group].tolist())) == 1


def test_even_sampling_in_the_module() -> None:
    dm = labelled(labelled_fraction=0.05, labelled_sampling="even")
    dm.setup("fit")
    split = dm.data.train
    per_class = counts(split, dm.labelled)
    assert sum(per_class) == round(0.05 * len(split))  # 63 of 1257
    assert max(per_class) - min(per_class) <= 1  # every digit class is large: even shares
    assert (dm.unaugmented_train_set().labelled == dm.labelled).all()
    stratified = labelled(labelled_fraction=0.05)
    stratified.setup("fit")
    assert (stratified.labelled != dm.labelled).any()


def test_even_sampling_keeps_shapes_scenes_together() -> None:
    dm = labelled("shapes", labelled_fraction=0.3, labelled_sampling="even", domain="both")
    dm.setup("fit")
    split = dm.train_set.split
    for group in np.unique(split.groups):
        assert len(set(dm.labelled[split.groups == group].tolist())) == 1


# ------------------------------------------------------------------ labelled list
def test_labelled_list_written_then_read_back(tmp_path: Path) -> None:
    path = tmp_path / "runs" / "labelled_list.txt"
    first = labelled(labelled_fraction=0.1, labelled_sampling="even", labelled_list=str(path))
    first.setup("fit")
    lines = path.read_text().splitlines()
    n_train = len(first.labelled)
    assert lines[0] == (
        f"# labelled_fraction=0.1 labelled_sampling=even seed=0 "
        f"n_labelled={int(first.labelled.sum())} n_train={n_train}"
    )
    images = first.data.train.images  # the digits are files: named relative to the root
    assert lines[1:] == [f"trainB/{images[i].name}" for i in np.flatnonzero(first.labelled)]
    # Read back with other options: the file wins (and the module says so).
    again = labelled(labelled_fraction=0.5, seed=0, labelled_list=str(path))
    with pytest.warns(UserWarning, match="labelled_fraction=0.1"):
        again.setup("fit")
    assert (again.labelled == first.labelled).all()
    assert (again.unaugmented_train_set().labelled == first.labelled).all()
    # write_labelled_list saves the current subset elsewhere, same entries
    copy = again.write_labelled_list(tmp_path / "copy.txt")
    assert copy.read_text().splitlines()[1:] == lines[1:]


def test_labelled_list_names_files_relative_to_the_root(tmp_path: Path) -> None:
    for c, name in enumerate(("bird", "cat", "dog")):
        for i in range(6):
            save(tmp_path / "data" / name / f"{i}.png", solid((80 * c, 10 * i, 0), (8, 8)))
    path = tmp_path / "list.txt"
    dm = labelled("folder", tmp_path / "data", labelled_fraction=0.4, labelled_list=str(path))
    dm.setup("fit")
    entries = path.read_text().splitlines()[1:]
    assert len(entries) == int(dm.labelled.sum()) and entries
    assert all(e.split("/")[0] in {"bird", "cat", "dog"} and e.endswith(".png") for e in entries)
    again = labelled("folder", tmp_path / "data", labelled_fraction=0.4, labelled_list=str(path))
    again.setup("fit")
    assert (again.labelled == dm.labelled).all()


def test_labelled_list_foreign_entry_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "labels.txt"
    known = labelled().data.train.keys[3]
    path.write_text(f"# hand-made\n{known}\n\ntrainB/uci-99999.png\n")
    with pytest.raises(AnnotationError, match=r"labels\.txt.* line 4.*uci-99999"):
        labelled(labelled_list=str(path)).setup("fit")


# ------------------------------------------------------------------ matched batches
def matched(**kwargs) -> LabelledDataModule:
    dm = labelled(labelled_fraction=0.1, batch_composition="matched", **kwargs)
    dm.setup("fit")
    return dm


def check_labelled_batch(batch: list[int], classes: np.ndarray, labelled: np.ndarray) -> None:
    assert len(batch) == 16 and labelled[batch].all()
    groups = classes[batch].reshape(4, 4)  # 4 classes x 4 contiguous images
    assert (groups == groups[:, :1]).all() and len(set(groups[:, 0].tolist())) == 4


def test_matched_batches_alternate_and_are_class_grouped() -> None:
    dm = matched()
    loader = dm.train_dataloader()
    sampler = loader.batch_sampler
    assert isinstance(sampler, MatchedBatchSampler)
    classes, mask = strata(dm.data.train.labels), dm.labelled
    batches = list(sampler)
    assert len(batches) == len(sampler) == math.ceil(len(mask) / 16)
    for i, batch in enumerate(batches):
        if i % 2 == 0:
            check_labelled_batch(batch, classes, mask)
        else:
            assert len(batch) == 16 and not mask[batch].any() and len(set(batch)) == 16
    # deterministic per (seed, epoch), different per epoch and seed
    assert list(sampler) == batches
    sampler.set_epoch(1)
    assert list(sampler) != batches
    sampler.set_epoch(0)
    assert list(sampler) == batches
    assert list(matched(seed=1).train_dataloader().batch_sampler) != batches
    # the loader serves the usual keys; ``labelled`` tells the two kinds apart
    it = iter(loader)
    first, second = next(it), next(it)
    assert first["labelled"].all() and not second["labelled"].any()
    assert first["label"].reshape(4, 4).unique(dim=1).shape == (4, 1)
    assert (second["label"] == -1).all() and first["image"].shape == (16, 3, 8, 8)


def test_matched_fully_labelled_every_batch_grouped() -> None:
    dm = labelled(batch_composition="matched")
    dm.setup("fit")
    classes = strata(dm.data.train.labels)
    for batch in dm.train_dataloader().batch_sampler:
        check_labelled_batch(batch, classes, dm.labelled)


def test_matched_ranks_draw_own_streams_and_split_the_epoch() -> None:
    dm = matched()
    classes, mask = strata(dm.data.train.labels), dm.labelled
    streams = []
    for rank in (0, 1):
        ddp = DistributedSampler(dm.train_set, num_replicas=2, rank=rank, shuffle=False)
        sampler = MatchedBatchSampler(ddp, 16, classes=classes, labelled=mask, seed=0)
        assert (sampler.rank, sampler.num_replicas) == (rank, 2)
        assert len(sampler) == math.ceil(math.ceil(len(mask) / 16) / 2)
        streams.append(list(sampler))
        check_labelled_batch(streams[-1][0], classes, mask)
        ddp.set_epoch(5)  # what Lightning does each epoch: the batch sampler follows
        assert list(sampler) != streams[-1]
    assert streams[0] != streams[1]


def test_matched_survives_lightning_ddp_reinstantiation() -> None:
    from lightning.fabric.utilities.data import _replace_dunder_methods, _set_sampler_epoch
    from lightning.pytorch.utilities.data import (
        _dataloader_init_kwargs_resolve_sampler,
        _update_dataloader,
    )

    dm = matched(classes_per_batch=2, seed=3)
    # Lightning calls the hook inside these contexts, capturing the constructor arguments.
    with _replace_dunder_methods(DataLoader, "dataset"), _replace_dunder_methods(BatchSampler):
        loader = dm.train_dataloader()
    ddp = DistributedSampler(loader.dataset, num_replicas=2, rank=1, shuffle=False)
    kwargs = _dataloader_init_kwargs_resolve_sampler(loader, ddp)
    rebuilt = kwargs["batch_sampler"]
    assert isinstance(rebuilt, MatchedBatchSampler) and rebuilt.sampler is ddp
    assert (rebuilt.rank, rebuilt.num_replicas, rebuilt.classes_per_batch) == (1, 2, 2)
    assert rebuilt.seed == 3 and len(rebuilt) == math.ceil(len(loader.batch_sampler) / 2)
    direct = MatchedBatchSampler(
        DistributedSampler(loader.dataset, num_replicas=2, rank=1, shuffle=False),
        16,
        classes=strata(dm.data.train.labels),
        labelled=dm.labelled,
        classes_per_batch=2,
        seed=3,
    )
    assert list(rebuilt) == list(direct)
    new_loader = _update_dataloader(loader, ddp)
    assert isinstance(new_loader.batch_sampler, MatchedBatchSampler)
    before = list(new_loader.batch_sampler)
    _set_sampler_epoch(new_loader, 2)  # the fit loop's per-epoch call reaches the stream
    assert list(new_loader.batch_sampler) != before
    batch = next(iter(new_loader))
    assert batch["labelled"].all() and batch["label"].reshape(2, 8).unique(dim=1).shape == (2, 1)


def test_single_device_epoch_follows_lightning() -> None:
    from lightning.fabric.utilities.data import _set_sampler_epoch

    loader = matched().train_dataloader()
    assert isinstance(loader.batch_sampler.sampler, EpochSampler)
    first = list(loader.batch_sampler)
    _set_sampler_epoch(loader, 1)
    assert list(loader.batch_sampler) != first


def test_matched_bad_options_name_the_option(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="classes_per_batch") as err:
        labelled(batch_composition="matched", batch_size=10)
    assert "batch_size (10)" in str(err.value)
    for c, name in enumerate(("bird", "cat", "dog")):
        save(tmp_path / "data" / name / "0.png", solid((80 * c, 0, 0), (8, 8)))
        save(tmp_path / "data" / name / "1.png", solid((80 * c, 9, 0), (8, 8)))
    dm = labelled("folder", tmp_path / "data", batch_composition="matched", val_fraction=0.0)
    with pytest.raises(ValueError, match="classes_per_batch=4 .* has 3"):
        dm.setup("fit")
    with pytest.raises(ValueError, match="labelled_sampling"):
        labelled(labelled_sampling="balanced")
    with pytest.raises(ValueError, match="batch_composition"):
        labelled(batch_composition="grouped")
    labels = torch.arange(8) % 4
    with pytest.raises(ValueError, match="classes_per_batch"):
        MatchedBatchSampler(
            range(8), 8, classes=labels.numpy(), labelled=np.ones(8, bool), classes_per_batch=3
        )
