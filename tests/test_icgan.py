"""IC-GAN: exact bounded-memory k-NN, BigGAN nets, neighbour sampling, EMA, sampling, CLI."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn

from gan_suite.eval import neighbours as nbr
from gan_suite.models.icgan import ICGAN
from gan_suite.nets.biggan import BigGANDiscriminator, BigGANGenerator, ConditionalBatchNorm2d

ROOT = Path(__file__).resolve().parents[1]
TINY_NETS = dict(g_ch=4, d_ch=4, feature_embed_dim=8, z_dim=20, feature_dim=16, k=5)

pytestmark = pytest.mark.usefixtures("shared_digits")


# ------------------------------------------------------------------ neighbour search
@pytest.mark.parametrize(
    "n, dim, k, chunk, include_self",
    [
        (300, 8, 5, 64, True),
        (300, 8, 5, 64, False),
        (257, 16, 12, 100, True),
        (100, 4, 1, 7, False),
        (40, 3, 39, 16, False),
        (64, 5, 64, 1000, True),
    ],
)
def test_knn_equals_brute_force(n, dim, k, chunk, include_self):
    x = torch.randn(n, dim, generator=torch.Generator().manual_seed(n + k))
    ours = nbr.knn_cosine(x, k, chunk_size=chunk, include_self=include_self)
    ref = nbr.brute_force_knn(x, k, include_self=include_self)
    assert ours.shape == (n, k) and ours.dtype == torch.int64
    assert torch.equal(ours, ref)
    if include_self:
        assert torch.equal(ours[:, 0], torch.arange(n))  # an instance is its own first NN
    else:
        assert not (ours == torch.arange(n)[:, None]).any()


def test_knn_keeps_self_first_even_with_duplicates():
    x = torch.randn(10, 4).repeat(3, 1)  # every feature three times
    first = nbr.knn_cosine(x, 3, chunk_size=7, include_self=True)[:, 0]
    assert torch.equal(first, torch.arange(30))


def test_knn_works_block_by_block_never_n_by_n(monkeypatch):
    shapes, merge = [], nbr._merge
    monkeypatch.setattr(
        nbr,
        "_merge",
        lambda bv, bi, r0, s, c0, k: (shapes.append(s.shape), merge(bv, bi, r0, s, c0, k)),
    )
    x = torch.randn(500, 8)
    out = nbr.knn_cosine(x, 4, chunk_size=64)
    assert torch.equal(out, nbr.brute_force_knn(x, 4))
    assert shapes and max(max(s) for s in shapes) <= 64  # only chunk x chunk blocks


def test_knn_query_and_bad_k():
    x = torch.randn(50, 6)
    q = torch.randn(7, 6)
    sims = nn.functional.normalize(q, dim=1) @ nn.functional.normalize(x, dim=1).T
    assert torch.equal(nbr.knn_cosine_query(q, x, 4, chunk_size=3), sims.topk(4).indices)
    with pytest.raises(ValueError, match="k=50"):
        nbr.knn_cosine(x, 50, include_self=False)


def test_missing_resnet50_weights_names_the_file(tmp_path):
    missing = tmp_path / "swav.pth"
    with pytest.raises(FileNotFoundError, match="swav.pth"):
        nbr.load_resnet50_features(str(missing))
    model = ICGAN(feature_extractor="resnet50", feature_weights=str(missing), **TINY_NETS)
    with pytest.raises(FileNotFoundError, match="swav.pth"):
        model.feature_net()


def test_resnet50_loads_a_local_checkpoint(tmp_path):
    from torchvision.models import resnet50

    state = {"module." + k: v for k, v in resnet50(weights=None).state_dict().items()}
    torch.save({"state_dict": state}, tmp_path / "w.pth")  # SwAV-style checkpoint
    net = nbr.load_resnet50_features(str(tmp_path / "w.pth"), input_size=32)
    assert net(torch.rand(2, 3, 16, 16) * 2 - 1).shape == (2, 2048)


# ------------------------------------------------------------------ nets
@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("n_classes", [0, 3])
def test_biggan_shapes(size, n_classes):
    G = BigGANGenerator(
        size,
        z_dim=120,
        ch=4,
        feature_dim=16,
        feature_embed_dim=8,
        n_classes=n_classes,
        class_embed_dim=4,
    )
    D = BigGANDiscriminator(size, ch=4, feature_dim=16, n_classes=n_classes)
    h, y = torch.randn(2, 16), (torch.tensor([0, 2]) if n_classes else None)
    x = G(torch.randn(2, 120), h, y)
    assert x.shape == (2, 3, size, size) and x.abs().max() <= 1
    assert D(x, h, y).shape == (2,)
    assert G.condition(h, y).shape == (2, 8 + (4 if n_classes else 0))
    # projection of h onto phi(x): half of phi's width when a class embedding takes the rest
    assert D.embed_h.weight.shape == (D.num_features // (2 if n_classes else 1), 16)


def test_conditional_batchnorm_uses_the_condition():
    cbn = ConditionalBatchNorm2d(6, cond_dim=5)
    x, c = torch.randn(4, 6, 3, 3), torch.randn(4, 5)
    assert cbn(x, c).shape == x.shape
    assert not torch.allclose(cbn(x, c), cbn(x, torch.zeros_like(c)))
    assert torch.allclose(cbn(x, torch.zeros_like(c)), cbn.bn(x))  # gain 1, bias 0 at c = 0


# ------------------------------------------------------------------ the module
def _stub_extractor() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(48, 16))


def _digits(**kw):
    from datamodules import LabelledDataModule

    # the UCI digits (domain B): the smaller domain keeps the judge's training short
    args = dict(source="digits", domain="B", image_size=32, batch_size=8, num_workers=0)
    dm = LabelledDataModule(**{**args, **kw})
    dm.setup("fit")
    return dm


def _model(**kw) -> ICGAN:
    model = ICGAN(image_size=32, **{**TINY_NETS, **kw})
    model.set_feature_extractor(_stub_extractor())
    return model


def test_ema_update_math_and_checkpoint(tmp_path):
    model = _model(ema_decay=0.9, ema_start=0)
    for p in model.G.parameters():
        nn.init.constant_(p, 1.0)
    for p in model.G_ema.parameters():
        nn.init.constant_(p, 0.0)
    model.update_ema()
    assert all(torch.allclose(p, torch.full_like(p, 0.1)) for p in model.G_ema.parameters())
    assert not any(p.requires_grad for p in model.G_ema.parameters())
    assert model.sampler is model.G_ema
    keys = model.state_dict().keys()
    assert any(k.startswith("G_ema.") for k in keys)
    assert not any(k.startswith(("_extractor", "_evaluator")) for k in keys)


def _prepare(model: ICGAN, dm, tmp_path=None):
    """What InstanceNeighbourhoods does at fit set-up, outside a Trainer."""
    from gan_suite.callbacks import InstanceNeighbourhoods

    trainer = type("T", (), {"datamodule": dm, "is_global_zero": True, "world_size": 1})()
    trainer.strategy = type("S", (), {"barrier": staticmethod(lambda name: None)})()
    trainer.default_root_dir = str(tmp_path) if tmp_path else "."
    InstanceNeighbourhoods().setup(trainer, model, "fit")


def test_served_real_is_a_neighbour_and_generate_from_any_image():
    """The loader serves, for instance i, h_i and a neighbour x_j with j in A_i (the k nearest
    other instances); its label is the neighbour's."""
    dm = _digits()
    model = _model(n_classes=10, feature_cache=None, n_d_steps=2)
    _prepare(model, dm)
    n = len(dm.data.train.labels)
    ds = dm.train_set
    assert model.instance_features.shape == (n, 16) and ds.neighbours.shape == (n, 5)
    assert torch.allclose(model.instance_features.norm(dim=1), torch.ones(n))
    base = dm.unaugmented_train_set()
    for i in range(0, n, n // 20):
        item = ds[i]
        j = item["neighbour_index"]
        assert j.shape == (2,) and item["image"].shape == (2, 3, 32, 32)  # n_d_steps draws
        assert all(int(t) in ds.neighbours[i].tolist() and int(t) != i for t in j)
        assert torch.equal(item["label"], torch.as_tensor(dm.data.train.labels)[j])
        assert torch.equal(item["instance_features"], model.instance_features[i])
        if not dm.flip:
            assert torch.equal(item["image"][0], base[int(j[0])]["image"])
    outside = torch.rand(3, 3, 20, 20) * 2 - 1  # not a training image, another size
    model.eval()
    samples = model.generate_from_image(outside, n=4, labels=torch.tensor([1, 2, 3]))
    assert samples.shape == (3, 4, 3, 32, 32) and torch.isfinite(samples).all()
    panels = model.sample_panels({"image": outside, "label_true": torch.tensor([1, 2, 3])})
    assert [c.shape for c in panels["instance | samples"]] == [(3, 3, 32, 32)] * 6


def test_training_without_the_neighbourhood_callback_says_what_to_add():
    trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_progress_bar=False)
    with pytest.raises(ValueError, match="InstanceNeighbourhoods"):
        trainer.fit(_model(), datamodule=_digits())


def test_each_net_gets_gradients_only_in_its_own_step():
    model = _model()
    names = {id(p): n for n, p in model.named_parameters()}
    seen: list[tuple[str, set[str]]] = []

    def record(opt, loss):
        model.manual_backward(loss)
        which = (
            "G" if opt.optimizer.param_groups[0]["params"][0] is next(model.G.parameters()) else "D"
        )
        seen.append((which, {names[id(p)] for p in model.parameters() if p.grad is not None}))
        opt.step()
        opt.zero_grad(set_to_none=True)

    model.backward_and_step = record
    from gan_suite.callbacks import InstanceNeighbourhoods

    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[InstanceNeighbourhoods()],
    )
    trainer.fit(model, datamodule=_digits())
    assert [w for w, _ in seen] == ["D", "G"]
    g = {n for n, _ in model.G.named_parameters(prefix="G")}
    d = {n for n, _ in model.D.named_parameters(prefix="D")}
    assert seen[0][1] == d and seen[1][1] == g  # every parameter, and none of the other net


# the YAML's nets and data at test size (CLI overrides)
TINY_CLI = [
    "--model.init_args.image_size=32",
    "--model.init_args.g_ch=4",
    "--model.init_args.d_ch=4",
    "--model.init_args.feature_embed_dim=8",
    "--model.init_args.k=3",
    "--data.init_args.image_size=32",
    "--data.init_args.batch_size=4",
    "--data.init_args.num_workers=0",
]


def test_cli_fast_dev_run_on_the_embedded_shapes():
    from gan_suite.cli import cli_main

    cli = cli_main(
        [
            "fit",
            "--config",
            str(ROOT / "experiments" / "icgan.yaml"),
            *TINY_CLI,
            "--data.init_args.embedded={n_train: 12, n_test: 6, image_size: 32}",
            "--trainer.accelerator=cpu",
            "--trainer.fast_dev_run=1",
            "--trainer.logger=[{class_path: lightning.pytorch.loggers.CSVLogger,"
            " init_args: {save_dir: runs}}]",
            "--trainer.enable_progress_bar=false",
        ]
    )
    run_dir = Path(cli.trainer.default_root_dir)
    assert run_dir.parent == Path("runs") / "icgan"
    assert cli.trainer.global_step == 2  # one D step and one G step
    assert int(cli.model.iteration) == 1  # one iteration (batch)
    assert (run_dir / "instance_features.pt").is_file()  # feature_cache: auto
    assert cli.datamodule.train_set.neighbours.shape[1] == 3
    # test_after_fit ran the test loop: metrics.json with the Evaluation schema
    import json

    metrics = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    for key in ("fid", "kid", "class_agreement", "class_agreement_other_instance"):
        key = f"samples/{key}"
        assert metrics[key]["extractor"] == "evaluator" and metrics[key]["n_images"] > 0
    assert 0 <= metrics["samples/nn_class_purity"]["value"] <= 1
    # a later `gan-suite test` of a checkpoint (in <run>/test-<id>/) reads the run's
    # instance features again, for the neighbourhoods' purity
    from gan_suite.callbacks import InstanceNeighbourhoods

    restored = ICGAN(**{k: v for k, v in cli.model.hparams.items() if not k.startswith("_")})
    assert restored.instance_features is None
    trainer = type("T", (), {"default_root_dir": str(run_dir / "test-x")})()
    InstanceNeighbourhoods().setup(trainer, restored, "test")
    assert torch.equal(restored.instance_features, cli.model.instance_features.cpu())


def test_class_labelled_data_gets_a_cached_class_evaluator(tmp_path):
    """Beyond the shapes scenes, any class-labelled data (here MNIST's IDX layout) gets the
    class evaluator trained on its real training images: 128-d features (feature_dim's
    default), trained once and then read from the cache."""
    import os
    from pathlib import Path

    from test_labelled import make_mnist

    from datamodules import LabelledDataModule
    from gan_suite.eval.judge import resolve_evaluator as _evaluator_for

    dm = LabelledDataModule(
        source="mnist", data_dir=str(make_mnist(tmp_path)), image_size=32, num_workers=0
    )
    ev = _evaluator_for(dm, None)
    assert ev is not None and ev.num_features == 128
    cache = Path(os.environ["GAN_SUITE_CACHE"]) / "evaluators"
    trained = sorted(cache.glob("labelled-*.ckpt"))
    assert len(trained) == 1
    stamp = trained[0].stat().st_mtime_ns
    again = _evaluator_for(dm, None)
    assert trained[0].stat().st_mtime_ns == stamp  # read, not retrained
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    assert torch.equal(ev.eval().features(x), again.eval().features(x))
    # data without class labels has no evaluator (IC-GAN then needs evaluator_checkpoint)
    assert _evaluator_for(type("NoLabels", (), {"source": "folder"})(), None) is None


def test_generator_embeds_a_unit_h_isometrically():
    """G's shared embedding of h is the official SN linear layer with orthogonal init: with
    feature_embed_dim >= feature_dim its weight is an isometry, a unit h keeps norm 1 (its
    effect on G's output: tests/test_icgan_nets.py)."""
    g = BigGANGenerator(32, z_dim=20, ch=4, feature_dim=256, feature_embed_dim=512)
    h = torch.nn.functional.normalize(torch.randn(64, 256), dim=1)
    norm = (g.embed_h(h) - g.embed_h.bias).norm(dim=1)
    assert torch.allclose(norm, torch.ones(64), atol=1e-4), norm


@pytest.mark.slow
def test_ddp_two_processes_draw_their_own_streams_and_keep_identical_weights(tmp_path):
    """2 CPU processes (gloo): after 4 iterations both ranks hold the same G and D; each rank
    drew its own z (the per-rank offset of the global stream) and its own neighbours; the
    feature cache was written once by rank 0 and read by both."""
    import json

    from cli_helpers import run_ddp_fit

    tiny = [
        *TINY_CLI,
        "--data.init_args.embedded={n_train: 16, n_test: 6, image_size: 32}",
        "--test_after_fit=false",
        "--trainer.logger=[{class_path: lightning.pytorch.loggers.CSVLogger,"
        " init_args: {save_dir: runs}}]",
        "--trainer.enable_progress_bar=false",
        "--trainer.callbacks+=ddp_probe.RankStreams",
    ]
    report = run_ddp_fit("icgan.yaml", tiny, tmp_path, "icgan", batchnorm=True)
    assert report["world_size"] == 2 and max(report["divergence"]) < 1e-6
    run_dir = report["run_dir"]
    ranks = [json.loads((run_dir / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["z"] != ranks[1]["z"]  # not the same noise on every rank
    assert ranks[0]["neighbours"] != ranks[1]["neighbours"]
    assert (run_dir / "instance_features.pt").is_file()
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert int(ckpt["state_dict"]["iteration"]) == 4  # 2 epochs x 2 batches, on every rank
