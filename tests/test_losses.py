import math

import pytest
import torch

from gan_suite.losses import (
    check_finite,
    cycle_loss,
    discriminator_adv_loss,
    generator_adv_loss,
    gradient_penalty,
    linear_decay_factor,
    reconstruction_loss,
)


def test_lsgan_values():
    ones, zeros = torch.ones(2, 1, 4, 4), torch.zeros(2, 1, 4, 4)
    assert generator_adv_loss(ones, "lsgan") == 0
    assert generator_adv_loss(zeros, "lsgan") == 1
    assert discriminator_adv_loss(ones, zeros, "lsgan") == 0
    assert discriminator_adv_loss(zeros, ones, "lsgan") == 2


def test_vanilla_and_hinge_values():
    z = torch.zeros(3)
    assert math.isclose(float(generator_adv_loss(z, "vanilla")), math.log(2), rel_tol=1e-6)
    assert math.isclose(
        float(discriminator_adv_loss(z, z, "vanilla")), 2 * math.log(2), rel_tol=1e-6
    )
    assert (
        float(discriminator_adv_loss(torch.full((3,), 2.0), torch.full((3,), -2.0), "hinge")) == 0
    )
    assert float(discriminator_adv_loss(z, z, "hinge")) == 2
    assert float(generator_adv_loss(torch.full((3,), 0.5), "hinge")) == -0.5
    with pytest.raises(ValueError, match="gan_mode"):
        generator_adv_loss(z, "nope")


def test_gradient_penalty_zero_for_unit_gradient_critic():
    class Linear(torch.nn.Module):  # D(x) = sum(x) / sqrt(numel): gradient norm exactly 1
        def forward(self, x):
            return x.flatten(1).sum(1) / math.sqrt(x[0].numel())

    real, fake = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    assert float(gradient_penalty(Linear(), real, fake)) < 1e-10

    class Doubled(Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    assert abs(float(gradient_penalty(Doubled(), real, fake)) - 1.0) < 1e-5


def test_cycle_and_reconstruction_distances():
    x = torch.rand(2, 3, 4, 4) * 2 - 1
    assert cycle_loss(x, x) == 0 and cycle_loss(x + 0.5, x) == pytest.approx(0.5)
    assert reconstruction_loss(x + 1, x, "mse") == pytest.approx(1.0)
    assert reconstruction_loss(2 * x, x, "cosine") == pytest.approx(0.0, abs=1e-6)
    assert reconstruction_loss(-x, x, "cosine") == pytest.approx(2.0)
    ones = torch.ones(4)
    assert reconstruction_loss(ones, ones, "hinge") == 0
    assert reconstruction_loss(-ones, ones, "hinge") == 2
    with pytest.raises(ValueError, match="distance"):
        reconstruction_loss(x, x, "l3")


def test_linear_decay_schedule_matches_paper():
    # 100 epochs constant, then 100 epochs of linear decay towards 0
    factors = [linear_decay_factor(e, 100, 100) for e in range(200)]
    assert all(f == 1.0 for f in factors[:100])
    assert factors[100] == pytest.approx(1 - 1 / 101)
    assert factors[199] == pytest.approx(1 / 101)
    assert all(a > b for a, b in zip(factors[99:], factors[100:]))


def test_check_finite_names_the_term():
    check_finite({"ok": torch.tensor(1.0)}, 3)
    with pytest.raises(FloatingPointError, match="'cycle_A'.*step 7"):
        check_finite({"ok": torch.tensor(1.0), "cycle_A": torch.tensor(float("nan"))}, 7)
