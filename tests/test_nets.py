import pytest
import torch

from gan_suite.nets import PatchDiscriminator, ResnetGenerator, init_weights


def n_params(net):
    return sum(p.numel() for p in net.parameters())


def test_paper_parameter_counts():
    # the official CycleGAN implementation's counts at the paper's configuration
    assert n_params(ResnetGenerator(3, 3, ngf=64, n_blocks=9, norm="instance")) == 11_378_179
    assert n_params(PatchDiscriminator(3, ndf=64, n_layers=3, norm="instance")) == 2_764_737


@pytest.mark.parametrize("size", [32, 48, 64])
def test_generator_keeps_shape_and_range(size):
    g = ResnetGenerator(3, 3, ngf=8, n_blocks=2)
    y = g(torch.randn(2, 3, size, size) * 3)
    assert y.shape == (2, 3, size, size)
    assert y.abs().max() <= 1.0


def test_patchgan_receptive_field_is_70():
    # without norm (instance norm's statistics see the whole image)
    d = init_weights(PatchDiscriminator(3, ndf=8, n_layers=3, norm="none"), "normal", 0.02)
    x = torch.zeros(1, 3, 128, 128, requires_grad=True)
    out = d(x)
    assert out.shape == (1, 1, 14, 14)
    out[0, 0, 7, 7].backward()
    cols = x.grad.abs().sum(dim=(0, 1, 2)).nonzero().flatten()
    assert int(cols.max() - cols.min() + 1) == 70


def test_every_parameter_gets_a_gradient():
    g, d = ResnetGenerator(3, 3, ngf=4, n_blocks=1), PatchDiscriminator(3, ndf=4)
    d(g(torch.randn(1, 3, 32, 32))).mean().backward()
    for net in (g, d):
        for name, p in net.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_init_weights_normal_std():
    net = init_weights(torch.nn.Conv2d(64, 64, 3), "normal", 0.02)
    assert abs(float(net.weight.detach().std()) - 0.02) < 0.002
    assert float(net.bias.abs().max()) == 0.0
    with pytest.raises(ValueError, match="init_type"):
        init_weights(net, "bogus")


def test_batch_norm_variant_drops_conv_bias():
    g_in, g_bn = (
        ResnetGenerator(ngf=8, n_blocks=1),
        ResnetGenerator(ngf=8, n_blocks=1, norm="batch"),
    )
    assert g_in.model[1].bias is not None and g_bn.model[1].bias is None
