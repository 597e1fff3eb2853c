"""The ``tsfa`` command line: thin wrappers that load a spec, call the library, print tables.

Every command takes an optional spec TOML (``tsfa spec > s.toml`` writes the default) and a
``--json`` flag for machine-readable output. Bad input exits with code 2 and one line naming the
option or key and its allowed range. One module per group of commands: :mod:`tsfa.cli.plan`
(spec, bound, rank, control), :mod:`tsfa.cli.train` (train, run), :mod:`tsfa.cli.figures`.
"""

from tsfa._omp import passive_omp_wait

passive_omp_wait()  # before anything loads torch: idle OpenMP threads sleep instead of spinning

from tsfa.cli import calibrate, figures, plan, train  # noqa: E402, F401  (registers the commands)
from tsfa.cli.common import app  # noqa: E402


def main() -> None:  # pragma: no cover - console entry point
    app()


__all__ = ["app", "main"]
