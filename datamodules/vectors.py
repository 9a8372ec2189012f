"""(image feature, word vector) pairs for the multimodal conditional GAN (Mirza & Osindero
2014, section 4.2: image features -> tag word vectors), read from ``.npy`` arrays.

Layout (``VECTOR_LAYOUT``)::

    <root>/train_features.npy      (N, F) float, one row per image-tag pair
    <root>/train_word_vectors.npy  (N, W) float, the word vector of that pair's tag
    <root>/val_*.npy, test_*.npy   optional, the same pair of arrays per split
    <root>/word_vectors.npy        (V, W) the vocabulary's word vectors
    <root>/words.txt               its V words, one per line (or <root>/vocab.npy, V strings)

Batch keys: ``features`` float (N, F), ``word_vector`` float (N, W), ``index`` int64 (N,).
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from gan_suite.utils.workers import worker_init

from .io import DatasetLayoutError, read_text, require_dir

VECTOR_LAYOUT = (
    "expected <root>/train_features.npy (N, F) and <root>/train_word_vectors.npy (N, W) (one "
    "row per image-tag pair), optional val_* and test_* pairs, the vocabulary "
    "<root>/word_vectors.npy (V, W) and its words in <root>/words.txt (one per line) or "
    "<root>/vocab.npy (V strings)"
)


def _load_array(path: Path, ndim: int, numeric: bool = True) -> np.ndarray:
    """Load ``path`` as an ``ndim``-dimensional array (numeric: finite floats or integers).

    Raises:
        DatasetLayoutError: The file is missing.
        ValueError: Not a ``.npy`` array, a pickled object array, the wrong number of
            dimensions, no rows, or NaN/inf values; names the file and what was expected.
    """
    if not path.is_file():
        raise DatasetLayoutError(f"{str(path)!r} not found; {VECTOR_LAYOUT}")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise ValueError(
            f"cannot read {str(path)!r} as a .npy array ({err}); expected a numeric array "
            "written by numpy.save (no pickled objects)"
        ) from err
    if array.ndim != ndim or len(array) == 0:
        raise ValueError(
            f"{str(path)!r}: expected {ndim} dimensions with at least one row, got shape "
            f"{array.shape}"
        )
    if numeric:
        if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
            raise ValueError(f"{str(path)!r}: expected numbers, got dtype {array.dtype}")
        if not np.isfinite(array).all():
            row = int(np.flatnonzero(~np.isfinite(array).reshape(len(array), -1).all(1))[0])
            raise ValueError(f"{str(path)!r}: row {row} holds NaN or inf; expected finite values")
    return array


class VectorDataModule(L.LightningDataModule):
    """(image feature, word vector) pairs and a word-vector vocabulary, from ``.npy`` arrays.

    Layout: see ``VECTOR_LAYOUT``. A split without its files: validation is carved off train
    (seeded ``val_fraction``), test falls back to validation. Every shape is checked against
    the others on setup; an error names the file and both shapes. Batch keys: ``features``
    float (N, F), ``word_vector`` float (N, W), ``index`` int64 (N,).

    Args:
        data_dir: the folder holding the arrays.
        batch_size: pairs per batch (100 in the paper).
        num_workers: DataLoader workers.
        val_fraction: share of train held out when there is no ``val_*`` pair.
        seed: seed of that hold-out and of the shuffle.
    """

    def __init__(
        self,
        data_dir: str,
        batch_size: int = 100,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.root = Path(data_dir).expanduser()
        self.splits: dict[str, tuple[Tensor, Tensor]] = {}
        self.words: list[str] = []
        self.vocab_vectors: Tensor | None = None

    def _read_split(self, name: str) -> tuple[np.ndarray, np.ndarray] | None:
        f_path, w_path = self.root / f"{name}_features.npy", self.root / f"{name}_word_vectors.npy"
        if name != "train" and not f_path.exists() and not w_path.exists():
            return None
        feats, words = _load_array(f_path, 2), _load_array(w_path, 2)
        if len(feats) != len(words):
            raise ValueError(
                f"{str(f_path)!r} has {len(feats)} rows but {str(w_path)!r} has {len(words)}: "
                "row i of both must describe the same image-tag pair"
            )
        return feats, words

    def _read_vocab(self) -> None:
        vectors = _load_array(self.root / "word_vectors.npy", 2)
        txt, npy = self.root / "words.txt", self.root / "vocab.npy"
        if txt.is_file():
            text = read_text(txt, "the vocabulary's words, one per line")
            words = [w.strip() for w in text.splitlines() if w.strip()]
        elif npy.is_file():
            words = [str(w) for w in _load_array(npy, 1, numeric=False)]
        else:
            raise DatasetLayoutError(f"no {str(txt)!r} or {str(npy)!r}; {VECTOR_LAYOUT}")
        if len(words) != len(vectors):
            raise ValueError(
                f"vocabulary: {len(words)} words but {str(self.root / 'word_vectors.npy')!r} "
                f"has {len(vectors)} rows"
            )
        self.words, self.vocab_vectors = words, torch.as_tensor(vectors, dtype=torch.float32)

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        require_dir(self.root, VECTOR_LAYOUT)
        self._read_vocab()
        splits = {name: self._read_split(name) for name in ("train", "val", "test")}
        if splits["val"] is None:
            feats, words = splits["train"]
            order = np.random.default_rng(self.hparams.seed).permutation(len(feats))
            n_val = max(1, int(round(self.hparams.val_fraction * len(feats))))
            val, train = order[:n_val], order[n_val:]
            splits["train"], splits["val"] = (feats[train], words[train]), (feats[val], words[val])
        splits["test"] = splits["test"] or splits["val"]
        f_dim, w_dim = splits["train"][0].shape[1], self.vocab_vectors.shape[1]
        for name, (feats, words) in splits.items():
            if feats.shape[1] != f_dim or words.shape[1] != w_dim:
                raise ValueError(
                    f"{name}: features {feats.shape} / word vectors {words.shape} do not match "
                    f"train features (*, {f_dim}) / word_vectors.npy (*, {w_dim})"
                )
            self.splits[name] = (
                torch.as_tensor(feats, dtype=torch.float32),
                torch.as_tensor(words, dtype=torch.float32),
            )

    @property
    def feature_dim(self) -> int:
        return self.splits["train"][0].shape[1]

    @property
    def word_dim(self) -> int:
        return self.vocab_vectors.shape[1]

    @property
    def val_set(self) -> Dataset | None:
        """Validation pairs: items ``{"features", "word_vector", "index"}`` (None before setup)."""
        return _PairDataset(*self.splits["val"]) if "val" in self.splits else None

    @property
    def test_set(self) -> Dataset | None:
        """Test pairs, as ``val_set``."""
        return _PairDataset(*self.splits["test"]) if "test" in self.splits else None

    def _loader(self, split: str, train: bool = False) -> DataLoader:
        feats, words = self.splits[split]
        data = _PairDataset(feats, words)
        g = torch.Generator().manual_seed(self.hparams.seed)  # never the global stream
        return DataLoader(
            data,
            self.hparams.batch_size,
            shuffle=train,
            generator=g,
            drop_last=train and len(data) >= self.hparams.batch_size,
            num_workers=self.hparams.num_workers,
            worker_init_fn=worker_init(self),  # workers ignore SIGTERM: the run saves first
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")


class _PairDataset(Dataset):
    def __init__(self, features: Tensor, words: Tensor) -> None:
        self.features, self.words = features, words

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"features": self.features[i], "word_vector": self.words[i], "index": i}
