"""Memory and speed switches: gradient checkpointing, torch.compile, Adam's implementation."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from conftest_data import tiny_unpaired_data

from gan_suite.models import speed
from gan_suite.models.base import GANModule
from gan_suite.models.cyclegan import CycleGAN
from gan_suite.nets import ResnetBlock, ResnetGenerator
from gan_suite.nets.biggan import BigGANGenerator, GBlock
from gan_suite.nets.stargan import StarGANGenerator, StarGANResidualBlock


def _tiny_cyclegan(**kw) -> CycleGAN:
    return CycleGAN(ngf=4, n_blocks=2, ndf=4, n_layers_d=1, **kw)


def _tiny_data():
    return tiny_unpaired_data(load_size=32, n_train=4, n_test=2)


# -- gradient checkpointing -----------------------------------------------------------------
def _resnet(checkpointing: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    return ResnetGenerator(3, 3, ngf=4, n_blocks=2, gradient_checkpointing=checkpointing)


def _stargan(checkpointing: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    return StarGANGenerator(c_dim=2, conv_dim=4, repeat_num=2, gradient_checkpointing=checkpointing)


def _biggan(checkpointing: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    return BigGANGenerator(32, 20, 4, 8, 8, gradient_checkpointing=checkpointing)


def _inputs(name: str) -> tuple:
    g = torch.Generator().manual_seed(1)
    if name == "biggan":  # z (4, 20), h (4, 8)
        return torch.randn(4, 20, generator=g), torch.randn(4, 8, generator=g)
    x = torch.randn(2, 3, 16, 16, generator=g)
    return (x, torch.tensor([[1.0, 0.0], [0.0, 1.0]])) if name == "stargan" else (x,)


NETS = {
    "resnet": (_resnet, ResnetBlock),
    "stargan": (_stargan, StarGANResidualBlock),
    "biggan": (_biggan, GBlock),
}


def _loss_grads_buffers(net, inputs) -> tuple:
    # two calls before one backward, as CycleGAN's G_AB (translation, then reconstruction):
    # each call's recomputation must use its own inputs and buffers
    loss = net(*inputs).square().mean() + net(*(0.5 * t for t in inputs)).mean()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in net.named_parameters()}
    return loss.detach(), grads, {n: b.clone() for n, b in net.named_buffers()}


@pytest.mark.parametrize("name", NETS)
def test_checkpointing_gives_the_same_loss_gradients_and_buffers(name):
    """BigGAN's G has BatchNorm statistics and spectral-norm vectors: a second update during
    the recomputation would change both, and the recomputed weights with them."""
    make, _ = NETS[name]
    plain, checkpointed = make(False), make(True)
    loss_p, grads_p, buffers_p = _loss_grads_buffers(plain, _inputs(name))
    loss_c, grads_c, buffers_c = _loss_grads_buffers(checkpointed, _inputs(name))
    assert torch.allclose(loss_p, loss_c, rtol=1e-6, atol=1e-7)
    for n, g in grads_p.items():
        assert torch.allclose(g, grads_c[n], rtol=1e-5, atol=1e-7), n
    if name == "biggan":
        assert any("running_mean" in n for n in buffers_p) and any("_u" in n for n in buffers_p)
    for n, b in buffers_p.items():
        assert torch.equal(b, buffers_c[n]), n


@pytest.mark.parametrize("name", NETS)
def test_checkpointing_recomputes_each_block_in_backward_and_keeps_fewer_tensors(name):
    """The switch really checkpoints: every block runs again during backward, and fewer
    activations are saved for backward; without a graph (evaluation) nothing is recomputed."""
    make, block_type = NETS[name]
    counts = {}
    for checkpointing in (False, True):
        net = make(checkpointing)
        calls = [0]

        def count(*_, calls=calls):
            calls[0] += 1

        for m in net.modules():
            if isinstance(m, block_type):
                # a pre-hook: the recomputation stops as soon as it has what backward needs
                m.register_forward_pre_hook(count)
        n_blocks = sum(isinstance(m, block_type) for m in net.modules())
        saved = [0]

        def pack(t, saved=saved):
            saved[0] += t.numel()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = net(*_inputs(name))
        after_forward = calls[0]
        out.mean().backward()
        counts[checkpointing] = saved[0]
        assert after_forward == n_blocks
        assert calls[0] == n_blocks * (2 if checkpointing else 1)
        with torch.no_grad():
            net(*_inputs(name))
        assert calls[0] == n_blocks * (3 if checkpointing else 2)
    assert counts[True] < counts[False]


def test_the_cyclegan_family_passes_the_switch_to_both_generators():
    model = _tiny_cyclegan(gradient_checkpointing=True)
    assert model.G_AB.gradient_checkpointing and model.G_BA.gradient_checkpointing
    assert not _tiny_cyclegan().G_AB.gradient_checkpointing


# -- Adam's implementation ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("impl", "foreach", "fused"),
    [
        ("auto", None, True),
        ("for-loop", False, False),
        ("foreach", True, None),
        ("fused", None, True),
    ],
)
def test_every_adam_of_a_paper_uses_the_adam_impl_option(impl, foreach, fused):
    """auto = fused on CPU (torch's own default there is the slower for-loop)."""
    model = _tiny_cyclegan(adam_impl=impl)
    for opt in model.translator_optimizers():
        assert opt.defaults["foreach"] is foreach and opt.defaults["fused"] is fused


def test_fused_and_for_loop_adam_take_the_same_step():
    params = [torch.nn.Parameter(torch.randn(5, 3)) for _ in range(2)]
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opts = [speed.make_adam(ps, i, lr=1e-2) for ps, i in ((params, "auto"), (twins, "for-loop"))]
    for _ in range(3):
        for ps, opt in zip((params, twins), opts):
            for p in ps:
                p.grad = p.detach() ** 2
            opt.step()
    for p, q in zip(params, twins):
        assert torch.allclose(p, q, atol=1e-6)


def test_an_unknown_adam_impl_is_refused_naming_the_option():
    with pytest.raises(ValueError, match=r"adam_impl='fast'.*for-loop, foreach, fused"):
        _tiny_cyclegan(adam_impl="fast")


# -- torch.compile ----------------------------------------------------------------------------
def _fit(make_trainer, **kw) -> CycleGAN:
    trainer = make_trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0)
    model = _tiny_cyclegan(**kw)  # after the trainer factory's seeding: the same weights
    trainer.fit(model, datamodule=_tiny_data())
    return model


def test_a_compiled_cyclegan_trains_as_the_eager_one(make_trainer, monkeypatch, caplog):
    """The nets are compiled in place at setup (checkpoint keys unchanged) and one training
    step gives the eager run's weights. The aot_eager backend traces forward and backward as
    inductor does but skips code generation (a cold inductor compile of this tiny model takes
    ~60 s on 2 cores; measured by hand: same weights within 7e-4 after 2 steps)."""
    from torch._dynamo.utils import counters

    # dynamo's structured trace logger is at DEBUG and pytest captures it: a slow path
    caplog.set_level(logging.WARNING, logger="torch.__trace")
    torch._dynamo.reset()
    counters.clear()
    eager = _fit(make_trainer)
    monkeypatch.setattr(GANModule, "compile_options", {"backend": "aot_eager"})
    compiled = _fit(make_trainer, compile=True)
    assert all(
        getattr(compiled, n)._compiled_call_impl is not None for n in ("G_AB", "G_BA", "D_A")
    )
    assert counters["stats"]["unique_graphs"] >= 4  # G_AB, G_BA, D_A, D_B at least
    assert list(compiled.state_dict()) == list(eager.state_dict())
    for (n, a), b in zip(eager.state_dict().items(), compiled.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5), n
    torch._dynamo.reset()


def test_compile_without_a_cxx_compiler_is_refused_at_setup(monkeypatch, make_trainer):
    monkeypatch.setattr(speed, "cxx_compiler", lambda: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    model = _tiny_cyclegan(compile=True)
    trainer = make_trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0)
    with pytest.raises(RuntimeError, match=r"model.init_args.compile=true.*C\+\+ compiler"):
        trainer.fit(model, datamodule=_tiny_data())
    assert model.G_AB._compiled_call_impl is None


def test_the_cxx_compiler_lookup_follows_cxx(monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    assert speed.cxx_compiler() is None
    monkeypatch.delenv("CXX")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert speed.cxx_compiler() is None
    fake = tmp_path / "g++"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert speed.cxx_compiler() == str(fake)


def test_deepcopied_models_keep_their_switches():
    model = _tiny_cyclegan(adam_impl="foreach", gradient_checkpointing=True)
    twin = copy.deepcopy(model)
    assert twin.adam_impl == "foreach" and twin.G_BA.gradient_checkpointing
