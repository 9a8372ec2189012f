"""RunSafety: SIGTERM leaves a resumable last.ckpt and exit code 143; non-finite losses stop
the run with a checkpoint of the weights before the bad step, or skip the step and count it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from cli_helpers import EXPERIMENTS, ROOT, TINY_TWO_DOMAIN
from torch.utils.data import DataLoader

from gan_suite.callbacks import RunSafety
from gan_suite.callbacks.safety import SIGTERM_EXIT_CODE
from gan_suite.models.cyclegan import CycleGAN

# -- non-finite losses ------------------------------------------------------------------------


class PoisonedCycleGAN(CycleGAN):
    """A tiny CycleGAN whose generator objective is NaN at the iterations in ``poison_at``."""

    poison_at: tuple[int, ...] = ()

    def extra_generator_terms(self, real_A, real_B, out) -> dict:
        if int(self.iteration) in self.poison_at:
            return {"poison": out["fake_B"].mean() * float("nan")}
        return {}


def _tiny_model(poison_at: tuple[int, ...]) -> PoisonedCycleGAN:
    model = PoisonedCycleGAN(ngf=4, n_blocks=1, ndf=4, n_layers_d=1)
    model.poison_at = poison_at
    return model


def _loader(n_batches: int = 6) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    batches = [
        {"A": torch.rand(2, 3, 16, 16, generator=g) * 2 - 1, "B": torch.rand(2, 3, 16, 16) * 2 - 1}
        for _ in range(n_batches)
    ]
    return DataLoader(batches, batch_size=None)


def _fit(make_trainer, tmp_path: Path, model, safety: RunSafety, **kw):
    trainer = make_trainer(
        max_epochs=1,
        enable_checkpointing=True,
        limit_val_batches=0,
        callbacks=[safety],
        default_root_dir=tmp_path / "run",
        **kw,
    )
    trainer.fit(model, train_dataloaders=_loader())
    return trainer


def _g_weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.G_AB.state_dict().items()}


def test_nonfinite_loss_stops_with_a_checkpoint_of_the_weights_before_the_bad_step(
    make_trainer, tmp_path
):
    model = _tiny_model(poison_at=(3,))
    seen = {}

    class Spy(RunSafety):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if int(pl_module.iteration) == 3:
                seen["before"] = _g_weights(pl_module)

    with pytest.raises(FloatingPointError) as err:
        _fit(make_trainer, tmp_path, model, Spy(every_n_epochs=0, every_n_minutes=None))
    message = str(err.value) + "".join(getattr(err.value, "__notes__", []))
    ckpt = tmp_path / "run" / "checkpoints" / "nonfinite-iter3-step6.ckpt"
    # the term, the iteration (batches) and the global step (2 optimizer steps per batch)
    assert "'poison'" in message and "iteration 3" in message and "global step 6" in message
    assert str(ckpt) in message
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert int(state["state_dict"]["iteration"]) == 3
    saved = {k[len("G_AB.") :]: v for k, v in state["state_dict"].items() if k.startswith("G_AB.")}
    for name, value in seen["before"].items():
        torch.testing.assert_close(saved[name], value, rtol=0, atol=0)
    assert all(
        torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point()
    )


def test_skip_mode_takes_no_step_counts_it_and_stops_past_max_skipped(make_trainer, tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    model = _tiny_model(poison_at=(1, 2))
    weights = {}

    class Spy(RunSafety):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            weights[int(pl_module.iteration)] = _g_weights(pl_module)

    logger = CSVLogger(tmp_path, name="", version="")
    safety = Spy(every_n_epochs=0, every_n_minutes=None, on_nonfinite="skip", max_skipped=2)
    trainer = _fit(make_trainer, tmp_path, model, safety, logger=logger, log_every_n_steps=1)
    assert safety.skipped_nonfinite == 2
    # G took no step at the poisoned iteration 1 (D did: its loss was finite) ...
    for name, value in weights[1].items():
        torch.testing.assert_close(weights[2][name], value, rtol=0, atol=0)
    # ... but did at the clean iteration 0, and the run went through all 6 batches
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert int(model.iteration) == 6 and trainer.global_step == 6 * 2 - 2
    assert all(torch.isfinite(p).all() for p in model.parameters())
    logged = (tmp_path / "metrics.csv").read_text()
    assert "train/skipped_nonfinite" in logged

    # a third poisoned step is one more than max_skipped: the run stops as in "stop" mode
    model = _tiny_model(poison_at=(1, 2, 4))
    safety = RunSafety(every_n_epochs=0, every_n_minutes=None, on_nonfinite="skip", max_skipped=2)
    with pytest.raises(FloatingPointError, match="iteration 4"):
        _fit(make_trainer, tmp_path / "again", model, safety)
    assert (tmp_path / "again" / "run" / "checkpoints" / "nonfinite-iter4-step6.ckpt").is_file()


def test_options_out_of_range_are_named():
    with pytest.raises(ValueError, match="on_nonfinite='retry'"):
        RunSafety(on_nonfinite="retry")
    with pytest.raises(ValueError, match="every_n_minutes=0"):
        RunSafety(every_n_minutes=0)


# -- SIGTERM ----------------------------------------------------------------------------------


def _cli(args: list[str], cwd: Path, **popen) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "gan_suite.cli", "fit", *args]
    return subprocess.Popen(cmd, cwd=cwd, env=env, text=True, **popen)


def _wait_for_epoch(metrics: Path, epoch: int, proc: subprocess.Popen, timeout: float) -> None:
    """Poll the CSV logger's file until a row of ``epoch`` is written (the logger flushes every
    batch with log_every_n_steps 1)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        if metrics.exists():
            lines = metrics.read_text().splitlines()
            header = lines[0].split(",") if lines else []
            if "epoch" in header:
                col = header.index("epoch")
                epochs = [r.split(",")[col] for r in lines[1:] if r.count(",") >= col]
                if any(e and float(e) >= epoch for e in epochs):
                    return
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"epoch {epoch} did not start within {timeout} s")


def test_sigterm_saves_a_resumable_last_ckpt_and_exits_143(tmp_path):
    config = ["--config", str(EXPERIMENTS / "cyclegan.yaml"), *TINY_TWO_DOMAIN]
    tiny = [
        "--trainer.limit_train_batches=3",
        "--trainer.limit_val_batches=0",
        "--trainer.log_every_n_steps=1",
        "--trainer.callbacks=[{class_path: lightning.pytorch.callbacks.ModelCheckpoint,"
        " init_args: {save_last: true, save_top_k: -1, every_n_epochs: 5}},"
        " {class_path: gan_suite.callbacks.RunSafety, init_args: {every_n_minutes: null}}]",
        "--test_after_fit=false",
    ]
    proc = _cli([*config, *tiny, "--trainer.max_epochs=50", "--run_id=a"], tmp_path,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    run = tmp_path / "runs" / "cyclegan" / "a"
    _wait_for_epoch(run / "metrics.csv", 3, proc, timeout=120)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == SIGTERM_EXIT_CODE, stderr[-3000:]
    last = run / "checkpoints" / "last.ckpt"
    assert f"to {last}; resume with: gan-suite fit --resume {run}" in stderr, stderr[-2000:]
    state = torch.load(last, map_location="cpu", weights_only=False)
    epoch = state["epoch"]
    assert epoch >= 3
    # the model's iteration counter agrees with the batches the loop counts as done
    batches_done = state["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["completed"]
    assert int(state["state_dict"]["iteration"]) == batches_done >= 3 * 3

    # resume through the CLI: it runs on from that epoch to the end (max_epochs = epoch + 2)
    resumed = _cli(["--resume", str(run), f"--trainer.max_epochs={epoch + 2}"], tmp_path,
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    stdout, stderr = resumed.communicate(timeout=180)
    assert resumed.returncode == 0, stderr[-3000:]
    run_dir = stdout.split("[gan-suite] run directory: ")[1].splitlines()[0]
    assert Path(run_dir).resolve() == run.resolve()  # continued in its own directory
    final = torch.load(last, weights_only=False)
    # every batch of every epoch ran once: the killed epoch's remaining batches, then the rest
    assert int(final["state_dict"]["iteration"]) == 3 * (epoch + 2)


# -- configuration ----------------------------------------------------------------------------


def _callback_names(path: Path) -> list[str]:
    import yaml

    config = yaml.safe_load(path.read_text()) or {}
    callbacks = (config.get("trainer") or {}).get("callbacks") or []
    return [(c["class_path"] if isinstance(c, dict) else c).rsplit(".", 1)[-1] for c in callbacks]


def test_every_config_with_a_model_checkpoint_lists_run_safety_after_it():
    # a later --config replaces the whole callbacks list, so every file that has one counts
    checked = 0
    for path in sorted(EXPERIMENTS.rglob("*.yaml")):
        names = _callback_names(path)
        if "ModelCheckpoint" in names:
            assert "RunSafety" in names, f"{path}: no gan_suite.callbacks.RunSafety"
            assert names.index("RunSafety") > names.index("ModelCheckpoint"), path
            checked += 1
    assert checked >= 9  # the papers' YAMLs at least


def test_run_safety_before_model_checkpoint_is_refused(make_trainer, tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    trainer = make_trainer(
        enable_checkpointing=True, callbacks=[RunSafety(), ModelCheckpoint(tmp_path)]
    )
    with pytest.raises(ValueError, match="list gan_suite.callbacks.RunSafety after"):
        trainer.fit(_tiny_model(()), train_dataloaders=_loader(1))


def test_timed_last_ckpt_mid_epoch_resumes_with_the_remaining_batches(make_trainer, tmp_path):
    # every_n_minutes tiny: a save at the start of every batch but the first
    safety = RunSafety(every_n_epochs=0, every_n_minutes=1e-9)
    trainer = make_trainer(max_epochs=1, enable_checkpointing=True, limit_val_batches=0,
                           callbacks=[safety], default_root_dir=tmp_path / "run")  # fmt: skip
    trainer.fit(_tiny_model(()), train_dataloaders=_loader(4))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=False)
    # written at the start of the 4th batch: 3 batches done, the counters agree
    done = state["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["completed"]
    assert int(state["state_dict"]["iteration"]) == done == 3

    resumed = _tiny_model(())
    trainer = make_trainer(max_epochs=1, limit_val_batches=0, enable_checkpointing=True,
                           callbacks=[RunSafety(every_n_epochs=0, every_n_minutes=None)],
                           default_root_dir=tmp_path / "resumed")  # fmt: skip
    trainer.fit(resumed, train_dataloaders=_loader(4), ckpt_path=last)
    assert int(resumed.iteration) == 4  # only the 4th batch ran
