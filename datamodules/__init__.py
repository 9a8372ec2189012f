"""LightningDataModules that own files on disk, splits and augmentation.

- ``UnpairedDataModule``: CycleGAN layout, random B per A (CycleGAN, DiscoGAN, OP-GAN, BDL).
- ``PairedDataModule``: pix2pix ``AB`` files or aligned folders; optionally served unaligned.
- ``materialize_shapes`` / ``render_scene``: the embedded procedural two-style shapes dataset
  used when no ``data_dir`` is given.
- ``LabelledDataModule``, ``DomainSplitDataModule``: labelled sources (below).
- ``VectorDataModule``: (image feature, word vector) ``.npy`` arrays (cGAN's section 4.2).
- ``SegmentationDataModule``: labelled source + unlabelled target for BDL (GTA5, SYNTHIA,
  Cityscapes, or the embedded shapes and digits with masks).

Bad input (``io.py``): listing skips system files (``._*``, ``.DS_Store``, ``Thumbs.db``,
``__MACOSX``); images and masks are decoded with their EXIF orientation applied; every
module opens each file's header at ``setup()``, so a broken file, a wrong mode or a label of
the wrong size fails there, naming the file (``DatasetLayoutError``, ``ImageReadError``,
``AnnotationError``, ``LabelError``), before any training.

Batch keys of the two-domain modules: ``A``, ``B`` (float ``(N, 3, H, W)`` in [-1, 1]),
``A_path``, ``B_path`` (str), and when the data provides them ``A_mask``, ``B_mask``
(int64 ``(N, H, W)`` semantic masks) and ``A_label``, ``B_label`` (int64 ``(N,)``).
"""

from .embedded import load_scenes, materialize_shapes
from .io import DatasetLayoutError, ImageReadError, list_images, read_rgb
from .paired import PairedDataModule
from .shapes import ATTRIBUTES, CLASSES, SceneRender, render_scene
from .unpaired import UnpairedDataModule

__all__ = [
    "ATTRIBUTES",
    "CLASSES",
    "DatasetLayoutError",
    "ImageReadError",
    "PairedDataModule",
    "SceneRender",
    "UnpairedDataModule",
    "list_images",
    "load_scenes",
    "materialize_shapes",
    "read_rgb",
    "render_scene",
]

# Labelled sources (cGAN, IC-GAN, StarGAN, MatchGAN) and attribute-split domains (DiscoGAN).
from .instances import NeighbourhoodDataset  # noqa: E402
from .labelled import SOURCES as LABELLED_SOURCES  # noqa: E402
from .labelled import LabelledDataModule  # noqa: E402
from .labelled_celeba import AnnotationError  # noqa: E402
from .labelled_domains import DomainSplitDataModule  # noqa: E402

__all__ += [
    "LABELLED_SOURCES",
    "AnnotationError",
    "DomainSplitDataModule",
    "LabelledDataModule",
    "NeighbourhoodDataset",
]

# Feature / word-vector arrays (cGAN's multimodal model).
from .vectors import VectorDataModule  # noqa: E402

__all__ += ["VectorDataModule"]

# Segmentation domain adaptation (BDL): labelled source, unlabelled target, target validation.
from .segmentation import SegmentationDataModule  # noqa: E402
from .segmentation_layouts import LabelError  # noqa: E402

__all__ += ["LabelError", "SegmentationDataModule"]
