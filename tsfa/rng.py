"""Randomness as an argument: one seed split into independent, named streams.

``numpy.random.SeedSequence(seed).spawn`` gives statistically independent children; each
stream has a fixed slot, so changing, say, the sparsifier never changes the fading draws.
"""

from __future__ import annotations

import numpy as np

STREAMS = ("geometry", "devices", "fading", "partition", "sampling", "training", "compression")


def streams(seed: int) -> dict[str, np.random.Generator]:
    """Independent generators, one per name in :data:`STREAMS`, from a single integer seed."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed = {seed!r}: must be an integer >= 0")
    children = np.random.SeedSequence(int(seed)).spawn(len(STREAMS))
    return {name: np.random.default_rng(child) for name, child in zip(STREAMS, children,
                                                                       strict=True)}
