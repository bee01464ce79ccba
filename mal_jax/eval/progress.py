"""Progress with an ETA for the long loops: evaluation, prediction, the oracle, the ablation.

``track(items, total, description)`` yields ``items`` unchanged while a rich progress bar on
stderr shows done/total, elapsed time and the estimated time left. On a terminal it redraws
in place; where stderr is a file or pipe (logs), rich prints the final state once. A loop
tracked inside another (an evaluation inside the ablation) adds its bar to the display that
is already running, since rich allows one live display at a time.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

Item = TypeVar("Item")

_running: list[Progress] = []  # the live display, while one is shown


def _advance(progress: Progress, task, items: Iterable[Item]) -> Iterator[Item]:
    for item in items:
        yield item
        progress.advance(task)


def track(
    items: Iterable[Item], total: int | None, description: str, *, disable: bool = False
) -> Iterator[Item]:
    """``items``, one by one, with a progress bar; ``total`` None when unknown (no ETA)."""
    if disable:
        yield from items
        return
    if _running:  # nested: one more bar in the running display, removed when done
        progress = _running[0]
        task = progress.add_task(description, total=total)
        try:
            yield from _advance(progress, task, items)
        finally:
            progress.remove_task(task)
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("elapsed"),
        TimeElapsedColumn(),
        TextColumn("left"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True)) as progress:
        _running.append(progress)
        try:
            yield from _advance(progress, progress.add_task(description, total=total), items)
        finally:
            _running.remove(progress)
