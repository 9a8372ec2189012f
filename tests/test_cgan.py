"""Conditional GAN (Mirza & Osindero 2014): nets, schedules, Parzen, tagging, data, CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from cli_helpers import TINY_CGAN_NETS

from datamodules import DatasetLayoutError, VectorDataModule
from gan_suite.cli import cli_main
from gan_suite.eval.parzen import parzen_estimate, parzen_log_likelihood, select_sigma
from gan_suite.eval.tags import generated_tags
from gan_suite.losses import exponential_decay_lr, linear_momentum
from gan_suite.models.cgan import CGAN
from gan_suite.models.cgan_vectors import CGANVectors
from gan_suite.nets.cgan_nets import Maxout

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"

pytestmark = pytest.mark.usefixtures("shared_digits")


def _n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------- nets
def test_mlp_nets_have_the_paper_layer_sizes():
    model = CGAN()
    linear = lambda i, o: i * o + o  # noqa: E731
    # G: z 100 -> 200, y 10 -> 1000, [200 + 1000] -> 1200, 1200 -> 784
    g = linear(100, 200) + linear(10, 1000) + linear(1200, 1200) + linear(1200, 784)
    # D: x 784 -> 240 x 5, y 10 -> 50 x 5, [240 + 50] -> 240 x 4, 240 -> 1
    d = linear(784, 240 * 5) + linear(10, 50 * 5) + linear(290, 240 * 4) + linear(240, 1)
    assert (_n_params(model.G), _n_params(model.D)) == (g, d) == (2_413_984, 1_224_351)
    labels = torch.arange(10)
    assert model(labels).shape == (10, 1, 28, 28)
    fake = model(labels)
    assert 0 <= fake.min() and fake.max() <= 1  # sigmoid pixels
    assert model.discriminate(fake, model.one_hot(labels)).shape == (10,)


def test_vector_nets_have_the_section_4_2_sizes():
    model = CGANVectors(feature_dim=4096, word_dim=200)
    linear = lambda i, o: i * o + o  # noqa: E731
    g = linear(100, 500) + linear(4096, 2000) + linear(2500, 200)
    d = linear(200, 500) + linear(4096, 1200) + linear(1700, 1000 * 3) + linear(1000, 1)
    assert (_n_params(model.G), _n_params(model.D)) == (g, d)
    assert model(torch.randn(3, 4096)).shape == (3, 200)


def test_conv_arch_shapes_for_rgb_32_px():
    model = CGAN(arch="conv", image_size=32, channels=3, output="tanh", ngf=8, ndf=8)
    labels = torch.tensor([0, 3, 9])
    fake = model(labels)
    assert fake.shape == (3, 3, 32, 32) and fake.abs().max() <= 1
    assert model.discriminate(fake, model.one_hot(labels)).shape == (3,)


def test_maxout_is_the_max_over_each_units_pieces():
    layer = Maxout(3, units=2, pieces=4)
    x = torch.randn(5, 3)
    pre = layer.linear(x).view(5, 2, 4)
    assert torch.equal(layer(x), pre.max(dim=2).values)
    # unit 0 owns outputs 0..3: raising output 2 alone raises unit 0 only
    with torch.no_grad():
        layer.linear.bias[2] += 100.0
    out = layer(x)
    assert torch.all(out[:, 0] > 50) and torch.all(out[:, 1] < 50)


# ---------------------------------------------------------------------------- schedules
def test_lr_and_momentum_schedules_at_known_steps():
    assert exponential_decay_lr(0) == pytest.approx(0.1)
    assert exponential_decay_lr(10_000) == pytest.approx(0.1 / 1.00004**10_000)
    assert exponential_decay_lr(10_000) == pytest.approx(0.06703, rel=1e-4)
    # 0.1 / 1.00004^t = 1e-6 at t = ln(1e5) / ln(1.00004) ~ 287,834 batches; floored after
    assert exponential_decay_lr(287_000) > 1e-6
    assert exponential_decay_lr(300_000) == 1e-6
    assert linear_momentum(0) == linear_momentum(1) == 0.5
    assert linear_momentum(1 + 249 // 2 + 0.5) == pytest.approx(0.6)
    assert linear_momentum(250) == linear_momentum(1000) == pytest.approx(0.7)


# ---------------------------------------------------------------------------- Parzen
def test_parzen_matches_a_direct_computation():
    g = torch.Generator().manual_seed(0)
    samples, x = torch.rand(7, 3, generator=g), torch.rand(4, 3, generator=g)
    sigma = 0.3
    direct = []
    for xi in x.double():
        dens = [
            math.exp(-((xi - m.double()) ** 2).sum().item() / (2 * sigma**2))
            / (2 * math.pi * sigma**2) ** 1.5
            for m in samples
        ]
        direct.append(math.log(sum(dens) / len(samples)))
    # tiny chunks: the running logsumexp across chunks must give the same numbers
    got = parzen_log_likelihood(x, samples, sigma, chunk_x=3, chunk_samples=2)
    assert torch.allclose(got, torch.tensor(direct, dtype=torch.float64), atol=1e-10)
    grid = parzen_log_likelihood(x, samples, [0.3, 1.0])
    assert torch.allclose(grid[:, 0], got) and grid.shape == (4, 2)


def test_sigma_selection_recovers_the_true_bandwidth():
    g = torch.Generator().manual_seed(0)
    centres = torch.rand(40, 5, generator=g) * 100  # well separated kernel centres
    true_sigma = 0.3

    def draw(n: int) -> torch.Tensor:
        pick = torch.randint(0, 40, (n,), generator=g)
        return centres[pick] + true_sigma * torch.randn(n, 5, generator=g)

    grid = np.logspace(-2, 1, 31)
    sigma, curve = select_sigma(centres, draw(2000), grid, chunk_x=128, chunk_samples=16)
    assert sigma == pytest.approx(true_sigma, rel=0.1)
    result = parzen_estimate(centres, draw(500), draw(500), grid)
    assert result.sigma == sigma or result.sigma == pytest.approx(true_sigma, rel=0.1)
    assert result.as_metric()["n_images"] == 500 and result.std_err > 0


# ---------------------------------------------------------------------------- section 4.2
def _toy_vectors(root: Path, with_vocab: bool = True) -> dict:
    """4 concepts; each image feature is its concept's one-hot (+ noise), its tag the word."""
    rng = np.random.default_rng(0)
    words = ["cat", "dog", "sky", "car", "tree", "sea"]
    vocab = np.linalg.qr(rng.normal(size=(8, 8)))[0][:6].astype(np.float32)  # orthonormal
    for split, n in (("train", 64), ("test", 16)):
        concept = rng.integers(0, 4, n)
        feats = np.eye(6, dtype=np.float32)[concept] + 0.05 * rng.normal(size=(n, 6))
        np.save(root / f"{split}_features.npy", feats.astype(np.float32))
        np.save(root / f"{split}_word_vectors.npy", vocab[concept])
    if with_vocab:
        np.save(root / "word_vectors.npy", vocab)
        (root / "words.txt").write_text("\n".join(words) + "\n")
    return {"words": words, "vocab": torch.from_numpy(vocab)}


def test_generated_tags_vote_for_the_nearest_words():
    vocab = torch.eye(5)  # word i = axis i
    # item 0: 6 samples near word 3, 4 near word 1; item 1: all near word 0
    near = lambda i, n: torch.eye(5)[i].repeat(n, 1) + 0.01 * torch.randn(n, 5)  # noqa: E731
    samples = torch.stack([torch.cat([near(3, 6), near(1, 4)]), near(0, 10)])
    tags, votes = generated_tags(samples, vocab, k_nearest=1, top=2)
    assert tags.tolist() == [[3, 1], [0, 1]]  # item 1: word 1 has 0 votes, lowest index next
    assert votes.tolist() == [[6, 4], [10, 0]]
    # every sample lies between words 3 and 1: with 2 nearest each, both get all 10 votes
    mixed = torch.cat([near(3, 6) + 0.5 * vocab[1], near(1, 4) + 0.5 * vocab[3]])[None]
    tags, votes = generated_tags(mixed, vocab, k_nearest=2, top=3)
    assert tags[0, :2].tolist() == [1, 3] and votes[0].tolist() == [10, 10, 0]  # tie: index


def test_vector_datamodule_reads_arrays_and_names_bad_files(tmp_path):
    toy = _toy_vectors(tmp_path)
    dm = VectorDataModule(str(tmp_path), batch_size=16)
    dm.setup("fit")
    assert (dm.feature_dim, dm.word_dim, dm.words) == (6, 8, toy["words"])
    assert len(dm.splits["val"][0]) == 6 and len(dm.splits["train"][0]) == 58  # 10% carved
    batch = next(iter(dm.train_dataloader()))
    assert batch["features"].shape == (16, 6) and batch["word_vector"].shape == (16, 8)

    (tmp_path / "words.txt").unlink()
    with pytest.raises(DatasetLayoutError, match="words.txt"):
        VectorDataModule(str(tmp_path)).setup("fit")
    (tmp_path / "words.txt").write_text("a\nb\n")
    with pytest.raises(ValueError, match="2 words but .*word_vectors.npy.* 6 rows"):
        VectorDataModule(str(tmp_path)).setup("fit")
    (tmp_path / "words.txt").write_text("\n".join(toy["words"]))
    np.save(tmp_path / "test_word_vectors.npy", np.zeros((3, 8), np.float32))
    with pytest.raises(ValueError, match="test_features.npy.* 16 rows .* 3"):
        VectorDataModule(str(tmp_path)).setup("fit")
    np.save(tmp_path / "test_word_vectors.npy", np.zeros((16, 5), np.float32))
    with pytest.raises(ValueError, match=r"test: .*\(\*, 8\)"):
        VectorDataModule(str(tmp_path)).setup("fit")
    (tmp_path / "train_features.npy").unlink()
    with pytest.raises(DatasetLayoutError, match="train_features.npy"):
        VectorDataModule(str(tmp_path)).setup("fit")


def test_cgan_vectors_trains_and_tags_the_toy(tmp_path):
    _toy_vectors(tmp_path)
    dm = VectorDataModule(str(tmp_path), batch_size=16)
    model = CGANVectors(
        feature_dim=6,
        word_dim=8,
        z_dim=4,
        g_z_hidden=8,
        g_cond_hidden=16,
        d_x_units=8,
        d_cond_units=8,
        d_joint_units=8,
        samples_per_item=5,
    )
    from gan_suite.callbacks import Evaluation

    evaluation = Evaluation(feature="none", use_evaluator=False, n_images=4)
    trainer = L.Trainer(
        fast_dev_run=1,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        default_root_dir=str(tmp_path),
        callbacks=[evaluation],
    )
    trainer.fit(model, datamodule=dm)
    assert int(model.iteration) == 1  # one batch: a D step and a G step
    trainer.test(model, datamodule=dm)
    results = evaluation.last_results
    assert results["tags/tag_hit"]["n_images"] == 4 and 0 <= results["tags/tag_hit"]["value"] <= 1
    rows = (tmp_path / "tags.tsv").read_text().splitlines()
    assert len(rows) == 5 and rows[1].count("(") == 6  # 4 items; top 10 clipped to 6 words
    batch = next(iter(dm.test_dataloader()))
    (record,) = model.evaluation_outputs({k: v[:4] for k, v in batch.items()})
    assert record.generated.shape == (4, 5, 8)
    _, votes = generated_tags(record.generated, record.vocabulary, 20, 10)
    assert (votes.sum(1) == 5 * 6).all()  # 5 samples x min(20, 6) nearest words each


# ---------------------------------------------------------------------------- training
def _digits(**kw) -> L.LightningDataModule:
    from datamodules import LabelledDataModule

    args = dict(
        source="digits",
        domain="B",  # the UCI digits: the smaller domain keeps the judge's training short
        image_size=28,
        channels=1,
        normalize="unit",
        batch_size=16,
        num_workers=0,
    )
    return LabelledDataModule(**{**args, **kw})


def test_each_step_gives_gradients_to_its_own_net_only_and_the_schedule_resumes(tmp_path):
    model = CGAN(
        g_z_hidden=16,
        g_cond_hidden=16,
        g_joint_hidden=32,
        d_x_units=8,
        d_cond_units=4,
        d_joint_units=8,
    )
    seen: list[tuple[set, set]] = []
    names = dict(model.named_parameters())

    def spy(opt, loss):
        model.manual_backward(loss)
        own = {id(p) for group in opt.param_groups for p in group["params"]}
        graded = {n for n, p in names.items() if p.grad is not None and p.grad.abs().sum() > 0}
        seen.append(({n for n, p in names.items() if id(p) in own}, graded))
        opt.step()
        opt.zero_grad(set_to_none=True)

    model.backward_and_step = spy
    trainer = L.Trainer(
        max_steps=4,
        limit_val_batches=0,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(model, datamodule=_digits())
    d_step, g_step = seen[0], seen[1]
    assert d_step[0] == {n for n in names if n.startswith("D.")} == d_step[1]
    assert g_step[0] == {n for n in names if n.startswith("G.")} == g_step[1]
    assert int(model.iteration) == 2  # max_steps counts optimizer steps: 2 per batch
    opt_g = model.optimizers()[0].optimizer
    # the per-iteration schedule has stepped twice: the next batch runs at 0.1 / 1.00004^2
    assert opt_g.param_groups[0]["lr"] == pytest.approx(0.1 / 1.00004**2, rel=1e-9)
    ckpt = tmp_path / "two.ckpt"
    trainer.save_checkpoint(ckpt)
    state = torch.load(ckpt, weights_only=False)
    assert int(state["state_dict"]["iteration"]) == 2
    assert [s["last_epoch"] for s in state["lr_schedulers"]] == [2, 2]


def test_per_class_generation_and_sample_panels():
    model = CGAN().eval()
    panels = model.sample_panels({"image": torch.zeros(4, 1, 28, 28)})
    (columns,) = panels.values()
    assert len(columns) == 10 and all(c.shape == (4, 3, 28, 28) for c in columns)
    assert min(c.min() for c in columns) >= -1 and max(c.max() for c in columns) <= 1


# ---------------------------------------------------------------------------- CLI
TINY = [
    *TINY_CGAN_NETS,
    "--trainer.callbacks=[{class_path: gan_suite.callbacks.Evaluation, init_args: {n_images: 40}}]",
    "--data.init_args.batch_size=8",
    "--trainer.accelerator=cpu",
    "--trainer.logger=[{class_path: lightning.pytorch.loggers.CSVLogger,"
    " init_args: {save_dir: runs}}]",
    "--trainer.enable_progress_bar=false",
]


def test_cli_fast_dev_run_then_test_writes_the_metrics():
    cli = cli_main(
        ["fit", "--config", str(EXPERIMENTS / "cgan.yaml"), *TINY, "--trainer.fast_dev_run=1"]
    )
    run_dir = Path(cli.trainer.default_root_dir)
    assert run_dir.parent == Path("runs") / "cgan"
    assert cli.trainer.global_step == 2 and int(cli.model.iteration) == 1
    # test_after_fit (in the YAML) ran the evaluation and wrote the suite's reports
    metrics = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    metrics = {k.removeprefix("samples/"): v for k, v in metrics.items()}
    for key in ("parzen_ll", "class_acc", "class_acc/0", "class_acc_real", "fid", "kid"):
        assert key in metrics, key
    assert metrics["class_acc"]["n_images"] == 40 and metrics["fid"]["extractor"] == "evaluator"
    assert metrics["parzen_ll"]["n_samples"] == 50 and "sigma" in metrics["parzen_ll"]
    assert metrics["class_acc_shuffled"]["n_images"] == 40
    assert (run_dir / "report.html").is_file()


def test_ddp_two_processes_keep_identical_weights(tmp_path):
    from cli_helpers import run_ddp_fit

    no_eval = [a for a in TINY if not a.startswith("--trainer.callbacks")]
    args = [*no_eval, "--trainer.callbacks=[]", "--test_after_fit=false"]
    report = run_ddp_fit("cgan.yaml", args, tmp_path, "cgan")
    assert report["world_size"] == 2
    assert len(report["divergence"]) == 2 and max(report["divergence"]) < 1e-6
