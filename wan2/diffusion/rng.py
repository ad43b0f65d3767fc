"""Randomness keyed by sample, not by process: (seed, step, dataset index, stream) -> a torch.Generator.

A sample's noise, noise level and caption dropout then depend only on which sample it is and at which step it
is drawn, not on the batch it lands in or the rank that holds it: 1 process at batch 8 and 2 ranks at batch 4
draw the same numbers for the same global batch, and a resumed run draws what an uninterrupted one drew.
Each stream ("noise", "sigma", ...) has its own generator, so adding or skipping one draw leaves the others
unchanged. Draws happen on the CPU: the same numbers whatever device trains.

Only torch (and hashlib) here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable

import torch


def sample_seed(seed: int, step: int, index: int, stream: str = "noise") -> int:
    """A 63-bit seed that depends only on (seed, step, index, stream)."""
    digest = hashlib.sha256(f"sample:{int(seed)}:{int(step)}:{int(index)}:{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def sample_generators(
    seed: int, step: int, indices: Iterable[int], stream: str = "noise"
) -> list[torch.Generator]:
    """One CPU generator per sample, seeded by ``sample_seed(seed, step, index, stream)``."""
    return [torch.Generator().manual_seed(sample_seed(seed, step, int(i), stream)) for i in indices]


def draw_per_sample(
    draw: Callable[[torch.Generator], torch.Tensor], generators: list[torch.Generator]
) -> torch.Tensor:
    """``torch.cat([draw(g) for g in generators])``: row b of the result comes from ``generators[b]`` only.

    ``draw(g)`` returns a (1, ...) tensor, e.g. ``lambda g: torch.randn(1, C, F, H, W, generator=g)``.
    """
    return torch.cat([draw(g) for g in generators])


def randn_per_sample(
    shape: tuple[int, ...], generators: list[torch.Generator], dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Standard normal noise (B, *shape), row b from ``generators[b]`` (B = len(generators))."""
    return draw_per_sample(lambda g: torch.randn(1, *shape, generator=g, dtype=dtype), generators)


def rand_per_sample(generators: list[torch.Generator]) -> torch.Tensor:
    """Uniform [0, 1) numbers (B,), one from each generator."""
    return draw_per_sample(lambda g: torch.rand(1, generator=g), generators)
