"""The input sizes a net accepts, stated by the net and checked against the data at setup.

Each of the suite's image nets has an ``input_sizes()`` method returning an
:class:`InputSizes`: the smallest side it can take, the multiple a side must be (so that a
generator's output has its input's size) and, for nets built for one size, the largest. The
limits are the nets' true ones (``tests/test_faults_model.py`` tries sizes around each), so a
model can refuse a crop size at setup instead of failing deep inside InstanceNorm or a conv.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class InputSizes:
    """Sides (in pixels, each of H and W separately) that a net accepts.

    Attributes:
        min_size: the smallest side.
        multiple: a side must be a multiple of this (1: any side).
        max_size: the largest side, or None (no limit); ``min_size == max_size``: one size.
    """

    min_size: int = 1
    multiple: int = 1
    max_size: int | None = None

    def accepts(self, side: int) -> bool:
        """Whether a side of ``side`` pixels is accepted."""
        if side < self.min_size or side % self.multiple:
            return False
        return self.max_size is None or side <= self.max_size

    def __and__(self, other: InputSizes) -> InputSizes:
        """The sides both accept (several nets that see the same images)."""
        maxima = [m for m in (self.max_size, other.max_size) if m is not None]
        return InputSizes(
            max(self.min_size, other.min_size),
            math.lcm(self.multiple, other.multiple),
            min(maxima) if maxima else None,
        )

    def smallest(self) -> int | None:
        """The smallest accepted side, or None when no side is."""
        side = -(-self.min_size // self.multiple) * self.multiple
        return side if self.max_size is None or side <= self.max_size else None

    def nearest(self, side: int) -> list[int]:
        """Accepted sides next to ``side`` (at most one below and one above)."""
        first = self.smallest()
        if first is None:
            return []
        below = (side // self.multiple) * self.multiple
        above = below + self.multiple
        picks = [s for s in (below, above) if self.accepts(s) and s != side]
        return picks or [first]

    def describe(self) -> str:
        """``">= 24 px"``, ``"multiples of 4 from 8 px"``, ``"exactly 64 px"``, ..."""
        if self.max_size is not None and self.max_size == self.min_size:
            return f"exactly {self.min_size} px"
        first = self.smallest() if self.multiple > 1 else self.min_size
        upto = f" to {self.max_size} px" if self.max_size is not None else " px"
        if self.multiple > 1:
            return f"multiples of {self.multiple} from {first}{upto}"
        return f"{first}{upto}" if self.max_size is not None else f">= {first} px"
