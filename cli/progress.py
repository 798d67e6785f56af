"""Progress of training runs on the terminal: one bar over every run's epochs, fed by the
library's run events (``score``'s ProgressEvent, ``retrain``'s RetrainEvent), and what to
say when runs resume or the user presses Ctrl-C.

Event kinds: ``"run"`` (a run starts, or is skipped; ``epoch`` = epochs already recorded),
``"resume"`` (a run continues from its checkpoint at epoch ``epoch``) and ``"epoch"``
(epoch ``epoch`` was written; ``metrics`` may hold ``test_accuracy``).  Retrain events also
name their ``group``."""

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
    print ``resuming seed S from epoch E``.  Ctrl-C inside the ``with`` block prints
    ``interrupted: seed S at epoch E; run the same command to resume`` (E: the last epoch
    recorded) and exits with status 130."""

    def __init__(self, label: str, total: int, *, enabled: bool = True):
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TimeRemainingColumn(), console=err_console,
                                 disable=not enabled)
        self.task = self.progress.add_task(label, total=total)
        self.done: dict[tuple, int] = {}  # (group, seed) -> units (epochs 0..E) recorded
        self.recorded: dict[tuple, int | None] = {}  # (group, seed) -> last recorded epoch
        self.current: tuple | None = None
        self.started = False

    def __enter__(self) -> "RunProgress":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.progress.stop()
        if exc_type is KeyboardInterrupt:
            err_console.print(self.interrupted_message(), highlight=False, soft_wrap=True)
            raise typer.Exit(INTERRUPTED_EXIT)

    # ---------------------------------------------------------------- events
    def __call__(self, event, prefix: str = "") -> None:
        if not self.started:
            self.progress.start()
            self.started = True
        key = (getattr(event, "group", None), event.seed)
        self.current = key
        if event.kind == "resume":
            self.recorded[key] = event.epoch
            self.done[key] = event.epoch + 1
            self.progress.console.print(f"resuming {self._who(key)} from epoch {event.epoch}", highlight=False)
        elif event.kind == "epoch":
            self.recorded[key] = event.epoch
            self.done[key] = event.epoch + 1
        else:  # "run": a run starts (epoch: epochs already recorded) or is skipped
            self.recorded.setdefault(key, event.epoch - 1 if event.epoch > 0 else None)
            self.done[key] = max(self.done.get(key, 0), event.epoch)
        desc = f"{prefix}{self._who(key)} epoch {min(event.epoch, event.total_epochs)}/{event.total_epochs}"
        acc = (getattr(event, "metrics", None) or {}).get("test_accuracy")
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
        where = "before its first recorded epoch" if epoch is None else f"at epoch {epoch}"
        return f"interrupted: {self._who(self.current)} {where}; run the same command to resume"
