"""``gan-suite predict``: a trained checkpoint applied to a folder of images (or one image).

    gan-suite predict --ckpt_path runs/cyclegan/<id>/checkpoints/last.ckpt --input photos/ \
        [--direction AtoB|BtoA] [--size train|native|N] [--out DIR]
    gan-suite predict --ckpt_path runs/stargan/<id>/checkpoints/last.ckpt --input faces/ \
        --attributes "Black_Hair=1,Male=0"
    gan-suite predict --ckpt_path runs/icgan/<id>/checkpoints/last.ckpt --input instances/ \
        --n_samples 4
    gan-suite predict --ckpt_path runs/cgan/<id>/checkpoints/last.ckpt --labels 0,1,2

Writes ``<run>/predict-<timestamp>/`` (or ``--out``, which must not exist yet): each output as
``<input stem>.png`` (several outputs per input: ``<stem>_<column>.png``), the inputs as the
net saw them under ``inputs/``, and ``index.html`` showing file | input | outputs.
"""

from __future__ import annotations

import argparse
import re
import secrets
import sys
import time
from pathlib import Path

import torch
from torch import Tensor

from gan_suite.predict.checkpoint import LoadedRun, import_class, load_checkpoint
from gan_suite.predict.images import (
    collect_inputs,
    load_image,
    output_stems,
    save_png,
    to_model_range,
)
from gan_suite.predict.page import Row, write_index
from gan_suite.predict.tasks import DIRECTIONS, ClassSamples, Task, make_task


def size_multiple(net: torch.nn.Module) -> int:
    """What each input side must be a multiple of: 2 ** (stride-2 convolutions of ``net``)."""
    n = sum(
        1 for m in net.modules() if isinstance(m, torch.nn.Conv2d) and tuple(m.stride) == (2, 2)
    )
    return 2**n


def _generator(model, direction: str) -> torch.nn.Module | None:
    """The net that takes the input image at its own size, or None (fixed-size samplers)."""
    if direction == "segment" and hasattr(model, "M"):
        return model.M
    if hasattr(model, "G_AB"):
        return model.G_AB if direction == "AtoB" else model.G_BA
    if hasattr(model, "exclusive_index"):  # StarGAN / MatchGAN: G is fully convolutional
        return model.G
    return None


def training_geometry(run: LoadedRun, direction: str) -> tuple[tuple[int, int], float, int | None]:
    """(training (H, W), load_size / crop_size, central crop of the stored images) of the run.

    Raises:
        ValueError: neither the data arguments nor the model record a training size.
    """
    d, hp = run.data_args, run.model.hparams
    if d.get("crop_size"):
        side = int(d["crop_size"])
        return (side, side), float(d.get("load_size") or side) / side, None
    if d.get("source_size"):  # BDL: source images for F, target images for F^-1 and M
        h, w = d["target_size" if direction in ("BtoA", "segment") else "source_size"]
        return (int(h), int(w)), 1.0, None
    side = d.get("image_size") or hp.get("image_size")
    if not side:
        raise ValueError(
            "--size train: the run records no training size (no crop_size or image_size in the "
            "checkpoint's data hyperparameters or config.yaml): give --size native or --size N"
        )
    return (int(side), int(side)), 1.0, d.get("center_crop")


def _input_channels(run: LoadedRun, direction: str) -> int:
    hp = run.model.hparams
    if "in_channels" in hp and direction != "segment":
        return int(hp.in_channels if direction == "AtoB" else hp.out_channels)
    return int(hp.get("channels") or run.data_args.get("channels") or 3)


def check_size(run: LoadedRun, size: str, direction: str) -> int:
    """The side multiple the net needs for ``--size`` (1 where any size is resized anyway).

    Raises:
        ValueError: ``native`` or N for a fixed-size sampler, N not a multiple of what the
            generator accepts, or a ``size`` that is none of train, native, an integer.
    """
    if size not in ("train", "native") and not size.isdigit():
        raise ValueError(f"--size {size!r}: expected train, native or a side in pixels")
    net = _generator(run.model, direction)
    name = type(run.model).__name__
    if net is None:
        if size != "train":
            raise ValueError(
                f"--size {size}: {name} generates images of its training size only; "
                "expected --size train"
            )
        return 1
    multiple = size_multiple(net)
    if size.isdigit() and (int(size) < multiple or int(size) % multiple):
        raise ValueError(
            f"--size {size}: {name}'s generator takes sides that are multiples of {multiple} "
            f"({multiple.bit_length() - 1} stride-2 downsamplings); expected e.g. "
            f"{max(multiple, int(size) // multiple * multiple)}"
        )
    return multiple


def attach_instance_features(run: LoadedRun) -> None:
    """IC-GAN with the data's evaluator as f: rebuild the run's data module to find that
    evaluator (from the cache; trained on first use, as in training)."""
    hp = run.model.hparams
    if hp.get("feature_extractor") != "evaluator" or hp.get("evaluator_checkpoint"):
        return  # ResNet-50 weights or an evaluator checkpoint: the model loads f itself
    if run.data_class_path is None:
        raise ValueError(
            "IC-GAN's feature extractor is the data's evaluator, but the checkpoint and "
            "config.yaml do not name the data module: set model.init_args.evaluator_checkpoint"
        )
    from gan_suite.eval.features import EvaluatorFeatures
    from gan_suite.eval.judge import resolve_evaluator

    dm = import_class(run.data_class_path, "the run's data")(**run.data_args)
    dm.setup("fit")
    evaluator = resolve_evaluator(dm, None)
    if evaluator is None:
        raise ValueError(f"no evaluator for the run's data {run.data_class_path}")
    run.model.set_feature_extractor(EvaluatorFeatures(evaluator))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")


def _batches(paths: list[Path], load, batch_size: int):
    """Consecutive inputs of the same size, up to ``batch_size`` at a time (native sizes vary)."""
    batch: list[tuple[Path, Tensor]] = []
    for path in paths:
        x = load(path)
        if batch and (len(batch) == batch_size or batch[0][1].shape != x.shape):
            yield batch
            batch = []
        batch.append((path, x))
    if batch:
        yield batch


def default_out_dir(run: LoadedRun) -> Path:
    """``<run>/predict-<YYYYmmdd-HHMMSS>-<4 hex>``: a new folder every time."""
    return run.run_dir / f"predict-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


@torch.no_grad()
def predict(
    run: LoadedRun,
    task: Task,
    inputs: list[Path],
    out_dir: Path,
    size: str = "train",
    direction: str = "AtoB",
    batch_size: int = 8,
    notes: tuple[str, ...] = (),
) -> list[Row]:
    """Generate with ``task`` for every input, write the PNGs and ``index.html`` into
    ``out_dir`` (created; it must not exist). Returns the page's rows.

    Raises:
        FileExistsError: ``out_dir`` exists (nothing of an earlier prediction is overwritten).
        ImageReadError: an input cannot be decoded (the message names it).
    """
    if out_dir.exists():
        raise FileExistsError(f"--out {out_dir} already exists: give a new folder")
    model = run.model
    device = next(model.parameters()).device
    multiple = check_size(run, size, direction)
    rows: list[Row] = []
    if not task.needs_inputs:
        out_dir.mkdir(parents=True)
        assert isinstance(task, ClassSamples)
        for name, images in task.rows():
            rel = [f"{name}_{_slug(c)}.png" for c in task.columns]
            for img, r in zip(images, rel):
                save_png(img[0], out_dir / r)
            rows.append(Row(name, None, rel))
        write_index(out_dir, type(model).__name__, task.columns, rows, list(notes))
        return rows
    train_size, load_scale, crop = training_geometry(run, direction)
    channels = _input_channels(run, direction)
    unit = run.data_args.get("normalize") == "unit"
    stems = dict(zip(inputs, output_stems(inputs)))
    (out_dir / "inputs").mkdir(parents=True)

    def load(path: Path) -> Tensor:
        mode = int(size) if size.isdigit() else size
        return load_image(path, mode, train_size, multiple, load_scale, crop)

    for batch in _batches(inputs, load, batch_size):
        x = torch.stack([t for _, t in batch])  # (N, 3, H, W) in [-1, 1]
        columns = task(to_model_range(x, channels, unit).to(device))
        for i, (path, image) in enumerate(batch):
            stem = stems[path]
            save_png(image, out_dir / "inputs" / f"{stem}.png")
            rel = [f"{stem}.png"] if len(columns) == 1 else []
            rel = rel or [f"{stem}_{_slug(c)}.png" for c in task.columns]
            for col, r in zip(columns, rel):
                save_png(col[i], out_dir / r)
            rows.append(Row(path.name, f"inputs/{stem}.png", rel))
    write_index(out_dir, type(model).__name__, task.columns, rows, list(notes))
    return rows


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gan-suite predict",
        description="Translate a folder of images (or one image) with a trained checkpoint; "
        "writes the outputs under the input file names and an index.html (input | output).",
    )
    p.add_argument("--ckpt_path", required=True, help="runs/<paper>/<id>/checkpoints/last.ckpt")
    p.add_argument("--input", help="folder of images (not recursive) or one image file")
    p.add_argument(
        "--direction",
        default="AtoB",
        choices=DIRECTIONS,
        help="translators: AtoB (G_AB) or BtoA (G_BA); BDL also segment (M)",
    )
    p.add_argument(
        "--size",
        default="train",
        help="train: the training crop (default); native: the image's own size "
        "rounded to what the generator takes; N: an N x N centre crop",
    )
    p.add_argument("--out", help="output folder, must not exist (default: <run>/predict-<time>)")
    p.add_argument(
        "--attributes",
        help='StarGAN/MatchGAN targets, e.g. "Black_Hair=1,Male=0" '
        "(default: one output per attribute, each changed)",
    )
    p.add_argument(
        "--n_samples",
        type=int,
        default=4,
        help="samples per input image (IC-GAN) or per label (cGAN); default 4",
    )
    p.add_argument(
        "--labels",
        help="cGAN: class indices to sample, e.g. 0,1,2; "
        "class-conditional IC-GAN: the class of the samples",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--batch_size", type=int, default=8, help="images per forward pass")
    p.add_argument("--seed", type=int, default=0, help="noise seed of IC-GAN/cGAN samples")
    return p  # fmt: skip


def predict_main(argv: list[str] | None = None) -> int:
    """The ``gan-suite predict`` command; a bad option exits with status 2 and a message that
    names it."""
    parser = build_parser()
    args = parser.parse_args(sys.argv[2:] if argv is None else argv)
    try:
        out = run_predict(args)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        parser.error(str(err))
    print(f"[gan-suite] predictions: {out}/ (open {out / 'index.html'})")
    return 0


def run_predict(args: argparse.Namespace) -> Path:
    """:func:`predict_main` without the exit: load, check the options, generate; returns the
    output folder."""
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: CUDA is not available here; expected cpu")
    if args.batch_size < 1:
        raise ValueError(f"--batch_size {args.batch_size}: expected an integer >= 1")
    run = load_checkpoint(args.ckpt_path, args.device)
    task = make_task(run.model, args.direction, args.attributes, args.n_samples, args.labels)
    check_size(run, args.size, args.direction)
    inputs, skipped = [], []
    if not task.needs_inputs and args.input is not None:
        raise ValueError(
            f"--input: {type(run.model).__name__} generates from --labels, not from images"
        )
    if task.needs_inputs:
        if args.input is None:
            raise ValueError("--input is required: a folder of images or one image")
        inputs, skipped = collect_inputs(args.input)
        if hasattr(run.model, "set_feature_extractor"):
            attach_instance_features(run)
    out = Path(args.out) if args.out else default_out_dir(run)
    torch.manual_seed(args.seed)
    notes = [f"checkpoint: {args.ckpt_path}", f"direction: {args.direction}, size: {args.size}"]
    if skipped:
        notes.append("skipped (not images): " + ", ".join(p.name for p in skipped))
        print(f"[gan-suite] skipped {len(skipped)} non-image file(s) of {args.input}")
    predict(run, task, inputs, out, args.size, args.direction, args.batch_size, tuple(notes))
    return out
