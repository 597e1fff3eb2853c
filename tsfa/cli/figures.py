"""CLI command ``tsfa figures``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tsfa.cli.common import app, console, fail
from tsfa.config.spec import SpecError


@app.command("figures")
def figures_cmd(
    out: Annotated[Path, typer.Option(help="Output directory (PNG, PDF, CSV per figure).")] = Path(
        "figures"),
    quick: Annotated[bool, typer.Option(
        "--quick", help="Small runs (5 clients, 24 rounds): under 15 min on 2 CPU cores.")] = False,
    size: Annotated[str | None, typer.Option(
        help="Run size: tiny (test suite), quick or full (default: full, or quick with "
        "--quick).")] = None,
    only: Annotated[list[str] | None, typer.Option(
        help="Only this figure (repeatable), e.g. fig5_control_v.")] = None,
    store: Annotated[Path | None, typer.Option(
        help="Run cache directory (default OUT/runs); finished runs are reused.")] = None,
) -> None:
    """Regenerate the eight figures of docs/model.md §7 from cached runs (tsfa's reconstruction on its
    embedded task, not the paper's results). Configurations: analysis/*.toml."""
    from tsfa.reporting.figures import FIGURES, make_all

    size = size or ("quick" if quick else "full")
    if size not in ("tiny", "quick", "full"):
        fail(f"--size = {size!r}: must be one of tiny, quick, full")
    bad = [n for n in only or [] if n not in FIGURES]
    if bad:
        fail(f"--only = {bad[0]!r}: must be one of {', '.join(FIGURES)}")
    try:
        timing = make_all(out, size, only or None, store, log=console.print)
    except (OSError, ValueError, SpecError) as exc:
        fail(str(exc))
    console.print(f"{len(timing)} figures in {out} ({sum(timing.values()):.0f} s)")
