"""``make bench`` section ``cyclegan``: the suite's CycleGAN step against a plain PyTorch loop
of the same nets, losses and optimizers (the official code's style: no Lightning), side by side
in one process, plus the speed switches (channels_last, fused Adam, bf16 autocast,
torch.compile) as ratios and a per-op-family profile.

Each suite variant is one ``lightning.Trainer`` fit (manual optimization, HistoryBuffer
callback). After every suite iteration, a callback runs one iteration of each plain-loop
variant on the same images, so every ratio compares medians of runs interleaved in time (load
from other processes on a shared machine hits both sides alike). Compile time (the first
compiled iterations) is reported on its own and excluded from step times.

    python -m gan_suite.bench cyclegan --sizes 128 --batch-sizes 1 --repeats 5
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections import defaultdict
from collections.abc import Callable

import torch
import torch.nn.functional as F

from gan_suite.bench_train import StepTimer, build_paper, format_table

# op-name fragments of each family, checked in this order (first match wins)
FAMILIES = {
    "optimizer": ("adam", "_foreach", "optimizer", "zero_grad", "lerp", "addcdiv", "addcmul"),
    "conv": ("conv",),
    "norm": ("norm",),
    "padding/copy": ("pad", "copy", "cat", "clone", "contiguous", "to_copy", "empty_like"),
    "elementwise": (
        "add", "mul", "sub", "div", "relu", "tanh", "sigmoid", "pow", "sqrt", "mse", "l1",
        "abs", "sign", "fill", "zero", "where", "threshold", "leaky", "neg", "mean", "sum",
        "ones_like", "zeros_like", "exp", "rsqrt", "sgn",
    ),
}  # fmt: skip


def op_family(name: str) -> str:
    """The family of a profiler op name (``aten::convolution_backward`` -> ``conv``)."""
    low = name.lower()
    for family, parts in FAMILIES.items():
        if any(p in low for p in parts):
            return family
    return "other"


def family_profile(fn: Callable[[], None]) -> dict[str, float]:
    """Share of self CPU time (%) per op family over one call of ``fn`` (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    totals: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        totals[op_family(event.key)] += event.self_cpu_time_total
    whole = sum(totals.values()) or 1.0
    return {k: 100 * v / whole for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}


class PlainCycleGAN:
    """CycleGAN written as the official code's bare loop: the suite's nets (ResnetGenerator,
    PatchDiscriminator, same init), LSGAN + L1 cycle + identity losses with the paper's
    weights, Adam(2e-4, (0.5, 0.999)), a 50-image pool; D frozen (``requires_grad_``) during
    G's step.

    Switches: ``channels_last`` (nets and images), ``fused`` (``Adam(fused=True)``), ``bf16``
    (``torch.autocast("cpu", torch.bfloat16)`` around the forwards), ``compiled``
    (``torch.compile`` of each net); ``ngf``, ``n_blocks``, ``ndf`` as CycleGAN's (the
    defaults are the paper's, as the YAML)."""

    def __init__(
        self,
        channels_last: bool = False,
        fused: bool = False,
        bf16: bool = False,
        compiled: bool = False,
        ngf: int = 64,
        n_blocks: int = 9,
        ndf: int = 64,
    ) -> None:
        from gan_suite.callbacks.history import ImagePool
        from gan_suite.nets import PatchDiscriminator, ResnetGenerator, init_weights

        torch.manual_seed(0)
        self.G_AB = ResnetGenerator(3, 3, ngf, n_blocks, "instance")
        self.G_BA = ResnetGenerator(3, 3, ngf, n_blocks, "instance")
        self.D_A = PatchDiscriminator(3, ndf, 3, "instance")
        self.D_B = PatchDiscriminator(3, ndf, 3, "instance")
        nets = (self.G_AB, self.G_BA, self.D_A, self.D_B)
        for net in nets:
            init_weights(net, "normal", 0.02)
            if channels_last:
                net.to(memory_format=torch.channels_last)
        params_g = [*self.G_AB.parameters(), *self.G_BA.parameters()]
        params_d = [*self.D_A.parameters(), *self.D_B.parameters()]
        kw = {"lr": 2e-4, "betas": (0.5, 0.999), "fused": True if fused else None}
        self.opt_g, self.opt_d = torch.optim.Adam(params_g, **kw), torch.optim.Adam(params_d, **kw)
        self.pool_A, self.pool_B = ImagePool(50), ImagePool(50)
        self.channels_last, self.bf16 = channels_last, bf16
        call = torch.compile if compiled else (lambda net: net)
        self.g_ab, self.g_ba, self.d_a, self.d_b = (call(net) for net in nets)

    def _autocast(self):
        if self.bf16:
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def iteration(self, real_A: torch.Tensor, real_B: torch.Tensor) -> None:
        """One training iteration: G step (both generators), then D step (both Ds)."""
        if self.channels_last:
            real_A = real_A.contiguous(memory_format=torch.channels_last)
            real_B = real_B.contiguous(memory_format=torch.channels_last)
        for p in [*self.D_A.parameters(), *self.D_B.parameters()]:
            p.requires_grad_(False)
        self.opt_g.zero_grad(set_to_none=True)
        with self._autocast():
            fake_B, fake_A = self.g_ab(real_A), self.g_ba(real_B)
            rec_A, rec_B = self.g_ba(fake_B), self.g_ab(fake_A)
            pred_B, pred_A = self.d_b(fake_B), self.d_a(fake_A)
            loss_g = (
                F.mse_loss(pred_B, torch.ones_like(pred_B))
                + F.mse_loss(pred_A, torch.ones_like(pred_A))
                + 10 * F.l1_loss(rec_A, real_A)
                + 10 * F.l1_loss(rec_B, real_B)
                + 5 * F.l1_loss(self.g_ba(real_A), real_A)
                + 5 * F.l1_loss(self.g_ab(real_B), real_B)
            )
        loss_g.backward()
        self.opt_g.step()
        for p in [*self.D_A.parameters(), *self.D_B.parameters()]:
            p.requires_grad_(True)
        self.opt_d.zero_grad(set_to_none=True)
        fake_A = self.pool_A.query(fake_A.detach().float())
        fake_B = self.pool_B.query(fake_B.detach().float())
        with self._autocast():
            loss_d = 0.0
            for d, real, fake in ((self.d_a, real_A, fake_A), (self.d_b, real_B, fake_B)):
                pr, pf = d(real), d(fake)
                loss_d = loss_d + 0.5 * (
                    F.mse_loss(pr, torch.ones_like(pr)) + F.mse_loss(pf, torch.zeros_like(pf))
                )
        loss_d.backward()
        self.opt_d.step()


PLAIN_VARIANTS = {
    "eager": {},
    "channels_last": {"channels_last": True},
    "fused": {"fused": True},
    "bf16": {"bf16": True},
    "compiled": {"compiled": True},
}
# suite variant -> (CycleGAN options, Trainer precision, fused Adam, compile the nets)
SUITE_VARIANTS = {
    "eager": ({}, "32-true", False, False),
    "channels_last": ({"channels_last": True}, "32-true", False, False),
    "fused": ({}, "32-true", True, False),  # Adam(fused=True)
    "bf16": ({}, "bf16-mixed", False, False),  # Trainer(precision="bf16-mixed"): CPU autocast
    "compiled": ({}, "32-true", False, True),
}


class SideBySide(StepTimer):
    """StepTimer that, after each suite iteration, times one iteration of each plain variant
    on the same images; the last timed batch is also profiled, suite and plain eager."""

    def __init__(self, plain: dict[str, PlainCycleGAN], warmup: int, repeats: int) -> None:
        super().__init__(warmup=warmup, count_flops=False)
        self.plain = plain
        self.plain_seconds: dict[str, list[float]] = {k: [] for k in plain}
        self.first_seconds: list[float] = []  # the warm-up iterations (compile time)
        self.plain_first: dict[str, float] = {}
        self.last_batch = warmup + repeats - 1
        self.profiles: dict[str, dict[str, float]] = {}
        self._prof = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if batch_idx == self.last_batch:
            from torch.profiler import ProfilerActivity, profile

            self._prof = profile(activities=[ProfilerActivity.CPU])
            self._prof.__enter__()
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        elapsed = time.perf_counter() - self._start
        if self._prof is not None:
            self._prof.__exit__(None, None, None)
            self.profiles["suite"] = _families(self._prof)
            self._prof = None
            a, b = batch["A"], batch["B"]
            self.profiles["plain eager"] = family_profile(
                lambda: self.plain["eager"].iteration(a, b)
            )
            return  # a profiled iteration is not timed
        if batch_idx < self.warmup:
            self.first_seconds.append(elapsed)
        else:
            self.seconds.append(elapsed)
        for name, loop in self.plain.items():
            start = time.perf_counter()
            loop.iteration(batch["A"], batch["B"])
            sec = time.perf_counter() - start
            if batch_idx < self.warmup:
                self.plain_first[name] = self.plain_first.get(name, 0.0) + sec
            else:
                self.plain_seconds[name].append(sec)


def _families(prof) -> dict[str, float]:
    totals: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        totals[op_family(event.key)] += event.self_cpu_time_total
    whole = sum(totals.values()) or 1.0
    return {k: 100 * v / whole for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}


def _suite_fit(variant: str, size: int, batch: int, plain: dict, repeats: int) -> SideBySide:
    import lightning as L

    options, precision, fused, compiled = SUITE_VARIANTS[variant]
    warmup = 2 if compiled else 1  # compiled: the first iterations trace and build kernels
    L.seed_everything(0, verbose=False)
    model, data, callbacks = build_paper(
        "cyclegan", size, batch, n_train=(repeats + 3) * batch + 16
    )
    for key, value in options.items():
        model.hparams[key] = value
        setattr(model, key, value)
    if fused:
        make = model.translator_optimizers

        def translator_optimizers():
            return tuple(
                torch.optim.Adam(o.param_groups[0]["params"], lr=2e-4, betas=(0.5, 0.999),
                                 fused=True)
                for o in make()
            )  # fmt: skip

        model.translator_optimizers = translator_optimizers
    if compiled:
        for name in ("G_AB", "G_BA", "D_A", "D_B"):
            setattr(model, name, torch.compile(getattr(model, name)))
    timer = SideBySide(plain, warmup, repeats + 1)  # +1: the profiled last batch
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_epochs=1, precision=precision,
        limit_train_batches=warmup + repeats + 1, limit_val_batches=0, num_sanity_val_steps=0,
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[*callbacks, timer],
    )  # fmt: skip
    trainer.fit(model, datamodule=data)
    return timer


def bench_cyclegan(args: argparse.Namespace) -> None:
    """The suite's CycleGAN step vs the plain loop, with the switches, as ratios."""
    import os
    import tempfile

    size, med = args.sizes[0], statistics.median
    variants = ["eager", *[v for v in args.variants if v != "eager"]]
    for batch in args.batch_sizes:
        print(
            f"== cyclegan {size}px batch {batch} (ngf 64, 9 blocks, PatchGAN 70x70): seconds per "
            f"iteration, median of {args.repeats}, each ratio side by side with the plain eager "
            f"loop; torch {torch.__version__}, {torch.get_num_threads()} threads"
        )
        rows, profiles = [], {}
        cwd = os.getcwd()
        with tempfile.TemporaryDirectory() as tmp:
            os.chdir(tmp)  # the embedded data's cache stays in here
            try:
                for i, variant in enumerate(variants):
                    names = variants if i == 0 else ["eager"]
                    plain = {n: PlainCycleGAN(**PLAIN_VARIANTS[n]) for n in names}
                    t = _suite_fit(variant, size, batch, plain, args.repeats)
                    ref = med(t.plain_seconds["eager"])
                    suite = med(t.seconds)
                    first = sum(t.first_seconds) - suite * len(t.first_seconds)
                    compile_note = f"{first:.0f} s" if variant == "compiled" else ""
                    rows.append([f"suite {variant}", f"{suite:.3f}", f"{batch / suite:.2f}",
                                 f"{suite / ref:.3f}", compile_note])  # fmt: skip
                    for name in names[1:] if i == 0 else []:
                        sec = med(t.plain_seconds[name])
                        extra = t.plain_first[name] - sec if name == "compiled" else None
                        rows.append([f"plain {name}", f"{sec:.3f}", f"{batch / sec:.2f}",
                                     f"{sec / ref:.3f}",
                                     f"{extra:.0f} s" if extra is not None else ""])  # fmt: skip
                    if i == 0:
                        rows.insert(0, ["plain eager (reference)", f"{ref:.3f}",
                                        f"{batch / ref:.2f}", "1.000", ""])  # fmt: skip
                        profiles = t.profiles
                    print(f"   done suite {variant}: {suite:.3f} s, {suite / ref:.3f}x", flush=True)
            finally:
                os.chdir(cwd)
        header = ["variant", "s/iter", "img/s", "x plain eager", "compile time"]
        print(format_table(header, rows))
        if profiles:
            families = list(dict.fromkeys(k for p in profiles.values() for k in p))
            prof_rows = [
                [f] + [f"{p.get(f, 0.0):.1f}%" for p in profiles.values()] for f in families
            ]
            print("   self CPU time by op family (one iteration, torch.profiler):")
            print(format_table(["op family", *profiles], prof_rows))
