"""StarGAN and MatchGAN: the nets' official sizes, the losses on known cases, the evaluation
targets and MatchGAN's pairs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from cli_helpers import EXPERIMENTS
from torch import nn

from gan_suite.losses import (
    attribute_classification_loss,
    gradient_penalty,
    linear_decay_to_zero,
    matchgan_pairs,
)
from gan_suite.models.stargan import attribute_targets
from gan_suite.nets.stargan import StarGANDiscriminator, StarGANGenerator


def _count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def test_parameter_counts_are_the_official_ones_at_128px_with_5_attributes():
    assert _count(StarGANGenerator(c_dim=5)) == 8_430_528
    d = StarGANDiscriminator(image_size=128, c_dim=5)
    assert _count(d) == 44_762_048
    # MatchGAN's pair head: one 2x2 conv from the two 2048-channel embeddings to 2 logits
    assert _count(StarGANDiscriminator(128, 5, match_head=True)) - _count(d) == 4096 * 2 * 4


def test_nets_shapes_and_the_size_check():
    g = StarGANGenerator(c_dim=3, conv_dim=8, repeat_num=1)
    x, c = torch.randn(2, 3, 32, 32), torch.tensor([[1.0, 0, 1], [0, 1, 0]])
    assert g(x, c).shape == (2, 3, 32, 32)
    d = StarGANDiscriminator(32, c_dim=3, conv_dim=8, repeat_num=4, match_head=True)
    src, cls = d(x)
    assert src.shape == (2, 1, 2, 2) and cls.shape == (2, 3)
    h = d.embed(x)
    assert d.match_logits(h, h.flip(0)).shape == (2, 2)
    with pytest.raises(ValueError, match="d_repeat_num"):
        StarGANDiscriminator(48, c_dim=3, repeat_num=5)  # 48 / 32 is not whole
    with pytest.raises(RuntimeError, match="match head"):
        StarGANDiscriminator(32, 3, 8, 4).match_logits(h, h)


class _LinearCritic(nn.Module):
    """D(x) = <w, x> (+ a dummy classifier output): its gradient is w at every x."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x):
        return (x * self.w).flatten(1).sum(1, keepdim=True), torch.zeros(len(x), 5)


def test_gradient_penalty_on_a_linear_critic_is_the_norm_gap_squared():
    w = torch.zeros(3, 4, 4)
    w[0, 0, :3] = torch.tensor([1.0, 2.0, 2.0])  # ||w|| = 3 -> (3 - 1)^2 = 4
    gp = gradient_penalty(_LinearCritic(w), torch.randn(6, 3, 4, 4), torch.randn(6, 3, 4, 4))
    assert gp.item() == pytest.approx(4.0)
    w = torch.full((1, 2, 2), 0.5)  # ||w|| = 1 -> 0
    assert gradient_penalty(_LinearCritic(w), torch.rand(3, 1, 2, 2), torch.rand(3, 1, 2, 2)) == 0


def test_attribute_classification_loss_sums_attributes_and_averages_images():
    logits = torch.zeros(4, 5)
    assert attribute_classification_loss(logits, torch.ones(4, 5)).item() == pytest.approx(
        5 * math.log(2)
    )
    confident = torch.tensor([[20.0, -20.0]])
    assert attribute_classification_loss(confident, torch.tensor([[1.0, 0.0]])) < 1e-6


def test_learning_rate_decays_linearly_to_zero_and_never_below():
    f = [linear_decay_to_zero(i, 200, 100) for i in (0, 99, 100, 150, 200, 250)]
    assert f == [1.0, 1.0, 1.0, 0.5, 0.0, 0.0]


def test_evaluation_targets_switch_one_exclusive_attribute_on_and_flip_the_others():
    # attributes: black, blond, brown (exclusive), male, young
    c_org = torch.tensor([[1.0, 0, 0, 1, 0], [0, 0, 0, 0, 1]])
    targets = attribute_targets(c_org, [[0, 1, 2]])
    assert len(targets) == 5
    assert targets[1].tolist() == [[0, 1, 0, 1, 0], [0, 1, 0, 0, 1]]  # blond on, black off
    assert targets[0].tolist() == [[1, 0, 0, 1, 0], [1, 0, 0, 0, 1]]  # already black: kept
    assert targets[3].tolist() == [[1, 0, 0, 0, 0], [0, 0, 0, 1, 1]]  # male flipped
    assert c_org[0, 0] == 1  # the input is not modified


@pytest.mark.parametrize("n_groups,group_size", [(4, 4), (2, 4), (3, 3), (4, 6)])
def test_matchgan_pairs_positives_share_the_label_and_negatives_do_not(n_groups, group_size):
    labels = torch.arange(n_groups).repeat_interleave(group_size)  # contiguous label groups
    first, second, same = matchgan_pairs(n_groups, group_size)
    assert len(first) == 4 * n_groups and int(same.sum()) == 2 * n_groups
    assert torch.equal((labels[first] == labels[second]).long(), same)
    assert bool((first != second).all())


def test_matchgan_pairs_are_the_official_triplets_for_4_by_4():
    first, second, same = matchgan_pairs(4, 4)
    # the official get_pairs(triple=True): anchors gp_1 + gp_3 + gp_1 + gp_3 against
    # gp_2 + gp_4 (rotated once) + gp_4 (rotated twice) + gp_2
    assert first.tolist() == [0, 4, 8, 12, 2, 6, 10, 14, 0, 4, 8, 12, 2, 6, 10, 14]
    assert second.tolist() == [1, 5, 9, 13, 15, 3, 7, 11, 11, 15, 3, 7, 1, 5, 9, 13]
    assert same.tolist() == [1] * 4 + [0] * 8 + [1] * 4
    with pytest.raises(ValueError, match="classes_per_batch"):
        matchgan_pairs(1, 4)


# ---------------------------------------------------------------------------- the models
ATTRS = ["red", "green", "warm_background"]
NETS = dict(
    attributes=ATTRS,
    exclusive_groups=[["red", "green"]],
    image_size=16,
    g_conv_dim=4,
    g_repeat_num=1,
    d_conv_dim=4,
    d_repeat_num=3,
)


def _shapes(**kw):
    from datamodules import LabelledDataModule

    args = dict(
        source="shapes",
        attributes=ATTRS,
        image_size=16,
        batch_size=8,
        num_workers=0,
        embedded={"n_train": 40, "n_test": 8, "image_size": 24},
    )
    return LabelledDataModule(**{**args, **kw})


def test_stargan_refuses_unlabelled_images_and_trains_on_the_labelled_subset(make_trainer):
    from gan_suite.models.stargan import StarGAN

    model = StarGAN(**NETS, n_critic=1)
    with pytest.raises(ValueError, match="train_unlabelled: false"):
        make_trainer(max_epochs=1).fit(model, datamodule=_shapes(labelled_fraction=0.5))
    dm = _shapes(labelled_fraction=0.5, train_unlabelled=False, labelled_sampling="even")
    trainer = make_trainer(max_epochs=1)
    trainer.fit(StarGAN(**NETS, n_critic=1), datamodule=dm)
    assert len(dm.train_set) == int(dm.labelled.sum()) == round(0.5 * 36)
    assert trainer.num_training_batches == 2  # 18 labelled images, full batches of 8


def test_stargan_checks_the_data_against_the_model(make_trainer):
    from gan_suite.models.stargan import StarGAN

    with pytest.raises(ValueError, match="differ from model.init_args.attributes"):
        make_trainer().fit(
            StarGAN(**{**NETS, "attributes": ["green", "red", "warm_background"]}),
            datamodule=_shapes(),
        )
    with pytest.raises(ValueError, match="data.image_size=32"):
        make_trainer().fit(StarGAN(**NETS), datamodule=_shapes(image_size=32))


def test_matchgan_alternates_labelled_and_unlabelled_terms(make_trainer):
    """Matched batches alternate labelled / unlabelled; D's classification and matching of
    real images and G's reconstruction run on labelled batches only; G's matching of its
    translations on every G step; targets come from the labelled label space."""
    from gan_suite.models.matchgan import MatchGAN

    model = MatchGAN(**NETS, n_critic=1, classes_per_batch=2)
    seen: list[tuple[int, bool, tuple[str, ...]]] = []
    log_terms = model.log_terms

    def spy(prefix, terms, prog_bar=()):
        if prefix == "train":
            seen.append((int(model.iteration), "d_loss" in terms, tuple(sorted(terms))))
        log_terms(prefix, terms, prog_bar)

    model.log_terms = spy
    dm = _shapes(labelled_fraction=0.5, batch_composition="matched", classes_per_batch=2)
    make_trainer(max_epochs=1, limit_train_batches=4).fit(model, datamodule=dm)
    d_steps = [terms for _, is_d, terms in seen if is_d]
    g_steps = [terms for _, is_d, terms in seen if not is_d]
    assert [("d_cls" in t, "d_match" in t) for t in d_steps] == [(True, True), (False, False)] * 2
    assert [("g_rec" in t, "g_match" in t) for t in g_steps] == [(True, True), (False, True)] * 2
    # label-space augmentation: k distinct labelled patterns, pattern j % k for image j
    space = {tuple(r) for r in dm.label_space().tolist()}
    targets = model.sample_targets(8)
    assert {tuple(r) for r in targets.tolist()} <= space
    assert torch.equal(targets[:2], targets[2:4]) and not torch.equal(targets[0], targets[1])
    # the sample grid: each input, then its translation for every attribute
    batch = next(iter(dm.val_dataloader()))
    (panel,) = model.sample_panels(batch).values()
    assert len(panel) == 1 + len(ATTRS) and all(p.shape == batch["image"].shape for p in panel)


def test_matchgan_refuses_unmatched_batches(make_trainer):
    from gan_suite.models.matchgan import MatchGAN

    with pytest.raises(ValueError, match="batch_composition: matched"):
        make_trainer().fit(MatchGAN(**NETS, classes_per_batch=2), datamodule=_shapes())
    model = MatchGAN(**NETS, classes_per_batch=2)
    mixed = {
        "image": torch.zeros(4, 3, 16, 16),
        "labelled": torch.tensor([True, False, True, True]),
        "label": torch.zeros(4, 3),
    }
    with pytest.raises(ValueError, match="mixes labelled and unlabelled"):
        model._batch_kind(mixed)
    ungrouped = {**mixed, "labelled": torch.ones(4, dtype=torch.bool), "label": torch.eye(4, 3)}
    with pytest.raises(ValueError, match="one label each"):
        model._batch_kind(ungrouped)


# ---------------------------------------------------------------------------- CLI
def _tiny_cli(paper: str) -> list[str]:
    """The paper YAML at 32 px (the evaluator judges images of 24 px and more), tiny nets."""
    attrs = "[red, green, warm_background]"
    return [
        "fit",
        "--config",
        str(EXPERIMENTS / YAML[paper]),
        f"--model.init_args.attributes={attrs}",
        "--model.init_args.exclusive_groups=[[red, green]]",
        f"--data.init_args.attributes={attrs}",
        "--model.init_args.image_size=32",
        "--model.init_args.g_conv_dim=4",
        "--model.init_args.g_repeat_num=1",
        "--model.init_args.d_conv_dim=4",
        "--model.init_args.d_repeat_num=4",
        "--data.init_args.image_size=32",
        "--data.init_args.num_workers=0",
        "--data.init_args.embedded={n_train: 40, n_test: 8, image_size: 32}",
        "--trainer.callbacks=[{class_path: gan_suite.callbacks.Evaluation,"
        " init_args: {n_images: 8}}]",
        "--trainer.accelerator=cpu",
        "--trainer.logger=[{class_path: lightning.pytorch.loggers.CSVLogger,"
        " init_args: {save_dir: runs}}]",
        "--trainer.enable_progress_bar=false",
    ]


YAML = {"stargan": "stargan.yaml", "matchgan": "matchgan.yaml", "matchgan-dev": "matchgan.yaml"}
# fast_dev_run skips the run directory's config.yaml (and labelled_list.txt): MatchGAN's
# case trains 2 real batches instead
MATCHED_2 = ["--model.init_args.classes_per_batch=2", "--data.init_args.classes_per_batch=2"]
BUDGET = {
    "stargan": ["--trainer.fast_dev_run=1"],
    "matchgan-dev": ["--trainer.fast_dev_run=1", *MATCHED_2, "--data.init_args.batch_size=8"],
    "matchgan": [
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2",
        "--trainer.limit_val_batches=0",
        *MATCHED_2,
        "--data.init_args.batch_size=8",
    ],
}


@pytest.mark.parametrize("paper", ["stargan", "matchgan-dev", "matchgan"])
def test_cli_fast_dev_run_then_test_writes_the_attribute_metrics(paper):
    from gan_suite.cli import cli_main

    cli = cli_main(_tiny_cli(paper) + BUDGET[paper])
    run_dir = Path(cli.trainer.default_root_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    values = metrics["metrics"]
    # 8 inputs x 3 attributes, each translation asking one attribute to change
    assert values["translations/target_attribute_acc"]["n_images"] == 24
    for key in ("attribute_preservation", "target_attribute_acc/red", "fid", "kid"):
        assert f"translations/{key}" in values, key
    judge = metrics["extra"]["evaluator"]
    # the judge's own held-out accuracy is reported beside the numbers it judges
    assert 0.0 <= judge["accuracy_real_test"] <= 1.0 and judge["n_test"] == 8
    assert set(judge["accuracy_real_test_per_attribute"]) == {"red", "green", "warm_background"}
    listed = run_dir / "labelled_list.txt"
    if paper == "matchgan":  # 10% of the 36 training scenes, named in the run directory
        # (a fast_dev_run writes no config.yaml and no list)
        names = [n for n in listed.read_text().splitlines() if not n.startswith("#")]
        assert len(names) == int(cli.datamodule.labelled.sum()) >= 3
    else:
        assert not listed.exists()


def test_the_judge_is_the_same_for_every_run_on_the_same_images(tmp_path):
    """StarGAN at 100%, on a labelled subset, and MatchGAN's matched batches are judged by one
    attribute evaluator: how a run draws or batches labels is not part of its fingerprint
    (class-grouped batches trained a worse judge, 0.87 held-out accuracy instead of 1.0)."""
    from gan_suite.eval.judge import load_or_train_label_evaluator

    embedded = {"n_train": 40, "n_test": 8, "image_size": 32}
    plain = _shapes(image_size=32, embedded=embedded)
    matched = _shapes(
        image_size=32,
        embedded=embedded,
        labelled_fraction=0.5,
        labelled_sampling="even",
        batch_composition="matched",
        classes_per_batch=2,
        train_unlabelled=False,
    )
    a = load_or_train_label_evaluator(plain, max_epochs=1, cache_dir=str(tmp_path))
    b = load_or_train_label_evaluator(matched, max_epochs=1, cache_dir=str(tmp_path))
    assert a.checkpoint_path == b.checkpoint_path
    assert len(list((tmp_path / "evaluators").glob("*.ckpt"))) == 1


def test_stargan_on_rafd_style_class_folders_scores_one_hot_targets(tmp_path, make_trainer):
    """StarGAN's second dataset: one expression per image (class folders), c = one-hot,
    softmax cross-entropy, evaluation targets = every class; judged by the class evaluator."""
    from test_labelled import make_folder_tree

    from datamodules import LabelledDataModule
    from gan_suite.callbacks import Evaluation
    from gan_suite.models.stargan import StarGAN

    root = make_folder_tree(tmp_path / "rafd", per_class=8)
    dm = LabelledDataModule("folder", str(root), image_size=32, batch_size=4, num_workers=0)
    classes = ["bird", "cat", "dog"]
    nets = {**NETS, "image_size": 32, "d_repeat_num": 4, "attributes": classes}
    nets["exclusive_groups"] = None
    with pytest.raises(ValueError, match="label_kind"):
        make_trainer().fit(StarGAN(**nets), datamodule=dm)
    model = StarGAN(**nets, label_kind="class", n_critic=1)
    assert model.hparams.exclusive_groups == [classes]
    logits = torch.tensor([[4.0, 0.0, 0.0]])
    assert model.classification_loss(logits, torch.tensor([[1.0, 0, 0]])) == pytest.approx(
        torch.nn.functional.cross_entropy(logits, torch.tensor([0])).item()
    )
    evaluation = Evaluation(n_images=6)
    trainer = make_trainer(max_epochs=1, limit_train_batches=2, callbacks=[evaluation])
    trainer.fit(model, datamodule=dm)
    trainer.test(model, datamodule=dm)
    results = evaluation.last_results
    # every test input x 3 classes; asking for the input's own class changes nothing; each
    # request for another class is one judged request
    n = min(6, len(dm.test_set))
    assert results["translations/target_attribute_acc"]["n_images"] == 3 * n
    assert results["translations/target_attribute_acc"]["n_attributes"] == n * 2
    assert "translations/attribute_preservation" not in results  # one-hot: nothing to keep
    (record,) = model.evaluation_outputs(next(iter(dm.test_dataloader())))
    assert record.single_choice and bool((record.target_attributes.sum(1) == 1).all())


def test_stargan_on_celeba_centre_crops_then_resizes(tmp_path, make_trainer):
    from test_labelled import make_celeba

    from datamodules import LabelledDataModule
    from gan_suite.models.stargan import CELEBA_ATTRIBUTES, StarGAN

    root = make_celeba(tmp_path / "celeba")  # 20 x 24 jpgs, as CelebA's 178 x 218
    dm = LabelledDataModule(
        "celeba",
        str(root),
        attributes=CELEBA_ATTRIBUTES,
        center_crop=20,
        image_size=16,
        batch_size=2,
        num_workers=0,
    )
    dm.setup("fit")
    assert dm.train_set[0]["image"].shape == (3, 16, 16)
    nets = {**NETS, "attributes": CELEBA_ATTRIBUTES, "exclusive_groups": None}
    model = StarGAN(**nets, n_critic=1)
    assert model.hparams.exclusive_groups == [["Black_Hair", "Blond_Hair", "Brown_Hair"]]
    trainer = make_trainer(max_epochs=1, limit_train_batches=2)
    trainer.fit(model, datamodule=dm)
    assert int(model.iteration) == 2


@pytest.mark.parametrize("features,learns", [("concat", False), ("relation", True)])
def test_the_official_concat_match_head_cannot_learn_matching(features, learns):
    """MatchGAN's pair task on fixed embeddings of 4 labels: the official head (a conv over
    the concatenated embeddings = f(h_1) + g(h_2)) stays at chance, ln 2; the same conv over
    relation features (|h_1 - h_2|, h_1 * h_2) learns it."""
    torch.manual_seed(0)
    d = StarGANDiscriminator(16, 3, conv_dim=4, repeat_num=3, match_head=True)
    d.match_features = features
    centres = torch.randn(4, 16, 2, 2)  # one embedding per label (D's 16-channel 2x2 map)
    first, second, same = matchgan_pairs(4, 4)
    opt = torch.optim.Adam(d.match.parameters(), lr=0.05)
    for _ in range(300):
        # 4 groups of 4 images, each group one label drawn at random (as MatchGAN's batches)
        h = centres[torch.randperm(4)].repeat_interleave(4, 0)
        h = h + 0.05 * torch.randn(16, 16, 2, 2)
        loss = torch.nn.functional.cross_entropy(d.match_logits(h[first], h[second]), same)
        opt.zero_grad()
        loss.backward()
        opt.step()
    if learns:
        assert loss.item() < 0.1
    else:
        assert loss.item() > math.log(2) - 0.05


class _ReadingJudge(nn.Module):
    """A perfect judge of fake "images" that carry their attributes in the first pixel row:
    x[:, 0, 0, :A] holds the 0/1 vector the judge reports."""

    def __init__(self, names: list[str] | None) -> None:
        super().__init__()
        self.hparams = {"attribute_names": names, "n_classes": 3}

    def classify_attributes(self, x):
        return x[:, 0, 0, :3] * 20 - 10

    classify = classify_attributes


def _fakes(vectors: list[list[float]]) -> torch.Tensor:
    x = torch.zeros(len(vectors), 3, 1, 3)
    x[:, 0, 0, :] = torch.tensor(vectors)
    return x


def test_attribute_scores_judge_the_request_not_its_side_effects():
    """Helper-found cases: a G that only switches black hair off when asked for blond fulfils
    no request; a G that answers every class request with a third class scores 0."""
    from gan_suite.eval.protocol import AttributeTranslation
    from gan_suite.eval.scorers import AttributeScorer

    names = ["Black_Hair", "Blond_Hair", "Male"]
    source = torch.tensor([[1.0, 0, 0]])
    targets = attribute_targets(source, [[0, 1]])  # black (no change), blond, male
    outputs = [[1, 0, 0], [0, 0, 0], [1, 0, 1]]  # blond request: black off, blond not on
    record = AttributeTranslation(
        "t", _fakes(outputs), source, source.repeat(3, 1), torch.cat(targets),
        attribute_names=names, requested=torch.arange(3),
    )  # fmt: skip
    scorer = AttributeScorer(_ReadingJudge(names), None, 3)
    scorer.update(record, with_real=False)
    out = scorer.compute()
    assert out["target_attribute_acc"]["value"] == 0.5  # male done, blond not
    assert out["target_attribute_acc/Blond_Hair"]["value"] == 0.0
    assert out["target_attribute_acc/Male"]["value"] == 1.0
    assert "target_attribute_acc/Black_Hair" not in out  # never requested to change

    classes = torch.tensor([[1.0, 0, 0]])  # class 0; requests for classes 1 and 2
    record = AttributeTranslation(
        "c", _fakes([[0, 0, 1], [0, 0, 1]]), classes, classes.repeat(2, 1),
        torch.tensor([[0.0, 1, 0], [0, 0, 1]]), single_choice=True,
        requested=torch.tensor([1, 2]),
    )  # fmt: skip
    scorer = AttributeScorer(_ReadingJudge(None), None, 3, single_choice=True)
    scorer.update(record, with_real=False)
    out = scorer.compute()
    assert out["target_attribute_acc"]["value"] == 0.5  # class 2 right, class 1 answered 2
    assert out["target_attribute_acc/1"]["value"] == 0.0
    assert "attribute_preservation" not in out


def test_option_checks_overlapping_groups_and_even_n_critic(make_trainer):
    from gan_suite.models.matchgan import MatchGAN
    from gan_suite.models.stargan import StarGAN

    with pytest.raises(ValueError, match="overlap"):
        StarGAN(**{**NETS, "exclusive_groups": [["red", "green"], ["green", "warm_background"]]})
    model = MatchGAN(**NETS, n_critic=2, classes_per_batch=2)
    dm = _shapes(labelled_fraction=0.5, batch_composition="matched", classes_per_batch=2)
    with pytest.raises(ValueError, match="n_critic=2 is even"):
        make_trainer(max_epochs=1).fit(model, datamodule=dm)


def test_matchgan_ddp_two_processes_keep_identical_weights_on_their_own_batches(tmp_path):
    """2 CPU processes (gloo): the matched sampler is rebuilt by Lightning with each rank's
    DistributedSampler, so the ranks' first (labelled, class-grouped) batches differ, and
    after each of the 2 epochs both ranks hold the same G and D."""
    from cli_helpers import run_ddp_fit

    args = _tiny_cli("matchgan")[3:]  # without "fit --config <yaml>"
    args = [a for a in args if not a.startswith("--trainer.callbacks")]
    args += [
        *MATCHED_2,
        "--data.init_args.batch_size=8",
        "--model.init_args.n_critic=1",
        "--test_after_fit=false",
        "--trainer.callbacks=[]",
        "--trainer.callbacks+=ddp_probe.RankStreams",
    ]
    report = run_ddp_fit("matchgan.yaml", args, tmp_path, "matchgan")
    assert report["world_size"] == 2 and max(report["divergence"]) < 1e-6
    ranks = [json.loads((report["run_dir"] / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(all(r["labelled"]) for r in ranks)  # iteration 0: a labelled batch
    assert ranks[0]["index"] != ranks[1]["index"]


def test_stargan_ddp_two_processes_keep_identical_weights(tmp_path):
    """StarGAN itself (WGAN-GP's double backward, the classification head) under 2-process
    DDP: after each epoch both ranks hold the same G and D."""
    from cli_helpers import run_ddp_fit

    args = [a for a in _tiny_cli("stargan")[3:] if not a.startswith("--trainer.callbacks")]
    args += ["--model.init_args.n_critic=1", "--test_after_fit=false", "--trainer.callbacks=[]"]
    report = run_ddp_fit("stargan.yaml", args, tmp_path, "stargan")
    assert report["world_size"] == 2 and max(report["divergence"]) < 1e-6


def test_bad_crop_and_unreadable_list_name_the_option(tmp_path):
    from test_labelled import make_celeba

    from datamodules import LabelledDataModule
    from datamodules.labelled_celeba import AnnotationError

    root = make_celeba(tmp_path / "celeba")  # 20 x 24 images
    dm = LabelledDataModule(
        "celeba", str(root), attributes=["Male"], center_crop=30, image_size=16, num_workers=0
    )
    dm.setup("fit")
    with pytest.raises(ValueError, match="data.center_crop=30 is larger than an image of 20x24"):
        dm.train_set[0]
    bad = tmp_path / "list.txt"
    bad.write_bytes(b"\xff\xfe\x00bad")
    dm = _shapes(labelled_fraction=0.5, labelled_list=str(bad))
    with pytest.raises(AnnotationError, match="data.init_args.labelled_list"):
        dm.setup("fit")


def test_each_iteration_translates_once(make_trainer):
    """The fake is computed once per iteration and shared by D (detached) and G: a critic-only
    iteration runs G once, a G iteration twice (the fake and its reconstruction)."""
    from gan_suite.models.stargan import StarGAN

    model = StarGAN(**NETS, n_critic=2)
    calls: list[int] = []
    model.G.register_forward_hook(lambda *_: calls.append(int(model.iteration)))
    trainer = make_trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=0)
    trainer.fit(model, datamodule=_shapes())
    assert calls == [0, 1, 1]
