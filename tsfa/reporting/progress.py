"""A progress bar with elapsed time and ETA for long commands (rich.progress, on stderr).

    with progress_bar(total=100, done=0, description="rounds") as update:
        update(1, "acc 0.31")          # completed so far, a short note
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def progress_bar(total: int, done: int = 0, description: str = "",
                 enabled: bool = True) -> Iterator[Callable[[int, str], None]]:
    """A bar of ``total`` steps starting at ``done``; yields ``update(completed, note)``.
    ``enabled=False`` yields a no-op (quiet runs, tests)."""
    if not enabled:
        yield lambda completed, note="": None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
               TextColumn("{task.fields[note]}"))
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task(description, total=total, completed=done, note="")

        def update(completed: int, note: str = "") -> None:
            bar.update(task, completed=completed, note=note)

        yield update


def round_note(row: dict) -> str:
    """A training round in a few words: accuracy, mean rho, mean latency and queue."""
    return (f"acc {row['accuracy']:.3f}  rho {row['mean_rho']:.2f}  "
            f"latency {row['mean_latency_s']:.2f} s  queue {row['mean_queue_s']:.2f} s")


__all__ = ["progress_bar", "round_note"]
