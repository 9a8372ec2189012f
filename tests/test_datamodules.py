"""Unpaired and paired data modules on generated fixtures: shapes, sampling, alignment, errors."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from conftest_data import (
    make_aligned_tree,
    make_cyclegan_tree,
    make_pix2pix_tree,
    noise,
    save,
    solid,
)
from PIL import Image

from datamodules import (
    DatasetLayoutError,
    ImageReadError,
    PairedDataModule,
    UnpairedDataModule,
    list_images,
    read_rgb,
)

EMBEDDED = {"n_train": 8, "n_test": 4, "image_size": 32}
# The CycleGAN fixture has 4 testA but 3 testB images on purpose; its warning is tested once.
UNEQUAL_TEST = pytest.mark.filterwarnings("ignore:val. 4 A images but 3 B images")


def unpaired(root: Path | None, **kwargs) -> UnpairedDataModule:
    defaults = {"load_size": 36, "crop_size": 32, "num_workers": 0, "batch_size": 2}
    return UnpairedDataModule(str(root) if root else None, **{**defaults, **kwargs})


def paired(root: Path | None, **kwargs) -> PairedDataModule:
    defaults = {"load_size": 36, "crop_size": 32, "num_workers": 0, "batch_size": 2}
    return PairedDataModule(str(root) if root else None, **{**defaults, **kwargs})


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [-1, 1] -> (H, W, 3) uint8."""
    return ((image.permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)


# ------------------------------------------------------------------ reading files
def test_read_rgb_converts_every_mode(tmp_path: Path) -> None:
    rgb = solid((10, 120, 230), (6, 8))
    gray = read_rgb(save(tmp_path / "g.png", rgb, "L"))
    assert gray.shape == (6, 8, 3) and (gray[..., 0] == gray[..., 2]).all()
    np.testing.assert_array_equal(read_rgb(save(tmp_path / "a.png", rgb, "RGBA")), rgb)
    palette = read_rgb(save(tmp_path / "p.png", rgb, "P"))
    np.testing.assert_array_equal(
        palette, np.asarray(Image.open(tmp_path / "p.png").convert("RGB"))
    )
    deep = np.full((6, 8), 40000, np.uint16)
    Image.fromarray(deep).save(tmp_path / "d16.png")
    assert (read_rgb(tmp_path / "d16.png") == 40000 >> 8).all()


def test_list_images_sorted_and_filtered(tmp_path: Path) -> None:
    for name in ("b.PNG", "a.jpeg", "c.TIFF", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in list_images(tmp_path)] == ["a.jpeg", "b.PNG", "c.TIFF"]


# ------------------------------------------------------------------ unpaired
@UNEQUAL_TEST
def test_unpaired_batches_have_shape_range_and_keys(tmp_path: Path) -> None:
    dm = unpaired(make_cyclegan_tree(tmp_path))
    dm.setup("fit")
    assert len(dm.train_set) == 5  # max(len(A), len(B))
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"A", "B", "A_path", "B_path"}
    for side in "AB":
        assert batch[side].shape == (2, 3, 32, 32) and batch[side].dtype == torch.float32
        assert batch[side].min() >= -1 and batch[side].max() <= 1
    # Every A image (grayscale, RGBA, JPEG included) comes out as 3 channels.
    for i in range(5):
        assert dm.train_set[i]["A"].shape == (3, 32, 32)
    gray = next(i for i in range(5) if dm.train_set[i]["A_path"].endswith("a1.png"))
    image = dm.train_set[gray]["A"]
    assert torch.allclose(image[0], image[1]) and torch.allclose(image[1], image[2])


@UNEQUAL_TEST
def test_unpaired_draws_a_random_b_per_access(tmp_path: Path) -> None:
    dm = unpaired(make_cyclegan_tree(tmp_path))
    dm.setup("fit")
    draws = [dm.train_set[0] for _ in range(30)]
    assert {d["A_path"] for d in draws} == {str(tmp_path / "trainA" / "a0.png")}
    assert len({d["B_path"] for d in draws}) == 3

    serial = unpaired(tmp_path, serial_batches=True)
    serial.setup("fit")
    assert {serial.train_set[4]["B_path"] for _ in range(10)} == {str(tmp_path / "trainB/b1.png")}


def test_unpaired_eval_is_aligned_by_sorted_order(tmp_path: Path) -> None:
    dm = unpaired(make_cyclegan_tree(tmp_path), val_size=2)
    with pytest.warns(UserWarning, match="pairing the first 3"):
        dm.setup("fit")
        dm.setup("test")
    assert len(dm.val_set) == 2 and len(dm.test_set) == 3
    batch = next(iter(dm.test_dataloader()))
    assert [Path(p).name for p in batch["A_path"]] == ["t0.png", "t1.png"]
    assert [Path(p).name for p in batch["B_path"]] == ["u0.png", "u1.png"]
    assert len(dm.domain_dataset("test", "A")) == 4
    assert set(dm.domain_dataset("test", "B")[0]) == {"B", "B_path"}


def test_embedded_default_has_masks_labels_and_pairs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GAN_SUITE_CACHE", str(tmp_path))
    dm = unpaired(None, embedded=EMBEDDED, load_size=32, crop_size=24)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.root.parent == tmp_path
    batch = next(iter(dm.train_dataloader()))
    assert {"A_mask", "B_mask", "A_label", "B_label"} <= set(batch)
    assert batch["A_mask"].shape == (2, 24, 24) and batch["A_mask"].dtype == torch.int64
    assert batch["A_label"].dtype == torch.int64

    # Crop and flip move mask and image together: objects are exactly the non-background pixels.
    for _ in range(3):
        for i in range(len(dm.train_set)):
            item = dm.train_set[i]
            for side, dark in (("A", False), ("B", True)):
                image, mask = to_uint8(item[side]).astype(int), item[f"{side}_mask"].numpy()
                background = np.median(image[mask == 0], axis=0)
                distance = np.abs(image - background).max(-1)
                if dark:  # B is striped and noisy: compare averages instead of pixels
                    assert distance[mask > 0].mean() > 3 * distance[mask == 0].mean() + 20
                else:
                    assert (distance[mask == 0] == 0).all() and (distance[mask > 0] > 40).all()
                assert (mask == item[f"{side}_label"] + 1).any()  # the primary survives cropping

    val = next(iter(dm.val_dataloader()))
    assert [Path(p).name for p in val["A_path"]] == [Path(p).name for p in val["B_path"]]
    assert torch.equal(val["A_label"], val["B_label"]) and torch.equal(val["A_mask"], val["B_mask"])


def test_embedded_root_option_and_unknown_option(tmp_path: Path) -> None:
    dm = unpaired(None, embedded={**EMBEDDED, "root": str(tmp_path)})
    dm.setup("validate")
    assert dm.root.parent == tmp_path and len(dm.val_set) == 4
    with pytest.raises(ValueError, match="n_trian"):
        unpaired(None, embedded={"n_trian": 3})


def test_workers_do_not_repeat_each_others_randomness(tmp_path: Path) -> None:
    save(tmp_path / "trainA/only.png", noise(0, (40, 40)))
    for i in range(6):
        save(tmp_path / f"trainB/{i}.png", noise(i + 1, (40, 40)))
    for folder in ("testA", "testB"):
        save(tmp_path / folder / "0.png", noise(9))
    dm = unpaired(tmp_path, batch_size=1, num_workers=2)
    dm.setup("fit")
    loader = torch.utils.data.DataLoader(dm.train_set, batch_size=1, num_workers=2)
    items = list(loader)  # worker 0 serves items 0, 2, 4; worker 1 serves 1, 3, 5
    crops = [it["A"][0] for it in items]
    assert not all(torch.equal(crops[i], crops[i + 1]) for i in (0, 2, 4))


@pytest.mark.filterwarnings("ignore:.*treespec")  # lightning internals
def test_trainer_fit_runs_on_embedded_data(tmp_path: Path, make_trainer) -> None:
    seen: list[set] = []

    class Probe(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Conv2d(3, 3, 1)

        def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
            seen.append(set(batch))
            return (self.layer(batch["A"]) - batch["B"]).abs().mean()

        def validation_step(self, batch: dict, batch_idx: int) -> None:
            seen.append(set(batch))

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = unpaired(None, embedded={**EMBEDDED, "root": str(tmp_path)}, load_size=32, crop_size=32)
    trainer = make_trainer(
        max_epochs=1, limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=0
    )
    trainer.fit(Probe(), datamodule=dm)
    assert len(seen) == 3 and all("A_mask" in keys for keys in seen)


# ------------------------------------------------------------------ paired
def test_pix2pix_halves_and_direction(tmp_path: Path) -> None:
    root = make_pix2pix_tree(tmp_path)
    for direction, a_color in (("AtoB", [255, 0, 0]), ("BtoA", [0, 0, 255])):
        dm = paired(root, direction=direction)
        dm.setup("fit")
        item = dm.train_set[0]
        assert item["A"].shape == item["B"].shape == (3, 32, 32)
        a, b = to_uint8(item["A"]), to_uint8(item["B"])
        assert (a == a_color).all() and (b == a_color[::-1]).all()
        assert item["A_path"] == item["B_path"]
    assert len(dm.val_set) == 2  # from val/, capped by val_size=8


def test_pairs_get_the_identical_crop_and_flip(tmp_path: Path) -> None:
    dm = paired(make_pix2pix_tree(tmp_path, identical_halves=True), load_size=48, crop_size=24)
    dm.setup("fit")
    crops = set()
    for _ in range(10):
        item = dm.train_set[1]
        assert torch.equal(item["A"], item["B"])
        crops.add(item["A"].sum().item())
    assert len(crops) > 1, "augmentation should be random across accesses"


def test_aligned_folders_pair_by_name_and_unaligned_option(tmp_path: Path) -> None:
    root = make_aligned_tree(tmp_path)
    dm = paired(root, load_size=32)
    dm.setup(None)
    assert dm.layout == "auto" and len(dm.train_set) == 3 and len(dm.test_set) == 3
    item = dm.train_set[2]
    assert Path(item["A_path"]).name == Path(item["B_path"]).name == "002.png"
    np.testing.assert_array_equal(to_uint8(item["B"]), 255 - to_uint8(item["A"]))

    loose = paired(root, unaligned=True)
    loose.setup("fit")
    assert len({loose.train_set[0]["B_path"] for _ in range(30)}) == 3


def test_embedded_paired_carries_masks(tmp_path: Path) -> None:
    dm = paired(None, embedded={**EMBEDDED, "root": str(tmp_path)}, load_size=32, crop_size=24)
    dm.setup("fit")
    item = dm.train_set[3]
    assert torch.equal(item["A_mask"], item["B_mask"]) and item["A_label"] == item["B_label"]


# ------------------------------------------------------------------ bad input
def test_missing_root_names_path_and_layout(tmp_path: Path) -> None:
    with pytest.raises(DatasetLayoutError, match="trainA, trainB, testA, testB") as err:
        unpaired(tmp_path / "nowhere").setup("fit")
    assert str(tmp_path / "nowhere") in str(err.value)


def test_missing_trainb_names_the_folder(tmp_path: Path) -> None:
    make_cyclegan_tree(tmp_path)
    for f in (tmp_path / "trainB").iterdir():
        f.unlink()
    (tmp_path / "trainB").rmdir()
    with pytest.raises(DatasetLayoutError, match="does not exist") as err:
        unpaired(tmp_path).setup("fit")
    assert str(tmp_path / "trainB") in str(err.value)


def test_empty_testa_names_the_folder(tmp_path: Path) -> None:
    make_cyclegan_tree(tmp_path)
    for f in (tmp_path / "testA").iterdir():
        f.unlink()
    with pytest.raises(DatasetLayoutError, match="contains no images") as err:
        unpaired(tmp_path).setup("test")
    assert str(tmp_path / "testA") in str(err.value)


def test_unreadable_image_names_the_file(tmp_path: Path) -> None:
    make_cyclegan_tree(tmp_path)
    bad = tmp_path / "trainA" / "a0.png"
    bad.write_bytes(b"definitely not a png")
    dm = unpaired(tmp_path)
    # Found at setup (each file's header is opened), not when a batch reaches the file.
    with pytest.raises(ImageReadError, match="cannot read image") as err:
        dm.setup("fit")
    assert str(bad) in str(err.value)


def test_paired_layout_errors(tmp_path: Path) -> None:
    tmp_path.joinpath("other").mkdir()
    with pytest.raises(DatasetLayoutError, match="pix2pix layout.*aligned layout") as err:
        paired(tmp_path).setup("fit")
    assert str(tmp_path) in str(err.value)

    root = make_aligned_tree(tmp_path / "aligned")
    (root / "trainB" / "001.png").rename(root / "trainB" / "009.png")
    with pytest.raises(DatasetLayoutError, match="trainA/001.png.*trainB/002.png"):
        paired(root).setup("fit")


# ------------------------------------------------------------------ decoded-image cache
@UNEQUAL_TEST
def test_cache_images_decodes_each_file_once_and_serves_the_same_items(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import datamodules.domain as domain_module

    root = make_cyclegan_tree(tmp_path)
    reads: list[str] = []
    real_read = domain_module.read_rgb

    def counting_read(path):
        reads.append(str(path))
        return real_read(path)

    monkeypatch.setattr(domain_module, "read_rgb", counting_read)
    items = {}
    for cache in (False, True):
        dm = unpaired(root, cache_images=cache, flip=True)
        dm.setup("fit")
        reads.clear()
        torch.manual_seed(0)
        items[cache] = [dm.train_set[i % 5] for i in range(15)]  # 3 passes over trainA
        # uncached: A and B decoded for every item; cached: each file once
        assert len(reads) == (30 if not cache else len(set(reads)))
        assert len(set(reads)) <= 5 + 3
    for plain, cached in zip(items[False], items[True]):
        assert torch.equal(plain["A"], cached["A"]) and torch.equal(plain["B"], cached["B"])
    # every read is a copy: writing into one (an in-place transform) changes no later read
    domain = dm.domains["train"][0]
    first = domain.read_image(0)
    first[:] = 7
    assert not np.array_equal(domain.read_image(0), first)


@UNEQUAL_TEST
def test_cache_images_auto_follows_the_memory_limit_and_pin_memory_auto_is_off_on_cpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_trainer
) -> None:
    import datamodules.decoded as decoded

    root = make_cyclegan_tree(tmp_path)
    dm = unpaired(root)  # cache_images None: 8 small training images fit
    dm.setup("fit")
    assert all(d.cache is not None for d in dm.domains["train"])
    # 8 images of 40x48 RGB: 46,080 bytes, times 2 loader processes: over a 60,000-byte limit
    monkeypatch.setattr(decoded, "AUTO_LIMIT_BYTES", 60_000)
    dm = unpaired(root, num_workers=2)
    dm.setup("fit")
    assert all(d.cache is None for d in dm.domains["train"])
    assert unpaired(root, num_workers=1).pins_memory() is False  # no trainer: no CUDA
    dm.trainer = make_trainer()  # a CPU trainer
    assert dm.pins_memory() is False
    assert unpaired(root, pin_memory=True).pins_memory() is True
