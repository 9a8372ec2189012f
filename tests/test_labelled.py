"""LabelledDataModule and DomainSplitDataModule on generated fixtures (never downloaded):
layouts, labels, the labelled/unlabelled split, and the errors that name files and lines."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest_data import noise, save, solid

from datamodules import (
    AnnotationError,
    DatasetLayoutError,
    DomainSplitDataModule,
    LabelledDataModule,
)

EMBEDDED = {"n_train": 16, "n_test": 8, "image_size": 32}
CELEBA_NAMES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose "
    "Black_Hair Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee "
    "Gray_Hair Heavy_Makeup High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes "
    "No_Beard Oval_Face Pale_Skin Pointy_Nose Receding_Hairline Rosy_Cheeks Sideburns Smiling "
    "Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick Wearing_Necklace "
    "Wearing_Necktie Young"
).split()
STARGAN = ["Black_Hair", "Blond_Hair", "Brown_Hair", "Male", "Young"]


def labelled(source: str, root: Path | None = None, **kwargs) -> LabelledDataModule:
    defaults = {"num_workers": 0, "batch_size": 4, "image_size": 16}
    if source == "shapes":
        defaults["embedded"] = EMBEDDED
    return LabelledDataModule(source, str(root) if root else None, **{**defaults, **kwargs})


# ------------------------------------------------------------------ fixtures
def make_folder_tree(root: Path, per_class: int = 3) -> Path:
    """3 classes (bird, cat, dog); cat's images are grayscale PNGs, dog's are RGBA."""
    for c, (name, mode) in enumerate((("bird", None), ("cat", "L"), ("dog", "RGBA"))):
        for i in range(per_class):
            save(root / name / f"{i}.png", solid((80 * c, 10 * i, 200), (20, 20)), mode)
    return root


def write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    """IDX file: magic (2051 images, 2049 labels), big-endian uint32 dims, then uint8 data."""
    magic = {3: 2051, 1: 2049}[array.ndim]
    data = struct.pack(f">{1 + array.ndim}I", magic, *array.shape) + array.astype(">u1").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        with gzip.open(f"{path}.gz", "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def make_mnist(root: Path, compress: bool = False) -> Path:
    """30 train and 10 test 28x28 digits; image k is filled with 20 * label."""
    raw = root / "MNIST" / "raw"
    for prefix, n in (("train", 30), ("t10k", 10)):
        labels = (np.arange(n) * 7 + (prefix == "t10k")) % 10
        images = np.repeat(labels[:, None, None] * 20, 28, 1).repeat(28, 2)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images, compress)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels, compress)
    return root


def celeba_table() -> np.ndarray:
    """8 images x 40 attributes of +-1; Male alternates so every split has both sexes."""
    table = np.where(np.random.default_rng(3).random((8, 40)) < 0.5, 1, -1)
    table[:, CELEBA_NAMES.index("Male")] = np.where(np.arange(8) % 2 == 1, 1, -1)
    return table


def make_celeba(root: Path) -> Path:
    """8 jpgs (20 wide, 24 high); partition 4 train, 2 val, 2 test."""
    table = celeba_table()
    lines = [str(len(table)), " ".join(CELEBA_NAMES)]
    for i, row in enumerate(table):
        name = f"{i + 1:06d}.jpg"
        save(root / "img_align_celeba" / name, noise(i, (24, 20)))
        lines.append(name + "  " + " ".join(f"{v:2d}" for v in row))
    (root / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    splits = [0, 0, 0, 0, 1, 1, 2, 2]
    (root / "list_eval_partition.txt").write_text(
        "".join(f"{i + 1:06d}.jpg {s}\n" for i, s in enumerate(splits))
    )
    return root


# ------------------------------------------------------------------ folder
def test_folder_classes_modes_and_batches(tmp_path: Path) -> None:
    dm = labelled("folder", make_folder_tree(tmp_path), val_fraction=0.34)
    dm.setup("fit")
    assert dm.class_names == ["bird", "cat", "dog"] and dm.num_classes == 3
    assert len(dm.train_set) + len(dm.val_set) == 9
    assert sorted(dm.val_set.split.labels.tolist()) == [0, 1, 2]  # stratified hold-out
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 16, 16) and batch["image"].dtype == torch.float32
    assert batch["label"].dtype == torch.int64 and batch["labelled"].dtype == torch.bool
    assert set(batch) == {"image", "label", "label_true", "labelled", "index"}
    for item in (dm.train_set[i] for i in range(len(dm.train_set))):
        path = dm.train_set.split.images[item["index"]]
        assert dm.class_names[int(item["label"])] == path.parent.name


def test_folder_split_layout_grayscale_and_unit_range(tmp_path: Path) -> None:
    for split in ("train", "test"):
        save(tmp_path / split / "red" / "0.png", solid((255, 0, 0), (8, 8)))
        save(tmp_path / split / "blue" / "0.png", solid((0, 0, 255), (8, 8)))
    dm = labelled("folder", tmp_path, channels=1, normalize="unit")
    dm.setup()
    assert dm.class_names == ["blue", "red"]
    item = dm.test_set[1]  # test/red/0.png
    assert item["image"].shape == (1, 16, 16) and int(item["label"]) == 1
    assert torch.allclose(item["image"], torch.full_like(item["image"], 0.299), atol=0.01)


def test_folder_empty_class_is_named(tmp_path: Path) -> None:
    make_folder_tree(tmp_path)
    (tmp_path / "eel").mkdir()
    with pytest.raises(DatasetLayoutError, match="eel"):
        labelled("folder", tmp_path).setup("fit")


# ------------------------------------------------------------------ mnist
@pytest.mark.parametrize("compress", [False, True])
def test_mnist_idx_files(tmp_path: Path, compress: bool) -> None:
    dm = labelled("mnist", make_mnist(tmp_path / "data", compress), image_size=28, channels=1)
    dm.setup()
    assert dm.num_classes == 10 and len(dm.test_set) == 10
    assert len(dm.train_set) + len(dm.val_set) == 30
    for dataset in (dm.train_set, dm.test_set):
        for i in range(len(dataset)):
            item = dataset[i]
            assert item["image"].shape == (1, 28, 28)
            expected = 20 * int(item["label"]) / 127.5 - 1  # the pixel value encodes the label
            assert torch.allclose(item["image"], torch.tensor(expected), atol=0.02)
    assert not any((tmp_path / "data" / "MNIST" / "raw").glob("*-ubyte")) or not compress


def test_mnist_missing_files_are_listed(tmp_path: Path) -> None:
    make_mnist(tmp_path)
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DatasetLayoutError, match="t10k-labels-idx1-ubyte") as err:
        labelled("mnist", tmp_path).setup()
    assert "raw" in str(err.value) and "train-images-idx3-ubyte" in str(err.value)


# ------------------------------------------------------------------ celeba
def test_celeba_attribute_labels(tmp_path: Path) -> None:
    dm = labelled("celeba", make_celeba(tmp_path), attributes=STARGAN)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (4, 2, 2)
    assert dm.attribute_names == STARGAN and dm.num_classes == 5
    table = celeba_table()
    names = [p.name for p in dm.train_set.split.images]
    row = names.index("000003.jpg")
    expected = (table[2, [CELEBA_NAMES.index(a) for a in STARGAN]] > 0).astype(np.float32)
    label = dm.train_set[row]["label"]
    assert label.dtype == torch.float32 and label.tolist() == expected.tolist()
    batch = next(iter(dm.val_dataloader()))
    assert batch["label"].shape == (2, 5) and batch["image"].shape == (2, 3, 16, 16)


def test_celeba_unknown_attribute_names_file_and_name(tmp_path: Path) -> None:
    make_celeba(tmp_path)
    with pytest.raises(AnnotationError, match="Blonde_Hair") as err:
        labelled("celeba", tmp_path, attributes=["Blonde_Hair"]).setup()
    assert "list_attr_celeba.txt" in str(err.value) and "5_o_Clock_Shadow" in str(err.value)


@pytest.mark.parametrize("bad", ["000003.jpg 1 -1", "000003.jpg " + " ".join(["0"] * 40)])
def test_celeba_malformed_line_names_file_and_line(tmp_path: Path, bad: str) -> None:
    path = make_celeba(tmp_path) / "list_attr_celeba.txt"
    lines = path.read_text().splitlines()
    lines[4] = bad  # the third image = line 5 of the file
    path.write_text("\n".join(lines))
    with pytest.raises(AnnotationError, match=r"list_attr_celeba\.txt.* line 5"):
        labelled("celeba", tmp_path, attributes=["Male"]).setup()


def test_celeba_missing_image_is_named(tmp_path: Path) -> None:
    (make_celeba(tmp_path) / "img_align_celeba" / "000007.jpg").unlink()
    with pytest.raises(DatasetLayoutError, match="000007.jpg"):
        labelled("celeba", tmp_path, attributes=["Male"]).setup()


# ------------------------------------------------------------------ shapes and digits
def test_shapes_labels_match_scenes_json(tmp_path: Path) -> None:
    dm = labelled("shapes", masks=True)
    dm.setup()
    root = next((tmp_path / "cache").glob("shapes-*"))
    test_records = json.loads((root / "scenes.json").read_text())["splits"]["test"]
    assert [int(dm.test_set[i]["label"]) for i in range(len(dm.test_set))] == [
        r["label"] for r in test_records
    ]
    item = dm.test_set[0]
    assert item["attributes"].tolist() == [
        float(test_records[0]["attributes"][a]) for a in dm.attribute_names
    ]
    # Semantic mask values are 1 + class; the primary object's class is the label.
    assert item["mask"].shape == (16, 16) and (item["mask"] == test_records[0]["label"] + 1).any()


def test_shapes_attribute_labels_and_both_domains(tmp_path: Path) -> None:
    dm = labelled("shapes", attributes=["large", "left"], domain="both", labelled_fraction=0.5)
    dm.setup("fit")
    assert dm.label_kind == "attributes" and dm.num_classes == 2
    split, mask = dm.train_set.split, dm.labelled
    assert len(split) % 2 == 0 and sorted(set(split.domains.tolist())) == [0, 1]
    for group in np.unique(split.groups):  # A and B of one scene: same side of the split
        assert len(set(mask[split.groups == group].tolist())) == 1
    batch = next(iter(dm.train_dataloader()))
    assert batch["label"].shape == (4, 2) and batch["domain"].dtype == torch.int64


@pytest.mark.usefixtures("shared_digits")
def test_digits_real_data_split_and_range() -> None:
    dm = labelled("digits", image_size=32)  # domain A: the 5,000 MNIST digits
    dm.setup()
    sizes = (len(dm.train_set), len(dm.val_set), len(dm.test_set))
    assert sizes == (3600, 400, 1000)
    images = torch.stack([dm.test_set[i]["image"] for i in range(40)])
    assert images.shape == (40, 3, 32, 32)
    assert images.min() >= -1 and images.max() <= 1 and images.min() < -0.9 and images.max() > 0.9
    assert np.bincount(dm.test_set.split.labels).tolist() == [100] * 10
    uci = labelled("digits", domain="B")
    uci.setup()
    assert sum(len(s) for s in (uci.train_set, uci.val_set, uci.test_set)) == 1797
    assert len(uci.test_set) == 360 and all("uci-" in str(p) for p in uci.test_set.split.images)
    both = labelled("digits", domain="both", masks=True)
    both.setup("test")
    item = both.test_set[len(both.test_set) - 1]  # a UCI digit: domain 1, its stroke mask
    assert int(item["domain"]) == 1 and set(item["mask"].unique().tolist()) == {
        0,
        1 + int(item["label"]),
    }


# ------------------------------------------------------------------ labelled fraction
def test_labelled_fraction_per_class_and_seeded() -> None:
    dm = labelled("digits", labelled_fraction=0.1, seed=1)
    dm.setup("fit")
    labels = dm.train_set.split.labels
    for c in range(10):
        count = (labels == c).sum()
        assert dm.labelled[labels == c].sum() == max(1, int(np.floor(0.1 * count + 0.5)))
    again = labelled("digits", labelled_fraction=0.1, seed=1)
    again.setup("fit")
    other = labelled("digits", labelled_fraction=0.1, seed=2)
    other.setup("fit")
    assert (again.labelled == dm.labelled).all() and (other.labelled != dm.labelled).any()
    hidden = int(np.flatnonzero(~dm.labelled)[0])
    shown = int(np.flatnonzero(dm.labelled)[0])
    item = dm.train_set[hidden]
    assert not item["labelled"] and int(item["label"]) == -1
    assert int(item["label_true"]) == labels[hidden]
    assert dm.train_set[shown]["labelled"] and int(dm.train_set[shown]["label"]) == labels[shown]
    assert all(dm.val_set[i]["labelled"] for i in range(5))


@pytest.mark.filterwarnings("ignore:labelled_fraction=0.1 labels 3")
def test_labelled_fraction_at_least_one_per_class(tmp_path: Path) -> None:
    dm = labelled("folder", make_folder_tree(tmp_path, per_class=4), labelled_fraction=0.1)
    dm.setup("fit")
    labels = dm.train_set.split.labels
    assert [dm.labelled[labels == c].sum() for c in range(3)] == [1, 1, 1]


@pytest.mark.filterwarnings("ignore:labelled_fraction=0.3 labels 2")
def test_unlabelled_attribute_labels_are_zero(tmp_path: Path) -> None:
    dm = labelled("celeba", make_celeba(tmp_path), attributes=["Male"], labelled_fraction=0.3)
    dm.setup("fit")
    hidden = np.flatnonzero(~dm.labelled)
    assert dm.labelled.sum() == 2  # one of the two images of each Male pattern
    item = dm.train_set[int(hidden[0])]
    assert item["label"].tolist() == [0.0]
    assert item["label_true"].tolist() == dm.train_set.split.labels[hidden[0]].tolist()


def test_labelled_fraction_inflated_by_rare_strata_warns(tmp_path: Path) -> None:
    # 4 train images with 5 attributes: every attribute pattern is unique, so "at least one
    # per pattern" labels them all; the module must say so rather than silently.
    dm = labelled("celeba", make_celeba(tmp_path), attributes=STARGAN, labelled_fraction=0.3)
    with pytest.warns(UserWarning, match="labelled_fraction=0.3"):
        dm.setup("fit")
    assert dm.labelled.all()


@pytest.mark.usefixtures("shared_digits")
@pytest.mark.parametrize("fraction", [0.0, 1.5, -0.1])
def test_labelled_fraction_out_of_range(fraction: float) -> None:
    with pytest.raises(ValueError, match="labelled_fraction") as err:
        labelled("digits", labelled_fraction=fraction)
    assert str(fraction) in str(err.value)


# ------------------------------------------------------------------ domain split (DiscoGAN)
def test_domain_split_by_attribute(tmp_path: Path) -> None:
    make_celeba(tmp_path)
    dm = DomainSplitDataModule(
        str(tmp_path), attribute="Male", load_size=16, crop_size=16, batch_size=2, num_workers=0
    )
    dm.setup("fit")
    a, b = dm.domains["train"]
    male = celeba_table()[:4, CELEBA_NAMES.index("Male")] > 0
    train_files = [f"{i + 1:06d}.jpg" for i in range(4)]
    assert [p.name for p in a.paths] == [f for f, m in zip(train_files, male) if m]
    assert [p.name for p in b.paths] == [f for f, m in zip(train_files, male) if not m]
    batch = next(iter(dm.train_dataloader()))
    assert batch["A"].shape == (2, 3, 16, 16) and {"A_path", "B_path"} <= set(batch)
    assert all(Path(p).name in {x.name for x in a.paths} for p in batch["A_path"])


def test_domain_split_errors_and_embedded_default(tmp_path: Path) -> None:
    make_celeba(tmp_path / "celeba")
    with pytest.raises(AnnotationError, match="Mail"):
        DomainSplitDataModule(str(tmp_path / "celeba"), attribute="Mail", num_workers=0).setup()
    dm = DomainSplitDataModule(
        None, load_size=16, crop_size=16, batch_size=2, num_workers=0, embedded=EMBEDDED
    )
    dm.setup("fit")
    assert dm.resolved_attribute == "large" and len(dm.domains["train"][0]) > 0


def test_in_memory_items_are_transformed_once_unless_flipped(monkeypatch, tmp_path) -> None:
    """MNIST (an in-memory array) under a deterministic transform are cached: the second
    epoch returns the same tensors without calling albumentations again; a random flip
    is drawn afresh every time."""
    from datamodules.labelled_data import LabelledTransform

    calls = []
    original = LabelledTransform.__call__

    def counting(self, image, mask=None):
        calls.append(1)
        return original(self, image, mask)

    monkeypatch.setattr(LabelledTransform, "__call__", counting)
    root = str(make_mnist(tmp_path / "data"))
    dm = LabelledDataModule("mnist", root, image_size=16, num_workers=0, flip=False)
    dm.setup("fit")
    first = [dm.train_set[i]["image"] for i in range(5)]
    again = [dm.train_set[i]["image"] for i in range(5)]
    assert len(calls) == 5  # the second pass hit the cache
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    again[0].fill_(0.0)  # a consumer writing into its item does not reach the cache
    assert torch.equal(dm.train_set[0]["image"], first[0])

    flipped = LabelledDataModule("mnist", root, image_size=16, num_workers=0, flip=True)
    flipped.setup("fit")
    calls.clear()
    for _ in range(2):
        flipped.train_set[0]
    assert len(calls) == 2 and flipped.train_set._cache is None
