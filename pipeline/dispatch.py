"""Runs as Dask tasks: many runs at once on a ``distributed`` cluster, into one store.

The library takes a ``distributed.Client`` (``client=``) and never builds one; the CLI builds
it (``--workers N``: a ``LocalCluster`` of N processes with one thread each; ``--scheduler
ADDRESS``: an existing cluster).  :func:`run_tasks` submits each run (or pruning cell) as one
task (``client.submit(..., pure=False, retries=...)``); without a client it calls them one
after another in this process, so both paths run the same code.

* **Ownership**: the coordinator allocated the runs and holds the store's lock; a task writes
  only its own run, under that run's lock (:class:`~scorebank.stores.zarrstore.RunWriter`).
* **Faults**: a worker killed mid-run (``kill -9``) loses its task; the scheduler runs it
  again on another worker (up to ``distributed.scheduler.allowed-failures`` times), and the
  run resumes from its last checkpoint, so the store ends equal to a sequential one.
  Exceptions inside a task are retried ``retries`` times.
* **GPUs**: ``gpus_per_run=1`` asks for worker resource ``GPU=1`` per task: start each worker
  with ``dask worker ADDRESS --nthreads 1 --resources GPU=1`` and its own
  ``CUDA_VISIBLE_DEVICES``.
* **Torch threads**: a task sets torch's thread count to ``threads`` (default: the worker's
  thread count, 1 under ``--workers``); values are bit-identical to a sequential run only at
  the same thread count.
* **Progress**: tasks put their :class:`~scorebank.pipeline.lifecycle.ProgressEvent` on a
  ``distributed.Queue``; the client drains it and calls ``progress`` in its own thread, so
  one bar aggregates every run.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

#: How often the client looks for progress events and finished tasks (seconds).
POLL_SECONDS = 0.1
#: Retries of a task that raised (a killed worker is rescheduled by the scheduler itself).
RETRIES = 2


@dataclass(frozen=True)
class Task:
    """One unit of work: ``fn(*args, progress=..., **kwargs)`` (a run, a pruning cell).
    ``fn`` must be importable by name on the workers (a module-level function)."""

    fn: Callable
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)


class _QueueRelay:
    """A picklable progress callback for tasks: puts each event on the client's queue."""

    def __init__(self, name: str):
        self.name = name
        self._queue = None

    def __getstate__(self) -> dict:
        return {"name": self.name}

    def __setstate__(self, state: dict) -> None:
        self.name, self._queue = state["name"], None

    def __call__(self, event) -> None:
        if self._queue is None:
            from distributed import Queue

            self._queue = Queue(self.name)
        self._queue.put(event)


def _in_worker(fn: Callable, args: tuple, kwargs: dict, progress: Callable, threads: int | None) -> Any:
    """What a worker runs: torch's thread count set (module docstring), then the task."""
    import torch

    if threads is None:
        from distributed import get_worker

        worker = get_worker()
        threads = getattr(getattr(worker, "state", None), "nthreads", None) or worker.nthreads
    if torch.get_num_threads() != threads:
        torch.set_num_threads(int(threads))
    return fn(*args, progress=progress, **kwargs)


def run_tasks(tasks: Sequence[Task], *, client=None, progress: Callable | None = None, gpus_per_run: int = 0,
              threads: int | None = None, retries: int = RETRIES) -> list:
    """The results of ``tasks`` in order.  Without ``client``: called here one after the
    other (``progress`` receives their events directly).  With a ``distributed.Client``: one
    task each (module docstring); the first task error is raised here after the others were
    cancelled; Ctrl-C cancels every task not yet finished."""
    if client is None:
        return [t.fn(*t.args, progress=progress, **t.kwargs) for t in tasks]
    from distributed import Queue

    queue = Queue(f"scorebank-progress-{uuid.uuid4().hex}", client=client)
    relay = _QueueRelay(queue.name)
    resources = {"GPU": gpus_per_run} if gpus_per_run else None
    futures = [client.submit(_in_worker, t.fn, t.args, t.kwargs, relay, threads, pure=False, retries=retries,
                             resources=resources) for t in tasks]

    def drain() -> None:
        while True:
            events = queue.get(batch=True)
            if not events:
                return
            for event in events:
                if progress:
                    progress(event)

    try:
        while not all(f.done() for f in futures) and not any(f.status == "error" for f in futures):
            drain()
            time.sleep(POLL_SECONDS)
        drain()  # a task's events reach the scheduler before its result
        return client.gather(futures)
    except BaseException:
        client.cancel(futures)
        raise
