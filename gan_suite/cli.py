"""The ``gan-suite`` command: LightningCLI with run directories and omegaconf configs.

    gan-suite fit  --config experiments/cyclegan.yaml [--config experiments/presets/quick.yaml]
    gan-suite test --config experiments/cyclegan.yaml \
                   --ckpt_path runs/cyclegan/<id>/checkpoints/last.ckpt

The model and data module are chosen by ``class_path`` in the YAML; several ``--config``
files merge in order. Every run gets its own directory ``<runs_root>/<name>/<run_id>/`` that
holds the resolved ``config.yaml``, ``metrics.csv``, ``checkpoints/``, ``samples/`` and the
W&B offline folder; nothing of an earlier run is ever overwritten.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import shutil
import sys
import time
import warnings
from pathlib import Path

import lightning as L
from jsonargparse import DefaultHelpFormatter
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

from gan_suite.cli_runs import (
    BATCH_LIMITS,
    add_budget_callback,
    changed_model_options,
    insert_resume_config,
    latest_run_checkpoint,
    normalise_budgets,
    refuse_changed_options,
    resume_checkpoint,
    run_dir_of_checkpoint,
)

RUN_DIR_ENV = "GAN_SUITE_RUN_DIR"
PAPERS = {
    "cyclegan": "CycleGAN (Zhu et al. 2017)",
    "discogan": "DiscoGAN (Kim et al. 2017)",
    "cgan": "conditional GAN (Mirza & Osindero 2014)",
    "icgan": "instance-conditioned GAN (Casanova et al. 2021)",
    "stargan": "StarGAN (Choi et al. 2018)",
    "matchgan": "MatchGAN (Sun et al. 2020)",
    "opgan": "OP-GAN, self-supervised CycleGAN (Xie et al. 2020)",
    "bdl": "BDL, bidirectional segmentation adaptation (Li et al. 2019)",
}
DESCRIPTION = (
    "gan-suite: GAN papers side by side on PyTorch Lightning, one config system.\n"
    + "".join(f"  {k:<9} {v:<60} experiments/{k}.yaml\n" for k, v in PAPERS.items())
    + "\n  gan-suite fit --config experiments/<paper>.yaml [--config experiments/presets/quick.yaml"
    "\n                --config experiments/presets/quick/<paper>.yaml]   (make experiment NAME=)"
    "\n  gan-suite fit --resume runs/<paper>/<run_id>     continue a run in its directory"
    "\n  gan-suite test --ckpt_path runs/<paper>/<run_id>/checkpoints/last.ckpt"
    "\n  gan-suite predict --help                         translate a folder of images"
    "\n  gan-suite compare RUN_DIR [RUN_DIR ...]          side-by-side metrics"
)


class _HelpFormatter(DefaultHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """jsonargparse's help, keeping the description's line breaks (the papers' table)."""


_HELP = {"formatter_class": _HelpFormatter}


def _not_ours(record: logging.LogRecord) -> bool:
    """Drop two of Lightning's notes from a run's output: "limit_*=1.0 ... 100% of the batches"
    (wrong here: the suite sets a whole number of batches on the Trainer after building it, see
    normalise_budgets) and an advertisement for a cloud logger on every run."""
    message = record.getMessage()
    return "was configured so 100%" not in message and "Tip: For seamless cloud" not in message


# set while a command runs, so that a run that fails before training can be cleaned up
_ACTIVE: dict = {}


def new_run_id() -> str:
    """Sortable and unique: ``YYYYmmdd-HHMMSS-xxxx``."""
    return time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def _class_name(cfg_node) -> str:
    path = getattr(cfg_node, "class_path", None) or "model"
    return path.rsplit(".", 1)[-1].lower()


def _is_spawned_rank() -> bool:
    """Lightning's DDP launcher re-runs this command for ranks > 0 with LOCAL_RANK set: those
    processes must join rank 0's run directory rather than make their own."""
    ranks = ("LOCAL_RANK", "NODE_RANK", "RANK", "SLURM_PROCID")  # Lightning, torchrun, SLURM
    return any(int(os.environ.get(name, "0") or 0) > 0 for name in ranks)


def resolve_run_dir(
    runs_root: str, name: str, run_id: str | None, subcommand: str, ckpt_path: str | None
) -> Path:
    """Pick the run directory; evaluation of a checkpoint goes beside its training run."""
    if os.environ.get(RUN_DIR_ENV) and _is_spawned_rank():
        return Path(os.environ[RUN_DIR_ENV])
    if run_id is None and os.environ.get("TORCHELASTIC_RUN_ID"):
        run_id = "elastic-" + os.environ["TORCHELASTIC_RUN_ID"]  # same on every torchrun rank
    elif run_id is None and int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1:
        run_id = "slurm-" + os.environ.get("SLURM_JOB_ID", "job")  # same on every srun task
    if subcommand != "fit" and ckpt_path and Path(ckpt_path).parent.name == "checkpoints":
        base = Path(ckpt_path).resolve().parent.parent
        return base / f"{subcommand}-{run_id or new_run_id()}"
    return Path(runs_root) / name / (run_id or new_run_id())


class SaveConfigToRunDir(SaveConfigCallback):
    """Write the resolved ``config.yaml`` into the run directory whatever the loggers are
    (Lightning's default follows the first logger, which is a dummy under fast_dev_run)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **{**kwargs, "save_to_log_dir": False})

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        path = Path(trainer.default_root_dir) / self.config_filename
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            # a resumed run keeps the config it started with; each resume adds its own
            path = path.with_name(f"{path.stem}.resume-{time.strftime('%Y%m%d-%H%M%S')}.yaml")
        self.parser.save(
            self.config,
            str(path),
            skip_none=False,
            overwrite=self.overwrite,
            multifile=self.multifile,
        )
        # a semi-supervised run keeps the names of its labelled images beside its config,
        # so that it can be reproduced and compared (MatchGAN's list_attr_celeba_<pc>pc.txt)
        dm = trainer.datamodule
        partial = getattr(dm, "labelled_fraction", 1.0) < 1.0 or getattr(dm, "labelled_list", None)
        if stage == "fit" and partial:
            dm.write_labelled_list(path.parent / "labelled_list.txt")


class GanSuiteCLI(LightningCLI):
    """LightningCLI that gives every run its own directory and points loggers there."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument(
            "--name",
            type=str | None,
            default=None,
            help="Experiment name; runs go to <runs_root>/<name>/<run_id>/ "
            "(default: the model class name, lower-case).",
        )
        parser.add_argument(
            "--run_id", type=str | None, default=None, help="Run id (default: a timestamp)."
        )
        parser.add_argument(
            "--runs_root", type=str, default="runs", help="Root folder of all run directories."
        )
        parser.add_argument(
            "--resume",
            type=str | None,
            default=None,
            help="Continue the run in this run directory (runs/<name>/<run_id>) from its "
            "checkpoints/last.ckpt, with its config.yaml; logs and reports are appended there. "
            "`--ckpt_path last` does the same for the newest run of this experiment.",
        )
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=False,
            help="After fit, test the final weights (metrics.json, report.html).",
        )

    _resume_dir: Path | None = None

    def _parse_ckpt_path(self) -> None:
        """Resolve ``--resume``/``--ckpt_path last``, let Lightning take the checkpoint's model
        options, and refuse the model options of this command that it would silently drop."""
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        cfg = self.config[subcommand]
        if cfg.get("resume"):
            if subcommand != "fit":
                raise ValueError(f"--resume continues training: use it with fit, not {subcommand}")
            cfg.ckpt_path = str(resume_checkpoint(cfg.resume))
        elif cfg.get("ckpt_path") == "last":
            name = cfg.name or _class_name(cfg.model)
            cfg.ckpt_path = str(latest_run_checkpoint(cfg.runs_root, name))
        if subcommand == "fit" and cfg.get("ckpt_path"):
            if not Path(cfg.ckpt_path).is_file():
                raise FileNotFoundError(f"--ckpt_path {cfg.ckpt_path}: no such checkpoint file")
            self._resume_dir = run_dir_of_checkpoint(cfg.ckpt_path)
        requested = cfg.model.clone() if cfg.get("model") is not None else None
        super()._parse_ckpt_path()
        if subcommand == "fit" and cfg.get("ckpt_path") and requested is not None:
            changes = changed_model_options(requested, self.config[subcommand].model)
            refuse_changed_options(cfg.ckpt_path, changes)

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        name = cfg.name or _class_name(cfg.model)
        subcommand = self.subcommand or "fit"
        if subcommand in {"test", "validate"} and not cfg.get("ckpt_path"):
            warnings.warn(
                f"gan-suite {subcommand} without --ckpt_path scores the untrained network "
                "(random initial weights); its metrics.json records checkpoint: null. Pass "
                "--ckpt_path runs/<name>/<run_id>/checkpoints/last.ckpt (or `last`) to score "
                "a trained run.",
                UserWarning,
                stacklevel=1,
            )
        iterations = normalise_budgets(cfg.trainer)
        # jsonargparse turns these back into floats for Lightning's `int | float`: set them on
        # the Trainer itself once it is built (after_instantiate_classes)
        self._batch_limits = {
            k: cfg.trainer[k] for k in BATCH_LIMITS if type(cfg.trainer.get(k)) is int
        }
        if iterations is not None:
            add_budget_callback(cfg.trainer, iterations, type(cfg))
        if self._resume_dir is not None:
            run_dir = self._resume_dir  # continue the run where it lives
            # the run's own folders are expected to hold files: not a sign of a clash
            warnings.filterwarnings("ignore", ".*exists and is not empty.*")
        else:
            run_dir = resolve_run_dir(
                cfg.runs_root, name, cfg.run_id, subcommand, cfg.get("ckpt_path")
            )
            if run_dir.exists() and not _is_spawned_rank():
                raise FileExistsError(
                    f"run directory {run_dir} already exists: pick another --run_id (a run "
                    "directory is never reused, so nothing of an earlier run is overwritten; "
                    "--resume continues a run)"
                )
            _ACTIVE.update(created=run_dir, cli=self)
        run_dir.mkdir(parents=True, exist_ok=True)
        os.environ[RUN_DIR_ENV] = str(run_dir)
        self.run_dir = run_dir
        cfg.trainer.default_root_dir = str(run_dir)
        self._point_loggers_at(cfg.trainer, run_dir, f"{name}/{run_dir.name}")
        for cb in cfg.trainer.callbacks or []:
            if _class_name(cb) == "modelcheckpoint" and cb.init_args.get("dirpath") is None:
                cb.init_args.dirpath = str(run_dir / "checkpoints")

    @staticmethod
    def _point_loggers_at(trainer_cfg, run_dir: Path, display_name: str) -> None:
        loggers = trainer_cfg.logger
        if not loggers or loggers is True:
            return
        for lg in loggers if isinstance(loggers, list) else [loggers]:
            args = lg.init_args
            args.save_dir = str(run_dir)
            if _class_name(lg) == "csvlogger":
                lg.class_path = "gan_suite.loggers.CSVLogger"  # appends on resume, see there
            if _class_name(lg) in {"csvlogger", "tensorboardlogger"}:
                args.name, args.version = "", ""  # write straight into the run directory
            elif _class_name(lg) == "wandblogger" and args.get("name") is None:
                args.name = display_name

    _batch_limits: dict = {}

    def after_instantiate_classes(self) -> None:
        super().after_instantiate_classes()
        for key, value in self._batch_limits.items():
            setattr(self.trainer, key, value)

    def _report(self) -> None:
        if self.trainer.is_global_zero:
            run_dir = Path(self.trainer.default_root_dir)
            print(f"\n[gan-suite] run directory: {run_dir}")
            for sub in ("checkpoints", "samples"):
                if (run_dir / sub).is_dir():
                    files = sorted(p.name for p in (run_dir / sub).iterdir())
                    print(f"[gan-suite]   {sub}/: {', '.join(files)}")

    def after_fit(self) -> None:
        final = self._save_final_checkpoint()
        self._report()
        if self.config[self.subcommand].get("test_after_fit"):
            # the weights fit ended with (saved as last.ckpt when save_last is on): a
            # checkpoint written every n epochs may be older than the end of training
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=final)

    def _save_final_checkpoint(self) -> str | None:
        """Write ``last.ckpt`` with the state fit ended in, when ``save_last`` asks for one
        (ModelCheckpoint saves only on its own schedule, so its last may be epochs old)."""
        trainer, cb = self.trainer, self.trainer.checkpoint_callback
        if cb is None or trainer.fast_dev_run or not cb.save_last or not cb.dirpath:
            return None
        if trainer.interrupted:
            return None  # an interrupted fit keeps the checkpoints it made
        path = Path(cb.dirpath) / f"{cb.CHECKPOINT_NAME_LAST}{cb.FILE_EXTENSION}"
        # full state (weights_only=False); every rank calls it; rank 0 writes, atomically
        trainer.save_checkpoint(path, weights_only=False)
        cb.last_model_path = str(path)
        return str(path)

    def after_test(self) -> None:
        self._report()


def cli_main(args: list[str] | None = None, run: bool = True) -> GanSuiteCLI:
    """Entry point of the ``gan-suite`` console script (and of tests, with ``args``).

    A command that fails before its first training batch (bad data, a size the nets cannot
    take, a refused option) removes the run directory it created: no empty runs are left.
    """
    _ACTIVE.clear()
    # lightning 2.6 against torch 2.14: a deprecation inside Lightning, once per run, not ours
    warnings.filterwarnings("ignore", r".*isinstance\(treespec, LeafSpec\)")
    rank_zero_log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if _not_ours not in rank_zero_log.filters:
        rank_zero_log.addFilter(_not_ours)
    try:
        return _build_cli(args, run)
    except BaseException:
        _remove_unstarted_run_dir()
        raise


def _remove_unstarted_run_dir() -> None:
    run_dir, cli = _ACTIVE.get("created"), _ACTIVE.get("cli")
    if run_dir is None or _is_spawned_rank() or not Path(run_dir).is_dir():
        return
    trainer = getattr(cli, "trainer", None)
    if trainer is not None and trainer.fit_loop.epoch_loop.batch_progress.total.completed > 0:
        return  # it trained: its logs say how far
    if any(Path(run_dir).rglob("*.ckpt")):
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    parent = Path(run_dir).parent
    if parent.is_dir() and not any(parent.iterdir()):
        parent.rmdir()  # runs/<name>/ made for this run alone


def cli_kwargs(**parser_options) -> dict:
    """The constructor arguments of the suite's LightningCLI (also used by tools that only
    parse a command line, such as the sweep runner); ``parser_options`` go to every parser."""
    return dict(
        subclass_mode_model=True,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        parser_kwargs={
            "parser_mode": "omegaconf",
            "description": DESCRIPTION,
            **_HELP,
            **parser_options,
            **{
                sub: {"parser_mode": "omegaconf", "description": DESCRIPTION, **_HELP}
                | parser_options
                for sub in ("fit", "validate", "test")
            },
        },
        save_config_callback=SaveConfigToRunDir,
        # checkpoints written to <path>.tmp, fsynced, then renamed: a killed run keeps its
        # previous last.ckpt loadable. A class_path (not an instance) so that config.yaml
        # records it; `--trainer.plugins+=X` adds a plugin, `--trainer.plugins=[...]` replaces it
        trainer_defaults={"plugins": [{"class_path": "gan_suite.utils.AtomicCheckpointIO"}]},
    )


def _build_cli(args: list[str] | None, run: bool) -> GanSuiteCLI:
    return GanSuiteCLI(L.LightningModule, L.LightningDataModule, args=args, run=run, **cli_kwargs())


def main(argv: list[str] | None = None) -> int:
    """The console script: LightningCLI subcommands, ``predict`` (a folder of images through a
    checkpoint, :mod:`gan_suite.predict`) and ``compare RUN_DIR...``."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["compare"]:
        from gan_suite.eval.compare import compare_main

        return compare_main(argv[1:])
    if argv[:1] == ["predict"]:
        # not LightningCLI's predict (a data module's predict loader): a folder of images in,
        # translations and index.html out
        from gan_suite.predict import predict_main

        return predict_main(argv[1:])
    if argv[:1] == ["fit"]:
        argv = insert_resume_config(argv)
    # LightningCLI reads sys.argv itself (and warns when also given args): hand it over there
    sys.argv = [sys.argv[0] if sys.argv else "gan-suite", *argv]
    cli_main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
