"""``gan-suite predict``: a trained checkpoint applied to a folder of images.

One tiny CycleGAN is trained for one batch through the CLI (so the checkpoint and config.yaml
are the ones users get); StarGAN is fitted for one batch by a bare Trainer (a checkpoint
without the class path: config.yaml names it); IC-GAN and cGAN use the Python API.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import EXPERIMENTS, TINY_TWO_DOMAIN
from PIL import Image

from gan_suite.predict import load_checkpoint, predict, predict_main, run_predict
from gan_suite.predict.checkpoint import LoadedRun
from gan_suite.predict.images import collect_inputs
from gan_suite.predict.run import build_parser, size_multiple
from gan_suite.predict.tasks import make_task

STEP = 1 / 127.5  # one 8-bit level in [-1, 1]


def _folder(root: Path) -> Path:
    """3 files: an RGB 48x72 PNG (both sides multiples of 4), a grayscale 40x40 JPEG with a
    name that needs escaping, and a text file that predict must skip."""
    folder = root / "inputs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((48, 72, 3)) * 255).astype(np.uint8)).save(folder / "rgb.png")
    Image.fromarray((rng.random((40, 40)) * 255).astype(np.uint8), "L").save(folder / "g<&>.jpg")
    (folder / "notes.txt").write_text("not an image")
    return folder


def _read(path: Path) -> torch.Tensor:
    """A PNG as (3, H, W) in [-1, 1]."""
    array = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1) / 127.5 - 1


def _args(ckpt, folder, out, *extra: str):
    return build_parser().parse_args(
        ["--ckpt_path", str(ckpt), "--input", str(folder), "--out", str(out), *extra]
    )


@pytest.fixture(scope="module")
def cyclegan_ckpt(tmp_path_factory) -> Path:
    """``last.ckpt`` of a tiny CycleGAN fitted for one batch by ``gan-suite fit``."""
    from gan_suite.cli import cli_main

    root = tmp_path_factory.mktemp("cyclegan-run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GAN_SUITE_CACHE", str(root / "cache"))
        mp.delenv("GAN_SUITE_RUN_DIR", raising=False)
        mp.chdir(root)
        cli_main(
            [
                "fit", "--config", str(EXPERIMENTS / "cyclegan.yaml"), *TINY_TWO_DOMAIN,
                "--trainer.max_epochs=1", "--trainer.limit_train_batches=1",
                "--data.init_args.embedded={n_train: 4, n_test: 2, image_size: 32}",
                "--trainer.limit_val_batches=0", "--test_after_fit=false", "--run_id=r1",
                "--trainer.callbacks=[{class_path: lightning.pytorch.callbacks.ModelCheckpoint,"
                " init_args: {save_last: true}}]",
            ]
        )  # fmt: skip
    ckpt = root / "runs" / "cyclegan" / "r1" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file() and (ckpt.parent.parent / "config.yaml").is_file()
    return ckpt


def test_cyclegan_translates_a_folder_with_the_model_in_both_directions(cyclegan_ckpt, tmp_path):
    folder = _folder(tmp_path)
    run = load_checkpoint(cyclegan_ckpt)
    assert type(run.model).__name__ == "CycleGAN" and run.data_args["crop_size"] == 32

    # default: the training crop, 32 x 32; outputs under the input names
    out = run_predict(_args(cyclegan_ckpt, folder, tmp_path / "train"))
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == ["g<&>.png", "rgb.png"]  # notes.txt skipped
    for stem in ("rgb", "g<&>"):
        fake, seen = _read(out / f"{stem}.png"), _read(out / "inputs" / f"{stem}.png")
        assert fake.shape == seen.shape == (3, 32, 32)
        assert (fake - seen).abs().mean() > 0.05  # a translation, not a copy
    gray = _read(out / "inputs" / "g<&>.png")
    assert torch.equal(gray[0], gray[1])  # the grayscale input was read as 3 equal channels
    page = (out / "index.html").read_text()
    for rel in ("rgb.png", "inputs/rgb.png", "g%3C%26%3E.png", "inputs/g%3C%26%3E.png"):
        assert f'src="{rel}"' in page
    assert html.escape("g<&>.jpg") in page and "g<&>" not in page
    assert "notes.txt" in page  # listed as skipped

    # native size: the 48 x 72 image goes through unresized; the outputs are G_AB(x), G_BA(x)
    x = _read(folder / "rgb.png")[None]
    for direction, net in (("AtoB", run.model.G_AB), ("BtoA", run.model.G_BA)):
        out = run_predict(
            _args(cyclegan_ckpt, folder, tmp_path / direction, "--size=native",
                  f"--direction={direction}")
        )  # fmt: skip
        with torch.no_grad():
            expected = net(x)[0].clamp(-1, 1)
        got = _read(out / "rgb.png")
        assert got.shape == (3, 48, 72)
        assert (got - expected).abs().max() <= STEP / 2 + 1e-5  # only the 8-bit rounding
        assert _read(out / "g<&>.png").shape == (3, 40, 40)

    # one image, no --out: a new predict-<time> folder inside the training run
    args = build_parser().parse_args(
        ["--ckpt_path", str(cyclegan_ckpt), "--input", str(folder / "rgb.png")]
    )
    first, second = run_predict(args), run_predict(args)
    assert first.parent == second.parent == cyclegan_ckpt.parent.parent
    assert first.name.startswith("predict-") and first != second
    assert sorted(p.name for p in first.iterdir()) == ["index.html", "inputs", "rgb.png"]


def test_the_command_line_names_the_bad_option(cyclegan_ckpt, tmp_path, capsys):
    from gan_suite.cli import main

    folder = _folder(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.md").write_text("no images here")
    broken, out = tmp_path / "broken", tmp_path / "out"
    broken.mkdir()
    (broken / "a.png").write_bytes((folder / "rgb.png").read_bytes())
    (broken / "cut.png").write_bytes((folder / "rgb.png").read_bytes()[:200])  # truncated
    cases = [
        (["--ckpt_path", str(tmp_path / "none.ckpt"), "--input", str(folder)],
         "--ckpt_path .*none.ckpt does not exist"),
        (["--ckpt_path", str(cyclegan_ckpt), "--input", str(empty)],
         "--input .*empty.*contains no images"),
        (["--ckpt_path", str(cyclegan_ckpt), "--input", str(folder), "--size", "30"],
         "--size 30: CycleGAN's generator takes sides that are multiples of 4"),
        (["--ckpt_path", str(cyclegan_ckpt), "--input", str(folder), "--attributes", "Male=1"],
         "--attributes: CycleGAN is not attribute-conditioned"),
        (["--ckpt_path", str(cyclegan_ckpt), "--input", str(folder), "--direction", "segment"],
         "--direction segment: CycleGAN has no segmentation model"),
        (["--ckpt_path", str(cyclegan_ckpt), "--input", str(folder), "--out", str(folder)],
         "--out .*inputs already exists"),
        (["--ckpt_path", str(cyclegan_ckpt), "--input", str(broken), "--out", str(out)],
         "cannot read image .*broken.*cut.png"),
    ]  # fmt: skip
    import re

    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            predict_main(argv)
        assert exit_info.value.code == 2
        assert re.search(message, capsys.readouterr().err), message
    assert sorted(p.name for p in folder.iterdir()) == ["g<&>.jpg", "notes.txt", "rgb.png"]
    assert not out.exists()  # the broken image stopped predict before it wrote anything
    # `gan-suite predict` is this command, not LightningCLI's predict subcommand
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    assert "Translate a folder of images" in capsys.readouterr().out


def test_generators_declare_the_side_multiple_they_take():
    from gan_suite.models.cyclegan import CycleGAN
    from gan_suite.models.discogan import DiscoGAN

    assert size_multiple(CycleGAN(ngf=4, n_blocks=1, ndf=4).G_AB) == 4  # 2 downsamplings
    assert size_multiple(DiscoGAN(ngf=4, ndf=4).G_AB) == 16  # 4 encoder stages


# ------------------------------------------------------------------ StarGAN / MatchGAN
ATTRS = ["red", "green", "warm_background"]


@pytest.fixture
def stargan_ckpt(tmp_path, make_trainer) -> Path:
    """A tiny StarGAN fitted for one batch by a bare Trainer, its checkpoint under
    ``run/checkpoints/`` and a ``run/config.yaml`` naming the class (the checkpoint does not)."""
    from torch.utils.data import DataLoader

    from gan_suite.models.stargan import StarGAN

    model = StarGAN(
        attributes=ATTRS, exclusive_groups=[["red", "green"]], image_size=16, g_conv_dim=4,
        g_repeat_num=1, d_conv_dim=4, d_repeat_num=3, n_critic=1,
    )  # fmt: skip
    batches = [
        {
            "image": torch.rand(4, 3, 16, 16) * 2 - 1,
            "label": torch.tensor([[1, 0, 1], [0, 1, 0], [0, 0, 1], [1, 0, 0]]).float(),
            "labelled": torch.ones(4, dtype=torch.bool),
        }
    ]
    trainer = make_trainer(max_epochs=1)
    trainer.fit(model, train_dataloaders=DataLoader(batches, batch_size=None))
    run = tmp_path / "runs" / "stargan" / "r1"
    trainer.save_checkpoint(run / "checkpoints" / "last.ckpt")
    (run / "config.yaml").write_text(
        "model:\n  class_path: gan_suite.models.stargan.StarGAN\n"
        "data:\n  class_path: datamodules.labelled.LabelledDataModule\n"
        "  init_args:\n    image_size: 16\n"
    )
    return run / "checkpoints" / "last.ckpt"


def test_stargan_translates_to_the_requested_attributes(stargan_ckpt, tmp_path):
    folder = _folder(tmp_path)
    assert "_class_path" not in torch.load(stargan_ckpt, weights_only=True)["hyper_parameters"]
    # native size: the 48 x 72 input reaches G unresized (G is fully convolutional)
    targets = "--attributes=red=1,green=0,warm_background=1"
    out = run_predict(_args(stargan_ckpt, folder, tmp_path / "one", targets, "--size=native"))
    model = load_checkpoint(stargan_ckpt).model
    x = _read(folder / "rgb.png")[None]
    with torch.no_grad():
        expected = model.G(x, torch.tensor([[1.0, 0.0, 1.0]]))[0].clamp(-1, 1)
        other = model.G(x, torch.tensor([[0.0, 1.0, 1.0]]))[0].clamp(-1, 1)
    got = _read(out / "rgb.png")
    assert got.shape == (3, 48, 72)
    assert (got - expected).abs().max() <= STEP / 2 + 1e-5  # G(x, c), up to 8-bit rounding
    assert (got - other).abs().max() > 4 * STEP  # another c would be told apart
    assert "red=1, green=0, warm_background=1" in (out / "index.html").read_text()

    # no --attributes: one output per attribute, each changing that attribute
    out = run_predict(_args(stargan_ckpt, folder, tmp_path / "each"))
    for stem in ("rgb", "g<&>"):
        files = [out / f"{stem}_{a}_changed.png" for a in ATTRS]
        assert all(_read(f).shape == (3, 16, 16) for f in files)
        assert not torch.equal(_read(files[0]), _read(files[2]))

    with pytest.raises(ValueError, match="unknown attribute 'Male'; the model knows red, green"):
        run_predict(_args(stargan_ckpt, folder, tmp_path / "bad", "--attributes=Male=1"))


def test_stargan_targets_keep_exclusive_groups_exclusive():
    from gan_suite.models.stargan import StarGAN

    model = StarGAN(attributes=ATTRS, exclusive_groups=[["red", "green"]], image_size=16,
                    g_conv_dim=4, g_repeat_num=1, d_conv_dim=4, d_repeat_num=3)  # fmt: skip
    task = make_task(model, "AtoB", "green=1", 1, None)
    c_org = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    # green on clears red (same group); warm_background keeps each input's own value
    assert torch.equal(task.target(c_org), torch.tensor([[0.0, 1.0, 1.0], [0.0, 1.0, 0.0]]))


# ------------------------------------------------------------------ IC-GAN and cGAN
def test_icgan_draws_k_samples_per_instance(tmp_path):
    from torch import nn

    from gan_suite.models.icgan import ICGAN

    torch.manual_seed(0)
    model = ICGAN(image_size=32, g_ch=4, d_ch=4, feature_embed_dim=8, z_dim=20, feature_dim=16)
    model.set_feature_extractor(
        nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(48, 16))
    )
    run = LoadedRun(model.eval(), "gan_suite.models.icgan.ICGAN", {"image_size": 24})
    folder = _folder(tmp_path)
    task = make_task(model, "AtoB", None, 3, None)
    torch.manual_seed(7)
    predict(run, task, collect_inputs(folder)[0], tmp_path / "out", batch_size=4)
    out = tmp_path / "out"
    for stem in ("rgb", "g<&>"):
        assert _read(out / "inputs" / f"{stem}.png").shape == (3, 24, 24)  # f's input size
        assert [_read(out / f"{stem}_sample_{k}.png").shape for k in (1, 2, 3)] == [(3, 32, 32)] * 3
    assert "sample 3" in (out / "index.html").read_text()
    # the samples are G(z, h(x)) with the noise of the seed: an input at f's input size
    # (the 40 x 40 image, data image_size 40) reaches f unchanged
    run.data_args["image_size"] = 40
    gray = folder / "g<&>.jpg"
    torch.manual_seed(7)
    predict(run, task, [gray], tmp_path / "exact")
    torch.manual_seed(7)
    expected = model.generate_from_image(_read(gray)[None], 3)[0].clamp(-1, 1)  # (3, 3, 32, 32)
    got = [_read(tmp_path / "exact" / f"g<&>_sample_{k}.png") for k in (1, 2, 3)]
    assert (got[1] - expected[1]).abs().max() <= STEP / 2 + 1e-5
    assert (got[0] - expected[1]).abs().max() > 0.1  # another z


def test_cgan_samples_the_requested_classes_without_inputs(tmp_path):
    from gan_suite.models.cgan import CGAN

    model = CGAN(n_classes=3, image_size=8, channels=1, g_z_hidden=8, g_cond_hidden=8,
                 g_joint_hidden=8, d_x_units=8, d_cond_units=8, d_joint_units=8)  # fmt: skip
    run = LoadedRun(model.eval(), "gan_suite.models.cgan.CGAN", {"image_size": 8})
    with pytest.raises(ValueError, match="give --labels"):
        make_task(model, "AtoB", None, 2, None)
    with pytest.raises(ValueError, match="--labels '5': expected .* indices in 0..2"):
        make_task(model, "AtoB", None, 2, "5")
    rows = predict(run, make_task(model, "AtoB", None, 2, "0,2"), [], tmp_path / "out")
    assert [r.name for r in rows] == ["class_0", "class_2"]
    files = sorted(p.name for p in (tmp_path / "out").glob("*.png"))
    assert files == [f"class_{y}_sample_{k}.png" for y in (0, 2) for k in (1, 2)]
    assert _read(tmp_path / "out" / files[0]).shape == (3, 8, 8)
