"""Caption text shared by the figures (no plotting imports)."""

#: Caption note of every figure on the embedded task: tsfa's reconstruction, not the paper's.
NOTE = "tsfa reconstruction (embedded task), not the paper's results"

__all__ = ["NOTE"]
