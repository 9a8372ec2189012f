"""W&B sweeps (experiments/sweeps/*.yaml, gan_suite.sweep): one per paper, every parameter a
valid override of the paper's config, every metric a key the paper really logs, the runner's
list-item and derived overrides, the local sampler, the offline dry run and the online path's
errors and calls (no W&B server here: wandb.sweep / wandb.agent are recorded, not run)."""

from __future__ import annotations

import csv
import math
import random
from pathlib import Path

import lightning as L
import pytest
import torch
from cli_helpers import CSV_LOGGER, EXPERIMENTS, TINY_BDL_NETS, TINY_CGAN_NETS, TINY_TWO_DOMAIN

from gan_suite import sweep
from gan_suite.callbacks.bdl_schedule import bdl_plan
from gan_suite.eval.evaluator import Evaluator
from gan_suite.sweep_run import fit_arguments, run_main
from gan_suite.sweep_space import (
    SweepError,
    candidate_values,
    format_args,
    sample_parameters,
    sample_value,
)

ROOT = EXPERIMENTS.parent
PAPERS = ["bdl", "cgan", "cyclegan", "discogan", "icgan", "matchgan", "opgan", "stargan"]
ATTRS = ["red", "green", "warm_background"]
# the CycleGAN family's tiny nets and data (cli_helpers), without its logger and trainer parts
TWO_DOMAIN = [a for a in TINY_TWO_DOMAIN if a.startswith(("--model.", "--data."))]
STARGAN = [
    "--model.init_args.image_size=32",
    "--model.init_args.g_conv_dim=4",
    "--model.init_args.g_repeat_num=1",
    "--model.init_args.d_conv_dim=4",
    "--model.init_args.d_repeat_num=4",
    f"--model.init_args.attributes=[{', '.join(ATTRS)}]",
    "--model.init_args.exclusive_groups=[[red, green]]",
    f"--data.init_args.attributes=[{', '.join(ATTRS)}]",
    "--data.init_args.image_size=32",
    "--data.init_args.batch_size=4",
    "--data.init_args.num_workers=0",
    "--data.init_args.embedded={n_train: 40, n_test: 8, image_size: 32}",
]
# each paper's quick preset shrunk to tiny nets and data; the sweep's sampled values come last
TINY = {
    "cyclegan": TWO_DOMAIN,
    "opgan": [
        *TWO_DOMAIN,
        "--model.init_args.siamese_width=4",
        "--model.init_args.siamese_depth=2",
        "--model.init_args.siamese_features=8",
    ],
    "discogan": [
        "--model.init_args.ngf=4",
        "--model.init_args.ndf=4",
        "--data.init_args.batch_size=2",
        "--data.init_args.num_workers=0",
        "--data.init_args.embedded={n_train: 12, n_test: 6, image_size: 64}",
    ],
    "cgan": [
        *TINY_CGAN_NETS,
        "--data.init_args.batch_size=8",
    ],
    # the shapes scenes with class labels instead of the preset's 5,000 MNIST digits
    "icgan": [
        "--model.init_args.g_ch=4",
        "--model.init_args.d_ch=4",
        "--model.init_args.feature_embed_dim=8",
        "--model.init_args.k=3",
        "--data.init_args.source=shapes",
        "--data.init_args.batch_size=4",
        "--data.init_args.embedded={n_train: 40, n_test: 8, image_size: 32}",
    ],
    "stargan": STARGAN,
    "matchgan": [
        *STARGAN,
        "--model.init_args.classes_per_batch=2",
        "--data.init_args.classes_per_batch=2",
        "--data.init_args.batch_size=8",
        "--data.init_args.labelled_fraction=0.5",
    ],
    "bdl": [
        *TINY_BDL_NETS,
        # one batch an epoch, one epoch a stage: 4 steps of M0, F, M, SSL at K = N = 1
        "--data.init_args.embedded={n_train: 4, n_test: 2, image_size: 32}",
        "--data.init_args.source_size=[32, 32]",
        "--data.init_args.target_size=[32, 32]",
        "--data.init_args.batch_size=4",
        "--trainer.limit_val_batches=0",  # as the preset: the schedule measures mIoU
        "--data.init_args.num_workers=0",
        "--trainer.callbacks.BDLSchedule.m0_epochs=1",
        "--trainer.callbacks.BDLSchedule.m_epochs=1",
        "--trainer.callbacks.BDLSchedule.ssl_epochs=1",
        "--trainer.callbacks.BDLSchedule.batch_size=4",
    ],
}
# the untrained judge each paper's Evaluation gets (training one costs ~50 s): metric names do
# not depend on its weights
JUDGE = {
    "cyclegan": {"n_classes": 4},
    "opgan": {"n_classes": 4},
    "discogan": {"n_classes": 4},
    "cgan": {"n_classes": 10},
    "icgan": {"n_classes": 4},
    "stargan": {"n_classes": 3, "attribute_names": ATTRS},
    "matchgan": {"n_classes": 3, "attribute_names": ATTRS},
}
BUDGET = [
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=2",
    "--trainer.limit_val_batches=1",
    "--trainer.check_val_every_n_epoch=1",
    "--trainer.callbacks.Evaluation.n_images=4",
    "--trainer.callbacks.ModelCheckpoint.every_n_epochs=0",  # BDL's M: 30-60 MB each
    "--trainer.accelerator=cpu",
    "--trainer.enable_progress_bar=false",
    CSV_LOGGER,
]


def _judge(path: Path, **hparams) -> str:
    """An untrained Evaluator checkpoint (Lightning's format) for ``evaluator_checkpoint``."""
    model = Evaluator(**hparams)
    state = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}
    torch.save({**state, "pytorch-lightning_version": L.__version__}, path)
    return str(path)


def _tiny(paper: str, tmp_path: Path) -> list[str]:
    """Tiny nets and data, an untrained judge, no test after fit (BDL's objective is a test
    metric): what a tiny run of ``paper`` adds to its sweep command."""
    args = list(TINY[paper])
    if paper in JUDGE:
        judge = _judge(tmp_path / "judge.ckpt", **JUDGE[paper])
        args.append(f"--trainer.callbacks.Evaluation.evaluator_checkpoint={judge}")
        if paper == "icgan":  # G's instance features h come from the evaluator as well
            args.append(f"--model.init_args.evaluator_checkpoint={judge}")
    if paper != "bdl":  # BDL's objective is measured by test_after_fit
        args.append("--test_after_fit=false")
    return args


def _sweep(paper: str) -> tuple[dict, Path]:
    return sweep.load_sweep(str(ROOT / "experiments" / "sweeps" / f"{paper}.yaml"))


def _base(config: dict) -> list[str]:
    """The sweep command's arguments before ${args}, with the config paths made absolute."""
    base = sweep._base_args(config)
    return [str(ROOT / a) if a.startswith("experiments/") else a for a in base]


# ---------------------------------------------------------------------------- sweep files
def test_every_paper_has_a_sweep_of_its_quick_preset():
    papers = {p.stem for p in EXPERIMENTS.glob("*.yaml")} - {"evaluator", "identity"}
    assert sorted(papers) == PAPERS
    assert sorted(p.stem for p in (EXPERIMENTS / "sweeps").glob("*.yaml")) == PAPERS
    for paper in PAPERS:
        config, _ = _sweep(paper)
        assert sweep._base_args(config) == [
            "--config", f"experiments/{paper}.yaml",
            "--config", "experiments/presets/quick.yaml",
            "--config", f"experiments/presets/quick/{paper}.yaml",
        ]  # fmt: skip
        assert config["metric"]["goal"] in ("minimize", "maximize")


@pytest.mark.parametrize("paper", PAPERS)
def test_every_parameter_value_parses_as_an_override_of_the_paper(paper, monkeypatch):
    monkeypatch.chdir(ROOT)  # the sweep command's paths are relative to the repository
    config, path = _sweep(paper)
    checked = sweep.check_sweep(config, path)
    for key, spec in config["parameters"].items():
        values = {repr(values[key]) for values, _ in checked}
        if "values" in spec:  # every listed value was parsed and arrived
            assert values == {repr(v) for v in spec["values"]}
        else:  # the two ends and a sample of a distribution
            assert len(values) == 3
    if paper == "bdl":  # trainer.max_epochs follows the sampled K and N
        for values, parsed in checked:
            s = parsed.trainer.callbacks[0].init_args
            plan = bdl_plan(values["trainer.callbacks.BDLSchedule.K"],
                            values["trainer.callbacks.BDLSchedule.N"],
                            s.m0_epochs, s.f_epochs, s.m_epochs, s.ssl_epochs)  # fmt: skip
            assert parsed.trainer.max_epochs == plan[-1].start + plan[-1].epochs


def test_a_bad_parameter_is_rejected_naming_it(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    config, _ = _sweep("cyclegan")
    for key, spec, expected in [
        ("model.init_args.n_blocks", {"values": [2.5]}, "n_blocks"),  # int option, float value
        ("model.init_args.no_such_weight", {"value": 1.0}, "no_such_weight"),
        ("trainer.callbacks.HistoryBuffer.size", {"value": 3}, "takes no 'size'"),
        ("trainer.callbacks.BDLSchedule.K", {"value": 1}, "0 BDLSchedule"),
    ]:
        bad = {**config, "parameters": {key: spec}}
        with pytest.raises(SweepError, match=expected) as err:
            sweep.check_sweep(bad, "bad.yaml")
        assert "bad.yaml" in str(err.value)
    with pytest.raises(SweepError, match="no sweep file"):
        sweep.load_sweep("no_such_paper")


# ------------------------------------------------------------------------- the sampler
def test_sampler_follows_wandb_parameter_specs():
    rng = random.Random(0)
    specs = {
        "c": {"value": 0.5},
        "cat": {"values": ["a", "b", "c"], "probabilities": [0.5, 0.5, 0.0]},
        "i": {"distribution": "int_uniform", "min": 1, "max": 3},
        "inferred_int": {"min": 2, "max": 4},
        "u": {"distribution": "uniform", "min": 0.1, "max": 0.2},
        "lv": {"distribution": "log_uniform_values", "min": 1e-5, "max": 1e-3},
        "l": {"distribution": "log_uniform", "min": math.log(1e-5), "max": math.log(1e-3)},
        "q": {"distribution": "q_uniform", "min": 0.0, "max": 2.0, "q": 0.5},
        "qlv": {"distribution": "q_log_uniform_values", "min": 1, "max": 1000, "q": 10},
    }
    draws = [sample_parameters(specs, rng) for _ in range(300)]
    assert {d["c"] for d in draws} == {0.5}
    assert {d["cat"] for d in draws} == {"a", "b"}  # probability 0 never drawn
    assert {d["i"] for d in draws} == {1, 2, 3} and all(type(d["i"]) is int for d in draws)
    assert {d["inferred_int"] for d in draws} == {2, 3, 4}
    assert all(0.1 <= d["u"] <= 0.2 for d in draws)
    for key in ("lv", "l"):  # log-uniform: about half the draws below the geometric mean
        xs = [d[key] for d in draws]
        assert all(1e-5 <= x <= 1e-3 for x in xs)
        assert 0.35 < sum(x < 1e-4 for x in xs) / len(xs) < 0.65
    assert {d["q"] for d in draws} <= {0.0, 0.5, 1.0, 1.5, 2.0}
    assert all(d["qlv"] % 10 == 0 for d in draws)
    assert format_args({"model.init_args.lr": 1e-05, "k": 3}) == [
        "--model.init_args.lr=1e-05",
        "--k=3",
    ]  # W&B's ${args}: --key=str(value)


def test_sampler_rejects_bad_specs():
    rng = random.Random(0)
    with pytest.raises(SweepError, match="distribution 'gamma'"):
        sample_value("x", {"distribution": "gamma", "min": 0, "max": 1}, rng, "s.yaml")
    with pytest.raises(SweepError, match="min 2 > max 1"):
        sample_value("x", {"min": 2, "max": 1}, rng)
    with pytest.raises(SweepError, match="needs value, values or min/max"):
        sample_value("x", {"q": 1}, rng)
    with pytest.raises(SweepError, match="grid search needs values"):
        candidate_values("x", {"distribution": "uniform", "min": 0, "max": 1}, method="grid")


# ------------------------------------------------------------- the metric each paper logs
@pytest.mark.parametrize("paper", [p for p in PAPERS if p != "cyclegan"])  # cyclegan: dry run
def test_sweep_metric_is_logged_by_a_tiny_run_of_the_sweep(paper, tmp_path, request):
    if paper == "cgan":
        request.getfixturevalue("shared_digits")  # the UCI digits, materialised once a session
    config, _ = _sweep(paper)
    # the first value of each parameter (BDL: the shortest loop, K = N = 1)
    values = {k: candidate_values(k, spec)[0] for k, spec in config["parameters"].items()}
    runs = f"--runs_root={tmp_path / 'runs'}"
    run_main([*_base(config), *BUDGET, *_tiny(paper, tmp_path), *format_args(values), runs,
              "--run_id=tiny"])  # fmt: skip
    rows = list(csv.DictReader(open(tmp_path / "runs" / f"{paper}-sweep" / "tiny" / "metrics.csv")))
    metric = config["metric"]["name"]
    assert metric in rows[0], sorted(rows[0])
    assert any(r[metric] for r in rows)


# ----------------------------------------------------------------------------- dry run
def test_make_sweep_dry_run_samples_two_configurations_and_reports_the_metric(tmp_path, capfd):
    """`make sweep NAME=cyclegan DRY_RUN=1` = gan_suite.sweep dry-run cyclegan: two sampled
    configurations run by the sweep's own command, W&B offline, each named and grouped."""
    rc = sweep.main(
        ["dry-run", "cyclegan", "--seed", "1", "--runs_root", str(tmp_path / "runs"),
         "--", *_tiny("cyclegan", tmp_path), "--trainer.callbacks.Evaluation.n_images=4"]
    )  # fmt: skip
    out, err = capfd.readouterr()
    assert rc == 0, (out + err)[-3000:]
    runs = sorted((tmp_path / "runs" / "cyclegan-sweep").iterdir())
    assert len(runs) == 2
    config, _ = _sweep("cyclegan")
    rng = random.Random(1)
    sampled = [sample_parameters(config["parameters"], rng) for _ in range(2)]
    for run_dir, values in zip(sorted(runs, key=lambda p: p.name.split("-dry")[1]), sampled):
        printed = " ".join(format_args(values))
        assert printed in out  # the sampled overrides
        saved = (run_dir / "config.yaml").read_text()
        assert f"lr: {values['model.init_args.lr']}" in saved  # ... are what the run trained
        assert "group: cyclegan-sweep-local" in saved
        assert f"name: cyclegan-sweep/{run_dir.name}" in saved  # the W&B display name
        assert f"cycle_weight_A={values['model.init_args.cycle_weight_A']:.3g}" in run_dir.name
        assert list((run_dir / "wandb").glob("offline-run-*"))  # W&B ran, offline
        value = sweep.read_metric(run_dir / "metrics.csv", "val/A->B/fid")
        assert f"val/A->B/fid = {value:.6g}" in out  # the metric at the end


# ----------------------------------------------------------------------- online path
def test_online_sweep_fails_clearly_without_login_or_server(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    with pytest.raises(SweepError, match="WANDB_MODE=offline.*DRY_RUN=1"):
        sweep.start("cyclegan")
    monkeypatch.delenv("WANDB_MODE")
    assert sweep.main(["start", "cyclegan"]) == 2
    with pytest.raises(SweepError, match="not logged in to W&B.*wandb login"):
        sweep.start("cyclegan")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(SweepError, match="cannot reach the W&B server http://127.0.0.1:9"):
        sweep.start("cyclegan")


def test_online_sweep_creates_the_sweep_and_runs_an_agent(tmp_path, monkeypatch):
    """wandb.sweep(config, project=...) then wandb.agent(sweep_id, count=...), from the
    repository root (the command's paths); the W&B calls are recorded, not made."""
    import wandb

    calls = []
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sweep, "_require_server", lambda: None)
    monkeypatch.setattr(sweep, "check_sweep", lambda config, path: calls.append("check"))
    monkeypatch.setattr(wandb, "sweep", lambda config, **kw: calls.append((config, kw)) or "s1d")
    monkeypatch.setattr(
        wandb, "agent", lambda sweep_id, **kw: calls.append((sweep_id, kw, Path.cwd()))
    )
    path = ROOT / "experiments" / "sweeps" / "bdl.yaml"
    assert sweep.start(str(path), count=3) == "s1d"
    config, _ = sweep.load_sweep(str(path))
    assert calls == [
        "check",
        (config, {"project": "gan-suite", "entity": None}),
        ("s1d", {"project": "gan-suite", "entity": None, "count": 3}, ROOT),
    ]


def test_agent_run_is_grouped_by_sweep_and_named_by_its_values(monkeypatch):
    """What the agent's command runs: the W&B sweep id names the group, values the run."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("WANDB_SWEEP_ID", "abc123")
    config, _ = _sweep("bdl")
    seen = {}
    monkeypatch.setattr("gan_suite.cli.cli_main", lambda args: seen.setdefault("args", args))
    values = {"trainer.callbacks.BDLSchedule.K": 1, "trainer.callbacks.BDLSchedule.N": 3,
              "trainer.callbacks.BDLSchedule.pseudo_label_threshold": 0.8}  # fmt: skip
    assert sweep.main(["run", *sweep._base_args(config), *format_args(values)]) == 0
    _, parsed = fit_arguments(seen["args"][1:])  # gan-suite fit's own parse of them
    assert parsed.name == "bdl-sweep"
    assert parsed.run_id.startswith("K=1-N=3-pseudo_label_threshold=0.8-")
    assert parsed.trainer.logger[-1].init_args.group == "bdl-sweep-abc123"
    schedule = parsed.trainer.callbacks[0].init_args
    assert (schedule.K, schedule.N, schedule.pseudo_label_threshold) == (1, 3, 0.8)
    assert parsed.trainer.max_epochs == 2 + 1 + 2 + 3 * 2  # M0 + F + M + 3 x SSL (quick)
