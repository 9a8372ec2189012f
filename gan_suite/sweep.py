"""W&B sweeps of the papers: ``experiments/sweeps/<paper>.yaml`` run by a W&B agent, or sampled
and run here, offline (``DRY_RUN=1``).

    make sweep NAME=cyclegan [COUNT=20]   # wandb.sweep + wandb.agent (needs `wandb login`)
    make sweep NAME=cyclegan DRY_RUN=1    # 2 sampled configurations, a few batches, W&B offline
    python -m gan_suite.sweep check NAME  # every parameter parses as an override of the paper

A sweep file is W&B's sweep configuration (program, method, metric, parameters, command); run
from the repository root. Its command calls ``python -m gan_suite.sweep run`` with the paper's
``--config`` files and W&B's ``${args}`` (one ``--<key>=<value>`` per sampled parameter), and
``run`` makes one ``gan-suite fit`` of them:

- a key that is a CLI option (``model.init_args.lr``) is passed on as it is;
- ``trainer.callbacks.<Class>.<arg>`` (or ``trainer.logger.<Class>.<arg>``) sets an argument of
  the list item of that class: from the command line jsonargparse reaches only the *last* item
  of a list, and BDL's schedule is the first callback, so the whole list is passed again;
- derived values: ``trainer.max_epochs`` = the length of the BDL schedule's K x N plan, which
  ``BDLSchedule`` requires and which changes with the sampled K and N;
- the run is named by its sampled values (``--name <paper>-sweep --run_id lr=0.0002-...-ab12``:
  the W&B display name is ``<name>/<run_id>``) and grouped by sweep (the WandbLogger's
  ``group`` = ``<paper>-sweep-<sweep id>``).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import secrets
import socket
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import yaml

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
# `trainer.callbacks.BDLSchedule.K`: an argument of the list item of a class
LIST_ITEM = re.compile(r"^(trainer\.(?:callbacks|logger))\.([A-Z]\w*)\.(\w+)$")


# ------------------------------------------------------------------------------- sweep files
def load_sweep(name: str) -> tuple[dict, Path]:
    """Read and check ``experiments/sweeps/<name>.yaml`` (or a path ending in ``.yaml``).

    Returns:
        (the sweep configuration as W&B reads it, its path).

    Raises:
        SweepError: no such file; a required key missing; a bad metric, method, parameter
            spec or command (the message names the file and what was expected).
    """
    path = Path(name) if name.endswith((".yaml", ".yml")) else SWEEPS_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in SWEEPS_DIR.glob("*.yaml")) if SWEEPS_DIR.is_dir() else []
        raise SweepError(f"no sweep file {path} (run from the repository root; sweeps: {known})")
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


def _base_args(config: dict) -> list[str]:
    """The arguments the command gives ``run`` before W&B's ``${args}``."""
    command = [str(c) for c in config["command"]]
    return command[command.index("run") + 1 : command.index("${args}")]


def _paper(args: list[str]) -> str:
    """The paper of a run: the stem of its first ``--config`` (``experiments/<paper>.yaml``)."""
    for i, arg in enumerate(args[:-1]):
        if arg == "--config":
            return Path(args[i + 1]).stem
    raise SweepError(f"no --config in the sweep command's arguments {args}")


# ------------------------------------------------------------------ the suite's own parser
_PARSER = None


def parse_fit(args: list[str]):
    """Parse ``gan-suite fit`` arguments (without ``fit``) with the suite's LightningCLI parser,
    without creating a run directory or instantiating anything; returns the config Namespace.

    Raises:
        SweepError: the arguments do not parse (unknown option, value of the wrong type).
    """
    global _PARSER
    import lightning as L
    from jsonargparse import ArgumentError

    from gan_suite.cli import GanSuiteCLI
    from gan_suite.utils import quiet

    class _ParseOnly(GanSuiteCLI):
        # cli_main(run=False) would make the run directory and build the paper-size nets
        def before_instantiate_classes(self) -> None:
            pass

        def instantiate_classes(self) -> None:
            pass

    try:
        if _PARSER is None:
            with warnings.catch_warnings(), quiet("lightning.fabric"):  # "Seed set to"
                # a warning about sys.argv, which holds this module's own arguments
                warnings.filterwarnings("ignore", "LightningCLI's args parameter")
                cli = _ParseOnly(
                    L.LightningModule,
                    L.LightningDataModule,
                    subclass_mode_model=True,
                    subclass_mode_data=True,
                    auto_configure_optimizers=False,
                    parser_kwargs={"parser_mode": "omegaconf", "exit_on_error": False},
                    args=args,
                    run=False,
                )
            _PARSER = cli.parser
            return cli.config
        return _PARSER.parse_args(args)
    except (ArgumentError, SystemExit) as err:
        raise SweepError(f"gan-suite fit {' '.join(args)}:\n  {err}") from err


# ------------------------------------------------------------------------ the run's command
def _scalar(raw: str) -> Any:
    """A value as W&B writes it (``str(value)``) back to its Python type."""
    if raw in ("True", "False"):
        return raw == "True"
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def _items(node) -> list:
    if node is None or isinstance(node, bool):
        return []
    return list(node) if isinstance(node, list) else [node]


def _item(config, list_key: str, cls: str):
    items = [i for i in _items(config[list_key]) if i.class_path.rsplit(".", 1)[-1] == cls]
    if len(items) != 1:
        names = [i.class_path.rsplit(".", 1)[-1] for i in _items(config[list_key])]
        raise SweepError(f"{list_key} has {len(items)} {cls} (expected one; it has {names})")
    return items[0]


def _as_dict(item) -> dict:
    args = getattr(item, "init_args", None)
    return {"class_path": item.class_path, "init_args": args.as_dict() if args else {}}


def run_name(overrides: dict[str, Any], limit: int = 80) -> str:
    """A run id from the sampled values, e.g. ``cycle_weight_A=5-lr=0.000123``: the W&B
    display name and run directory show what the run tried."""
    parts = []
    for key, value in overrides.items():
        text = f"{value:.3g}" if isinstance(value, float) else str(value)
        parts.append(f"{key.rsplit('.', 1)[-1]}={text}")
    return re.sub(r"[^\w.=+-]", "_", "-".join(parts))[:limit] or "defaults"


def fit_arguments(args: list[str], group: str | None = None) -> tuple[list[str], Any]:
    """Turn a sweep command's arguments (``--config`` files and ``--key=value`` overrides) into
    ``gan-suite fit`` arguments, and parse them.

    ``trainer.callbacks.<Class>.<arg>=v`` / ``trainer.logger.<Class>.<arg>=v`` set an argument
    of that list item; ``trainer.max_epochs`` follows a ``BDLSchedule`` (its plan's length);
    ``--name`` / ``--run_id`` default to ``<paper>-sweep`` / the sampled values; ``group``
    becomes the WandbLogger's ``group`` (when the config has one).

    Returns:
        (the arguments for ``gan-suite fit``, without ``fit``; their parsed config).

    Raises:
        SweepError: an override that is no option or of the wrong type, a list item that is
            not in the config, or an argument it does not take.
    """
    passed, items, overrides = [], {}, {}
    for arg in args:
        key, eq, raw = arg[2:].partition("=")
        match = LIST_ITEM.match(key) if arg.startswith("--") and eq else None
        if match:
            items[match.groups()] = _scalar(raw)
            overrides[key] = _scalar(raw)
            continue
        passed.append(arg)
        if arg.startswith("--") and eq and key not in ("name", "run_id", "runs_root"):
            overrides[key] = _scalar(raw)
    config = parse_fit(passed)
    changed: set[str] = set()
    for (list_key, cls, name), value in items.items():
        item = _item(config, list_key, cls)
        if getattr(item, "init_args", None) is None:
            raise SweepError(f"{list_key}: {cls} takes no arguments (given {name}={value!r})")
        init_args = item.init_args
        if name not in init_args:
            raise SweepError(f"{list_key}: {cls} takes no {name!r} (it takes {list(init_args)})")
        init_args[name] = value
        changed.add(list_key)
    loggers = [i for i in _items(config.trainer.logger) if i.class_path.endswith("WandbLogger")]
    if group and loggers:
        loggers[0].init_args.group = group
        changed.add("trainer.logger")
    extra = []
    for list_key in sorted(changed):
        dumped = [_as_dict(i) for i in _items(config[list_key])]
        extra.append(f"--{list_key}={json.dumps(dumped, default=str)}")
    schedules = [
        i for i in _items(config.trainer.callbacks) if i.class_path.endswith("BDLSchedule")
    ]
    if schedules:
        from gan_suite.callbacks.bdl_schedule import bdl_plan

        a = schedules[0].init_args
        plan = bdl_plan(a.K, a.N, a.m0_epochs, a.f_epochs, a.m_epochs, a.ssl_epochs)
        epochs = plan[-1].start + plan[-1].epochs if plan else 0
        if config.trainer.max_epochs != epochs:
            print(
                f"[gan-suite sweep] trainer.max_epochs: {config.trainer.max_epochs} -> {epochs}"
                f" (the BDL schedule's length, K={a.K}, N={a.N})"
            )
        extra.append(f"--trainer.max_epochs={epochs}")
    if not any(a.startswith("--name") for a in passed):
        extra.append(f"--name={_paper(passed)}-sweep")
    if not any(a.startswith("--run_id") for a in passed):
        extra.append(f"--run_id={run_name(overrides)}-{secrets.token_hex(2)}")
    fit_args = passed + extra
    return fit_args, parse_fit(fit_args)


def run_main(args: list[str]) -> int:
    """``python -m gan_suite.sweep run ARGS``: what a sweep's command runs for each sampled
    configuration (by the W&B agent, or by :func:`dry_run`): one ``gan-suite fit``."""
    paper = _paper(args)
    group = f"{paper}-sweep-{os.environ.get('WANDB_SWEEP_ID') or 'local'}"
    fit_args, _ = fit_arguments(args, group=group)
    print("[gan-suite sweep] gan-suite fit " + " ".join(fit_args), flush=True)
    from gan_suite.cli import cli_main

    with warnings.catch_warnings():  # about sys.argv, which holds this module's own
        warnings.filterwarnings("ignore", "LightningCLI's args parameter")
        cli_main(["fit", *fit_args])
    return 0


# ----------------------------------------------------------------------------- offline checks
def check_sweep(config: dict, path: Path | str = "sweep") -> list[dict[str, Any]]:
    """Parse every parameter's candidate values (each ``values`` entry; a distribution's
    bounds and samples) as overrides of the paper's config, as W&B would pass them, and check
    the parsed config holds each value. Returns the configurations checked.

    Raises:
        SweepError: a parameter that is no option of the paper, a value of the wrong type, or
            a value that does not arrive where the key says (e.g. overridden later).
    """
    import random

    rng = random.Random(0)
    params = config["parameters"]
    candidates = {
        k: candidate_values(k, s, config["method"], str(path), rng) for k, s in params.items()
    }
    base = _base_args(config)
    checked = []
    for j in range(max(len(v) for v in candidates.values())):
        values = {k: v[j % len(v)] for k, v in candidates.items()}
        try:
            _, parsed = fit_arguments(base + format_args(values))
        except SweepError as err:
            raise SweepError(f"{path}: the sampled values {values} do not parse:\n{err}") from err
        for key, value in values.items():
            match = LIST_ITEM.match(key)
            got = _item(parsed, *match.groups()[:2]).init_args[match[3]] if match else parsed[key]
            same = math.isclose(got, value) if isinstance(value, float) else got == value
            if not same:
                raise SweepError(f"{path}: {key}={value!r} arrives as {got!r} in the config")
        checked.append(values)
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
    offline, with ``extra`` overrides (default: a few batches, 1 epoch); print the sampled
    overrides and the metric's last value.

    Returns:
        one record per run: ``values``, ``run_dir``, ``metric`` (name), ``value``.

    Raises:
        SweepError: a bad sweep file, a failed run, or a run that did not log the metric.
    """
    import random

    config, path = load_sweep(name)
    root = path.resolve().parents[2]  # experiments/sweeps/<name>.yaml -> the repository
    rng = random.Random(seed)
    extra = DRY_RUN_BUDGET if extra is None else extra
    runs_root = str(Path(runs_root or root / "runs").resolve())
    metric = config["metric"]["name"]
    records = []
    for i in range(n):
        values = sample_parameters(config["parameters"], rng)
        sampled = format_args(values)
        paper = _paper(_base_args(config))
        run_id = f"{run_name(values)}-dry{i}"
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
    sweep_id = wandb.sweep(config, project=project, entity=entity)
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
        parser = argparse.ArgumentParser(
            prog="python -m gan_suite.sweep",
            description=__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub = parser.add_subparsers(dest="command", required=True)
        p_start = sub.add_parser("start", help="create the W&B sweep and run an agent")
        p_dry = sub.add_parser("dry-run", help="sample and run configurations here, offline")
        p_check = sub.add_parser("check", help="parse every parameter's values, offline")
        for p in (p_start, p_dry, p_check):
            p.add_argument("name", help="a paper (experiments/sweeps/<name>.yaml) or a file")
        p_start.add_argument("--count", type=int, default=None, help="runs of this agent")
        p_start.add_argument("--project", default=None)
        p_start.add_argument("--entity", default=None)
        p_dry.add_argument("--n", type=int, default=2, help="configurations to run")
        p_dry.add_argument("--seed", type=int, default=None, help="sampling seed")
        p_dry.add_argument("--runs_root", default=None)
        p_dry.add_argument("extra", nargs="*", help="overrides instead of the few-batch budget")
        opts = parser.parse_args(argv)
        if opts.command == "start":
            start(opts.name, opts.count, opts.project, opts.entity)
        elif opts.command == "dry-run":
            dry_run(opts.name, opts.n, opts.seed, opts.extra or None, opts.runs_root)
        else:
            config, path = load_sweep(opts.name)
            for values in check_sweep(config, path):
                print("ok " + " ".join(format_args(values)))
    except SweepError as err:
        print(f"[gan-suite sweep] error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
