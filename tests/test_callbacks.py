import torch

from gan_suite.callbacks.ddp_check import max_divergence, weight_fingerprint
from gan_suite.callbacks.samples import panels_to_grid


def test_grid_rows_are_input_translation_reconstruction():
    n, h = 3, 8
    cols = [torch.full((n, 3, h, h), v) for v in (-1.0, 0.0, 1.0)]
    grid = panels_to_grid({"A->B": cols, "B->A": cols}, padding=0)
    assert grid.shape == (3, n * h, 2 * 3 * h)
    # first column black (input -1 -> 0), second grey, third white, then the second panel
    assert grid[:, :, :h].max() == 0 and (grid[:, :, h : 2 * h] == 0.5).all()
    assert grid[:, :, 2 * h : 3 * h].min() == 1 and grid[:, :, 3 * h : 4 * h].max() == 0


def test_fingerprint_detects_any_weight_difference():
    a, b = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)
    b.load_state_dict(a.state_dict())
    same = torch.stack([weight_fingerprint(a), weight_fingerprint(b)])
    assert max_divergence(same) == 0.0
    with torch.no_grad():  # swap two weights: sum, norm and max are unchanged
        w = b.weight.flatten()
        i, j = 0, next(k for k in range(1, w.numel()) if w[k] != w[0])
        b.weight.view(-1)[[i, j]] = b.weight.view(-1)[[j, i]]
    assert max_divergence(torch.stack([weight_fingerprint(a), weight_fingerprint(b)])) > 1e-6


def test_fingerprint_can_leave_out_buffers():
    """BatchNorm statistics may differ per rank on CPU DDP (no SyncBatchNorm): with
    include_buffers off only the parameters count, and they still catch a changed weight."""
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    before_all, before_params = weight_fingerprint(net), weight_fingerprint(net, buffers=False)
    net[1].running_mean += 1.0
    assert not torch.equal(weight_fingerprint(net), before_all)
    assert torch.equal(weight_fingerprint(net, buffers=False), before_params)
    with torch.no_grad():
        net[0].weight[0, 0] += 0.5
    assert not torch.equal(weight_fingerprint(net, buffers=False), before_params)
