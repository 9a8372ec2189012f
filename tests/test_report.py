"""metrics.json, training curves, report.html and run comparison on generated run dirs."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
from PIL import Image

from gan_suite.eval.compare import better_direction, compare_main, compare_runs, to_markdown
from gan_suite.eval.curves import plot_curves
from gan_suite.eval.metrics_json import read_metrics_json, write_metrics_json
from gan_suite.eval.report import write_report_html

COLUMNS = [
    "epoch", "step", "train/adv_AB", "train/cycle_A", "train/d_A", "train/d_loss",
    "train/g_loss", "train/lr", "val/cycle_A", "val/A->B/fid",
]  # fmt: skip


def write_lightning_csv(path: Path, epochs: int = 3, steps_per_epoch: int = 20) -> None:
    """The CSVLogger layout: one row per logging call, empty cells for metrics not logged."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        step = 0
        for e in range(epochs):
            for i in range(steps_per_epoch):
                step += 3
                losses = [1.0 / (step + 1) + 0.1 * (i % 3) for _ in range(5)]
                w.writerow([e, step, *losses, "", "", ""])
            w.writerow([e, step, "", "", "", "", "", 2e-4 * (1 - e / epochs), "", ""])
            w.writerow([e, step, "", "", "", "", "", "", 2.0 - e * 0.5, 80.0 - 10 * e])


def make_run(root: Path, name: str, run_id: str, metrics: dict, model: str = "CycleGAN") -> Path:
    run = root / "runs" / name / run_id
    (run / "samples").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    write_lightning_csv(run / "metrics.csv")
    Image.new("RGB", (24, 16), (200, 30, 30)).save(run / "samples" / "latest.png")
    write_metrics_json(
        run, metrics, model=model, checkpoint=str(run / "checkpoints/last.ckpt"), dataset="shapes"
    )
    return run


@pytest.fixture
def two_runs(tmp_path):
    a = make_run(
        tmp_path, "cyclegan", "20261124-000000-aaaa",
        {"A->B/fid": {"value": 12.3456, "extractor": "evaluator", "n_images": 32},
         "A->B/psnr": {"value": 20.0, "n_images": 32},
         "B->A/fid": {"value": 30.0, "extractor": "evaluator", "n_images": 32}},
    )  # fmt: skip
    b = make_run(
        tmp_path, "opgan", "20261124-000001-bbbb",
        {"A->B/fid": {"value": 9.5, "extractor": "evaluator", "n_images": 32},
         "A->B/psnr": {"value": 18.0, "n_images": 32}},
        model="OPGAN",
    )  # fmt: skip
    return a, b


def test_metrics_json_round_trip_and_nan(tmp_path):
    path = write_metrics_json(
        tmp_path / "run",
        {
            "A->B/fid": {"value": 12.5, "extractor": "inception", "n_images": 200, "split": "test"},
            "B->A/kid": {"value": float("nan"), "extractor": "inception", "n_images": 200},
            "B->A/psnr": {"value": float("inf"), "n_images": 10},
        },
        model="CycleGAN",
        checkpoint="ckpts/last.ckpt",
        dataset=None,
        extra={"seed": 0, "bad": float("nan")},
    )
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text  # strict JSON for any reader
    assert not list(path.parent.glob(".*.tmp"))  # the atomic write left no temp file
    assert path.stat().st_mode & 0o777 == 0o644  # readable by whoever compares the runs
    doc = read_metrics_json(tmp_path / "run")
    assert doc == json.loads(text)
    assert doc["schema"] == 1 and doc["model"] == "CycleGAN" and doc["dataset"] is None
    assert Path(doc["checkpoint"]).is_absolute() and doc["checkpoint"].endswith("last.ckpt")
    assert Path(doc["run_dir"]) == (tmp_path / "run").resolve()
    fid = doc["metrics"]["A->B/fid"]
    assert fid == {"value": 12.5, "n_images": 200, "extractor": "inception", "split": "test"}
    assert doc["metrics"]["B->A/kid"]["value"] is None
    assert doc["metrics"]["B->A/kid"]["finite"] is False
    assert doc["metrics"]["B->A/psnr"] == {"value": None, "n_images": 10, "finite": False}
    assert doc["extra"] == {"seed": 0, "bad": None}


def test_metrics_json_rejects_entry_without_n_images(tmp_path):
    with pytest.raises(ValueError, match="A->B/fid"):
        write_metrics_json(tmp_path, {"A->B/fid": {"value": 1.0}}, model="m", checkpoint=None,
                           dataset=None)  # fmt: skip


def test_read_metrics_json_finds_newest_test_dir_or_says_what_it_looked_for(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(FileNotFoundError, match=r"metrics\.json.*test-\*"):
        read_metrics_json(run)
    old = write_metrics_json(run / "test-1", {}, model="old", checkpoint=None, dataset=None)
    write_metrics_json(run / "test-2", {}, model="new", checkpoint=None, dataset=None)
    future = old.stat().st_mtime + 60
    os.utime(old, (future, future))  # newest by modification time, not by name
    assert read_metrics_json(run)["model"] == "old"
    assert read_metrics_json(old)["model"] == "old"


def test_plot_curves_one_png_per_group(tmp_path):
    write_lightning_csv(tmp_path / "metrics.csv")
    plots = plot_curves(tmp_path / "metrics.csv", tmp_path / "out")
    names = sorted(p.stem for p in plots)
    assert names == ["train_discriminator", "train_generator", "train_lr", "val"]
    for p in plots:
        assert p.parent == tmp_path / "out" / "plots"
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 1000


def test_plot_curves_missing_or_empty_csv(tmp_path):
    assert plot_curves(tmp_path / "nope.csv", tmp_path) == []
    (tmp_path / "empty.csv").write_text("")
    assert plot_curves(tmp_path / "empty.csv", tmp_path) == []
    (tmp_path / "header.csv").write_text("epoch,step,train/g_loss\n")
    assert plot_curves(tmp_path / "header.csv", tmp_path) == []


def test_report_html(two_runs):
    run, _ = two_runs
    doc = read_metrics_json(run)
    doc["metrics"]["A->B/<script>"] = {"value": 1.0, "n_images": 1}
    write_metrics_json(run, doc["metrics"], model="CycleGAN", checkpoint=None, dataset=None)
    page = write_report_html(run).read_text()
    assert "12.35" in page and "20" in page and "evaluator" in page  # 4 significant figures
    assert "A-&gt;B/&lt;script&gt;" in page and "<script>" not in page
    assert page.count("<img") >= 1 + 4  # sample grid + one plot per curve group
    assert 'src="data:image/png;base64,' in page
    assert "CycleGAN" in page and run.name in page


def test_report_of_test_dir_uses_training_run_curves_and_samples(two_runs):
    run, _ = two_runs
    test_dir = run / "test-20261124-010000-cccc"
    write_metrics_json(
        test_dir,
        {"A->B/ssim": {"value": 0.81234, "n_images": 8}},
        model="CycleGAN",
        checkpoint=str(run / "checkpoints/last.ckpt"),
        dataset="shapes",
    )
    page = write_report_html(test_dir).read_text()
    assert (test_dir / "report.html").is_file()
    assert sorted(p.name for p in (test_dir / "plots").iterdir()) == [
        "train_discriminator.png", "train_generator.png", "train_lr.png", "val.png",
    ]  # fmt: skip
    assert "0.8123" in page and f"{run.name}/{test_dir.name}" in page
    assert "latest.png" in page and "last.ckpt" in page
    # a training run dir without its own metrics.json reports its newest test-* metrics
    (run / "metrics.json").unlink()
    assert "0.8123" in write_report_html(run).read_text()


def test_better_direction():
    assert better_direction("A->B/fid") == "lower"
    assert better_direction("val/cycle_A") == "lower"
    assert better_direction("A->B/psnr") == "higher"
    assert better_direction("seg/miou") == "higher"
    assert better_direction("A->B/n_params") is None


def test_compare_two_runs(two_runs):
    a, b = two_runs
    header, rows = compare_runs([a, b])
    assert header == ["metric", "cyclegan/20261124-000000-aaaa", "opgan/20261124-000001-bbbb"]
    by_label = {row[0]: row[1:] for row in rows}
    assert by_label["model"] == ["CycleGAN", "OPGAN"]
    assert by_label["checkpoint"] == ["last.ckpt", "last.ckpt"]
    assert by_label["A->B/fid [evaluator]"] == ["12.35", "**9.5**"]  # lower FID is better
    assert by_label["A->B/psnr"] == ["**20**", "18"]  # higher PSNR is better
    assert by_label["B->A/fid [evaluator]"] == ["30", "–"]  # single value: nothing to bold
    labels = [row[0] for row in rows]
    assert labels.index("A->B/psnr") < labels.index("B->A/fid [evaluator]")  # by direction
    md = to_markdown(header, rows)
    assert "cyclegan/20261124-000000-aaaa" in md and "opgan/20261124-000001-bbbb" in md
    assert "| **9.5** |" in md and "–" in md


def test_compare_main_writes_html_and_never_overwrites(two_runs, tmp_path, capsys):
    a, b = two_runs
    out = tmp_path / "reports" / "cmp.html"
    assert compare_main([str(a), str(b), "--out", str(out)]) == 0
    assert compare_main([str(a), str(b), "--out", str(out)]) == 0
    second = tmp_path / "reports" / "cmp-1.html"
    assert out.is_file() and second.is_file()
    page = out.read_text()
    assert "<b>9.5</b>" in page and "A-&gt;B/fid [evaluator]" in page and "–" in page
    stdout = capsys.readouterr().out
    assert "| metric |" in stdout and str(second) in stdout
    # default output: runs/compare-<timestamp>.html under the working directory (tmp_path)
    assert compare_main([str(a)]) == 0
    assert len(list((tmp_path / "runs").glob("compare-*.html"))) == 1


def test_compare_main_names_dir_without_metrics(two_runs, tmp_path, capsys):
    a, _ = two_runs
    bare = tmp_path / "runs" / "cyclegan" / "no-eval"
    bare.mkdir(parents=True)
    assert compare_main([str(a), str(bare), "--out", str(tmp_path / "x.html")]) != 0
    assert str(bare) in capsys.readouterr().err
    assert not (tmp_path / "x.html").exists()
