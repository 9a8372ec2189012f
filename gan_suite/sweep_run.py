"""One run of a sweep: ``python -m gan_suite.sweep run ARGS`` turns a sweep command's
arguments (the paper's ``--config`` files and W&B's ``--<key>=<value>`` per sampled parameter)
into one ``gan-suite fit``, checked by the suite's own LightningCLI parser first.

- a key that is a CLI option (``model.init_args.lr``) is passed on as it is;
- ``trainer.callbacks.<Class>.<arg>`` (or ``trainer.logger.<Class>.<arg>``) sets an argument of
  the list item of that class: from the command line jsonargparse reaches only the *last* item
  of a list, and BDL's schedule is the first callback, so the whole list is passed again;
- derived values: ``trainer.max_epochs`` = the length of the BDL schedule's K x N plan, which
  ``BDLSchedule`` requires and which changes with the sampled K and N;
- the run is named by its sampled values (``--name <paper>-sweep --run_id lr=0.0002-...-ab12``:
  the W&B display name is ``<name>/<run_id>``) and grouped by sweep (the WandbLogger's
  ``group`` = ``<paper>-sweep-<W&B sweep id>``, ``local`` outside an agent).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import warnings
from pathlib import Path
from typing import Any

import yaml

from gan_suite.sweep_space import SweepError

# `trainer.callbacks.BDLSchedule.K`: an argument of the list item of a class
LIST_ITEM = re.compile(r"^(trainer\.(?:callbacks|logger))\.([A-Z]\w*)\.(\w+)$")


def paper_of(args: list[str]) -> str:
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

    from gan_suite.cli import GanSuiteCLI, cli_kwargs
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
                    args=args,
                    run=False,
                    **cli_kwargs(exit_on_error=False),
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


def item_of(config, list_key: str, cls: str):
    """The one item of class ``cls`` in the list ``list_key`` of a parsed config.

    Raises:
        SweepError: none or several items of that class (the message lists the items)."""
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
        if isinstance(value, (list, dict)):  # a whole list or mapping says little in a name
            continue
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
        item = item_of(config, list_key, cls)
        if getattr(item, "init_args", None) is None:
            raise SweepError(f"{list_key}: {cls} takes no arguments (given {name}={value!r})")
        init_args = item.init_args
        if name not in init_args:
            known = list(init_args.keys())
            raise SweepError(f"{list_key}: {cls} takes no {name!r} (it takes {known})")
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

        s = schedules[0].init_args
        plan = bdl_plan(s.K, s.N, s.m0_epochs, s.f_epochs, s.m_epochs, s.ssl_epochs)
        epochs = plan[-1].start + plan[-1].epochs if plan else 0
        if config.trainer.max_epochs != epochs:
            print(
                f"[gan-suite sweep] trainer.max_epochs: {config.trainer.max_epochs} -> {epochs}"
                f" (the BDL schedule's length, K={s.K}, N={s.N})"
            )
        extra.append(f"--trainer.max_epochs={epochs}")
    reparse = bool(extra)  # a list or max_epochs changed: check the whole again
    if not any(a.startswith("--name") for a in passed):
        config.name = f"{paper_of(passed)}-sweep"
        extra.append(f"--name={config.name}")
    if not any(a.startswith("--run_id") for a in passed):
        config.run_id = f"{run_name(overrides)}-{secrets.token_hex(2)}"
        extra.append(f"--run_id={config.run_id}")
    fit_args = passed + extra
    return fit_args, parse_fit(fit_args) if reparse else config


def run_main(args: list[str]) -> int:
    """``python -m gan_suite.sweep run ARGS``: what a sweep's command runs for each sampled
    configuration (by the W&B agent, or by :func:`dry_run`): one ``gan-suite fit``."""
    paper = paper_of(args)
    group = f"{paper}-sweep-{os.environ.get('WANDB_SWEEP_ID') or 'local'}"
    fit_args, _ = fit_arguments(args, group=group)
    print("[gan-suite sweep] gan-suite fit " + " ".join(fit_args), flush=True)
    from gan_suite.cli import cli_main

    with warnings.catch_warnings():  # about sys.argv, which holds this module's own
        warnings.filterwarnings("ignore", "LightningCLI's args parameter")
        cli_main(["fit", *fit_args])
    return 0
