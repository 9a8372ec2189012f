"""The embedded two-style shapes dataset: rendering, on-disk layout, caching, concurrency."""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datamodules import (
    ATTRIBUTES,
    CLASSES,
    DatasetLayoutError,
    load_scenes,
    materialize_shapes,
    render_scene,
)
from datamodules import embedded as embedded_module
from datamodules.shapes import BACKGROUND_A, COLOR_MAP_B, COLORS, PALETTE_A, PALETTE_B

SMALL = {"n_train": 6, "n_test": 3, "image_size": 32}


def test_render_is_deterministic_per_seed() -> None:
    first, again, other = render_scene(7), render_scene(7), render_scene(8)
    for key in ("a", "b", "semantic", "instance"):
        np.testing.assert_array_equal(getattr(first, key), getattr(again, key))
    assert first.objects == again.objects and first.attributes == again.attributes
    assert not np.array_equal(first.a, other.a)


@pytest.mark.parametrize("size", [24, 32, 64])
@pytest.mark.parametrize("seed", range(10))
def test_masks_match_objects_and_primary_is_largest(seed: int, size: int) -> None:
    scene = render_scene(seed, size)
    assert scene.a.shape == scene.b.shape == (size, size, 3) and scene.a.dtype == np.uint8
    np.testing.assert_array_equal(scene.semantic > 0, scene.instance > 0)
    assert 1 <= len(scene.objects) <= 3
    areas = []
    for i, obj in enumerate(scene.objects, start=1):
        region = scene.instance == i
        assert set(np.unique(scene.semantic[region])) == {obj["class"] + 1}
        ys, xs = np.nonzero(region)
        assert obj["bbox"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        areas.append(region.sum())
    assert scene.objects[0]["class"] == scene.label
    assert (scene.semantic == scene.label + 1).any()
    assert all(areas[0] > 2 * area for area in areas[1:])


@pytest.mark.parametrize("seed", range(12))
def test_attributes_describe_the_scene(seed: int) -> None:
    scene = render_scene(seed, 64)
    assert list(scene.attributes) == list(ATTRIBUTES)
    assert sum(scene.attributes[c] for c in COLORS) == 1
    assert scene.attributes[scene.objects[0]["color"]] == 1
    assert scene.attributes["multiple_objects"] == int(len(scene.objects) > 1)
    x0, _, x1, _ = scene.objects[0]["bbox"]
    assert scene.attributes["left"] == int((x0 + x1) / 2 < 32)
    # warm_background is visible in A: red channel above blue.
    background = scene.a[scene.instance == 0].astype(int).mean(0)
    assert scene.attributes["warm_background"] == int(background[0] > background[2])


def test_styles_differ_but_share_geometry() -> None:
    for seed in range(8):
        scene = render_scene(seed, 64)
        bg = scene.instance == 0
        assert scene.a[bg].mean() > 200, "domain A background must be light"
        assert scene.b[bg].mean() < 70, "domain B background must be dark"
        primary = scene.instance == 1
        color = scene.objects[0]["color"]
        # A: flat palette colour; B: the mapped colour (striped, so compare the brightest half).
        assert (scene.a[primary] == PALETTE_A[color]).all()
        b_pixels = scene.b[primary].astype(float)
        bright = b_pixels[b_pixels.sum(1) >= np.median(b_pixels.sum(1))].mean(0)
        assert np.abs(bright - PALETTE_B[COLOR_MAP_B[color]]).max() < 30
        assert scene.a[bg][0].tolist() in [list(c) for c in BACKGROUND_A.values()]


def test_image_size_too_small_is_rejected() -> None:
    with pytest.raises(ValueError, match="image_size"):
        render_scene(0, 20)


def test_materialize_layout_and_schema(tmp_path: Path) -> None:
    root = materialize_shapes(tmp_path, seed=3, **SMALL)
    assert root.parent == tmp_path and root.name == "shapes-v1-s3-n6-3-32px"
    for folder, count in [
        ("trainA", 6),
        ("trainB", 6),
        ("testA", 3),
        ("testB", 3),
        ("masks/train", 6),
        ("masks/test", 3),
        ("instances/train", 6),
        ("instances/test", 3),
    ]:
        names = sorted(p.name for p in (root / folder).iterdir())
        assert names == [f"{i:06d}.png" for i in range(count)], folder
    assert "trainA" in (root / "README.txt").read_text()

    meta = load_scenes(root)
    assert meta["version"] == 1 and meta["seed"] == 3 and meta["image_size"] == 32
    assert meta["classes"] == list(CLASSES) and meta["attributes"] == list(ATTRIBUTES)
    record = meta["splits"]["test"][2]
    assert record["id"] == "000002"
    assert set(record) == {"id", "label", "attributes", "objects"}
    assert set(record["objects"][0]) == {"class", "color", "bbox"}

    # Files on disk are exactly the pure render of (seed, split, index).
    scene = render_scene((3, 1, 2), 32)
    np.testing.assert_array_equal(np.asarray(Image.open(root / "testB/000002.png")), scene.b)
    np.testing.assert_array_equal(
        np.asarray(Image.open(root / "masks/test/000002.png")), scene.semantic
    )
    np.testing.assert_array_equal(
        np.asarray(Image.open(root / "instances/test/000002.png")), scene.instance
    )
    assert record["label"] == scene.label and record["objects"] == json.loads(
        json.dumps(scene.objects)
    )


def test_materialize_is_deterministic_and_cached(tmp_path: Path) -> None:
    one = materialize_shapes(tmp_path / "x", seed=1, **SMALL)
    two = materialize_shapes(tmp_path / "y", seed=1, **SMALL)
    other = materialize_shapes(tmp_path / "z", seed=2, **SMALL)
    for name in ("trainA/000004.png", "testB/000001.png", "scenes.json"):
        assert (one / name).read_bytes() == (two / name).read_bytes()
    assert (one / "trainA/000004.png").read_bytes() != (other / "trainA/000004.png").read_bytes()

    stamps = {p: p.stat().st_mtime_ns for p in one.rglob("*")}
    assert materialize_shapes(tmp_path / "x", seed=1, **SMALL) == one
    assert {p: p.stat().st_mtime_ns for p in one.rglob("*")} == stamps


def test_default_root_comes_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GAN_SUITE_CACHE", str(tmp_path / "cache"))
    assert materialize_shapes(**SMALL).parent == tmp_path / "cache"


def _materialize_in_child(root: str) -> None:
    materialize_shapes(root, **SMALL)


def test_concurrent_materialization_gives_one_complete_dataset(tmp_path: Path) -> None:
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_materialize_in_child, args=(str(tmp_path),)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert [p.name for p in tmp_path.iterdir()] == ["shapes-v1-s0-n6-3-32px"], "temp dirs left"
    root = materialize_shapes(tmp_path, **SMALL)
    assert len(load_scenes(root)["splits"]["train"]) == 6
    assert len(list((root / "trainB").iterdir())) == 6


def test_losing_the_race_discards_the_temporary_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = embedded_module._write_dataset
    calls = []

    def write_then_let_a_rival_publish(directory: Path, params: dict) -> None:
        calls.append(directory)
        real_write(directory, params)
        if len(calls) == 1:  # the rival publishes first, while we are still writing
            materialize_shapes(tmp_path, **SMALL)

    monkeypatch.setattr(embedded_module, "_write_dataset", write_then_let_a_rival_publish)
    root = materialize_shapes(tmp_path, **SMALL)
    assert len(calls) == 2
    assert [p.name for p in tmp_path.iterdir()] == [root.name]
    assert len(load_scenes(root)["splits"]["test"]) == 3


def test_foreign_folder_at_target_is_not_overwritten(tmp_path: Path) -> None:
    target = tmp_path / "shapes-v1-s0-n6-3-32px"
    (target / "trainA").mkdir(parents=True)
    with pytest.raises(DatasetLayoutError, match="shapes-v1-s0-n6-3-32px"):
        materialize_shapes(tmp_path, **SMALL)
    assert (target / "trainA").is_dir()
