"""Section 4.2's tagging (Mirza & Osindero 2014) and its scorer: generated word vectors vote
for their nearest vocabulary words; an item's most voted words are its tags."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gan_suite.eval.distributed import all_reduce_sum
from gan_suite.eval.protocol import TaggedVectors


@torch.no_grad()
def generated_tags(
    samples: Tensor, vocab_vectors: Tensor, k_nearest: int = 20, top: int = 10
) -> tuple[Tensor, Tensor]:
    """Section 4.2's tagging: per item, its generated word vectors vote for their
    ``k_nearest`` vocabulary words by cosine similarity; the ``top`` most voted words win.

    Args:
        samples: (n_items, n_samples, W) generated word vectors (the paper: 100 per image).
        vocab_vectors: (V, W).

    Returns:
        (n_items, top) word indices, most voted first (ties: lower index first), and their
        (n_items, top) vote counts.
    """
    n, s, _ = samples.shape
    k = min(k_nearest, len(vocab_vectors))
    sims = F.normalize(samples.float(), dim=-1) @ F.normalize(vocab_vectors.float(), dim=-1).T
    nearest = sims.topk(k, dim=-1).indices.reshape(n, s * k)  # (n, s*k)
    votes = torch.zeros(n, len(vocab_vectors), dtype=torch.long, device=samples.device)
    votes.scatter_add_(1, nearest, torch.ones_like(nearest))
    # a total order: more votes first, then the lower word index
    index = torch.arange(len(vocab_vectors), device=samples.device)
    key = votes.double() * len(vocab_vectors) - index
    order = key.topk(min(top, len(vocab_vectors)), dim=1).indices
    return order, votes.gather(1, order)


class TagScorer(nn.Module):
    """``tag_hit``: share of items whose true word (the vocabulary word nearest its real word
    vector) is among its tags; ``cosine``: mean cosine similarity of a generated to the real
    word vector. Keeps the last stage's tags for ``tags.tsv`` (:meth:`tags_table`)."""

    def __init__(self) -> None:
        super().__init__()
        self.hits, self.cosine, self.n = 0.0, 0.0, 0
        self.rows: list[str] = []
        self.top = 0

    @torch.no_grad()
    def update(self, rec: TaggedVectors, with_real: bool) -> None:
        vocab = rec.vocabulary.to(rec.generated.device)
        real = rec.real.to(rec.generated.device)
        truth = (F.normalize(real, dim=1) @ F.normalize(vocab, dim=1).T).argmax(1)
        tags, votes = generated_tags(rec.generated, vocab, rec.k_nearest, rec.top_words)
        self.hits += float((tags == truth[:, None]).any(1).sum())
        cos = F.cosine_similarity(rec.generated, real[:, None, :], dim=-1)
        self.cosine += float(cos.mean(1).sum())
        self.n += len(real)
        self.top = rec.top_words
        for i, t, row, v in zip(rec.index.tolist(), truth.tolist(), tags.tolist(), votes.tolist()):
            shown = ", ".join(f"{rec.words[j]} ({c})" for j, c in zip(row, v))
            self.rows.append(f"{i}\t{rec.words[t]}\t{shown}")

    def compute(self) -> dict[str, dict]:
        hits, cosine, n = all_reduce_sum(torch.tensor([self.hits, self.cosine, float(self.n)]))
        if n == 0:
            return {}
        n, info = int(n), {"extractor": "word_vectors"}
        return {
            "tag_hit": {"value": float(hits) / n, "n_images": n, "top": self.top, **info},
            "cosine": {"value": float(cosine) / n, "n_images": n, **info},
        }

    def tags_table(self) -> str:
        """``tags.tsv``: item, true word, tags with votes (this rank's items)."""
        return "\n".join(["item\ttrue_word\ttags (votes)", *self.rows]) + "\n"

    def reset(self) -> None:
        self.hits, self.cosine, self.n = 0.0, 0.0, 0
        self.rows = []
