"""A round's launches as one rich progress bar each, from the agent's progress events.

The one rendering of launch progress for people: `cacheon-miner check` feeds it the events of
the round it runs locally, the demo those the daemon streams from the pod, both on the display
`progress_display` makes. A launch ends without an event of its own, so a launch is shown done
when the next one starts or the round ends.
"""

from __future__ import annotations

from collections.abc import Mapping

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TaskID, TextColumn
from rich.table import Column
from rich.text import Text

from cacheon.protocol import Phase, ProgressEvent

_DOING = {
    Phase.START: "starting",
    Phase.WARMUP: "warming up",
    Phase.MEASURE: "measuring",
    Phase.SCORE: "scoring every image's outputs for correctness",
}


class _Count(ProgressColumn):
    """Blocks measured of the launch's total; for a row that sets a `note`, the note instead."""

    def render(self, task: Task) -> Text:
        note = task.fields.get("note")
        if note is not None:
            return Text(str(note))
        if task.total is None:
            return Text("")
        return Text(f"{int(task.completed)}/{int(task.total)}")


def progress_display(console: Console) -> Progress:
    """What (the task's description), a bar, how far, and what it is doing (its `doing`)."""
    return Progress(
        TextColumn("{task.description}", table_column=Column(no_wrap=True)),
        BarColumn(bar_width=12),
        _Count(table_column=Column(no_wrap=True)),
        # what it is doing gives way (wraps) on a narrow console; the rest keeps its width
        TextColumn("{task.fields[doing]}", table_column=Column(no_wrap=False)),
        console=console,
    )


class LaunchBars:
    """Adds a task per launch to a `progress_display`; `names` labels images (ref -> name)."""

    def __init__(
        self, progress: Progress, names: Mapping[str, str] | None = None, prefix: str = ""
    ) -> None:
        """`prefix` goes before every label (the round's, when several run at once)."""
        self.progress = progress
        self.names = dict(names or {})
        self.prefix = prefix
        self._tasks: dict[int, TaskID] = {}
        self._labels: dict[int, str] = {}
        self._keys: set[str] = set()
        self._totals: dict[int, int] = {}
        self._over: set[int] = set()

    def show(self, event: ProgressEvent) -> None:
        """Move the event's launch on; events of no launch are not for these bars."""
        launch = event.launch
        if launch is None:
            return
        task = self._tasks.get(launch)
        if task is None:
            self.finish()
            self._labels[launch] = self._label(launch, event)
            task = self.progress.add_task(self._labels[launch], total=None, doing="")
            self._tasks[launch] = task
        if event.total is not None:
            self._totals[launch] = event.total
        self.progress.update(task, total=event.total, completed=event.done, doing=_doing(event))
        if event.phase is Phase.FAILED:
            self._over.add(launch)
            if launch not in self._totals:  # the bar stops, empty: nothing was measured
                self.progress.update(task, total=1, completed=0, note="")

    def finish(self) -> None:
        """Show every launch that has not failed as done."""
        for launch, task in self._tasks.items():
            if launch not in self._over:
                self._over.add(launch)
                self.progress.update(task, completed=self._totals.get(launch), doing="done")

    def _label(self, launch: int, event: ProgressEvent) -> str:
        """`launch 6 B' baseline`: a contestant's second launch is primed, as in `B, …, B'`."""
        key = event.contestant or "?"
        shown = f"{key}'" if key in self._keys else key
        self._keys.add(key)
        name = self.names.get(event.message) if event.phase is Phase.PULL else None
        label = f"{self.prefix}launch {launch} {shown:>3}"
        return f"{label} {name}" if name else label


def _doing(event: ProgressEvent) -> str:
    if event.phase is Phase.PULL:
        return f"pulling {event.message.rpartition('@')[0] or event.message}"
    if event.phase is Phase.FAILED:
        return f"failed: {event.error or ''}"
    return _DOING.get(event.phase, event.phase.value)
