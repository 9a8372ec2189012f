"""Shared pieces of the CLI tests: tiny overrides of the papers' YAMLs and a DDP fit runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"

CSV_LOGGER = (
    "--trainer.logger=[{class_path: lightning.pytorch.loggers.CSVLogger,"
    " init_args: {save_dir: runs}}]"
)

# tiny nets and 32 px images on a 12 + 6 scene embedded set: the CycleGAN family's YAML shrunk
TINY_TWO_DOMAIN = [
    "--model.init_args.ngf=4",
    "--model.init_args.n_blocks=1",
    "--model.init_args.ndf=4",
    "--data.init_args.load_size=36",
    "--data.init_args.crop_size=32",
    "--data.init_args.batch_size=2",
    "--data.init_args.num_workers=0",
    "--data.init_args.embedded={n_train: 12, n_test: 6, image_size: 32}",
    "--trainer.accelerator=cpu",
    CSV_LOGGER,
    "--trainer.enable_progress_bar=false",
]


# tiny nets of the other papers, shared by their own tests and the sweep tests
TINY_CGAN_NETS = [
    "--model.init_args.g_z_hidden=16",
    "--model.init_args.g_cond_hidden=16",
    "--model.init_args.g_joint_hidden=32",
    "--model.init_args.d_x_units=8",
    "--model.init_args.d_cond_units=4",
    "--model.init_args.d_joint_units=8",
    "--model.init_args.parzen_samples_per_class=5",
]
TINY_BDL_NETS = [
    "--model.init_args.n_classes=5",
    "--model.init_args.backbone_layers=[1, 1, 1, 1]",
    "--model.init_args.ngf=4",
    "--model.init_args.n_blocks=1",
    "--model.init_args.ndf=4",
    "--model.init_args.d_out_ndf=4",
]


def run_ddp_fit(
    config: str,
    args: list[str],
    cwd: Path,
    name: str,
    batchnorm: bool = False,
    epochs: int = 2,
    run_id: str = "ddp",
) -> dict:
    """Fit ``experiments/<config>`` with 2 CPU processes (gloo) for ``epochs`` short epochs
    (2 batches each) with the DDPConsistencyCheck callback, in ``runs/<name>/<run_id>``; return
    its ``ddp_check.json`` (asserting the run succeeded) with ``run_dir``.

    ``batchnorm``: the nets have BatchNorm. The ddp preset's SyncBatchNorm needs GPUs, so it
    is switched off and each rank keeps its own statistics: only parameters are compared."""
    check = "gan_suite.callbacks.DDPConsistencyCheck"
    if batchnorm:
        check = f"{{class_path: {check}, init_args: {{include_buffers: false}}}}"
    cpu_bn = ["--trainer.sync_batchnorm=false"] if batchnorm else []
    # tests/ on the path: test-only callbacks (ddp_probe) can be named by class_path
    pythonpath = os.pathsep.join([str(ROOT), str(ROOT / "tests")])
    env = {**os.environ, "PYTHONPATH": pythonpath, "OMP_NUM_THREADS": "1"}
    env.pop("LOCAL_RANK", None)
    cmd = [
        sys.executable, "-m", "gan_suite.cli", "fit",
        "--config", str(EXPERIMENTS / config), *args,
        "--config", str(EXPERIMENTS / "presets" / "ddp.yaml"),
        "--trainer.devices=2", "--trainer.accelerator=cpu", "--trainer.precision=32-true",
        f"--trainer.max_epochs={epochs}", "--trainer.limit_train_batches=2",
        "--trainer.limit_val_batches=1", f"--run_id={run_id}",
        f"--trainer.callbacks+={check}", *cpu_bn,
    ]  # fmt: skip
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = cwd / "runs" / name / run_id
    report = json.loads((run_dir / "ddp_check.json").read_text())
    report["run_dir"] = run_dir
    return report
