"""The embedded datasets by name: what a data module materialises when ``data_dir`` is unset.

``embedded`` options of every data module are ``{"dataset": <name>, **options of that
dataset's materialiser}``; without ``dataset`` it is the procedural ``shapes`` data.

- ``shapes``: procedural scenes in two styles, with classes, masks and attributes
  (``materialize_shapes``: root, n_train, n_test, image_size, seed);
- ``digits``: MNIST -> UCI real digits with classes and stroke masks
  (``materialize_digits``: root, image_size, test_fraction, seed);
- ``textures``: two real CC0 textures (``materialize_textures``: root, textures, crop,
  image_size, n_train, n_test, seed);
- ``faces``: LFW faces vs non-faces (``materialize_faces``: root, image_size, test_fraction, seed).

The real ones read images shipped in package wheels (the ``data`` extra, see ``wheel_data``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .embedded import materialize_shapes
from .wheel_data import materialize_digits, materialize_faces, materialize_textures

EMBEDDED: dict[str, Callable[..., Path]] = {
    "shapes": materialize_shapes,
    "digits": materialize_digits,
    "textures": materialize_textures,
    "faces": materialize_faces,
}
DEFAULT_DATASET = "shapes"


def embedded_dataset(options: dict[str, Any] | None) -> str:
    """The dataset name of ``embedded`` options (``shapes`` when unnamed)."""
    return str((options or {}).get("dataset") or DEFAULT_DATASET)


def check_embedded(options: dict[str, Any] | None, field: str = "embedded") -> dict[str, Any]:
    """Validate ``embedded`` options; return them as a plain dict (``dataset`` kept).

    Raises:
        ValueError: An unknown dataset, or an option its materialiser does not take; the
            message names ``field`` and lists what is accepted.
    """
    options = dict(options or {})
    name = embedded_dataset(options)
    if name not in EMBEDDED:
        raise ValueError(
            f"{field}.dataset: unknown embedded dataset {name!r}; expected one of "
            f"{sorted(EMBEDDED)}"
        )
    accepted = set(inspect.signature(EMBEDDED[name]).parameters)
    unknown = set(options) - accepted - {"dataset"}
    if unknown:
        raise ValueError(
            f"{field}: unknown keys {sorted(unknown)} for the embedded {name!r} dataset; "
            f"expected some of {sorted(accepted | {'dataset'})}"
        )
    return options


def materialize_embedded(options: dict[str, Any] | None = None) -> Path:
    """Materialise the embedded dataset that ``options`` name (once) and return its folder.

    Raises:
        ValueError: As :func:`check_embedded`.
        MissingExtraError: A real dataset's package (the ``data`` extra) is missing.
    """
    options = check_embedded(options)
    name = embedded_dataset(options)
    options.pop("dataset", None)
    return EMBEDDED[name](**options)
