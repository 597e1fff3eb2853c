"""Error feedback as a wrapper around any compressor (docs/model.md §5).

State: the memory e in the inner compressor's message space (zeros at init). Each round
M = message + e is compressed and e <- M - (what the server reconstructs from the upload), so
sum_t reconstruct(upload_t) + e_T = sum_t message_t exactly (telescoping). The inner compressor
supplies the algebra (``zeros``, ``add``, ``residual``): elementwise for dense messages,
concatenation and a truncated factored SVD for the factored SVD compressor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tsfa.fl.compress.upload import Factors, Message, Upload


@dataclass(frozen=True)
class ErrorFeedback:
    """Error feedback around ``inner``: M = message + e; send compress(M); e <- M - received."""

    inner: Any

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def space(self) -> str:
        return self.inner.space

    @property
    def frozen(self) -> tuple[str, ...]:
        return self.inner.frozen

    @property
    def options(self):
        return self.inner.options

    def message(self, deltas: Factors, params: Factors) -> Message:
        return self.inner.message(deltas, params)

    def compress(self, msg: Message, params: Factors, rho: float,
                 rng: np.random.Generator) -> Upload:
        return self.inner.compress(msg, params, rho, rng)

    def init(self, params: Factors) -> Message:
        return self.inner.zeros(params)

    def defer(self, deltas: Factors, state: Message, params: Factors) -> Message:
        """The memory of a client that sends nothing this round: the whole message waits."""
        return self.inner.compact(self.inner.add(self.inner.message(deltas, params), state),
                                  params)

    def update(self, deltas: Factors, state: Message, params: Factors, rho: float,
               rng: np.random.Generator) -> tuple[Upload, Message]:
        comp = self.inner.add(self.inner.message(deltas, params), state)
        upload = self.inner.compress(comp, params, rho, rng)
        return upload, self.inner.residual(comp, upload, params)


def with_error_feedback(compressor: Any) -> ErrorFeedback:
    """Wrap a strategy with error-feedback memory (docs/model.md §5)."""
    return ErrorFeedback(compressor)


__all__ = ["ErrorFeedback", "with_error_feedback"]
