"""The quick preset of every paper (what `make experiment NAME=<paper>` runs) builds and trains.

`make experiment` layers experiments/<paper>.yaml, presets/quick.yaml and
presets/quick/<paper>.yaml; a key misspelt or a size the nets cannot take would only show in a
several-minute run. Here each layering is parsed and instantiated by the CLI and one training
batch runs through the real model at the preset's sizes (the evaluation, which needs the
one-time evaluator training, is covered by each paper's own fast_dev_run test).
"""

from __future__ import annotations

import pytest
import torch
from cli_helpers import EXPERIMENTS

TWO_DOMAIN = {"cyclegan", "opgan", "discogan"}  # the embedded shapes scenes as domains A, B
QUICK = sorted(p.stem for p in (EXPERIMENTS / "presets" / "quick").glob("*.yaml"))
# (dataset, paper) of every experiments/datasets/<dataset>/<paper>.yaml (make ... DATASET=)
ON_DATASETS = sorted((p.parent.name, p.stem) for p in (EXPERIMENTS / "datasets").glob("*/*.yaml"))
SMALL = {  # fewer crops than the preset's: the textures are cut on the fly
    "textures": "--data.init_args.embedded={dataset: textures, n_train: 8, n_test: 4}",
}


def test_every_paper_with_a_config_has_a_quick_preset():
    papers = TWO_DOMAIN | {"cgan", "icgan"}
    assert papers <= set(QUICK), f"missing quick presets: {papers - set(QUICK)}"
    for name in QUICK:
        assert (EXPERIMENTS / f"{name}.yaml").is_file(), name


def _quick(name: str) -> list:
    return [
        EXPERIMENTS / f"{name}.yaml",
        EXPERIMENTS / "presets" / "quick.yaml",
        EXPERIMENTS / "presets" / "quick" / f"{name}.yaml",
    ]


@pytest.mark.usefixtures("shared_digits")  # cGAN's and IC-GAN's quick runs read MNIST
@pytest.mark.parametrize("name", QUICK)
def test_quick_preset_instantiates_and_trains_one_batch(name):
    extra = []
    if name in TWO_DOMAIN:  # 18 scenes instead of 1,200: generating those takes minutes
        extra.append("--data.init_args.embedded={n_train: 12, n_test: 6, image_size: 64}")
    _train_one_batch(name, _quick(name), extra)


@pytest.mark.usefixtures("shared_digits")
@pytest.mark.parametrize(("dataset", "name"), ON_DATASETS)
def test_dataset_preset_instantiates_and_trains_one_batch(dataset, name):
    """`make experiment NAME=<paper> DATASET=<dataset>`: the dataset file layered last."""
    configs = [*_quick(name), EXPERIMENTS / "datasets" / dataset / f"{name}.yaml"]
    dm = _train_one_batch(name, configs, [SMALL[dataset]] if dataset in SMALL else [])
    embedded = dm.hparams.get("embedded") or {}
    assert embedded.get("dataset", dm.hparams.get("source")) == dataset
    assert dm.hparams.get("flip") is False or dataset != "digits"  # a mirrored 2 is not a 2


def _train_one_batch(name: str, configs: list, extra: list):
    """Parse and instantiate the layered configs with the CLI, train one batch, check that it
    moved a parameter; returns the data module."""
    from gan_suite.cli import cli_main

    args = [a for c in configs for a in ("--config", str(c))] + extra
    cli = cli_main(
        [
            *args,
            "--trainer.logger=false",
            "--trainer.enable_progress_bar=false",
            "--data.init_args.num_workers=0",
            "--test_after_fit=false",
            "--trainer.max_epochs=1",
            "--trainer.max_steps=1",  # the first batch: "limit_train_batches=1" reads as 100%
            "--trainer.limit_val_batches=0",
            "--trainer.callbacks=[]",
        ],
        run=False,
    )
    model, dm = cli.model, cli.datamodule
    if name == "icgan":  # neighbours from stub features: the real ones need the evaluator
        model.set_feature_extractor(_StubFeatures(model.hparams.feature_dim))
    # the image size the preset promises reaches both the nets and the data
    image_size = dm.hparams.get("crop_size") or dm.hparams.get("image_size")
    if "image_size" in model.hparams:
        assert model.hparams.image_size == image_size
    trainer = cli.trainer
    if name == "icgan":  # the preset's InstanceNeighbourhoods, without the other callbacks
        from gan_suite.callbacks import InstanceNeighbourhoods

        trainer.callbacks.append(InstanceNeighbourhoods())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.fit(model, datamodule=dm)
    moved = [n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())]
    assert moved, f"{name}: one quick-preset batch updated no parameter"
    return dm


class _StubFeatures(torch.nn.Module):
    """A fixed random projection of the pixels: distinct features for distinct images."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = torch.Generator().manual_seed(0)
        flat = x.flatten(1).float()
        proj = torch.randn(flat.shape[1], self.dim, generator=g).to(x.device)
        return flat @ proj
