"""Bad input in the data modules: what listing skips, EXIF orientation, file conversions, text
files written by Windows tools, and a catalogue of faults over every data module - each must
fail at the constructor or ``setup()`` (before any training), naming the file or the option
and what was expected."""

from __future__ import annotations

import codecs
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from datamodules import (
    AnnotationError,
    DatasetLayoutError,
    DomainSplitDataModule,
    ImageReadError,
    LabelError,
    LabelledDataModule,
    NeighbourhoodDataset,
    PairedDataModule,
    SegmentationDataModule,
    UnpairedDataModule,
    VectorDataModule,
    list_images,
    read_rgb,
)
from datamodules.io import orient_array, probe_image, read_mask
from datamodules.labelled_celeba import read_attributes
from datamodules.segmentation_layouts import find_cityscapes

SMALL = {"load_size": 16, "crop_size": 16, "num_workers": 0, "batch_size": 2, "flip": False}
# What macOS writes beside a file copied to a non-HFS volume: an AppleDouble header.
APPLEDOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00" + b"Mac OS X        " + b"\x00" * 60
ATTRS = ["Black_Hair", "Male", "Young"]


# ------------------------------------------------------------------ builders
def png(path: Path, array: np.ndarray, mode: str | None = None, **save) -> Path:
    """Write ``array`` at ``path`` (format from the extension), converted to ``mode``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(np.asarray(array))
    if mode is not None and image.mode != mode:
        image = image.convert(mode)
    image.save(path, **save)
    return path


def pattern(seed: int, h: int = 16, w: int = 16) -> np.ndarray:
    """A smooth (H, W, 3) uint8 image without symmetry, so a rotation or flip shows."""
    coarse = np.random.default_rng(seed).integers(0, 256, (4, 3, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC))


def cyclegan(root: Path, n: int = 2) -> Path:
    for split in ("train", "test"):
        for side in "AB":
            for i in range(n):
                png(root / f"{split}{side}" / f"{i:03d}.png", pattern(i + 7 * len(side + split)))
    return root


def folder(root: Path) -> Path:
    for c, name in enumerate(("bird", "cat")):
        for i in range(3):
            png(root / name / f"{i}.png", pattern(10 * c + i))
    return root


def celeba(root: Path, lines: list[str] | None = None, encoding: str = "utf-8") -> np.ndarray:
    """8 jpgs, attributes ATTRS (Male alternates), partition 4 train / 2 val / 2 test; the
    returned table is the 0/1 truth. ``lines`` replaces the attribute file's lines."""
    table = np.stack([np.arange(8) % 3 == 0, np.arange(8) % 2 == 1, np.arange(8) < 5], 1)
    rows = [str(len(table)), " ".join(ATTRS)]
    for i, row in enumerate(table):
        png(root / "img_align_celeba" / f"{i + 1:06d}.jpg", pattern(i))
        rows.append(f"{i + 1:06d}.jpg " + " ".join("1" if v else "-1" for v in row))
    (root / "list_attr_celeba.txt").write_bytes("\n".join(lines or rows).encode(encoding))
    parts = "".join(f"{i + 1:06d}.jpg {s}\n" for i, s in enumerate([0, 0, 0, 0, 1, 1, 2, 2]))
    (root / "list_eval_partition.txt").write_text(parts)
    return table.astype(np.float32)


def gta5(root: Path, label: np.ndarray | None = None, mode: str = "L") -> Path:
    """3 images 8x12 with Cityscapes-id labels (7 road, 26 car); ``label`` replaces the first."""
    good = np.full((8, 12), 7, np.uint8)
    good[:, :4] = 26
    for i in range(3):
        png(root / "images" / f"{i:05d}.png", pattern(i, 8, 12))
        png(root / "labels" / f"{i:05d}.png", good if i or label is None else label, mode)
    return root


def cityscapes(root: Path) -> Path:
    for split in ("train", "val"):
        name = "aachen_000000_000019"
        png(root / "leftImg8bit" / split / "aachen" / f"{name}_leftImg8bit.png", pattern(3))
        png(
            root / "gtFine" / split / "aachen" / f"{name}_gtFine_labelIds.png",
            np.full((16, 16), 24, np.uint8),
        )
    return root


def vectors(root: Path, n: int = 12) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    np.save(root / "train_features.npy", rng.normal(size=(n, 6)).astype(np.float32))
    np.save(root / "train_word_vectors.npy", rng.normal(size=(n, 4)).astype(np.float32))
    np.save(root / "word_vectors.npy", rng.normal(size=(3, 4)).astype(np.float32))
    (root / "words.txt").write_text("cat\ndog\nsky\n")
    return root


def corrupt(path: Path, keep: float | None = None) -> Path:
    """Garbage bytes at ``path`` (keep=None) or the file cut to a share ``keep`` of itself."""
    data = path.read_bytes()
    path.write_bytes(b"not an image at all" if keep is None else data[: int(len(data) * keep)])
    return path


def unpaired(root: Path, **kw) -> Callable[[], None]:
    return lambda: UnpairedDataModule(str(root), **{**SMALL, **kw}).setup("fit")


def paired(root: Path, **kw) -> Callable[[], None]:
    return lambda: PairedDataModule(str(root), **{**SMALL, **kw}).setup("fit")


def labelled(source: str, root: Path | None, **kw) -> Callable[[], None]:
    args = {"image_size": 16, "num_workers": 0, "batch_size": 4, **kw}
    return lambda: LabelledDataModule(source, None if root is None else str(root), **args).setup(
        "fit"
    )


def segmentation(source: str, src: Path | None, target: str, tgt: Path | None, **kw):
    def run() -> None:
        dm = SegmentationDataModule(
            source, src and str(src), target, tgt and str(tgt), num_workers=0, **kw
        )
        dm.setup("fit")

    return run


# ------------------------------------------------------------------ the catalogue
@dataclass(frozen=True)
class Fault:
    """A faulty dataset or option: ``build(tmp)`` writes it and returns (the constructor and
    ``setup`` call that must raise, a path or option the message must name)."""

    build: Callable[[Path], tuple[Callable[[], object], str]]
    error: type[Exception]
    expected: str  # regex: what the message says was expected / went wrong


CATALOGUE: dict[str, Fault] = {}


def fault(name: str, error: type[Exception], expected: str):
    def register(build):
        CATALOGUE[name] = Fault(build, error, expected)
        return build

    return register


# --- unpaired (CycleGAN layout)
@fault("unpaired/missing-root", DatasetLayoutError, "does not exist.*trainA, trainB")
def _(t):
    return unpaired(t / "nowhere"), str(t / "nowhere")


@fault("unpaired/empty-domain", DatasetLayoutError, "contains no images")
def _(t):
    cyclegan(t)
    for f in (t / "trainB").iterdir():
        f.unlink()
    (t / "trainB" / "._000.png").write_bytes(APPLEDOUBLE)
    (t / "trainB" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (t / "trainB" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    return unpaired(t), str(t / "trainB")


@fault("unpaired/unreadable-image", ImageReadError, "cannot read image.*expected an RGB")
def _(t):
    return unpaired(t), str(corrupt(cyclegan(t) / "trainA" / "001.png"))


@fault("unpaired/truncated-png", ImageReadError, "cannot read image")
def _(t):
    return unpaired(t), str(corrupt(cyclegan(t) / "trainB" / "000.png", keep=0.6))


@fault("unpaired/truncated-jpeg", ImageReadError, "cannot read image")
def _(t):
    cyclegan(t)
    jpg = png(t / "trainA" / "009.jpg", pattern(1, 64, 64), quality=95)
    return unpaired(t), str(corrupt(jpg, keep=0.5))


@fault("unpaired/empty-file", ImageReadError, "cannot read image")
def _(t):
    cyclegan(t)
    (t / "testA" / "001.png").write_bytes(b"")
    return unpaired(t), str(t / "testA" / "001.png")


@fault("unpaired/rgb-mask", ImageReadError, "mode 'RGB'; expected a single-channel")
def _(t):
    cyclegan(t)
    for i in range(2):
        png(t / "masks" / "train" / f"{i:03d}.png", np.zeros((16, 16), np.uint8), "L")
    return unpaired(t), str(png(t / "masks" / "train" / "001.png", pattern(0)))


@fault("unpaired/mask-of-other-size", DatasetLayoutError, "is 8x16 but image .* is 16x16")
def _(t):
    cyclegan(t)
    png(t / "masks" / "train" / "000.png", np.zeros((16, 16), np.uint8))
    return unpaired(t), str(png(t / "masks" / "train" / "001.png", np.zeros((16, 8), np.uint8)))


@fault("unpaired/crop-above-load", ValueError, r"must be <= data\.init_args\.load_size")
def _(t):
    return unpaired(cyclegan(t), crop_size=32), "data.init_args.crop_size"


# --- paired (aligned folders and pix2pix AB files)
@fault("paired/missing-root", DatasetLayoutError, "does not exist; expected either pix2pix")
def _(t):
    return paired(t / "nowhere"), str(t / "nowhere")


@fault("paired/pix2pix-empty-split", DatasetLayoutError, "contains no images.*pix2pix layout")
def _(t):
    png(t / "test" / "000.png", pattern(0, 16, 32))
    (t / "train").mkdir()
    (t / "train" / "._000.png").write_bytes(APPLEDOUBLE)
    return paired(t), str(t / "train")


@fault("paired/unreadable-test-image", ImageReadError, "cannot read image")
def _(t):
    return paired(cyclegan(t)), str(corrupt(t / "testB" / "001.png"))


@fault("paired/names-disagree", DatasetLayoutError, "aligned folders disagree")
def _(t):
    cyclegan(t)
    (t / "trainB" / "001.png").rename(t / "trainB" / "002.png")
    return paired(t), str(t / "trainB" / "002.png")


# --- labelled: image folders, MNIST, CelebA
@fault("labelled/folder-missing-root", DatasetLayoutError, "does not exist.*ImageFolder")
def _(t):
    return labelled("folder", t / "nowhere"), str(t / "nowhere")


@fault("labelled/class-folder-without-images", DatasetLayoutError, "contains no images")
def _(t):
    folder(t)
    (t / "dog").mkdir()
    (t / "dog" / ".DS_Store").write_bytes(b"Bud1")
    return labelled("folder", t), str(t / "dog")


@fault("labelled/folder-unreadable-image", ImageReadError, "cannot read image")
def _(t):
    return labelled("folder", folder(t)), str(corrupt(t / "cat" / "2.png", keep=0.5))


@fault("labelled/unknown-class-in-test", DatasetLayoutError, "not among the training classes")
def _(t):
    folder(t / "train")
    folder(t / "test")
    (t / "test" / "cat").rename(t / "test" / "horse")
    return labelled("folder", t), str(t / "test" / "horse")


@fault("labelled/fraction-above-1", ValueError, r"must be in \(0, 1\].*got 1\.5")
def _(t):
    return labelled("folder", folder(t), labelled_fraction=1.5), "data.init_args.labelled_fraction"


@fault("labelled/fraction-0", ValueError, r"must be in \(0, 1\].*got 0\.0")
def _(t):
    return labelled("folder", folder(t), labelled_fraction=0.0), "data.init_args.labelled_fraction"


@fault("labelled/unknown-source", ValueError, "must be one of")
def _(t):
    return labelled("imagenet", t), "data.init_args.source"


@fault("labelled/mnist-missing-files", DatasetLayoutError, "not found.*nothing is downloaded")
def _(t):
    (t / "MNIST" / "raw").mkdir(parents=True)
    return labelled("mnist", t), str(t / "MNIST" / "raw")


@fault("labelled/mnist-corrupt-files", ImageReadError, "cannot read the MNIST files")
def _(t):
    raw = t / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3", "train-labels-idx1", "t10k-images-idx3", "t10k-labels-idx1"):
        (raw / f"{name}-ubyte").write_bytes(b"garbage")
    return labelled("mnist", t), str(raw)


@fault("labelled/celeba-missing-attribute-file", DatasetLayoutError, "does not exist")
def _(t):
    celeba(t)
    (t / "list_attr_celeba.txt").unlink()
    return labelled("celeba", t, attributes=["Male"]), str(t / "list_attr_celeba.txt")


@fault("labelled/celeba-wrong-column-count", AnnotationError, "line 4: expected '<file>' and 3")
def _(t):
    celeba(t)
    lines = (t / "list_attr_celeba.txt").read_text().splitlines()
    lines[3] = lines[3].rsplit(" ", 1)[0]  # one value short
    (t / "list_attr_celeba.txt").write_text("\n".join(lines))
    return labelled("celeba", t, attributes=["Male"]), str(t / "list_attr_celeba.txt")


@fault("labelled/celeba-value-not-pm1", AnnotationError, "line 3: expected .* values of 1 or -1")
def _(t):
    celeba(t)
    lines = (t / "list_attr_celeba.txt").read_text().splitlines()
    lines[2] = lines[2][:-2] + " 0"
    (t / "list_attr_celeba.txt").write_text("\n".join(lines))
    return labelled("celeba", t, attributes=["Male"]), str(t / "list_attr_celeba.txt")


@fault("labelled/celeba-count-disagrees", AnnotationError, "line 1 says 9 images but 8")
def _(t):
    celeba(t)
    lines = (t / "list_attr_celeba.txt").read_text().splitlines()
    (t / "list_attr_celeba.txt").write_text("\n".join(["9", *lines[1:]]))
    return labelled("celeba", t, attributes=["Male"]), str(t / "list_attr_celeba.txt")


@fault("labelled/celeba-unknown-attribute", AnnotationError, "'male' is not in .*did you mean")
def _(t):
    celeba(t)
    return labelled("celeba", t, attributes=["male"]), str(t / "list_attr_celeba.txt")


@fault(
    "labelled/celeba-bad-partition-line", AnnotationError, r"line 3: expected '<file> <0\|1\|2>'"
)
def _(t):
    celeba(t)
    path = t / "list_eval_partition.txt"
    lines = path.read_text().splitlines()
    lines[2] = "000003.jpg train"
    path.write_text("\r\n".join(lines))
    return labelled("celeba", t, attributes=["Male"]), str(path)


@fault("labelled/celeba-listed-image-missing", DatasetLayoutError, "listed in .* does not exist")
def _(t):
    celeba(t)
    (t / "img_align_celeba" / "000005.jpg").unlink()
    return labelled("celeba", t, attributes=["Male"]), str(t / "img_align_celeba" / "000005.jpg")


@fault("labelled/celeba-truncated-image", ImageReadError, "cannot read image")
def _(t):
    celeba(t)
    jpg = png(t / "img_align_celeba" / "000007.jpg", pattern(0, 64, 64), quality=95)
    return labelled("celeba", t, attributes=["Male"]), str(corrupt(jpg, keep=0.5))


# --- matched (MatchGAN's labelled + unlabelled split)
@fault("matched/batch-not-divisible", ValueError, "must be divisible by")
def _(t):
    return (
        labelled("folder", folder(t), batch_composition="matched", batch_size=6),
        "data.init_args.classes_per_batch",
    )


@fault("matched/too-few-labelled-classes", ValueError, "needs at least that many labelled")
def _(t):
    return (
        labelled("folder", folder(t), batch_composition="matched", classes_per_batch=4),
        "data.init_args.classes_per_batch=4",
    )


@fault("matched/labelled-list-unknown-item", AnnotationError, "line 3: 'train/bird/9.png' is not")
def _(t):
    folder(t / "data" / "train")
    folder(t / "data" / "val")
    lines = b"# header\r\ntrain/bird/0.png\r\ntrain/bird/9.png\r\n"
    (t / "list.txt").write_bytes(codecs.BOM_UTF8 + lines)
    return labelled("folder", t / "data", labelled_list=str(t / "list.txt")), str(t / "list.txt")


# --- DomainSplitDataModule (DiscoGAN's attribute split)
@fault("domain-split/missing-root", DatasetLayoutError, "does not exist; expected CelebA")
def _(t):
    return lambda: DomainSplitDataModule(str(t / "no"), **SMALL).setup("fit"), str(t / "no")


@fault("domain-split/attribute-leaves-domain-empty", DatasetLayoutError, "domain B would be empty")
def _(t):
    celeba(t)
    return (
        lambda: DomainSplitDataModule(str(t), attribute="Young", **SMALL).setup("fit"),
        "'Young'",
    )


# --- segmentation (BDL: GTA5, SYNTHIA, Cityscapes)
@fault("segmentation/gta5-missing-root", DatasetLayoutError, "does not exist; expected GTA5")
def _(t):
    return segmentation("gta5", t / "no", "cityscapes", cityscapes(t / "c")), str(t / "no")


@fault("segmentation/gta5-no-images", DatasetLayoutError, "contains no images")
def _(t):
    (t / "g" / "images").mkdir(parents=True)
    (t / "g" / "images" / "._00000.png").write_bytes(APPLEDOUBLE)
    return segmentation("gta5", t / "g", "cityscapes", cityscapes(t / "c")), str(t / "g")


@fault("segmentation/gta5-rgb-label", ImageReadError, "mode 'RGB'; expected a single-channel")
def _(t):
    g = gta5(t / "g")
    label = png(g / "labels" / "00002.png", pattern(0, 8, 12))
    return segmentation("gta5", g, "cityscapes", cityscapes(t / "c")), str(label)


@fault("segmentation/gta5-16-bit-index-above-255", ImageReadError, "holds index 300")
def _(t):
    g = gta5(t / "g", label=np.full((8, 12), 300, np.uint16), mode="I;16")
    return segmentation("gta5", g, "cityscapes", cityscapes(t / "c")), str(
        g / "labels" / "00000.png"
    )


@fault("segmentation/gta5-label-of-other-size", LabelError, "is 4x4 but image .* is 12x8")
def _(t):
    g = gta5(t / "g")
    label = png(g / "labels" / "00001.png", np.zeros((4, 4), np.uint8))
    return segmentation("gta5", g, "cityscapes", cityscapes(t / "c")), str(label)


@fault("segmentation/gta5-unknown-label-id", LabelError, r"ids \[40\] that GTA5")
def _(t):
    g = gta5(t / "g", label=np.full((8, 12), 40, np.uint8))
    return segmentation("gta5", g, "cityscapes", cityscapes(t / "c")), str(
        g / "labels" / "00000.png"
    )


@fault("segmentation/gta5-missing-label", DatasetLayoutError, "label file.* missing")
def _(t):
    g = gta5(t / "g")
    (g / "labels" / "00002.png").unlink()
    return segmentation("gta5", g, "cityscapes", cityscapes(t / "c")), str(
        g / "labels" / "00002.png"
    )


@fault("segmentation/cityscapes-truncated-target", ImageReadError, "cannot read image")
def _(t):
    c = cityscapes(t / "c")
    image = c / "leftImg8bit" / "train" / "aachen" / "aachen_000000_000019_leftImg8bit.png"
    return segmentation("gta5", gta5(t / "g"), "cityscapes", c), str(corrupt(image, keep=0.7))


@fault("segmentation/cityscapes-no-val", DatasetLayoutError, "leftImg8bit/val.* does not exist")
def _(t):
    c = cityscapes(t / "c")
    for p in sorted((c / "leftImg8bit" / "val").rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    (c / "leftImg8bit" / "val").rmdir()
    return segmentation("gta5", gta5(t / "g"), "cityscapes", c), str(c / "leftImg8bit" / "val")


@fault("segmentation/synthia-missing-root", DatasetLayoutError, "does not exist; expected SYNTHIA")
def _(t):
    return segmentation("synthia", t / "s", "cityscapes", cityscapes(t / "c")), str(t / "s")


@fault("segmentation/cityscapes-unknown-val-id", LabelError, r"ids \[50\] that Cityscapes")
def _(t):
    c = cityscapes(t / "c")
    label = c / "gtFine" / "val" / "aachen" / "aachen_000000_000019_gtFine_labelIds.png"
    png(label, np.full((16, 16), 50, np.uint8))
    return segmentation("gta5", gta5(t / "g"), "cityscapes", c), str(label)


@fault("segmentation/synthia-truncated-label", ImageReadError, "cannot read image")
def _(t):
    s = t / "s"
    png(s / "RGB" / "0000000.png", pattern(0, 8, 8))
    (s / "GT" / "LABELS").mkdir(parents=True)
    ids = np.zeros((8, 8, 3), np.uint16)
    ids[..., 2] = 3  # road in the red channel (OpenCV's BGR index 2)
    cv2.imwrite(str(s / "GT" / "LABELS" / "0000000.png"), ids)
    label = corrupt(s / "GT" / "LABELS" / "0000000.png", keep=0.6)
    return segmentation("synthia", s, "cityscapes", cityscapes(t / "c")), str(label)


@fault("segmentation/size-not-height-width", ValueError, r"expected \[height, width\]")
def _(t):
    return segmentation("embedded", None, "embedded", None, source_size=(16,)), (
        "data.init_args.source_size"
    )


@fault("segmentation/layout-without-dir", ValueError, "needs source_dir")
def _(t):
    return segmentation("gta5", None, "embedded", None), "data.init_args.source_dir"


# --- vectors (cGAN's multimodal arrays)
@fault("vectors/missing-root", DatasetLayoutError, "does not exist; expected <root>/train_features")
def _(t):
    return lambda: VectorDataModule(str(t / "no")).setup("fit"), str(t / "no")


@fault("vectors/row-counts-differ", ValueError, "has 12 rows but .* has 5")
def _(t):
    root = vectors(t)
    np.save(root / "train_word_vectors.npy", np.zeros((5, 4), np.float32))
    return lambda: VectorDataModule(str(root)).setup("fit"), str(root / "train_features.npy")


@fault("vectors/not-an-npy-file", ValueError, "cannot read .* as a .npy array")
def _(t):
    root = vectors(t)
    (root / "train_features.npy").write_bytes(b"feature,values\n1,2\n")
    return lambda: VectorDataModule(str(root)).setup("fit"), str(root / "train_features.npy")


@fault("vectors/nan-values", ValueError, "row 3 holds NaN or inf")
def _(t):
    root = vectors(t)
    feats = np.load(root / "train_features.npy")
    feats[3, 1] = np.nan
    np.save(root / "train_features.npy", feats)
    return lambda: VectorDataModule(str(root)).setup("fit"), str(root / "train_features.npy")


@fault("vectors/vocabulary-size-differs", ValueError, "4 words but .* has 3 rows")
def _(t):
    root = vectors(t)
    (root / "words.txt").write_text("cat\ndog\nsky\nsea\n")
    return lambda: VectorDataModule(str(root)).setup("fit"), str(root / "word_vectors.npy")


# --- instance data (IC-GAN's neighbourhoods)
@fault("instances/rows-differ", ValueError, "5 feature rows and 5 neighbourhoods for 6")
def _(t):
    def run():
        NeighbourhoodDataset(list(range(6)), torch.zeros(5, 3), torch.zeros(5, 2, dtype=torch.long))

    return run, "instance neighbourhoods"


@fault("instances/neighbour-out-of-range", ValueError, r"span 0\.\.6 but there are 6")
def _(t):
    def run():
        neighbours = torch.tensor([[0, 1]] * 5 + [[6, 2]])
        NeighbourhoodDataset(list(range(6)), torch.zeros(6, 3), neighbours)

    return run, "expected indices in 0..5"


@pytest.mark.parametrize("name", sorted(CATALOGUE))
def test_catalogue_bad_input_fails_at_setup_naming_file_or_option(name: str, tmp_path: Path):
    """Each fault raises its error from the constructor or ``setup()`` (nothing is trained or
    iterated), naming the file/folder or ``data.init_args.<option>`` and what was expected."""
    case = CATALOGUE[name]
    action, named = case.build(tmp_path)
    with pytest.raises(case.error, match=case.expected) as err:
        action()
    assert named in str(err.value), f"{named!r} not named in: {err.value}"


def test_catalogue_covers_every_data_module():
    modules = {name.split("/")[0] for name in CATALOGUE}
    assert modules == {
        "unpaired",
        "paired",
        "labelled",
        "matched",
        "domain-split",
        "segmentation",
        "vectors",
        "instances",
    }


# ------------------------------------------------------------------ what listing skips
def _litter(folder_: Path) -> None:
    """What macOS, Windows and zip tools leave in a dataset folder."""
    (folder_ / "._000.png").write_bytes(APPLEDOUBLE)
    (folder_ / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (folder_ / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (folder_ / "notes.txt").write_text("scanned 2019")
    png(folder_ / ".hidden.png", pattern(0))  # a valid image, but hidden as file browsers do
    (folder_ / "__MACOSX").mkdir()
    (folder_ / "__MACOSX" / "._001.png").write_bytes(APPLEDOUBLE)


def test_system_files_are_skipped_and_a_whole_epoch_reads(tmp_path: Path) -> None:
    """The user's failure: ``trainA/._000.png`` (an AppleDouble fork) stopped training
    mid-epoch. It and the other litter are not listed; every batch of an epoch decodes."""
    root = cyclegan(tmp_path, n=3)
    _litter(root / "trainA")
    assert [p.name for p in list_images(root / "trainA")] == ["000.png", "001.png", "002.png"]
    dm = UnpairedDataModule(str(root), **{**SMALL, "batch_size": 1})
    dm.setup("fit")
    served = [p for batch in dm.train_dataloader() for p in batch["A_path"]]
    assert sorted(Path(p).name for p in served) == ["000.png", "001.png", "002.png"]

    classes = folder(tmp_path / "classes")
    _litter(classes / "bird")
    (classes / "__MACOSX").mkdir()
    (classes / ".thumbnails").mkdir()
    dm = LabelledDataModule("folder", str(classes), image_size=16, num_workers=0)
    dm.setup("fit")
    assert dm.class_names == ["bird", "cat"]
    n_items = len(dm.data.train) + len(dm.data.val)
    assert n_items == 6


def test_cityscapes_listing_skips_appledouble_forks(tmp_path: Path) -> None:
    city = cityscapes(tmp_path)
    city_dir = city / "leftImg8bit" / "train" / "aachen"
    (city_dir / "._aachen_000000_000019_leftImg8bit.png").write_bytes(APPLEDOUBLE)
    (city / "leftImg8bit" / "train" / "__MACOSX").mkdir()
    (city / "leftImg8bit" / "train" / "__MACOSX" / "x_leftImg8bit.png").write_bytes(APPLEDOUBLE)
    files = find_cityscapes(city, "train", labelled=True)
    assert [p.name for p in files.images] == ["aachen_000000_000019_leftImg8bit.png"]


# ------------------------------------------------------------------ EXIF orientation
def _sideways_jpeg(path: Path, displayed: np.ndarray, value: int = 6) -> Path:
    """A JPEG whose stored pixels are ``displayed`` turned so that EXIF ``value`` (6: rotate
    90 degrees clockwise to view) shows ``displayed`` again, as phone cameras write."""
    inverse = {6: 1, 8: -1}[value]  # stored = displayed turned the other way
    exif = Image.Exif()
    exif[0x0112] = value
    return png(path, np.rot90(displayed, inverse).copy(), quality=95, exif=exif)


def _corr(x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray) -> float:
    x, y = (np.asarray(v, np.float64).ravel() for v in (x, y))
    return float(np.corrcoef(x, y)[0, 1])


def test_exif_orientation_6_keeps_an_aligned_pair_aligned(tmp_path: Path) -> None:
    """The user's failure: A stored sideways with orientation 6 came out misaligned with B
    (correlation -0.02). Decoded as viewers show it, A matches B (and has B's shape)."""
    displayed = pattern(5, 48, 32)  # (H, W) = (48, 32): portrait
    for split in ("train", "test"):
        _sideways_jpeg(tmp_path / f"{split}A" / "000.jpg", displayed)
        png(tmp_path / f"{split}B" / "000.png", displayed)
    a_file = tmp_path / "trainA" / "000.jpg"
    assert Image.open(a_file).size == (48, 32)  # stored landscape
    assert read_rgb(a_file).shape == (48, 32, 3)
    assert probe_image(a_file) == (32, 48)  # header size as displayed: width 32, height 48

    dm = PairedDataModule(str(tmp_path), layout="aligned", **{**SMALL, "load_size": 32})
    dm.setup("fit")
    item = dm.train_set[0]
    assert item["A"].shape == item["B"].shape == (3, 16, 16)
    assert _corr(item["A"], item["B"]) > 0.98
    # Without the orientation the same resize leaves A unrelated to B: the check can fail.
    raw = np.asarray(Image.open(a_file).convert("RGB").resize((16, 16)))
    assert _corr(raw, np.asarray(Image.fromarray(displayed).resize((16, 16)))) < 0.6


def test_exif_orientation_of_a_pix2pix_ab_file(tmp_path: Path) -> None:
    """A side-by-side A|B file stored sideways: the halves are cut after turning it."""
    half = pattern(9, 32, 32)
    for split in ("train", "test"):
        _sideways_jpeg(tmp_path / split / "000.jpg", np.concatenate([half, half], 1), value=8)
    dm = PairedDataModule(str(tmp_path), layout="pix2pix", **SMALL)
    dm.setup("fit")
    item = dm.train_set[0]
    assert _corr(item["A"], item["B"]) > 0.98
    assert (
        _corr(item["A"].permute(1, 2, 0), np.asarray(Image.fromarray(half).resize((16, 16)))) > 0.95
    )


@pytest.mark.parametrize("value", range(1, 9))
def test_orientations_1_to_8_match_pillow_and_swap_header_sizes(tmp_path: Path, value: int):
    """Every orientation value: decoded pixels equal Pillow's exif_transpose and the numpy
    version used for OpenCV-read labels; sizes from the header swap for 5-8 only."""
    from PIL import ImageOps

    stored = pattern(value, 6, 10)
    exif = Image.Exif()
    exif[0x0112] = value
    path = png(tmp_path / "o.png", stored, exif=exif)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    np.testing.assert_array_equal(read_rgb(path), expected)
    np.testing.assert_array_equal(orient_array(stored, value), expected)
    assert probe_image(path) == ((6, 10) if value >= 5 else (10, 6))
    mask = png(tmp_path / "m.png", np.arange(60, dtype=np.uint8).reshape(6, 10), exif=exif)
    np.testing.assert_array_equal(
        read_mask(mask), orient_array(np.asarray(Image.open(mask)), value)
    )


def test_header_sizes_account_for_orientation_at_setup(tmp_path: Path) -> None:
    """A label must match its image *as displayed*: a sideways JPEG (stored 12x8, shown 8x12)
    with an 8-wide, 12-high label passes setup; a label of the stored size is refused."""
    g = gta5(tmp_path / "g")
    for i in range(3):
        (g / "images" / f"{i:05d}.png").unlink()
        _sideways_jpeg(g / "images" / f"{i:05d}.jpg", pattern(i, 12, 8))
        png(g / "labels" / f"{i:05d}.png", np.full((12, 8), 7, np.uint8))
    city = cityscapes(tmp_path / "c")
    dm = SegmentationDataModule("gta5", str(g), "cityscapes", str(city), num_workers=0)
    dm.setup("fit")
    assert dm.train_set[0]["source_mask"].shape == (32, 32)
    png(g / "labels" / "00001.png", np.full((8, 12), 7, np.uint8))
    with pytest.raises(LabelError, match=r"00001\.png' is 12x8 but image .* is 8x12"):
        SegmentationDataModule("gta5", str(g), "cityscapes", str(city), num_workers=0).setup("fit")


# ------------------------------------------------------------------ image modes
def test_image_modes_are_served_as_rgb_and_16_bit_masks_as_indices(tmp_path: Path) -> None:
    """CMYK, RGBA, grey+alpha, grey, palette and 16-bit images are served as the RGB a
    viewer shows (alpha dropped, as CycleGAN's loader does); a 16-bit one-channel mask keeps
    its class indices (not rescaled like 16-bit pixels)."""
    colour = (200, 40, 90)
    solid = np.broadcast_to(np.array(colour, np.uint8), (16, 16, 3)).copy()
    root = cyclegan(tmp_path)
    files = {
        "a_cmyk.jpg": png(root / "trainA" / "a_cmyk.jpg", solid, "CMYK", quality=98),
        "b_rgba.png": png(root / "trainA" / "b_rgba.png", solid, "RGBA"),
        "c_la.png": png(root / "trainA" / "c_la.png", solid, "LA"),
        "d_gray.png": png(root / "trainA" / "d_gray.png", solid, "L"),
        "e_palette.png": png(root / "trainA" / "e_palette.png", solid, "P"),
        "f_16bit.png": png(root / "trainA" / "f_16bit.png", np.full((16, 16), 40000, np.uint16)),
    }
    for name in ("000", "001"):
        (root / "trainA" / f"{name}.png").unlink()
    gray = round(0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2])
    want = {
        "a_cmyk.jpg": colour,
        "b_rgba.png": colour,
        "c_la.png": (gray,) * 3,
        "d_gray.png": (gray,) * 3,
        "e_palette.png": colour,
        "f_16bit.png": (40000 >> 8,) * 3,
    }
    for i, (name, _) in enumerate(sorted(files.items())):
        index = np.full((16, 16), i + 1, np.uint16)  # one-channel 16-bit class indices
        png(root / "masks" / "train" / f"{Path(name).stem}.png", index)
    dm = UnpairedDataModule(str(root), **SMALL)
    dm.setup("fit")
    for i, (name, path) in enumerate(sorted(files.items())):
        sample = dm.domains["train"][0].load(i)
        assert sample.path == str(path)
        np.testing.assert_allclose(sample.image.mean((0, 1)), want[name], atol=6, err_msg=name)
        assert sample.mask.dtype == np.uint8 and (sample.mask == i + 1).all(), name


# ------------------------------------------------------------------ text files from Windows
@pytest.mark.parametrize(
    ("encoding", "newline", "sep"),
    [("utf-8-sig", "\r\n", " "), ("utf-16", "\r\n", "\t"), ("utf-8", "\n", "  ")],
    ids=["excel-utf8-bom-crlf", "excel-unicode-text-tabs", "plain"],
)
def test_attribute_file_from_windows_tools_is_read_correctly(
    tmp_path: Path, encoding: str, newline: str, sep: str
) -> None:
    """A byte-order mark, CRLF line ends, tabs and UTF-16 (what Excel and Notepad write) give
    the same parsed names and values as the original file."""
    table = celeba(tmp_path)
    text = (tmp_path / "list_attr_celeba.txt").read_text()
    text = newline.join(line.replace(" ", sep) for line in text.splitlines()) + newline
    (tmp_path / "list_attr_celeba.txt").write_bytes(text.encode(encoding))
    partition = (tmp_path / "list_eval_partition.txt").read_text().replace("\n", newline)
    (tmp_path / "list_eval_partition.txt").write_bytes(partition.encode(encoding))
    parsed = read_attributes(tmp_path / "list_attr_celeba.txt")
    assert parsed.names == tuple(ATTRS)
    assert parsed.files[0] == "000001.jpg"
    np.testing.assert_array_equal(parsed.values, table)
    dm = LabelledDataModule("celeba", str(tmp_path), attributes=["Male", "Young"], image_size=16)
    dm.setup("fit")
    np.testing.assert_array_equal(dm.data.train.labels, table[:4, 1:])  # partition: rows 0-3
    np.testing.assert_array_equal(dm.data.test.labels, table[6:, 1:])


def test_labelled_list_and_vocabulary_with_bom_and_crlf(tmp_path: Path) -> None:
    folder(tmp_path / "data" / "train")
    folder(tmp_path / "data" / "val")
    listed = codecs.BOM_UTF8 + b"# written in Excel\r\ntrain/bird/1.png\r\ntrain/cat/0.png\r\n"
    (tmp_path / "list.txt").write_bytes(listed)
    dm = LabelledDataModule(
        "folder", str(tmp_path / "data"), labelled_list=str(tmp_path / "list.txt"), image_size=16
    )
    dm.setup("fit")
    assert [k for k, m in zip(dm.data.train.keys, dm.labelled) if m] == [
        "train/bird/1.png",
        "train/cat/0.png",
    ]

    root = vectors(tmp_path / "vec")
    (root / "words.txt").write_bytes(codecs.BOM_UTF8 + b"cat\r\ndog\r\nsky\r\n")
    dm = VectorDataModule(str(root))
    dm.setup("fit")
    assert dm.words == ["cat", "dog", "sky"]


def test_setup_check_opens_a_file_once_until_it_changes(tmp_path: Path, monkeypatch) -> None:
    """Repeated setups (fit, then test) do not re-open unchanged files; a file changed after
    its check is checked again, so a file broken later is still caught."""
    import datamodules.io as io

    paths = [png(tmp_path / f"{i}.png", pattern(i)) for i in range(3)]
    assert io.check_images(paths) == [(16, 16)] * 3
    opened: list[Path] = []
    real_probe = io.probe_image
    monkeypatch.setattr(
        io, "probe_image", lambda p, mask=False: opened.append(p) or real_probe(p, mask)
    )
    assert io.check_images(paths) == [(16, 16)] * 3
    assert opened == []
    corrupt(paths[1], keep=0.5)
    with pytest.raises(ImageReadError, match=r"1\.png"):
        io.check_images(paths)
    assert opened == [paths[1]]
