"""Progress of training runs on the terminal: one bar over every run's epochs, fed by the
library's run events (:class:`scorebank.pipeline.lifecycle.ProgressEvent`), and what to say
when runs resume, fail or the user presses Ctrl-C.

Event kinds (``scorebank.pipeline.lifecycle.EVENT_KINDS``): ``start``, ``resume``, ``skip``,
``epoch``, ``failed``, ``interrupted`` (and ``stage`` for compress).  ``done`` counts the
run's units of work finished (epochs 0..E written: E + 1); ``group`` names a retrain group
(None for ``score``)."""

from __future__ import annotations

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from scorebank.cli.common import err_console
from scorebank.cli.text import plain

#: exit status after Ctrl-C (128 + SIGINT), as shells report it
INTERRUPTED_EXIT = 130


class RunProgress:
    """A context manager and event callback.

    The bar is drawn on the first event only, so a request the library refuses (bad
    argument, configuration mismatch) prints its one-line error and no bar.  Resumed runs
    print ``resuming seed S from epoch E``, diverged ones their epoch.  Ctrl-C inside the
    ``with`` block prints ``interrupted: seed S at epoch E; run the same command to resume``
    (E: the last epoch written) and exits with status 130."""

    def __init__(self, label: str, total: int, *, enabled: bool = True):
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TimeRemainingColumn(), console=err_console,
                                 disable=not enabled)
        self.task = self.progress.add_task(label, total=total)
        self.done: dict[tuple, int] = {}  # (group, seed) -> units finished (epochs 0..E written: E + 1)
        self.recorded: dict[tuple, int | None] = {}  # (group, seed) -> last epoch written
        self.current: tuple | None = None
        self.started = False

    def __enter__(self) -> "RunProgress":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.started:  # rich prints a newline when stopping a bar it never drew
            self.progress.stop()
        if exc_type is KeyboardInterrupt:
            err_console.print(self.interrupted_message(), highlight=False, soft_wrap=True)
            raise typer.Exit(INTERRUPTED_EXIT)

    # ---------------------------------------------------------------- events
    def __call__(self, event, prefix: str = "") -> None:
        if not self.started:
            self.progress.start()
            self.started = True
        key = (event.group, event.seed)
        self.current = key
        self.done[key] = event.done
        if event.kind in ("resume", "epoch", "interrupted"):
            self.recorded[key] = event.epoch if event.epoch >= 0 else None
        if event.kind in ("resume", "failed"):
            self.progress.console.print(plain(event.describe()), highlight=False)
        desc = f"{prefix}{self._who(key)} epoch {min(event.epoch, event.total_epochs)}/{event.total_epochs}"
        acc = (event.metrics or {}).get("test_accuracy")
        if acc is not None:
            desc += f" test acc {acc:.3f}"
        self.progress.update(self.task, completed=sum(self.done.values()), description=desc)

    # ---------------------------------------------------------------- messages
    @staticmethod
    def _who(key: tuple) -> str:
        group, seed = key
        return f"seed {seed}" if group is None else f"{plain(group)} seed {seed}"

    def interrupted_message(self) -> str:
        if self.current is None:
            return "interrupted before the first run started; run the same command to start again"
        epoch = self.recorded.get(self.current)
        where = "before its first epoch was written" if epoch is None else f"at epoch {epoch}"
        return f"interrupted: {self._who(self.current)} {where}; run the same command to resume"
