"""W&B sweeps of the papers: ``experiments/sweeps/<paper>.yaml`` run by a W&B agent, or sampled
and run here, offline (``DRY_RUN=1``).

    make sweep NAME=cyclegan [COUNT=20]   # wandb.sweep + wandb.agent (needs `wandb login`)
    make sweep NAME=cyclegan DRY_RUN=1    # 2 sampled configurations, a few batches, W&B offline
    python -m gan_suite.sweep check NAME  # every parameter parses as an override of the paper

A sweep file is W&B's sweep configuration (program, method, metric, parameters, command); run
from the repository root. Its command calls ``python -m gan_suite.sweep run`` with the paper's
``--config`` files and W&B's ``${args}`` (one ``--<key>=<value>`` per sampled parameter);
:mod:`gan_suite.sweep_run` makes one ``gan-suite fit`` of them (list items such as
``trainer.callbacks.BDLSchedule.K``, BDL's derived ``trainer.max_epochs``, run names and W&B
groups). Values are sampled here by :mod:`gan_suite.sweep_space`, on the server by W&B.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import random
import secrets
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from gan_suite.sweep_run import LIST_ITEM, fit_arguments, item_of, paper_of, run_main, run_name
from gan_suite.sweep_space import SweepError, candidate_values, format_args, sample_parameters

__all__ = [
    "SweepError",
    "fit_arguments",
    "load_sweep",
    "check_sweep",
    "dry_run",
    "start",
    "read_metric",
]

SWEEPS_DIR = Path("experiments") / "sweeps"
REQUIRED_KEYS = ("program", "method", "metric", "parameters", "command")


# ------------------------------------------------------------------------------- sweep files
def load_sweep(name: str) -> tuple[dict, Path]:
    """Read and check ``experiments/sweeps/<name>.yaml`` (or a path ending in ``.yaml``),
    relative to the working directory, else to the checkout this package is installed from.

    Returns:
        (the sweep configuration as W&B reads it, its path).

    Raises:
        SweepError: no such file; a required key missing; a bad metric, method, parameter
            spec or command (the message names the file and what was expected).
    """
    path = Path(name) if name.endswith((".yaml", ".yml")) else SWEEPS_DIR / f"{name}.yaml"
    checkout = Path(__file__).resolve().parents[1]  # the repository this package runs from
    if not path.is_file() and not path.is_absolute() and (checkout / path).is_file():
        path = checkout / path
    if not path.is_file():
        known = sorted(p.stem for p in (checkout / SWEEPS_DIR).glob("*.yaml"))
        raise SweepError(f"no sweep file {path} (sweeps: {known})")
    config = yaml.safe_load(path.read_text())
    missing = [k for k in REQUIRED_KEYS if not isinstance(config, dict) or k not in config]
    if missing:
        raise SweepError(f"{path}: missing {missing} (a W&B sweep needs {list(REQUIRED_KEYS)})")
    metric = config["metric"]
    if not isinstance(metric, dict) or not metric.get("name"):
        raise SweepError(f"{path}: metric needs a name (the key the run logs) and a goal")
    if metric.get("goal", "minimize") not in ("minimize", "maximize"):
        raise SweepError(f"{path}: metric.goal={metric['goal']!r}: expected minimize or maximize")
    if config["method"] not in ("grid", "random", "bayes"):
        raise SweepError(f"{path}: method={config['method']!r}: expected grid, random or bayes")
    if not isinstance(config["parameters"], dict) or not config["parameters"]:
        raise SweepError(f"{path}: parameters must map option keys to W&B parameter specs")
    for key, spec in config["parameters"].items():
        candidate_values(key, spec, method=config["method"], where=str(path))
    command = config["command"]
    if "${args}" not in command or "gan_suite.sweep" not in command or "run" not in command:
        raise SweepError(
            f"{path}: command must call `python -m gan_suite.sweep run --config ... ${{args}}`"
        )
    return config, path


def _base_args(config: dict, path: Path | str | None = None) -> list[str]:
    """The arguments the command gives ``run`` before W&B's ``${args}``; with the sweep
    file's ``path``, its relative ``--config`` files resolved in that repository."""
    command = [str(c) for c in config["command"]]
    args = command[command.index("run") + 1 : command.index("${args}")]
    if path is None or not Path(path).is_file():
        return args
    root = Path(path).resolve().parents[2]  # experiments/sweeps/<name>.yaml
    return [
        str(root / a) if prev == "--config" and not Path(a).is_absolute() else a
        for prev, a in zip(["", *args], args)
    ]


# ----------------------------------------------------------------------------- offline checks
def check_sweep(config: dict, path: Path | str = "sweep") -> list[tuple[dict[str, Any], Any]]:
    """Parse every parameter's candidate values (each ``values`` entry; a distribution's
    two ends and a sample) as overrides of the paper's config, the way W&B passes them, and
    check the parsed config holds each value where its key says.

    Returns:
        the configurations checked: ``(sampled values, parsed gan-suite fit config)`` pairs.

    Raises:
        SweepError: a parameter that is no option of the paper, a value of the wrong type, or
            a value that does not arrive where the key says (e.g. overridden later).
    """
    rng = random.Random(0)
    params = config["parameters"]
    candidates = {
        k: candidate_values(k, s, config["method"], str(path), rng) for k, s in params.items()
    }
    base = _base_args(config, path)
    checked = []
    for j in range(max(len(v) for v in candidates.values())):
        values = {k: v[j % len(v)] for k, v in candidates.items()}
        try:
            _, parsed = fit_arguments(base + format_args(values))
        except SweepError as err:
            raise SweepError(f"{path}: the sampled values {values} do not parse:\n{err}") from err
        for key, value in values.items():
            match = LIST_ITEM.match(key)
            got = item_of(parsed, *match.groups()[:2]).init_args[match[3]] if match else parsed[key]
            same = math.isclose(got, value) if isinstance(value, float) else got == value
            if not same:
                raise SweepError(f"{path}: {key}={value!r} arrives as {got!r} in the config")
        checked.append((values, parsed))
    return checked


def read_metric(metrics_csv: Path, name: str) -> float:
    """The last value logged under ``name`` in a run's ``metrics.csv``.

    Raises:
        SweepError: no such file, or ``name`` never logged (the message lists what was)."""
    if not metrics_csv.is_file():
        raise SweepError(f"no {metrics_csv}: the run logged nothing")
    with open(metrics_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    keys = sorted(rows[0]) if rows else []
    values = [r[name] for r in rows if r.get(name) not in (None, "")]
    if not values:
        raise SweepError(
            f"{metrics_csv}: the sweep's metric {name!r} was not logged (logged: {keys})"
        )
    return float(values[-1])


def dry_run(
    name: str,
    n: int = 2,
    seed: int | None = None,
    extra: list[str] | None = None,
    runs_root: str | None = None,
) -> list[dict[str, Any]]:
    """Sample ``n`` configurations of a sweep here and run the sweep's command for each, W&B
    offline, on a budget of a few batches (:data:`DRY_RUN_BUDGET`, then the ``extra``
    overrides; the sampled values come last and win); print the sampled overrides and the
    metric's last value.

    Returns:
        one record per run: ``values``, ``run_dir``, ``metric`` (name), ``value``.

    Raises:
        SweepError: a bad sweep file, a failed run, or a run that did not log the metric.
    """
    config, path = load_sweep(name)
    root = path.resolve().parents[2]  # experiments/sweeps/<name>.yaml -> the repository
    rng = random.Random(seed)
    extra = [*DRY_RUN_BUDGET, *(extra or [])]
    runs_root = str(Path(runs_root or root / "runs").resolve())
    metric = config["metric"]["name"]
    records = []
    for i in range(n):
        values = sample_parameters(config["parameters"], rng)
        sampled = format_args(values)
        paper = paper_of(_base_args(config))
        run_id = f"{run_name(values)}-dry{i}-{secrets.token_hex(2)}"  # never an old run's
        command = []
        for part in map(str, config["command"]):
            command += {
                "${env}": [],
                "${interpreter}": [sys.executable],
                "${program}": [str(config["program"])],
                "${args}": [*extra, *sampled, f"--run_id={run_id}", f"--runs_root={runs_root}"],
            }.get(part, [part])
        print(f"[gan-suite sweep] dry run {i + 1}/{n} of {path}: {' '.join(sampled)}", flush=True)
        env = {**os.environ, "WANDB_MODE": "offline"}
        env.pop("WANDB_SWEEP_ID", None)
        done = subprocess.run(command, cwd=root, env=env)
        if done.returncode:
            raise SweepError(
                f"dry run {i + 1} failed (exit {done.returncode}): {' '.join(command)}"
            )
        run_dir = Path(runs_root) / f"{paper}-sweep" / run_id
        value = read_metric(run_dir / "metrics.csv", metric)
        print(
            f"[gan-suite sweep] dry run {i + 1}/{n}: {metric} = {value:.6g} "
            f"({config['metric'].get('goal', 'minimize')}; {run_dir})",
            flush=True,
        )
        records.append({"values": values, "run_dir": run_dir, "metric": metric, "value": value})
    print(f"[gan-suite sweep] dry run of {path} done: {metric} by configuration")
    for r in records:
        print(f"  {r['value']:<12.6g} {' '.join(format_args(r['values']))}")
    return records


# a few batches of one epoch, a small evaluation; BDL keeps its schedule's epochs (derived)
DRY_RUN_BUDGET = [
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=2",
    "--trainer.check_val_every_n_epoch=1",
    "--trainer.callbacks.Evaluation.n_images=32",
]


# ------------------------------------------------------------------------- the online path
def _require_server() -> None:
    """Fail early, with the way out, when the agent could not talk to the W&B server."""
    from gan_suite.loggers import wandb_credentials_available

    offline = "run `make sweep NAME=<paper> DRY_RUN=1` to try a sweep offline"
    mode = os.environ.get("WANDB_MODE", "")
    if mode in ("offline", "disabled", "dryrun"):
        raise SweepError(
            f"WANDB_MODE={mode}: a W&B sweep needs the W&B server; unset it, or {offline}"
        )
    if not wandb_credentials_available():
        raise SweepError(
            "not logged in to W&B (no WANDB_API_KEY, no api.wandb.ai entry in ~/.netrc): "
            f"run `.venv/bin/wandb login` first, or {offline}"
        )
    url = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    host, _, port = url.split("://")[-1].rstrip("/").partition(":")
    try:
        socket.create_connection(
            (host, int(port or (80 if url.startswith("http:") else 443))), 5
        ).close()
    except OSError as err:
        raise SweepError(
            f"cannot reach the W&B server {url} ({err}): no network? {offline}"
        ) from err


def start(
    name: str, count: int | None = None, project: str | None = None, entity: str | None = None
) -> str:
    """Create the sweep on the W&B server (``wandb.sweep``) and run an agent here
    (``wandb.agent``, ``count`` runs; None: until the sweep ends). Returns the sweep id.

    Raises:
        SweepError: a bad sweep file or parameter (checked offline first); not logged in,
            ``WANDB_MODE=offline`` or no route to the server.
    """
    config, path = load_sweep(name)
    _require_server()
    check_sweep(config, path)  # offline, before anything is created on the server
    import wandb

    project = project or config.get("project") or "gan-suite"
    entity = entity or config.get("entity")
    try:
        sweep_id = wandb.sweep(config, project=project, entity=entity)
    except Exception as err:  # the server's refusal, whatever wandb raises for it
        raise SweepError(f"W&B did not create the sweep of {path}: {err}") from err
    print(
        f"[gan-suite sweep] sweep {sweep_id} ({path}); more agents: .venv/bin/wandb agent "
        f"{entity + '/' if entity else ''}{project}/{sweep_id}",
        flush=True,
    )
    os.chdir(path.resolve().parents[2])  # the command's paths are relative to the repository
    wandb.agent(sweep_id, project=project, entity=entity, count=count)
    return sweep_id


def main(argv: list[str] | None = None) -> int:
    """``python -m gan_suite.sweep {start,dry-run,check} NAME ...`` or ``run ARGS...``."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:1] == ["run"]:
            return run_main(argv[1:])
        # dry-run NAME [options] -- <more gan-suite overrides>
        argv, extra = (
            (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
        )
        parser = argparse.ArgumentParser(
            prog="python -m gan_suite.sweep",
            description=__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub = parser.add_subparsers(dest="command", required=True)
        p_start = sub.add_parser("start", help="create the W&B sweep and run an agent")
        p_dry = sub.add_parser(
            "dry-run", help="sample and run configurations here, offline; -- OVERRIDES: more"
        )
        p_check = sub.add_parser("check", help="parse every parameter's values, offline")
        for p in (p_start, p_dry, p_check):
            p.add_argument("name", help="a paper (experiments/sweeps/<name>.yaml) or a file")
        p_start.add_argument("--count", type=int, default=None, help="runs of this agent")
        p_start.add_argument("--project", default=None)
        p_start.add_argument("--entity", default=None)
        p_dry.add_argument("--n", type=int, default=2, help="configurations to run")
        p_dry.add_argument("--seed", type=int, default=None, help="sampling seed")
        p_dry.add_argument("--runs_root", default=None)
        opts = parser.parse_args(argv)
        if opts.command == "start":
            start(opts.name, opts.count, opts.project, opts.entity)
        elif opts.command == "dry-run":
            dry_run(opts.name, opts.n, opts.seed, extra, opts.runs_root)
        else:
            config, path = load_sweep(opts.name)
            for values, _ in check_sweep(config, path):
                print("ok " + " ".join(format_args(values)))
    except SweepError as err:
        print(f"[gan-suite sweep] error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
