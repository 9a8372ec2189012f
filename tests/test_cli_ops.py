"""The command as operations see it: budgets, resume in place, refused options, no debris,
FID weights that are missing, what a first run prints."""

from __future__ import annotations

import csv
import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import EXPERIMENTS, TINY_TWO_DOMAIN
from PIL import Image

from gan_suite.cli import DESCRIPTION, PAPERS, cli_main, main
from gan_suite.cli_runs import ResumeError

NO_EVAL = [
    "--trainer.limit_val_batches=0",
    "--trainer.log_every_n_steps=1",
    "--test_after_fit=false",
]


def _fit(*extra: str):
    return cli_main(
        ["fit", "--config", str(EXPERIMENTS / "cyclegan.yaml"), *TINY_TWO_DOMAIN, *extra]
    )


def _rows(run_dir: Path) -> list[dict]:
    return list(csv.DictReader(open(run_dir / "metrics.csv")))


def test_limit_train_batches_1_is_one_batch_and_max_steps_counts_iterations():
    cli = _fit("--trainer.max_epochs=1", "--trainer.limit_train_batches", "1", *NO_EVAL)
    assert cli.trainer.num_training_batches == 1  # not 1.0 = 100 % (6 batches here)
    assert int(cli.model.iteration) == 1
    cli = _fit("--trainer.max_epochs=5", "--trainer.max_steps", "4", *NO_EVAL)
    assert int(cli.model.iteration) == 4  # 4 iterations of the paper ...
    assert cli.trainer.global_step == 8  # ... = 8 optimizer steps (G and D)


def test_fractional_batch_limit_above_one_is_refused():
    with pytest.raises(ValueError, match="trainer.limit_train_batches=2.5"):
        _fit("--trainer.limit_train_batches=2.5", "--run_id=frac")
    assert not Path("runs/cyclegan/frac").exists()


def test_resume_continues_in_the_same_run_directory_and_appends():
    _fit("--trainer.max_epochs=2", "--trainer.limit_train_batches=2", *NO_EVAL, "--run_id=r")
    run = Path("runs/cyclegan/r")
    config_before = (run / "config.yaml").read_text()
    assert {r["epoch"] for r in _rows(run)} == {"0", "1"}
    main(["fit", "--resume", str(run), "--trainer.max_epochs=4"])
    assert (run / "config.yaml").read_text() == config_before  # never overwritten
    assert len(list(run.glob("config.resume-*.yaml"))) == 1
    assert {r["epoch"] for r in _rows(run)} == {"0", "1", "2", "3"}  # appended
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["epoch"] == 4 and int(ckpt["state_dict"]["iteration"]) == 8
    assert sorted(p.name for p in Path("runs/cyclegan").iterdir()) == ["r"]  # no new run


def test_ckpt_path_last_resolves_to_the_newest_run_of_the_experiment():
    _fit("--trainer.max_epochs=1", "--trainer.limit_train_batches=1", *NO_EVAL, "--run_id=a")
    cli = _fit(
        "--trainer.max_epochs=2", "--trainer.limit_train_batches=1", *NO_EVAL, "--ckpt_path=last"
    )
    assert Path(cli.trainer.default_root_dir).resolve() == Path("runs/cyclegan/a").resolve()
    assert int(cli.model.iteration) == 2  # one from the first run, one more


def test_ckpt_path_last_without_any_run_is_an_error_naming_the_folder():
    with pytest.raises(ResumeError, match="no run of 'cyclegan'"):
        _fit("--ckpt_path=last")


def test_model_options_given_on_resume_are_refused_not_dropped():
    _fit("--trainer.max_epochs=1", "--trainer.limit_train_batches=1", *NO_EVAL, "--run_id=r")
    ckpt = "runs/cyclegan/r/checkpoints/last.ckpt"
    with pytest.raises(ResumeError) as info:
        _fit("--trainer.max_epochs=2", "--ckpt_path", ckpt, "--model.init_args.lr=0.00001")
    message = str(info.value)
    assert "model.init_args.lr: checkpoint 0.0002, this command 1e-05" in message
    # the same options as the checkpoint's resume fine; trainer options are applied
    cli = _fit("--trainer.max_epochs=2", "--trainer.limit_train_batches=1", "--ckpt_path", ckpt)
    assert cli.trainer.current_epoch == 2


def test_failure_at_setup_leaves_no_run_directory(tmp_path):
    with pytest.raises(Exception, match="missing-data"):
        _fit("--data.init_args.data_dir", str(tmp_path / "missing-data"), "--run_id=bad")
    assert not Path("runs/cyclegan").exists()


def test_test_without_checkpoint_warns_and_marks_the_metrics_untrained():
    args = ["test", "--config", str(EXPERIMENTS / "cyclegan.yaml"), *TINY_TWO_DOMAIN]
    args += ["--trainer.limit_test_batches=1", "--run_id=t"]
    with pytest.warns(UserWarning, match="scores the untrained network"):
        cli = cli_main(args)
    metrics = json.loads((Path(cli.trainer.default_root_dir) / "metrics.json").read_text())
    assert metrics["checkpoint"] is None and metrics["extra"]["untrained"] is True


def test_missing_fid_weights_train_on_without_fid_and_say_so(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))  # an empty torch hub cache
    args = [
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=1",
        "--trainer.limit_test_batches=1",
        "--test_after_fit=true",
        "--run_id=nofid",
    ]
    rng = np.random.default_rng(0)
    for split in ("trainA", "trainB", "testA", "testB"):  # a CycleGAN layout, no labels
        (tmp_path / "data" / split).mkdir(parents=True)
        for i in range(4):
            pixels = rng.integers(0, 255, (36, 36, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "data" / split / f"{i}.png")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _fit(*args, "--data.init_args.data_dir", str(tmp_path / "data"))
    text = " ".join(str(w.message) for w in caught)
    assert "FID/KID are skipped in this run" in text and "GAN_SUITE_INCEPTION_WEIGHTS" in text
    run = Path("runs/cyclegan/nofid")
    assert (run / "checkpoints" / "last.ckpt").is_file()
    metrics = json.loads((run / "metrics.json").read_text())
    assert "could not be fetched" in metrics["extra"]["fid_skipped"]
    assert not any("fid" in key.lower() for key in metrics["metrics"])


def test_help_names_the_suite_and_every_paper(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "Lightning Trainer command line tool" not in out
    for name in PAPERS:
        assert f"experiments/{name}.yaml" in out
    assert DESCRIPTION.splitlines()[0] in out


def test_a_size_the_nets_cannot_take_is_refused_at_setup_naming_the_option():
    with pytest.raises(ValueError, match="data.init_args.crop_size=16"):
        _fit("--data.init_args.load_size=18", "--data.init_args.crop_size=16", "--run_id=px16")
    assert not Path("runs/cyclegan").exists()  # no debris of the failed run


def test_fid_weights_are_fetched_once_checked_and_renamed_into_the_hub(monkeypatch, tmp_path):
    from gan_suite.eval import features

    real = features.write_random_inception_weights(tmp_path / "src.pth")
    monkeypatch.delenv("GAN_SUITE_OFFLINE")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))

    def broken(url, target, timeout):  # an HTML error page where the weights should be
        Path(target).write_bytes(b"<html>rate limited</html>")
        return "0" * 64

    monkeypatch.setattr(features, "_download", broken)
    with pytest.raises(ValueError, match="not a torch state dict"):
        features.fetch_inception_weights()
    assert not list((tmp_path / "hub").rglob("*.pth*"))  # nothing that looks complete

    def served(url, target, timeout):
        Path(target).write_bytes(real.read_bytes())
        return hashlib.sha256(real.read_bytes()).hexdigest()

    monkeypatch.setattr(features, "_download", served)
    path = features.fetch_inception_weights()
    assert path == features.hub_inception_path() and path.read_bytes() == real.read_bytes()
    sha = path.with_name(path.name + ".sha256").read_text().split()[0]
    assert sha == hashlib.sha256(real.read_bytes()).hexdigest()
    assert features.find_inception_weights() == path  # the next run finds it: fetched once


def test_the_wandb_api_key_is_written_nowhere(monkeypatch):
    secret = "0123456789abcdef0123456789abcdef01234567"
    monkeypatch.setenv("WANDB_API_KEY", secret)
    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = (
        "--trainer.logger=[{class_path: lightning.pytorch.loggers.CSVLogger,"
        " init_args: {save_dir: runs}},"
        " {class_path: gan_suite.loggers.WandbLogger, init_args: {offline: true}}]"
    )
    args = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=1", *NO_EVAL, "--run_id=k"]
    _fit(*args, logger)
    run = Path("runs/cyclegan/k")
    assert (run / "wandb").is_dir()  # the offline W&B run is there ...
    for path in run.rglob("*"):  # ... and no file of the run holds the key
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_every_rank_of_a_torchrun_or_slurm_job_joins_one_run_directory(monkeypatch):
    from gan_suite.cli import _is_spawned_rank, resolve_run_dir

    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    assert resolve_run_dir("runs", "cyclegan", None, "fit", None) == Path("runs/cyclegan/slurm-77")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "abc")
    assert resolve_run_dir("runs", "cyclegan", None, "fit", None).name == "elastic-abc"
    assert not _is_spawned_rank()
    monkeypatch.setenv("RANK", "3")  # a torchrun rank on another node: LOCAL_RANK 0 there
    assert _is_spawned_rank()
