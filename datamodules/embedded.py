"""Materialise the embedded "shapes" dataset into the real CycleGAN folder layout.

With no data path, every data module calls ``materialize_shapes()`` and then reads the result
through its ordinary code path, so the embedded data exercises exactly the code real data does.
The scenes themselves (classes, colours, attributes, the two styles) are defined in
``datamodules/shapes.py``.

Layout written into ``<root>/shapes-v<version>-s<seed>-n<n_train>-<n_test>-<size>px/``::

    trainA/000000.png ...         domain A (flat, light), train split
    trainB/000000.png ...         domain B (dark, striped); same name = same scene = true pair
    testA/  testB/                test split; ids restart at 000000, the scenes differ from
                                  train because each scene's seed is (seed, split, index)
    masks/{train,test}/<id>.png   uint8 semantic mask: 0 background, 1 + class index
    instances/{train,test}/<id>.png  uint8 instance mask: 0 background, i = i-th object
    scenes.json                   metadata (schema in README.txt); written last = complete marker
    README.txt

Concurrency: two processes (e.g. DDP ranks) may call this at once; ``publish.publish_once``
renders into a hidden temporary folder and publishes it with one atomic rename.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image

from .publish import SCENES_FILE, load_scenes, publish_once, write_scenes
from .shapes import ATTRIBUTES, CLASSES, COLOR_MAP_B, COLORS, render_scene

VERSION = 1
SPLIT_CODES = {"train": 0, "test": 1}
__all__ = ["SCENES_FILE", "dataset_name", "load_scenes", "materialize_shapes"]


def dataset_name(*, n_train: int, n_test: int, image_size: int, seed: int) -> str:
    """Folder name fingerprinting the generator version and every parameter."""
    return f"shapes-v{VERSION}-s{seed}-n{n_train}-{n_test}-{image_size}px"


def _save_png(array: Any, path: Path) -> None:
    # Low zlib effort: these files are tiny and written thousands at a time.
    Image.fromarray(array).save(path, compress_level=1)


def _render_split(directory: Path, split: str, count: int, image_size: int, seed: int) -> list:
    folders = {
        "a": directory / f"{split}A",
        "b": directory / f"{split}B",
        "semantic": directory / "masks" / split,
        "instance": directory / "instances" / split,
    }
    for folder in folders.values():
        folder.mkdir(parents=True)
    records = []
    for index in range(count):
        scene = render_scene((seed, SPLIT_CODES[split], index), image_size)
        scene_id = f"{index:06d}"
        for key, folder in folders.items():
            _save_png(getattr(scene, key), folder / f"{scene_id}.png")
        records.append(
            {
                "id": scene_id,
                "label": scene.label,
                "attributes": scene.attributes,
                "objects": scene.objects,
            }
        )
    return records


def _write_dataset(directory: Path, params: dict[str, Any]) -> None:
    """Render every split into ``directory``; ``scenes.json`` goes last as the marker."""
    size, seed = params["image_size"], params["seed"]
    splits = {
        split: _render_split(directory, split, params[f"n_{split}"], size, seed)
        for split in SPLIT_CODES
    }
    (directory / "README.txt").write_text(_readme(params))
    meta = {
        **params,
        "classes": list(CLASSES),
        "colors": list(COLORS),
        "color_map_b": COLOR_MAP_B,
        "attributes": list(ATTRIBUTES),
        "splits": splits,
    }
    write_scenes(directory, meta)


def materialize_shapes(
    root: str | Path | None = None,
    *,
    n_train: int = 1000,
    n_test: int = 200,
    image_size: int = 64,
    seed: int = 0,
) -> Path:
    """Write the shapes dataset (if not already complete) and return its directory.

    Args:
        root: Cache folder that will hold the dataset's fingerprinted subfolder;
            default ``$GAN_SUITE_CACHE`` or ``~/.cache/gan-suite``.
        n_train: Number of training scenes (each gives one A and one B image).
        n_test: Number of test scenes.
        image_size: Side of the stored square PNGs, in pixels (>= 24).
        seed: Dataset seed; scene ``i`` of split ``s`` is rendered from ``(seed, s, i)``.

    Raises:
        DatasetLayoutError: The target folder exists but is not a complete dataset with these
            parameters (it was not written by this function; delete it to regenerate).
    """
    params = {
        "version": VERSION,
        "seed": seed,
        "image_size": image_size,
        "n_train": n_train,
        "n_test": n_test,
    }
    if n_train < 1 or n_test < 1:
        raise ValueError(f"n_train and n_test must be >= 1, got {n_train} and {n_test}")
    name = dataset_name(n_train=n_train, n_test=n_test, image_size=image_size, seed=seed)
    return publish_once(root, name, params, lambda folder: _write_dataset(folder, params))


def _readme(params: dict[str, Any]) -> str:
    classes = ", ".join(f"{i + 1} = {name}" for i, name in enumerate(CLASSES))
    color_map = ", ".join(f"{a} -> {b}" for a, b in COLOR_MAP_B.items())
    return f"""gan-suite embedded "shapes" dataset (generator version {params["version"]})
seed={params["seed"]} image_size={params["image_size"]}px n_train={params["n_train"]} \
n_test={params["n_test"]}

Procedural scenes: a background plus 1-3 non-overlapping shapes. The first (primary) object
is clearly the largest; its class is the scene label. Every scene is stored in two styles:
  A: flat colours ({", ".join(COLORS)}) on a pale background.
  B: the same geometry, dark noisy background, shapes re-coloured ({color_map}) and striped.

Folders (CycleGAN layout; same file name in A and B = same scene = ground-truth pair):
  trainA/ trainB/ testA/ testB/   <id>.png, RGB; test ids restart at 000000 (other scenes)
  masks/<split>/<id>.png          semantic mask, uint8: 0 = background, {classes}
  instances/<split>/<id>.png      instance mask, uint8: 0 = background, i = i-th object
                                  (1 = primary)
scenes.json:
  version, seed, image_size, n_train, n_test, classes, colors, color_map_b, attributes,
  splits: {{"train": [...], "test": [...]}}, one record per scene:
    {{"id": "000000", "label": <class index of the primary>,
      "attributes": {{<name>: 0/1}}, "objects": [{{"class": <index>, "color": <A colour>,
      "bbox": [x0, y0, x1, y1]}}, ...]}}   (bbox in pixels, x1/y1 exclusive, primary first)
Attributes: {", ".join(ATTRIBUTES)}
  red/green/blue/yellow = primary colour (one-hot); large = big primary; multiple_objects =
  more than one object; left = primary centre in the left half; warm_background = cream
  (A) / dark brown (B) background instead of grey-blue (A) / navy (B).
"""
