"""The gan-suite command end to end on tiny settings: fit, test, run directories, errors."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_helpers import EXPERIMENTS, TINY_TWO_DOMAIN, run_ddp_fit

from gan_suite.cli import cli_main

TINY = TINY_TWO_DOMAIN


def _fit(*extra: str):
    return cli_main(["fit", "--config", str(EXPERIMENTS / "cyclegan.yaml"), *TINY, *extra])


def test_fit_fast_dev_run_goes_through_every_step():
    cli = _fit("--trainer.fast_dev_run=1")
    run_dir = Path(cli.trainer.default_root_dir)
    assert run_dir.parent == Path("runs") / "cyclegan"
    assert cli.trainer.global_step == 2  # one batch: a G step and a D step
    history = cli.model.history
    assert len(history.pools["A"].images) == 2  # a batch of 2 images, pool not yet full


def test_fit_writes_checkpoints_samples_and_metrics_then_test_evaluates_them():
    cli = _fit(
        "--trainer.max_epochs=2",
        "--trainer.limit_train_batches=3",
        "--trainer.limit_val_batches=1",
        "--trainer.log_every_n_steps=1",
        "--model.init_args.n_epochs_constant=1",
        "--model.init_args.n_epochs_decay=1",
        "--run_id=r1",
    )
    run_dir = Path("runs/cyclegan/r1")
    assert Path(cli.trainer.default_root_dir) == run_dir
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert "n_epochs_decay: 1" in (run_dir / "config.yaml").read_text()
    grids = sorted((run_dir / "samples").glob("epoch=*.png"))
    assert len(grids) == 2 and (run_dir / "samples" / "latest.png").is_file()
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    keys = set(rows[0])
    for term in ("adv_AB", "adv_BA", "cycle_A", "cycle_B", "idt_A", "idt_B", "d_A", "d_B"):
        assert f"train/{term}" in keys
    assert "val/cycle_A" in keys
    # the linear decay: epoch 0 at lr, epoch 1 at lr * (1 - 1/2)
    lrs = [float(r["train/lr"]) for r in rows if r.get("train/lr")]
    assert lrs == pytest.approx([2e-4 * 0.5, 2e-4 * 0.0], abs=1e-9)

    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    history = next(v for k, v in ckpt["callbacks"].items() if "HistoryBuffer" in k)
    pools = history["ranks"][0]["pools"]  # one process: one rank's pools
    assert pools["A"]["images"].shape[0] == 12  # 2 epochs x 3 batches x 2 images

    test = cli_main(
        [
            "test",
            "--config",
            str(EXPERIMENTS / "cyclegan.yaml"),
            *TINY,
            f"--ckpt_path={run_dir}/checkpoints/last.ckpt",
        ]
    )
    test_dir = Path(test.trainer.default_root_dir)
    assert test_dir.parent.resolve() == run_dir.resolve() and test_dir.name.startswith("test-")
    assert "test/cycle_A" in test.trainer.callback_metrics
    # the Evaluation callback's reports, beside the checkpoint they came from
    report = json.loads((test_dir / "metrics.json").read_text())
    assert report["checkpoint"].endswith("r1/checkpoints/last.ckpt")
    metrics = report["metrics"]
    for direction in ("A->B", "B->A"):
        for name in ("fid", "kid", "psnr", "ssim", "label_acc", "object_iou"):
            assert f"{direction}/{name}" in metrics
        assert metrics[f"{direction}/fid"]["extractor"] == "evaluator"
        assert metrics[f"{direction}/fid"]["n_images"] == 6  # the whole tiny test split
    html = (test_dir / "report.html").read_text()
    assert "A-&gt;B/fid" in html and "<img" in html
    # test_after_fit (set in the YAML) evaluated the fit run itself too
    assert json.loads((run_dir / "metrics.json").read_text())["metrics"].keys() == metrics.keys()
    assert "val/A->B/fid" in keys


def test_run_directory_is_never_reused():
    _fit("--trainer.fast_dev_run=1", "--run_id=same")
    with pytest.raises(FileExistsError, match="runs/cyclegan/same"):
        _fit("--trainer.fast_dev_run=1", "--run_id=same")


def test_nan_loss_stops_with_a_named_term_and_keeps_the_last_good_weights():
    with pytest.raises(FloatingPointError, match="loss term"):
        _fit(
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=2",
            "--run_id=nan",
            "--model.init_args.lr=1e30",
            "--model.init_args.init_gain=1e30",
        )
    # only the weights before the bad step, named for it (tests/test_safety.py checks them)
    saved = [p.name for p in Path("runs/cyclegan/nan").glob("**/*.ckpt")]
    assert saved == ["nonfinite-iter0-step1.ckpt"]


def test_help_documents_every_option():
    out = subprocess.run(
        [sys.executable, "-m", "gan_suite.cli", "fit", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    for option in (
        "--config",
        "--name",
        "--run_id",
        "--runs_root",
        "--ckpt_path",
        "--model",
        "--data",
        "--trainer.max_epochs",
    ):
        assert option in out.stdout
    model_help = subprocess.run(
        [
            sys.executable,
            "-m",
            "gan_suite.cli",
            "fit",
            "--model.help",
            "gan_suite.models.cyclegan.CycleGAN",
        ],
        capture_output=True,
        text=True,
    )
    assert "lambda of the A -> B -> A cycle loss" in model_help.stdout
    assert "--model.identity_weight" in model_help.stdout


@pytest.mark.slow
def test_ddp_two_cpu_processes_keep_identical_weights(tmp_path):
    report = run_ddp_fit("cyclegan.yaml", TINY, tmp_path, "cyclegan")
    assert report["world_size"] == 2
    assert len(report["divergence"]) == 2 and max(report["divergence"]) < 1e-6
    last = report["run_dir"] / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=True)
    streams = state["gan_suite_rng_states"]  # one random state per rank, each its own
    assert len(streams) == 2 and not torch.equal(streams[0]["torch"], streams[1]["torch"])

    # the DDP run resumed in its directory: both ranks continue, in step, for one more epoch
    env = {**os.environ, "PYTHONPATH": str(EXPERIMENTS.parent), "OMP_NUM_THREADS": "1"}
    env.pop("LOCAL_RANK", None)
    cmd = [sys.executable, "-m", "gan_suite.cli", "fit", "--resume", str(report["run_dir"]),
           "--trainer.max_epochs=3"]  # fmt: skip
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    resumed = json.loads((report["run_dir"] / "ddp_check.json").read_text())
    assert len(resumed["divergence"]) == 1 and resumed["divergence"][0] < 1e-6
    state = torch.load(last, weights_only=True)
    assert int(state["state_dict"]["iteration"]) == 3 * 2  # 2 batches an epoch, 3 epochs

    # ... and ends where the uninterrupted 3-epoch DDP run ends: every weight, buffer (the
    # history pools included) and optimizer moment equal, so each rank resumed its own streams
    straight = run_ddp_fit("cyclegan.yaml", TINY, tmp_path, "cyclegan", epochs=3, run_id="ddp3")
    other = torch.load(straight["run_dir"] / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["state_dict"].keys() == other["state_dict"].keys()
    for key, value in state["state_dict"].items():
        assert torch.equal(value, other["state_dict"][key]), key
    for mine, theirs in zip(state["optimizer_states"], other["optimizer_states"]):
        for slot, moments in mine["state"].items():
            for name, value in moments.items():
                assert torch.equal(value, theirs["state"][slot][name]), (slot, name)
    assert torch.equal(
        torch.stack([s["torch"] for s in state["gan_suite_rng_states"]]),
        torch.stack([s["torch"] for s in other["gan_suite_rng_states"]]),
    )
    # one history pool per rank, each rank's own continued (not rank 0's copied to rank 1)
    pools, pools_straight = (
        next(v for k, v in c["callbacks"].items() if "HistoryBuffer" in k)["ranks"]
        for c in (state, other)
    )
    assert len(pools) == 2
    assert not torch.equal(pools[0]["pools"]["A"]["images"], pools[1]["pools"]["A"]["images"])
    for rank in (0, 1):
        for domain in ("A", "B"):
            resumed_images = pools[rank]["pools"][domain]["images"]
            assert torch.equal(resumed_images, pools_straight[rank]["pools"][domain]["images"])
