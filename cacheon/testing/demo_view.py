"""The demo's live view of its rounds: one row per step of the daemon, one bar per launch.

It is the daemon's `RoundWatcher`: each step of a round (rent, install, provision, launches) is
a row that pulses while it runs and then shows how long it took; scoring and weights, reported
when done, are rows with their outcome; the agent's launches are the validator's own
`LaunchBars`; the agent's other progress (the model fetch, the report upload) is shown on the row
of the step it belongs to while that step runs. Rounds in flight at once (one per pod) each keep
their own rows, labelled with the round when the demo runs on several pods. On a terminal it is
live; elsewhere (a pipe, a test) rich prints it once, when the view stops.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from rich.console import Console
from rich.progress import Progress, TaskID

from cacheon.protocol import ProgressEvent
from cacheon.validator.launch_bars import LaunchBars, progress_display
from cacheon.validator.watch import Step

DONE_WHEN_REPORTED = frozenset({Step.SCORE, Step.WEIGHTS})
"""Steps the daemon reports once they are done (`Step`): their rows are complete at once."""


class DemoView:
    def __init__(self, console: Console, names: Mapping[str, str], *, rounds: int = 1) -> None:
        """`names`: the miners' images (refs as committed) -> their names; `rounds`: how many
        may run at once (their rows are then labelled with the round)."""
        self.live = progress_display(console)
        self.names = names
        self.labelled = rounds > 1
        self._rounds: dict[str | None, _RoundRows] = {}

    def __enter__(self) -> DemoView:
        self.live.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        for rows in self._rounds.values():
            rows.end()
        self.live.stop()

    def step(self, step: Step, detail: str, round_id: str | None = None) -> None:
        self._of(round_id).step(step, detail)

    def progress(self, event: ProgressEvent, round_id: str | None = None) -> None:
        self._of(round_id).progress(event)

    def _of(self, round_id: str | None) -> _RoundRows:
        rows = self._rounds.get(round_id)
        if rows is None:
            label = f"{round_id} " if self.labelled and round_id is not None else ""
            rows = self._rounds[round_id] = _RoundRows(self.live, self.names, label)
        return rows


class _RoundRows:
    """One round's rows (or the loop's own, for weights)."""

    def __init__(self, live: Progress, names: Mapping[str, str], label: str) -> None:
        self.live = live
        self.label = label
        self.launches = LaunchBars(live, names, prefix=label)
        self._rows: dict[Step, TaskID] = {}
        self._details: dict[Step, str] = {}
        self._current: tuple[Step, float] | None = None

    def step(self, step: Step, detail: str) -> None:
        self._details[step] = detail
        if step in DONE_WHEN_REPORTED:
            if step is Step.SCORE:
                self._end_step()
                self.launches.finish()
            self._rows[step] = self._row(step, done=True)
            return
        if self._current is None or self._current[0] is not step:
            self._end_step()
            self._current = (step, time.monotonic())
            self._rows[step] = self._row(step, done=False)
        self.live.update(self._rows[step], doing=detail)

    def progress(self, event: ProgressEvent) -> None:
        """The agent's progress: a launch's to its bar, the rest to the current step's row."""
        if event.launch is not None:
            self.launches.show(event)
        elif self._current is not None and event.message:
            step = self._current[0]
            self.live.update(self._rows[step], doing=f"{self._details[step]} · {event.message}")

    def end(self) -> None:
        self._end_step()
        self.launches.finish()

    def _row(self, step: Step, *, done: bool) -> TaskID:
        doing = self._details[step]
        if done:
            return self.live.add_task(
                f"✓ {self.label}{step.value}", total=1, completed=1, note="", doing=doing
            )
        return self.live.add_task(f"  {self.label}{step.value}", total=None, doing=doing)

    def _end_step(self) -> None:
        if self._current is None:
            return
        step, started = self._current
        self.live.update(
            self._rows[step],
            description=f"✓ {self.label}{step.value}",
            doing=self._details[step],
            total=1,
            completed=1,
            note=f"{time.monotonic() - started:.1f} s",
        )
        self._current = None
