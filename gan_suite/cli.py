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

import os
import secrets
import sys
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

RUN_DIR_ENV = "GAN_SUITE_RUN_DIR"


def new_run_id() -> str:
    """Sortable and unique: ``YYYYmmdd-HHMMSS-xxxx``."""
    return time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def _class_name(cfg_node) -> str:
    path = getattr(cfg_node, "class_path", None) or "model"
    return path.rsplit(".", 1)[-1].lower()


def _is_spawned_rank() -> bool:
    """Lightning's DDP launcher re-runs this command for ranks > 0 with LOCAL_RANK set: those
    processes must join rank 0's run directory rather than make their own."""
    return int(os.environ.get("LOCAL_RANK", "0")) > 0 or int(os.environ.get("NODE_RANK", "0")) > 0


def resolve_run_dir(
    runs_root: str, name: str, run_id: str | None, subcommand: str, ckpt_path: str | None
) -> Path:
    """Pick the run directory; evaluation of a checkpoint goes beside its training run."""
    if os.environ.get(RUN_DIR_ENV) and _is_spawned_rank():
        return Path(os.environ[RUN_DIR_ENV])
    if run_id is None and os.environ.get("TORCHELASTIC_RUN_ID"):
        run_id = "elastic-" + os.environ["TORCHELASTIC_RUN_ID"]  # same on every torchrun rank
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
            "--test_after_fit",
            type=bool,
            default=False,
            help="After fit, test the final weights (metrics.json, report.html).",
        )

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        name = cfg.name or _class_name(cfg.model)
        run_dir = resolve_run_dir(
            cfg.runs_root, name, cfg.run_id, self.subcommand or "fit", cfg.get("ckpt_path")
        )
        if run_dir.exists() and not _is_spawned_rank():
            raise FileExistsError(
                f"run directory {run_dir} already exists: pick another --run_id "
                "(a run directory is never reused, so nothing of an earlier run is overwritten)"
            )
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
            if _class_name(lg) in {"csvlogger", "tensorboardlogger"}:
                args.name, args.version = "", ""  # write straight into the run directory
            elif _class_name(lg) == "wandblogger" and args.get("name") is None:
                args.name = display_name

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
        trainer.save_checkpoint(path)  # every rank calls it; rank 0 writes, atomically
        cb.last_model_path = str(path)
        return str(path)

    def after_test(self) -> None:
        self._report()


def cli_main(args: list[str] | None = None, run: bool = True) -> GanSuiteCLI:
    """Entry point of the ``gan-suite`` console script (and of tests, with ``args``)."""
    return GanSuiteCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        parser_kwargs={"parser_mode": "omegaconf"},
        save_config_callback=SaveConfigToRunDir,
        # checkpoints written to <path>.tmp, fsynced, then renamed: a killed run keeps its
        # previous last.ckpt loadable. A class_path (not an instance) so that config.yaml
        # records it; `--trainer.plugins+=X` adds a plugin, `--trainer.plugins=[...]` replaces it
        trainer_defaults={"plugins": [{"class_path": "gan_suite.utils.AtomicCheckpointIO"}]},
        args=args,
        run=run,
    )


def main(argv: list[str] | None = None) -> int:
    """The console script: LightningCLI subcommands, plus ``compare RUN_DIR...``."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["compare"]:
        from gan_suite.eval.compare import compare_main

        return compare_main(argv[1:])
    if argv[:1] in (["-h"], ["--help"]):
        print("gan-suite compare RUN_DIR [RUN_DIR ...] [--out FILE.html]: side-by-side metrics\n")
    cli_main(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
