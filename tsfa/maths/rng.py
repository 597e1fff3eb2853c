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


def substream(seed: int, name: str, *ids: int) -> np.random.Generator:
    """A generator determined by (seed, stream name, ids...), e.g. ``("fading", round)`` or
    ``("training", round, client)``. Stateless: a resumed run redraws exactly the same numbers.
    """
    if name not in STREAMS:
        raise ValueError(f"stream {name!r}: must be one of {', '.join(STREAMS)}")
    return np.random.default_rng([int(seed), STREAMS.index(name), *(int(i) for i in ids)])
