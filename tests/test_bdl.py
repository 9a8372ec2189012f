"""BDL: DeepLab-v2 and its output-space discriminator, pseudo labels, the perceptual loss,
the K x N schedule (sequence, files, resume in the same stage), the segmentation data layouts
and their errors, the CLI and a 2-process DDP fit."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from cli_helpers import TINY_BDL_NETS
from PIL import Image

from datamodules import LabelError, SegmentationDataModule
from datamodules.io import DatasetLayoutError
from gan_suite.callbacks.bdl_schedule import BDLSchedule, bdl_plan
from gan_suite.callbacks.pseudo_labels import (
    class_thresholds,
    confidence_histogram,
    threshold_labels,
)
from gan_suite.losses import perceptual_loss
from gan_suite.models.bdl import BDL, STAGES
from gan_suite.nets.deeplab import DeepLabV2, OutputDiscriminator

TINY = {
    "n_classes": 5,
    "backbone_layers": (1, 1, 1, 1),
    "ngf": 4,
    "n_blocks": 1,
    "ndf": 4,
    "d_out_ndf": 4,
    "seg_lr": 0.01,
}
EMBEDDED = {"dataset": "shapes", "n_train": 12, "n_test": 4, "image_size": 32}


def _data(**kw) -> SegmentationDataModule:
    return SegmentationDataModule(embedded=EMBEDDED, batch_size=2, num_workers=0, **kw)


# ------------------------------------------------------------------------------ the nets
def test_deeplab_v2_output_stride_8_dilations_and_aspp():
    m = DeepLabV2(5, (1, 1, 1, 1)).eval()
    with torch.no_grad():
        assert m(torch.zeros(2, 3, 64, 48)).shape == (2, 5, 8, 6)
        assert m(torch.zeros(1, 3, 65, 33)).shape == (1, 5, 9, 5)  # ceil(H / 8)
    paper = DeepLabV2(19)  # ResNet-101: 3, 4, 23, 3 blocks; dilations 2 and 4; ASPP 6..24
    assert [len(s) for s in paper._stages()] == [3, 4, 23, 3]
    assert paper.backbone.layer3[1].conv2.dilation == (2, 2)
    assert paper.backbone.layer4[1].conv2.dilation == (4, 4)
    assert paper.backbone.layer4[0].conv2.stride == (1, 1)
    assert [b.dilation[0] for b in paper.classifier.branches] == [6, 12, 18, 24]
    assert all(b.out_channels == 19 and b.in_channels == 2048 for b in paper.classifier.branches)


def test_pretrained_backbone_loads_from_a_local_file_or_says_what_is_wrong(tmp_path):
    source = DeepLabV2(3, (1, 1, 1, 1))
    path = tmp_path / "resnet.pth"
    torch.save({**source.backbone.state_dict(), "fc.weight": torch.zeros(1)}, path)
    loaded = DeepLabV2(3, (1, 1, 1, 1), pretrained_backbone=str(path))
    assert torch.equal(loaded.backbone.conv1.weight, source.backbone.conv1.weight)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        DeepLabV2(3, (1, 1, 1, 1), pretrained_backbone=str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="does not fit layers"):
        DeepLabV2(3, (1, 2, 1, 1), pretrained_backbone=str(path))


def test_output_discriminator_parameters_and_sizes():
    d = OutputDiscriminator(19, 64)
    assert sum(p.numel() for p in d.parameters()) == 2_781_121
    assert d(torch.zeros(1, 19, 64, 32)).shape == (1, 1, 2, 1)
    with pytest.raises(ValueError, match="at least|>= 32"):
        d(torch.zeros(1, 19, 16, 16))


# ------------------------------------------------------------------------------ pseudo labels
def _probs(classes: list[int], confidences: list[float], n_classes: int = 3) -> torch.Tensor:
    """(1, C, 1, P): pixel p has arg-max classes[p] with probability confidences[p]."""
    p = torch.empty(1, n_classes, 1, len(classes))
    for i, (c, conf) in enumerate(zip(classes, confidences)):
        p[0, :, 0, i] = (1 - conf) / (n_classes - 1)
        p[0, c, 0, i] = conf
    return p


def test_pseudo_label_thresholds_are_per_class_medians_capped_at_0_9():
    # class 0: 0.95 0.97 0.99 -> median 0.99 (rank round(3/2) = 2), capped at 0.9;
    # class 1: 0.4 0.6 0.7 0.8 -> rank round(4/2) = 2 of the sorted values: 0.7;
    # class 2: no pixel -> 0
    classes = [0, 0, 0, 1, 1, 1, 1]
    conf = [0.95, 0.99, 0.97, 0.8, 0.4, 0.7, 0.6]
    probs = _probs(classes, conf)
    thresholds = class_thresholds(confidence_histogram(probs), cap=0.9)
    assert thresholds[0] == pytest.approx(0.9)
    assert thresholds[1] == pytest.approx(0.7, abs=1e-4)
    assert thresholds[2] == 0
    labels = threshold_labels(probs, thresholds)[0, 0].tolist()
    assert labels == [0, 0, 0, 1, 255, 1, 255]  # 0.4 and 0.6 are below class 1's 0.7
    fixed = threshold_labels(probs, 0.9)[0, 0].tolist()
    assert fixed == [0, 0, 0, 255, 255, 255, 255]
    # the histogram of two halves sums to the whole's (what DDP's reduction relies on)
    halves = confidence_histogram(probs[..., :3]) + confidence_histogram(probs[..., 3:])
    assert torch.equal(halves, confidence_histogram(probs))


# ------------------------------------------------------------------------------ the model
def test_perceptual_loss_is_zero_for_an_identity_translator():
    model = BDL(**TINY).eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    same = model.extra_generator_terms(x, x, {"fake_B": x, "rec_A": x})
    assert float(same["per"].detach()) == 0 and float(same["per_recon"].detach()) == 0
    other = model.extra_generator_terms(x, x, {"fake_B": -x, "rec_A": x.flip(-1)})
    assert float(other["per"].detach()) > 0 and float(other["per_recon"].detach()) > 0
    assert float(perceptual_loss(model.M(x), model.M(x))) == 0


def test_stages_enable_their_phases_and_reinit_restarts_m():
    model = BDL(**TINY)
    for stage, phases in STAGES.items():
        model.enter_stage(stage, 1, 1 if stage == "SSL" else 0)
        assert {p for p in model.phases if model.runs(p)} == set(phases)
    before = model.M.classifier.branches[0].weight.clone()
    model.enter_stage("M", 2)
    again = BDL(**TINY)
    again.enter_stage("M", 2)  # the same seed: the same fresh M, whatever came before
    assert not torch.equal(before, model.M.classifier.branches[0].weight)
    assert torch.equal(model.M.classifier.branches[0].weight, again.M.classifier.branches[0].weight)
    with pytest.raises(ValueError, match="stage='X'"):
        model.enter_stage("X")


# ------------------------------------------------------------------------------ the schedule
def test_the_schedule_for_k2_n3():
    names = [s.name for s in bdl_plan(2, 3, 1, 1, 1, 1)]
    assert names == [
        "M0",
        "F1",
        "M1",
        "SSL1.1",
        "SSL1.2",
        "SSL1.3",
        "F2",
        "M2",
        "SSL2.1",
        "SSL2.2",
        "SSL2.3",
    ]
    plan = bdl_plan(2, 3, 2, 1, 3, 2)
    assert [s.start for s in plan][:4] == [0, 2, 3, 6] and BDLSchedule(
        2, 3, 2, 1, 3, 2
    ).total_epochs == 22


class StageProbe:
    """Records (epoch, stage name, translated dir, pseudo dir) at each epoch start."""

    def __init__(self) -> None:
        import lightning as L

        outer = self

        class Probe(L.Callback):
            def on_train_epoch_start(self, trainer, pl_module):
                t = trainer.datamodule.train_set
                dirs = [None if d is None else str(d) for d in (t.translated_dir, t.pseudo_dir)]
                outer.seen.append(
                    (
                        trainer.current_epoch,
                        pl_module.stage_name,
                        *dirs,
                        int(pl_module.stage_iteration),
                    )
                )

        self.seen: list = []
        self.callback = Probe()


def _loop_trainer(make_trainer, tmp_path, probe, **kw):
    from lightning.pytorch.callbacks import ModelCheckpoint

    schedule = BDLSchedule(
        K=1, N=1, m0_epochs=1, f_epochs=1, m_epochs=2, ssl_epochs=1, batch_size=4
    )
    ckpt = ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_top_k=-1, every_n_epochs=1)
    trainer = make_trainer(
        max_epochs=5,
        limit_train_batches=2,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        enable_checkpointing=True,
        callbacks=[schedule, probe.callback, ckpt],
        **kw,
    )
    return trainer, schedule


def test_the_whole_loop_writes_its_files_and_resumes_in_the_same_stage(make_trainer, tmp_path):
    probe = StageProbe()
    trainer, schedule = _loop_trainer(make_trainer, tmp_path, probe)
    model = BDL(**TINY)
    trainer.fit(model, datamodule=_data())
    root = tmp_path / "bdl"
    stages = [s[1] for s in probe.seen]
    assert stages == ["M0", "F1", "M1", "M1", "SSL1.1"]
    assert probe.seen[2][2] == str(root / "k1" / "translated") and probe.seen[1][2] is None
    assert probe.seen[4][3] == str(root / "k1" / "pseudo1")
    assert len(list((root / "k1" / "translated").glob("*.png"))) == 12
    pseudo = [np.asarray(Image.open(p)) for p in (root / "k1" / "pseudo1").glob("*.png")]
    assert len(pseudo) == 12 and set(np.unique(np.stack(pseudo))) <= {0, 1, 2, 3, 4, 255}
    progress = json.loads((root / "progress.json").read_text())
    assert [r["name"] for r in progress] == ["M0", "M1", "SSL1.1"]
    assert all(0 <= r["miou"] <= 1 and len(r["iou"]) == 5 for r in progress)
    assert len(progress[-1]["pseudo_label_thresholds"]) == 5
    assert not list(root.rglob("*.partial"))
    # M's predictions kept from the one pass (the default) or recomputed in a second pass
    # (over PREDICTIONS_LIMIT_BYTES): the same thresholds and label files
    labels = {}
    for limit in (2**30, 0):
        schedule.PREDICTIONS_LIMIT_BYTES = limit
        out = tmp_path / f"pseudo-{limit}"
        out.mkdir()
        schedule._pseudo_label(trainer, model, out)
        labels[limit] = {p.name: np.asarray(Image.open(p)) for p in out.glob("*.png")}
        labels[limit, "thresholds"] = schedule.thresholds
    assert labels[2**30, "thresholds"] == labels[0, "thresholds"]
    assert len(labels[0]) == 12 and labels[0].keys() == labels[2**30].keys()
    assert all(np.array_equal(labels[0][k], labels[2**30][k]) for k in labels[0])

    # resume from the checkpoint of epoch 2, the first of M1's two epochs: the same stage,
    # its iteration count and M (no fresh re-initialisation), the same translated files
    ckpt = next((tmp_path / "checkpoints").glob("epoch=2-*.ckpt"))
    saved = torch.load(ckpt, weights_only=False)
    probe2 = StageProbe()
    trainer2, schedule2 = _loop_trainer(make_trainer, tmp_path, probe2)
    resumed = BDL(**TINY)
    trainer2.fit(resumed, datamodule=_data(), ckpt_path=str(ckpt))
    first = probe2.seen[0]
    assert first[:3] == (3, "M1", str(root / "k1" / "translated")) and first[4] == 2
    assert [s[1] for s in probe2.seen] == ["M1", "SSL1.1"]
    assert saved["state_dict"]["stage_iteration"] == 2


def test_a_budget_other_than_the_schedule_is_refused(make_trainer):
    schedule = BDLSchedule(K=1, N=1)
    trainer = make_trainer(max_epochs=3, limit_train_batches=1, callbacks=[schedule])
    with pytest.raises(ValueError, match="trainer.max_epochs: 4"):
        trainer.fit(BDL(**TINY), datamodule=_data())


def test_sizes_and_classes_are_checked_at_setup(make_trainer):
    trainer = make_trainer(max_epochs=1, limit_train_batches=1)
    with pytest.raises(ValueError, match="n_classes=7 but the data has 5"):
        trainer.fit(BDL(**{**TINY, "n_classes": 7}), datamodule=_data())
    with pytest.raises(ValueError, match=r"data.init_args.source_size=\[16, 16\]"):
        trainer.fit(BDL(**TINY), datamodule=_data(source_size=(16, 16)))


# ------------------------------------------------------------------------------ the data
def _png(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8), mode=mode).save(path)


def _gta5_and_cityscapes(tmp_path, label_id=26):
    gta, city = tmp_path / "gta5", tmp_path / "cityscapes"
    label = np.full((8, 12), 7)  # road
    label[:, :4] = label_id  # car (26) unless the test says otherwise
    label[0, 0] = 0  # unlabelled -> 255
    for i in range(3):
        _png(gta / "images" / f"{i:05d}.png", np.zeros((8, 12, 3)))
        _png(gta / "labels" / f"{i:05d}.png", label, "L")
    for split in ("train", "val"):
        name = f"aachen_000000_00000{0}"
        _png(
            city / "leftImg8bit" / split / "aachen" / f"{name}_leftImg8bit.png",
            np.zeros((16, 32, 3)),
        )
        _png(
            city / "gtFine" / split / "aachen" / f"{name}_gtFine_labelIds.png",
            np.full((16, 32), 24),
            "L",
        )
    return gta, city


def test_gta5_and_cityscapes_layouts_map_ids_to_the_19_classes(tmp_path):
    gta, city = _gta5_and_cityscapes(tmp_path)
    dm = SegmentationDataModule(
        "gta5",
        str(gta),
        "cityscapes",
        str(city),
        source_size=(8, 12),
        target_size=(32, 64),
        num_workers=0,
    )
    dm.setup("fit")
    item = dm.train_set[0]
    assert item["source_mask"][0, 0] == 255 and item["source_mask"][1, 0] == 13
    assert item["source_mask"][1, 5] == 0 and item["target"].shape == (3, 32, 64)
    val = dm.val_set[0]
    assert val["target_mask"].shape == (16, 32) and int(val["target_mask"][0, 0]) == 11  # person
    assert dm.n_classes == 19 and dm.class_names[13] == "car"


def test_synthia_16_bit_labels(tmp_path):
    root = tmp_path / "synthia"
    (root / "GT" / "LABELS").mkdir(parents=True)
    _png(root / "RGB" / "0000000.png", np.zeros((8, 8, 3)))
    label = np.zeros((8, 8, 3), np.uint16)
    label[..., 2] = 3  # red channel (OpenCV's BGR index 2): road
    label[..., 0] = 999  # instance ids live elsewhere
    cv2.imwrite(str(root / "GT" / "LABELS" / "0000000.png"), label)
    _, city = _gta5_and_cityscapes(tmp_path)
    dm = SegmentationDataModule("synthia", str(root), "cityscapes", str(city), num_workers=0)
    dm.setup("fit")
    assert set(dm.train_set[0]["source_mask"].unique().tolist()) == {0}


def test_bad_labels_and_missing_splits_name_the_file(tmp_path):
    gta, city = _gta5_and_cityscapes(tmp_path, label_id=40)  # 40: no such Cityscapes id
    dm = SegmentationDataModule("gta5", str(gta), "cityscapes", str(city), num_workers=0)
    with pytest.raises(LabelError, match=r"00000\.png.*ids \[40\]"):
        dm.setup("fit")
    gta, city = _gta5_and_cityscapes(tmp_path / "b")
    _png(gta / "labels" / "00001.png", np.zeros((4, 4)), "L")
    dm = SegmentationDataModule("gta5", str(gta), "cityscapes", str(city), num_workers=0)
    with pytest.raises(LabelError, match=r"00001\.png' is 4x4 but image .* is 12x8"):
        dm.setup("fit")
    (gta / "labels" / "00002.png").unlink()
    with pytest.raises(DatasetLayoutError, match=r"labels/00002\.png"):
        SegmentationDataModule("gta5", str(gta), "cityscapes", str(city)).setup("fit")
    import shutil

    shutil.rmtree(city / "leftImg8bit" / "val")
    with pytest.raises(DatasetLayoutError, match=r"leftImg8bit/val"):
        SegmentationDataModule("cityscapes", str(city), "cityscapes", str(city)).setup("validate")
    with pytest.raises(ValueError, match="source='gta5' needs source_dir"):
        SegmentationDataModule("gta5")
    with pytest.raises(ValueError, match="segmentation needs masks"):
        SegmentationDataModule(embedded={"dataset": "textures"})


def test_embedded_pairs_serve_the_source_masks_and_the_ceiling(shared_digits):
    dm = _data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"source", "source_mask", "source_path", "target", "target_path"}
    assert "trainA" in batch["source_path"][0] and "trainB" in batch["target_path"][0]
    ceiling = _data(target_supervised=True)
    ceiling.setup("fit")
    assert "trainB" in ceiling.train_set[0]["source_path"]
    digits = SegmentationDataModule(embedded={"dataset": "digits"}, num_workers=0)
    assert digits.n_classes == 11 and digits.class_names[1] == "0"


# ------------------------------------------------------------------------------ CLI and DDP
TINY_CLI = [
    *TINY_BDL_NETS,
    "--data.init_args.source=embedded",
    "--data.init_args.target=embedded",
    "--data.init_args.embedded={n_train: 12, n_test: 4, image_size: 32}",
    "--data.init_args.source_size=[32, 32]",
    "--data.init_args.target_size=[32, 32]",
    "--data.init_args.batch_size=2",
    "--data.init_args.num_workers=0",
    "--trainer.accelerator=cpu",
    "--trainer.enable_progress_bar=false",
]


def test_cli_fast_dev_run_of_the_paper_yaml():
    from cli_helpers import CSV_LOGGER, EXPERIMENTS

    from gan_suite.cli import cli_main

    args = ["fit", "--config", str(EXPERIMENTS / "bdl.yaml"), *TINY_CLI, CSV_LOGGER]
    cli = cli_main([*args, "--trainer.fast_dev_run=1"])  # "bdl.yaml", fast_dev_run=1
    assert cli.model.stage_name == "M0" and int(cli.model.iteration) == 1


def test_ddp_two_processes_run_the_loop_with_equal_weights(tmp_path):
    """2 CPU processes (gloo): F1 then M1 (the source re-translated in two shards and
    published once); after each epoch both ranks hold the same weights."""
    from cli_helpers import CSV_LOGGER, run_ddp_fit

    schedule = (
        "--trainer.callbacks=[{class_path: gan_suite.callbacks.BDLSchedule, init_args: "
        "{K: 1, N: 0, m0_epochs: 0, f_epochs: 1, m_epochs: 1, batch_size: 4}}]"
    )
    args = [*TINY_CLI, CSV_LOGGER, schedule, "--test_after_fit=false"]
    report = run_ddp_fit("bdl.yaml", args, tmp_path, "bdl", batchnorm=True)
    assert report["world_size"] == 2 and max(report["divergence"]) < 1e-6
    root = report["run_dir"] / "bdl"
    assert len(list((root / "k1" / "translated").glob("*.png"))) == 12
    assert [r["name"] for r in json.loads((root / "progress.json").read_text())] == ["M1"]
