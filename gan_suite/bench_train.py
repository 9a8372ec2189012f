"""``make bench`` section ``train``: every paper's training iteration under a real Lightning
``Trainer`` (manual optimization, the YAML's training callbacks), at a fixed image size and
batch size, on this machine.

Each (paper, size, batch) runs in a fresh process, so its peak RSS (``ru_maxrss``) is that
run's alone. Columns: seconds per iteration (every optimizer step of one batch; median of the
timed batches, each timed from ``on_train_batch_start`` to ``on_train_batch_end``, so data
loading is excluded), images/s, peak RSS, FLOPs of one iteration (``FlopCounterMode``: convs and
matmuls of forward + backward) and the achieved GFLOP/s against the machine's fp32 matmul.

    python -m gan_suite.bench train --papers cyclegan stargan --sizes 128 --batch-sizes 1 4
    python -m gan_suite.bench memory --papers cyclegan --memory-gib 4
"""

from __future__ import annotations

import argparse
import importlib
import multiprocessing
import os
import queue as queue_module
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
PAPERS = ("cyclegan", "opgan", "discogan", "stargan", "matchgan", "cgan", "icgan", "bdl-F", "bdl-M")
# BDL trains F and M in separate stages: one row each (bdl-F: F's CycleGAN + perceptual step
# through M; bdl-M: M's step + the output-space D's, stage M of round 1), with the paper's nets
BDL_STAGES = {"bdl-F": "F", "bdl-M": "M"}
# the YAMLs' callbacks that only observe or write files: left out of a timed fit
OBSERVERS = {
    "gan_suite.callbacks.Evaluation",
    "gan_suite.callbacks.SampleGrid",
    "gan_suite.callbacks.RunSafety",
    "lightning.pytorch.callbacks.ModelCheckpoint",
    "gan_suite.callbacks.BDLSchedule",  # the bench enters one stage itself (EnterStage)
}
# sizes a paper's nets are built for, whatever --sizes asks (DiscoGAN's encoder-decoders are
# fixed at 64 px; cGAN's MLPs take 28 x 28 MNIST vectors)
FIXED_SIZE = {"discogan": 64, "cgan": 28}
# the smallest batch a paper's step takes (MatchGAN's triplets: 2 label groups of 3 images);
# a smaller --batch-sizes value runs at this one, and the table says so
MIN_BATCH = {"matchgan": 6}
# FlopCounterMode cannot follow autograd.grad(create_graph=True) (WGAN-GP's gradient penalty)
NO_FLOP_COUNT = {"stargan", "matchgan"}


def machine_matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """The machine's fp32 matmul throughput, GFLOP/s: median over ``repeats`` (n x n) @ (n x n)
    products (2 n^3 FLOPs each), after one warm-up, with torch's current thread count."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times) / 1e9


def paper_overrides(paper: str, size: int, batch: int, n_train: int) -> tuple[dict, dict]:
    """(model, data) ``init_args`` overrides of ``experiments/<paper>.yaml`` for one timed fit:
    the paper's nets at ``size`` px, batch ``batch``, an embedded set of ``n_train`` images,
    no loader workers (the timer excludes loading anyway).

    Raises:
        ValueError: ``paper`` has no bench setup.
    """
    embedded = {"n_train": n_train, "n_test": 2, "image_size": size}
    if paper in ("cyclegan", "opgan", "discogan"):
        data = {"load_size": size, "crop_size": size, "flip": False, "embedded": embedded}
        return {}, {**data, "batch_size": batch, "num_workers": 0}
    if paper in ("stargan", "matchgan"):
        data = {"image_size": size, "batch_size": batch, "num_workers": 0, "embedded": embedded}
        if paper == "matchgan":  # matched batches: 2 label groups x batch / 2 images
            data = {**data, "classes_per_batch": 2, "labelled_fraction": 0.5}
            return {"image_size": size, "classes_per_batch": 2}, data
        return {"image_size": size}, data
    if paper == "icgan":
        data = {"image_size": size, "batch_size": batch, "num_workers": 0, "embedded": embedded}
        return {"image_size": size, "k": 3}, data
    if paper == "cgan":
        return {}, {"batch_size": batch, "num_workers": 0}
    if paper in BDL_STAGES:  # the embedded shapes: 5 classes (background + 4 shapes)
        data = {
            "source": "embedded", "target": "embedded", "source_size": [size, size],
            "target_size": [size, size], "batch_size": batch, "num_workers": 0,
            "embedded": {"dataset": "shapes", **embedded},
        }  # fmt: skip
        return {"n_classes": 5}, data
    raise ValueError(f"--papers: no bench setup for {paper!r}; expected any of {PAPERS}")


def _instantiate(spec: dict, overrides: dict | None = None) -> Any:
    module, _, name = spec["class_path"].rpartition(".")
    kwargs = {**(spec.get("init_args") or {}), **(overrides or {})}
    return getattr(importlib.import_module(module), name)(**kwargs)


def build_paper(paper: str, size: int, batch: int, n_train: int):
    """(model, data module, training callbacks) of ``experiments/<paper>.yaml`` at the bench
    size, as the YAML builds them (observers left out)."""
    import yaml

    config = yaml.safe_load((EXPERIMENTS / f"{paper.split('-')[0]}.yaml").read_text())
    model_over, data_over = paper_overrides(paper, size, batch, n_train)
    model = _instantiate(config["model"], model_over)
    if paper == "icgan":  # a fixed random projection for f (the Evaluator would train first)
        dim = model.hparams.feature_dim
        g = torch.Generator().manual_seed(0)
        proj = torch.nn.Linear(48, dim)
        proj.weight.data = torch.randn(dim, 48, generator=g) / 48**0.5
        model.set_feature_extractor(
            torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(), proj)
        )
    data = _instantiate(config["data"], data_over)
    callbacks = [
        _instantiate(spec if isinstance(spec, dict) else {"class_path": spec})
        for spec in (config.get("trainer") or {}).get("callbacks") or []
        if (spec["class_path"] if isinstance(spec, dict) else spec) not in OBSERVERS
    ]
    if paper in BDL_STAGES:
        callbacks.append(EnterStage(BDL_STAGES[paper]))
    return model, data, callbacks


class EnterStage(L.Callback):
    """Puts BDL in one stage of its loop for the whole (timed) fit, as BDLSchedule would."""

    def __init__(self, stage: str) -> None:
        self.stage = stage

    def on_fit_start(self, trainer, pl_module) -> None:
        pl_module.enter_stage(self.stage, k=1, n=0, epochs=1)


class StepTimer(L.Callback):
    """Lightning callback: wall seconds of each training batch (hooks start -> end). Batch 0
    runs under ``FlopCounterMode`` (its FLOPs are kept, its time is not), the next ``warmup``
    batches are untimed warm-ups."""

    def __init__(self, warmup: int = 1, count_flops: bool = True) -> None:
        self.warmup, self.count_flops = warmup, count_flops
        self.seconds: list[float] = []
        self.flops: int | None = None
        self._mode = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if batch_idx == 0 and self.count_flops:
            from torch.utils.flop_counter import FlopCounterMode

            self._mode = FlopCounterMode(display=False)
            self._mode.__enter__()
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        elapsed = time.perf_counter() - self._start
        if self._mode is not None:
            self._mode.__exit__(None, None, None)
            self.flops, self._mode = self._mode.get_total_flops(), None
            return
        if batch_idx >= int(self.count_flops) + self.warmup:
            self.seconds.append(elapsed)


def _rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_fit(paper: str, size: int, batch: int, repeats: int, warmup: int, flops: bool) -> dict:
    """One timed fit of ``paper`` (meant for a fresh process: see :func:`run_in_child`).

    Returns a dict: ``seconds`` (list, one per timed iteration), ``flops`` (one iteration, or
    None), ``peak_mib`` (peak RSS of the process), ``base_mib`` (RSS before the model was
    built), ``size`` (the size actually used)."""
    import lightning as L

    size = FIXED_SIZE.get(paper, size)
    base = _rss_mib()
    batches = int(flops) + warmup + repeats
    timer = StepTimer(warmup, flops)
    with tempfile.TemporaryDirectory() as tmp:
        cwd = os.getcwd()
        os.chdir(tmp)  # the embedded data's cache and any file a callback writes stay here
        try:
            L.seed_everything(0, verbose=False)
            model, data, callbacks = build_paper(paper, size, batch, n_train=batches * batch + 16)
            trainer = L.Trainer(
                accelerator="cpu",
                devices=1,
                max_epochs=1,
                limit_train_batches=batches,
                limit_val_batches=0,
                num_sanity_val_steps=0,
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                callbacks=[*callbacks, timer],
                default_root_dir=tmp,
            )
            trainer.fit(model, datamodule=data)
        finally:
            os.chdir(cwd)
    return {
        "seconds": timer.seconds,
        "flops": timer.flops,
        "peak_mib": _rss_mib(),
        "base_mib": base,
        "size": size,
    }


def _child(queue, fn_name: str, kwargs: dict) -> None:
    try:
        queue.put(globals()[fn_name](**kwargs))
    except Exception as err:  # reported in the table, the other rows still run
        queue.put({"error": f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"})


def run_in_child(fn_name: str, **kwargs) -> dict:
    """``fn_name(**kwargs)`` of this module in a fresh spawned process: its peak RSS is that
    run's alone. A failure comes back as ``{"error": message}``."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue, fn_name, kwargs))
    proc.start()
    while True:  # a child that dies without a word (killed, out of memory) must not hang us
        try:
            result = queue.get(timeout=1.0)
            break
        except queue_module.Empty:
            if not proc.is_alive():
                result = {"error": f"the child process died (exit code {proc.exitcode})"}
                break
    proc.join()
    return result


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table (pipes), columns padded to their widest cell."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [header, ["-" * w for w in widths], *rows]
    return "\n".join("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in lines)


TRAIN_HEADER = [
    "paper", "px", "batch", "s/iter", "img/s", "peak RSS MiB", "GFLOP/iter", "GFLOP/s",
    "% of matmul",
]  # fmt: skip


def bench_train(args: argparse.Namespace) -> None:
    """Every paper's training iteration under a real Trainer: the table of the module doc."""
    matmul = machine_matmul_gflops()
    print(
        f"== train: one iteration (all optimizer steps of one batch) under lightning.Trainer; "
        f"median of {args.repeats} timed iterations; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; fp32 matmul {matmul:.1f} GFLOP/s (2048^2)"
    )
    rows = []
    for paper in args.papers:
        sizes = [FIXED_SIZE[paper]] if paper in FIXED_SIZE else args.sizes
        batches = sorted({max(b, MIN_BATCH.get(paper, 1)) for b in args.batch_sizes})
        for size in sizes:
            for batch in batches:
                r = run_in_child(
                    "run_fit", paper=paper, size=size, batch=batch, repeats=args.repeats,
                    warmup=1, flops=paper not in NO_FLOP_COUNT,
                )  # fmt: skip
                if "error" in r:
                    rows.append([paper, str(size), str(batch), r["error"], *[""] * 5])
                    print(f"   {paper} {size}px batch {batch}: {r['error']}", flush=True)
                    continue
                sec = statistics.median(r["seconds"])
                gflop = (r["flops"] or 0) / 1e9
                flop_cells = (
                    [f"{gflop:.1f}", f"{gflop / sec:.1f}", f"{100 * gflop / sec / matmul:.0f}%"]
                    if r["flops"]
                    else ["n/a (WGAN-GP)"] + [""] * 2
                )
                rows.append(
                    [paper, str(r["size"]), str(batch), f"{sec:.3f}", f"{batch / sec:.2f}",
                     f"{r['peak_mib']:.0f}", *flop_cells]
                )  # fmt: skip
                print(f"   done {paper} {r['size']}px batch {batch}: {sec:.3f} s", flush=True)
    print(format_table(TRAIN_HEADER, rows))


def bench_memory(args: argparse.Namespace) -> None:
    """The largest image size (of ``--memory-sizes``) whose training iteration keeps the
    process's peak RSS under ``--memory-gib``, per paper, at the first ``--batch-sizes``."""
    budget_mib = args.memory_gib * 1024
    print(
        f"== memory: peak RSS of one training iteration (fresh process each, batch "
        f"{args.batch_sizes[0]}); budget {args.memory_gib:g} GiB"
    )
    rows = []
    for paper in args.papers:
        if paper in FIXED_SIZE:
            continue  # one size only: the train table has its peak RSS
        batch = max(args.batch_sizes[0], MIN_BATCH.get(paper, 1))
        largest = None
        for size in sorted(args.memory_sizes):
            r = run_in_child(
                "run_fit", paper=paper, size=size, batch=batch, repeats=1, warmup=0, flops=False
            )
            peak = "error: " + r["error"] if "error" in r else f"{r['peak_mib']:.0f}"
            rows.append([paper, str(size), str(batch), peak])
            if "error" in r or r["peak_mib"] > budget_mib:
                break  # larger sizes need more
            largest = size
        print(f"   {paper}: largest size under {args.memory_gib:g} GiB: {largest or 'none'} px")
    print(format_table(["paper", "px", "batch", "peak RSS MiB"], rows))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the ``train``, ``memory`` and ``cyclegan`` sections."""
    group = parser.add_argument_group("train / memory / cyclegan")
    group.add_argument("--papers", nargs="+", default=list(PAPERS), choices=PAPERS)
    group.add_argument("--sizes", nargs="+", type=int, default=[128], help="image side, px")
    group.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 4])
    group.add_argument(
        "--repeats", type=int, default=5, help="timed iterations (median kept); fid: rounds"
    )
    group.add_argument("--memory-gib", type=float, default=4.0, help="memory section budget")
    group.add_argument("--memory-sizes", nargs="+", type=int, default=[128, 256, 512])
