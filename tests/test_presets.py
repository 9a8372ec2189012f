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


def test_every_paper_with_a_config_has_a_quick_preset():
    papers = TWO_DOMAIN | {"cgan", "icgan"}
    assert papers <= set(QUICK), f"missing quick presets: {papers - set(QUICK)}"
    for name in QUICK:
        assert (EXPERIMENTS / f"{name}.yaml").is_file(), name


@pytest.mark.parametrize("name", QUICK)
def test_quick_preset_instantiates_and_trains_one_batch(name):
    from gan_suite.cli import cli_main

    configs = [
        EXPERIMENTS / f"{name}.yaml",
        EXPERIMENTS / "presets" / "quick.yaml",
        EXPERIMENTS / "presets" / "quick" / f"{name}.yaml",
    ]
    args = [a for c in configs for a in ("--config", str(c))]
    if name in TWO_DOMAIN:  # 18 scenes instead of 1,200: generating those takes minutes
        args.append("--data.init_args.embedded={n_train: 12, n_test: 6, image_size: 64}")
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
