"""Feature extractors for FID/KID: the standard FID InceptionV3 and any evaluator network.

Every extractor returned here takes the suite's images, float tensors in [-1, 1] of shape
(N, 3, H, W) with any H, W, and returns (N, D) features. They also satisfy what torchmetrics
asks of a custom ``feature=`` module (torchmetrics 1.9, ``image/fid.py``): an integer
``num_features`` attribute, so torchmetrics never probes the network with its default
(1, 3, 299, 299) dummy image, and a forward that also accepts that probe's uint8 [0, 255] input.

Nothing here downloads anything: the InceptionV3 weights must already be on disk.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

# torch-fidelity's converted TF-slim InceptionV3 (the "pytorch-fid compatible" network that
# torchmetrics also uses). Name and URL as in torch_fidelity/feature_extractor_inceptionv3.py.
INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + INCEPTION_WEIGHTS_FILE
)
INCEPTION_WEIGHTS_ENV = "GAN_SUITE_INCEPTION_WEIGHTS"
INCEPTION_NUM_FEATURES = 2048
EXTRACTOR_KINDS = ("inception", "evaluator")


class InceptionWeightsNotFoundError(FileNotFoundError):
    """The FID InceptionV3 weights file is not on disk (it is never downloaded at run time)."""


def _candidate(location: str | os.PathLike[str]) -> Path:
    """A user-given location may be the weights file itself or a folder holding it."""
    path = Path(location).expanduser()
    return path / INCEPTION_WEIGHTS_FILE if path.is_dir() else path


def find_inception_weights(weights_path: str | os.PathLike[str] | None = None) -> Path:
    """Return the path of the InceptionV3 weights file, or raise a message saying where to put it.

    Looked for, in order: ``weights_path`` (a file or a folder holding the file); the file or
    folder named by the env var ``GAN_SUITE_INCEPTION_WEIGHTS``; the torch hub cache
    ``torch.hub.get_dir()/checkpoints/<file>`` (where torch-fidelity itself would have saved it).
    An explicit ``weights_path`` that does not exist is an error, not a reason to try the others:
    the user asked for that file.
    """
    hub_file = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE
    if weights_path is not None:
        places = [_candidate(weights_path)]
    else:
        places = []
        env = os.environ.get(INCEPTION_WEIGHTS_ENV)
        if env:
            places.append(_candidate(env))
        places.append(hub_file)
    for place in places:
        if place.is_file():
            return place
    looked = "\n".join(f"  - {p}" for p in places)
    raise InceptionWeightsNotFoundError(
        f"FID InceptionV3 weights '{INCEPTION_WEIGHTS_FILE}' not found. Looked in:\n{looked}\n"
        f"Nothing is downloaded at run time. On a machine with internet fetch\n"
        f"  {INCEPTION_WEIGHTS_URL}\n"
        f"and put it at {hub_file} (the torch hub cache), or anywhere and point the env var "
        f"{INCEPTION_WEIGHTS_ENV} (or the `weights_path` argument) at the file or its folder."
    )


def load_inception(weights_path: str | os.PathLike[str] | None = None) -> nn.Module:
    """torch-fidelity's FID InceptionV3 (2048-d pool features) loaded from a local file.

    Returns the raw ``FeatureExtractorInceptionV3``: it takes uint8 (N, 3, H, W) images and
    returns a 1-tuple of (N, 2048) features. Use :func:`make_feature_extractor` for the
    [-1, 1] interface. Raises :class:`InceptionWeightsNotFoundError` when the file is absent.
    """
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    path = find_inception_weights(weights_path)
    # With a path, torch-fidelity calls torch.load on it and never load_state_dict_from_url.
    layer = [str(INCEPTION_NUM_FEATURES)]
    return FeatureExtractorInceptionV3(
        "inception-v3-compat", layer, feature_extractor_weights_path=str(path)
    )


def write_random_inception_weights(path: str | os.PathLike[str], seed: int = 0) -> Path:
    """Save a randomly initialised InceptionV3 state dict in torch-fidelity's format.

    For tests and benchmarks only, where the real weights cannot be downloaded: the FID values
    it gives are meaningless, but the network, its cost and its loading path are the real ones.
    Convolutions get He init so that the 2048-d features neither vanish nor explode.
    """
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class _RandomInit(FeatureExtractorInceptionV3):
        # The constructor insists on loading weights (from a file or the internet): feed it an
        # empty file and skip the load so the freshly built layers keep their random init.
        def load_state_dict(self, *args: object, **kwargs: object) -> None:  # type: ignore[override]
            return None

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    empty = path.with_name(path.name + ".empty")
    torch.save({}, empty)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layer = [str(INCEPTION_NUM_FEATURES)]
        net = _RandomInit("inception-v3-compat", layer, feature_extractor_weights_path=str(empty))
        for module in net.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    empty.unlink()
    torch.save(net.state_dict(), path)
    return path


def _to_uint8(images: Tensor) -> Tensor:
    """[-1, 1] floats -> uint8 [0, 255], rounding as an image saved to PNG would be."""
    if images.dtype == torch.uint8:
        return images
    return ((images.float() + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8)


def _to_signed_float(images: Tensor) -> Tensor:
    """uint8 [0, 255] (torchmetrics' probe input) -> [-1, 1] floats; floats pass through."""
    if images.dtype == torch.uint8:
        return images.float() / 127.5 - 1.0
    return images


class FeatureWrapper(nn.Module):
    """A frozen feature network with the [-1, 1] image interface, usable as ``feature=``.

    Args:
        net: maps images to (N, D) features, or to a tuple whose first item is that (as
            torch-fidelity's extractors do); extra dimensions are flattened.
        num_features: D. When ``None`` it is found with one forward of a zero image of
            ``input_size``.
        input_size: (C, H, W) of the probe image, used only when ``num_features`` is ``None``.
        uint8_input: the net wants uint8 [0, 255] images (torch-fidelity's InceptionV3, which
            resizes to 299x299 itself); otherwise it gets float [-1, 1] images.
        name: reported as ``extractor`` in the FID/KID results.

    The wrapped net is put in eval mode and kept there: a LightningModule's ``train()`` reaches
    every submodule, and BatchNorm statistics of an evaluator must not move during evaluation.
    """

    def __init__(
        self,
        net: nn.Module,
        num_features: int | None = None,
        input_size: Sequence[int] = (3, 64, 64),
        uint8_input: bool = False,
        name: str = "evaluator",
    ) -> None:
        super().__init__()
        self.net = net.eval()
        self.uint8_input = uint8_input
        self.name = name
        if num_features is None:
            probe = torch.zeros(1, *input_size, device=_device_of(net))
            num_features = int(self(probe).shape[-1])
        # An int attribute: torchmetrics reads it instead of running its own 299x299 probe.
        self.num_features = int(num_features)

    def train(self, mode: bool = True) -> FeatureWrapper:
        """Stay in eval mode whatever the caller asks."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        """(N, C, H, W) images, float [-1, 1] or uint8 [0, 255] -> (N, D) features."""
        images = _to_uint8(images) if self.uint8_input else _to_signed_float(images)
        out = self.net(images.to(_device_of(self.net)))
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out.reshape(out.shape[0], -1)


def _device_of(net: nn.Module) -> torch.device:
    """Device of the first parameter or buffer (CPU for parameter-free nets like Identity)."""
    first = next(itertools.chain(net.parameters(), net.buffers()), None)
    return torch.device("cpu") if first is None else first.device


def make_feature_extractor(
    kind: str,
    evaluator: nn.Module | None = None,
    weights_path: str | os.PathLike[str] | None = None,
    num_features: int | None = None,
    input_size: Sequence[int] = (3, 64, 64),
) -> FeatureWrapper:
    """Build the feature extractor named ``kind`` with the [-1, 1] image interface.

    - ``"inception"``: torch-fidelity's FID InceptionV3 from a local weights file (see
      :func:`find_inception_weights`); [-1, 1] images are quantised to uint8 and resized to
      299x299 by torch-fidelity's TF1-compatible bilinear resize, exactly as torch-fidelity's
      own FID does. Never falls back to other features when the weights are missing.
    - ``"evaluator"``: ``evaluator``, any module mapping [-1, 1] images to (N, D) features;
      ``num_features``/``input_size`` as in :class:`FeatureWrapper`.
    """
    if kind == "inception":
        return FeatureWrapper(
            load_inception(weights_path),
            num_features=INCEPTION_NUM_FEATURES,
            uint8_input=True,
            name="inception",
        )
    if kind == "evaluator":
        if evaluator is None:
            raise ValueError("make_feature_extractor('evaluator') needs the `evaluator` module")
        return FeatureWrapper(evaluator, num_features, input_size, name="evaluator")
    raise ValueError(f"unknown feature extractor kind {kind!r}: expected one of {EXTRACTOR_KINDS}")


class EvaluatorFeatures(nn.Module):
    """An evaluator's penultimate features as an (N, D) feature net: [-1, 1] images in."""

    def __init__(self, evaluator: nn.Module) -> None:
        super().__init__()
        self.evaluator = evaluator

    def forward(self, images: Tensor) -> Tensor:
        return self.evaluator.features(images)
