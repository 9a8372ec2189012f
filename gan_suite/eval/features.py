"""Feature extractors for FID/KID: the standard FID InceptionV3 and any evaluator network.

Every extractor returned here takes the suite's images, float tensors in [-1, 1] of shape
(N, 3, H, W) with any H, W, and returns (N, D) features. They also satisfy what torchmetrics
asks of a custom ``feature=`` module (torchmetrics 1.9, ``image/fid.py``): an integer
``num_features`` attribute, so torchmetrics never probes the network with its default
(1, 3, 299, 299) dummy image, and a forward that also accepts that probe's uint8 [0, 255] input.

The one download of the suite is :func:`fetch_inception_weights`: the standard FID InceptionV3
weights, fetched once into the torch hub cache as every FID tool of the field does, and only
when the Evaluation callback asks for them (a run without network trains without FID/KID).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import urllib.request
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
OFFLINE_ENV = "GAN_SUITE_OFFLINE"  # set: never try the network (tests, air-gapped clusters)
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


def hub_inception_path() -> Path:
    """Where the standard weights live once fetched: ``torch.hub.get_dir()/checkpoints/``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE


def _download(url: str, target: Path, timeout: float) -> str:
    """Stream ``url`` into ``target``; return the file's sha256 (hex)."""
    digest = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=timeout) as response, open(target, "wb") as out:
        while chunk := response.read(1 << 20):
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def check_inception_state(path: str | os.PathLike[str]) -> None:
    """Check a weights file is torch-fidelity's InceptionV3: every tensor name and shape.

    Loaded with ``torch.load(weights_only=True)``. Raises ValueError naming the file and the
    first mismatch (a truncated download, an HTML error page, another network).
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same fault here
        raise ValueError(f"{path}: not a torch state dict ({type(err).__name__}: {err})") from err
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class _Shapes(FeatureExtractorInceptionV3):
        def load_state_dict(self, *args: object, **kwargs: object) -> None:  # type: ignore[override]
            return None

    empty = Path(path).with_name(Path(path).name + ".probe")
    torch.save({}, empty)
    try:
        net = _Shapes("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))
    finally:
        empty.unlink()
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()} if isinstance(state, dict) else {}
    for key, shape in expected.items():
        if got.get(key) != shape:
            raise ValueError(
                f"{path}: not the FID InceptionV3 weights ({key}: expected shape {shape}, "
                f"found {got.get(key, 'nothing')})"
            )


def fetch_inception_weights(url: str = INCEPTION_WEIGHTS_URL, timeout: float = 30.0) -> Path:
    """Fetch the standard FID InceptionV3 weights once into the torch hub cache.

    The file is streamed to ``<name>.partial``, checked by :func:`check_inception_state` and
    only then renamed into place, so a failed or interrupted download never leaves a file that
    looks complete. Its sha256 is written beside it (``<name>.sha256``) so that runs can cite
    exactly which weights scored them.

    Raises:
        OSError: no network (``urllib.error.URLError``), the download failed, or
            ``$GAN_SUITE_OFFLINE`` is set.
        ValueError: the downloaded file is not the InceptionV3 state dict.
    """
    if os.environ.get(OFFLINE_ENV):
        raise OSError(f"downloads are switched off (${OFFLINE_ENV} is set)")
    target = hub_inception_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    try:
        sha256 = _download(url, partial, timeout)
        check_inception_state(partial)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    target.with_name(target.name + ".sha256").write_text(f"{sha256}  {target.name}\n")
    return target


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
