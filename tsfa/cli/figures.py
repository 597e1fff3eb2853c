"""CLI command ``tsfa figures``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tsfa.cli.common import app, choice, console, fail
from tsfa.cli.train import ClientsOpt, DeviceOpt, PrecisionOpt, ThreadsOpt, run_options
from tsfa.config.choices import SIZES
from tsfa.config.spec import SpecError
from tsfa.reporting.figures import FIGURES


@app.command("figures")
def figures_cmd(
    out: Annotated[Path, typer.Option(help="Output directory (PNG, PDF, CSV per figure).")] = Path(
        "figures"),
    quick: Annotated[bool, typer.Option(
        "--quick", help="Small runs (5 clients, 24 rounds).")] = False,
    size: Annotated[str | None, choice(
        SIZES, "Run size: tiny (test suite), quick, cpu (resolves on 2 cores in about an hour "
        "with --jobs 2), full or paper (a GPU) (default: cpu, or quick with --quick).")] = None,
    jobs: Annotated[int, typer.Option(
        min=1, max=64, help="Runs trained at a time (worker processes, each with cores / N torch "
        "threads; --threads sets this process's own).")] = 1,
    only: Annotated[list[str] | None, choice(
        FIGURES, "Only this figure (repeatable).")] = None,
    store: Annotated[Path | None, typer.Option(
        help="Run cache directory (default OUT/runs); finished runs are reused.")] = None,
    clients: ClientsOpt = "batched",
    device: DeviceOpt = "cpu",
    precision: PrecisionOpt = "fp32",
    threads: ThreadsOpt = None,
) -> None:
    """Regenerate the eight figures of docs/model.md §7 from cached runs (tsfa's reconstruction on
    its embedded task, not the paper's results). Configurations ship with the package."""
    from tsfa.engines.local import train
    from tsfa.reporting.figures import make_all
    from tsfa.reporting.progress import progress_bar

    size = size or ("quick" if quick else "cpu")
    options = run_options(clients, device, precision, threads)
    names = only or list(FIGURES)
    try:
        with progress_bar(len(names), description="figures") as update:
            done = []

            def advance(name: str, seconds: float) -> None:
                done.append(name)
                update(len(done), f"{name} {seconds:.0f} s")

            timing = make_all(out, size, names, store, log=console.print, on_figure=advance,
                              train=train, jobs=jobs, **options)
    except (OSError, ValueError, SpecError) as exc:
        fail(str(exc))
    console.print(f"{len(timing)} figures in {out} ({sum(timing.values()):.0f} s)")


def script_main(name: str, argv=None) -> None:
    """Entry point of the ``analysis/<name>.py`` scripts: ``--out DIR --size SIZE --threads N``."""
    import argparse

    from tsfa.engines.local import train
    from tsfa.fl.device import set_threads
    from tsfa.reporting.figures import FIGURES, NOTE, make_figure

    p = argparse.ArgumentParser(description=f"{name}: {FIGURES[name]} ({NOTE}).")
    p.add_argument("--out", default="figures", help="output directory (runs cached in OUT/runs)")
    p.add_argument("--size", default="cpu", choices=SIZES)
    p.add_argument("--jobs", type=int, default=1, help="runs trained at a time")
    p.add_argument("--store", default=None, help="run cache directory (default OUT/runs)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the cores)")
    a = p.parse_args(argv)
    set_threads(a.threads)
    for path in make_figure(name, a.out, a.size, a.store, train=train, jobs=a.jobs):
        print(path)
