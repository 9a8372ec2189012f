"""What predict asks of each paper: per input image, one or more generated images.

- Translators (CycleGAN, OP-GAN, DiscoGAN; BDL's F): ``model(x, direction)``, A->B or B->A;
  BDL also ``segment``: M's labels as colours.
- StarGAN / MatchGAN: G(x, c). With ``--attributes`` c is the input's own attributes (as D's
  auxiliary classifier reads them) with the named ones set: setting one attribute of an
  exclusive group (the hair colours) clears the group's others. Without, one output per
  attribute, each changing that attribute (the paper's test protocol).
- IC-GAN: K samples G(z, h) per instance, h the features of the input image.
- cGAN: no input images; K samples per class label.

Each task maps a batch (N, C, H, W) in the model's input range to columns: a list of
(N, 3, H', W') tensors in [-1, 1], one per output column named in ``columns``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

DIRECTIONS = ("AtoB", "BtoA", "segment")


class Task:
    """One paper's generation for predict (see the module docstring)."""

    columns: list[str]
    needs_inputs = True

    def __call__(self, x: Tensor) -> list[Tensor]:
        raise NotImplementedError


def _as_rgb(x: Tensor) -> Tensor:
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


class Translation(Task):
    """``model(x, direction)`` of a two-domain translator."""

    def __init__(self, model, direction: str) -> None:
        self.model, self.direction = model, direction
        self.columns = [{"AtoB": "A -> B", "BtoA": "B -> A"}.get(direction, "segmentation")]

    def __call__(self, x: Tensor) -> list[Tensor]:
        if self.direction == "segment":
            from gan_suite.models.bdl import label_image

            labels = self.model(x, "segment").argmax(1)  # (N, H, W)
            return [label_image(labels, self.model.hparams.n_classes)]
        return [_as_rgb(self.model(x, self.direction))]


def parse_attributes(spec: str, names: list[str], single_choice: bool) -> dict[str, int]:
    """``"Black_Hair=1,Male=0"`` -> {name: 0 or 1}.

    Raises:
        ValueError: a malformed item, an unknown name, a value other than 0/1, or (class
            labels) not exactly one class set to 1; the message names ``--attributes``.
    """
    wanted: dict[str, int] = {}
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        name, eq, value = item.partition("=")
        name, value = name.strip(), value.strip() if eq else "1"
        if name not in names:
            raise ValueError(
                f"--attributes: unknown attribute {name!r}; the model knows {', '.join(names)}"
            )
        if value not in ("0", "1"):
            raise ValueError(f"--attributes: {item!r}: expected NAME=0 or NAME=1")
        wanted[name] = int(value)
    if not wanted:
        raise ValueError(f"--attributes {spec!r}: expected NAME=0|1[,NAME=0|1...]")
    if single_choice and [v for v in wanted.values()] != [1]:
        raise ValueError(
            f"--attributes {spec!r}: this model translates to one class of "
            f"{', '.join(names)}: name exactly one, e.g. {names[0]}=1"
        )
    return wanted


class AttributeTranslation(Task):
    """StarGAN / MatchGAN: G(x, c) for the requested attributes, or one per attribute."""

    def __init__(self, model, spec: str | None) -> None:
        self.model = model
        hp = model.hparams
        self.names = list(hp.attributes)
        self.single_choice = hp.label_kind == "class"
        self.wanted = (
            None if spec is None else parse_attributes(spec, self.names, self.single_choice)
        )
        if self.wanted is None:
            self.columns = [f"{a} changed" for a in self.names]
        else:
            self.columns = [", ".join(f"{k}={v}" for k, v in self.wanted.items())]

    def original_attributes(self, x: Tensor) -> Tensor:
        """The inputs' own attributes c' as D's auxiliary classifier reads them: (N, A) 0/1.
        D takes only its training size, so it sees the input resized to it."""
        size = self.model.hparams.image_size
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
        logits = self.model.D(self.model.prepare_images(x))[1]
        if self.single_choice:
            return F.one_hot(logits.argmax(1), len(self.names)).float()
        return (logits > 0).float()

    def target(self, c_org: Tensor) -> Tensor:
        """c' with the requested attributes set (exclusive groups kept exclusive)."""
        c = c_org.clone()
        if self.single_choice:
            c.zero_()
        for name, value in self.wanted.items():
            a = self.names.index(name)
            if value == 1:
                for group in self.model.exclusive_index:
                    if a in group:
                        c[:, group] = 0
            c[:, a] = float(value)
        return c

    def __call__(self, x: Tensor) -> list[Tensor]:
        c_org = self.original_attributes(x)
        if self.wanted is None:
            fakes, _ = self.model.translate_per_attribute(self.model.prepare_images(x), c_org)
            return [_as_rgb(f) for f in fakes]
        return [_as_rgb(self.model(x, self.target(c_org)))]


def parse_labels(spec: str, n_classes: int) -> list[int]:
    """``"0,3,7"`` -> [0, 3, 7].

    Raises:
        ValueError: not integers in [0, n_classes); the message names ``--labels``.
    """
    try:
        labels = [int(s) for s in spec.split(",") if s.strip()]
    except ValueError:
        labels = []
    if not labels or any(not 0 <= y < n_classes for y in labels):
        raise ValueError(
            f"--labels {spec!r}: expected comma-separated class indices in 0..{n_classes - 1}"
        )
    return labels


class InstanceSamples(Task):
    """IC-GAN: ``n_samples`` samples G(z, h(x)) per instance x (class-conditional IC-GAN: of
    the class given by ``--labels``, one label for all instances)."""

    def __init__(self, model, n_samples: int, labels: str | None) -> None:
        self.model, self.n = model, n_samples
        n_classes = model.hparams.n_classes
        self.label = None
        if n_classes > 0:
            if labels is None:
                raise ValueError(
                    f"this IC-GAN is class-conditional ({n_classes} classes): give --labels Y, "
                    "the class of the samples"
                )
            found = parse_labels(labels, n_classes)
            if len(found) != 1:
                raise ValueError(f"--labels {labels!r}: give one class for all instances")
            self.label = found[0]
        self.columns = [f"sample {k + 1}" for k in range(n_samples)]

    def __call__(self, x: Tensor) -> list[Tensor]:
        labels = None if self.label is None else torch.full((len(x),), self.label)
        samples = self.model.generate_from_image(x, self.n, labels)  # (N, K, 3, S, S)
        return list(samples.unbind(1))


class ClassSamples(Task):
    """cGAN: ``n_samples`` images per class label; no input images."""

    needs_inputs = False

    def __init__(self, model, n_samples: int, labels: str | None) -> None:
        self.model, self.n = model, n_samples
        n_classes = model.hparams.n_classes
        if labels is None:
            raise ValueError(
                "a cGAN generates from class labels, not images: give --labels, e.g. "
                f"--labels {','.join(str(y) for y in range(min(n_classes, 4)))}"
            )
        self.labels = parse_labels(labels, n_classes)
        self.columns = [f"sample {k + 1}" for k in range(n_samples)]

    def rows(self) -> list[tuple[str, list[Tensor]]]:
        """(row name, one (1, 3, H, W) image per column) per requested label."""
        out = []
        for y in self.labels:
            images = self.model.to_display(self.model(torch.full((self.n,), y)))
            out.append((f"class_{y}", [img[None] for img in images]))
        return out


def make_task(model, direction: str, attributes: str | None, n_samples: int, labels: str | None):
    """The :class:`Task` of ``model``'s paper.

    Raises:
        ValueError: an option the paper cannot use (``--direction segment`` without a
            segmenter, ``--attributes`` for a translator, cGAN on feature vectors, ...).
    """
    from gan_suite.models.base import TwoDomainTranslator
    from gan_suite.models.cgan import CGAN
    from gan_suite.models.icgan import ICGAN
    from gan_suite.models.stargan import StarGAN

    name = type(model).__name__
    if n_samples < 1:
        raise ValueError(f"--n_samples {n_samples}: expected an integer >= 1")
    if attributes is not None and not isinstance(model, StarGAN):
        raise ValueError(f"--attributes: {name} is not attribute-conditioned (StarGAN, MatchGAN)")
    if isinstance(model, TwoDomainTranslator):
        if direction == "segment" and not hasattr(model, "M"):
            raise ValueError(
                f"--direction segment: {name} has no segmentation model (BDL has); "
                "expected AtoB or BtoA"
            )
        return Translation(model, direction)
    if isinstance(model, StarGAN):
        return AttributeTranslation(model, attributes)
    if isinstance(model, ICGAN):
        return InstanceSamples(model, n_samples, labels)
    if isinstance(model, CGAN):
        return ClassSamples(model, n_samples, labels)
    raise ValueError(
        f"gan-suite predict does not support {name}: it translates images (CycleGAN, OP-GAN, "
        "BDL, DiscoGAN, StarGAN, MatchGAN) or samples images (IC-GAN, cGAN); the multimodal "
        "cGAN generates feature vectors, not images"
    )
