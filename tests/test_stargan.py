"""StarGAN and MatchGAN: the nets' official sizes, the losses on known cases, the evaluation
targets and MatchGAN's pairs."""

from __future__ import annotations

import math

import pytest
import torch
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
