"""``make bench`` smoke tests: the sections run on tiny sizes and print their tables with the
expected columns. Timings are never asserted (they belong to the bench's own output)."""

from __future__ import annotations

import torch

from gan_suite import bench, bench_train
from gan_suite.bench_loop import PlainCycleGAN, family_profile, op_family
from gan_suite.bench_train import TRAIN_HEADER, format_table, machine_matmul_gflops


def test_op_families_of_profiler_names():
    assert op_family("aten::convolution_backward") == "conv"
    assert op_family("aten::mkldnn_convolution") == "conv"
    assert op_family("aten::native_group_norm") == "norm"
    assert op_family("aten::_fused_adam_") == "optimizer"
    assert op_family("aten::_foreach_addcdiv_") == "optimizer"  # not elementwise "add"
    assert op_family("aten::reflection_pad2d") == "padding/copy"
    assert op_family("aten::leaky_relu") == "elementwise"
    assert op_family("aten::linear") == "other"


def test_family_profile_shares_sum_to_100_and_see_the_conv():
    conv = torch.nn.Conv2d(3, 8, 3)
    x = torch.randn(1, 3, 32, 32)
    shares = family_profile(lambda: conv(x).relu().sum().backward())
    assert abs(sum(shares.values()) - 100) < 1e-6
    assert shares["conv"] > 0


def test_format_table_pads_columns():
    lines = format_table(["a", "bb"], [["xxx", "1"]]).splitlines()
    assert lines == ["| a   | bb |", "| --- | -- |", "| xxx | 1  |"]


def test_matmul_throughput_is_positive():
    assert machine_matmul_gflops(n=64, repeats=1) > 0


def test_plain_cyclegan_iteration_trains_both_nets():
    loop = PlainCycleGAN(fused=True, ngf=4, n_blocks=1, ndf=4)
    g, d = next(loop.G_AB.parameters()), next(loop.D_A.parameters())
    g0, d0 = g.detach().clone(), d.detach().clone()
    a, b = torch.rand(1, 3, 32, 32) * 2 - 1, torch.rand(1, 3, 32, 32) * 2 - 1
    loop.iteration(a, b)
    assert not torch.equal(g, g0)  # G's Adam step ran
    assert not torch.equal(d, d0)  # D's Adam step ran


def test_train_section_prints_the_table(capsys, monkeypatch):
    # in this process: a spawned child would spend ~15 s importing torch and lightning again
    monkeypatch.setattr(
        bench_train, "run_in_child", lambda fn, **kw: getattr(bench_train, fn)(**kw)
    )
    assert bench.main(["train", "--papers", "cgan", "--batch-sizes", "4", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("| paper"))
    assert [c.strip() for c in header.strip("|").split("|")] == TRAIN_HEADER
    row = next(line for line in out.splitlines() if line.startswith("| cgan"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:3] == ["28", "4"]
    assert float(cells[3]) > 0 and float(cells[5]) > 0  # s/iter, peak RSS MiB
    assert float(cells[6]) > 0  # GFLOP per iteration, counted
