"""Helpers shared by the CLI commands: error-to-exit-code mapping, the Dask client built
from ``--scheduler`` and printing (progress of training runs: :mod:`scorebank.cli.progress`).
Library code never imports this."""

from __future__ import annotations

import contextlib
import json
import math
import sys
from collections.abc import Iterator
from typing import Any

import typer
from rich.console import Console
from rich.text import Text

from scorebank.cli.options import Device, GpusPerRun, OptionGroup, Scheduler, Workers
from scorebank.cli.text import visible
from scorebank.core.errors import InvalidArgumentError, ScorebankError

console = Console()
err_console = Console(stderr=True)

SCHEDULER_HELP = ("Dask scheduler: a distributed scheduler address (tcp://host:8786), "
                  "'local' for a LocalCluster on this machine, or 'threads'/'synchronous'/"
                  "'processes' for a local scheduler.  Default: threads.")


def fail(message: str, code: int) -> None:
    """Print a one-line error and exit with ``code``.  The message is printed literally (no
    Rich markup, control characters escaped): it quotes user and file values."""
    err_console.print(Text.assemble(("error:", "bold red"), " ", visible(" ".join(message.splitlines()))),
                      highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextlib.contextmanager
def handle_errors() -> Iterator[None]:
    """Map scorebank errors to a one-line message and exit status 2 (bad argument) or
    1 (failure); operating-system errors (permission denied, disk full, ...) are failures
    too; Ctrl-C says so and exits 130 (commands that train say where: cli/progress.py).
    Anything else is a bug and keeps its traceback."""
    try:
        yield
    except KeyboardInterrupt:
        err_console.print("interrupted", highlight=False)
        raise typer.Exit(130) from None
    except InvalidArgumentError as exc:
        fail(str(exc), 2)
    except ScorebankError as exc:
        fail(str(exc), 1)
    except OSError as exc:
        fail(" ".join(str(exc).split()), 1)


@contextlib.contextmanager
def dask_scheduler(address: str | None) -> Iterator[Any]:
    """Yield what library functions take as ``scheduler``: None (Dask's default threaded
    scheduler), a scheduler name, or a ``distributed.Client`` connected to ``address``.

    This is the only place scorebank creates a Dask client."""
    if address is None or address in ("threads", "synchronous", "processes", "single-threaded"):
        yield address
        return
    from distributed import Client, LocalCluster

    if address == "local":
        with LocalCluster(processes=False, dashboard_address=None) as cluster, Client(cluster) as client:
            yield client
        return
    if "://" not in address and ":" not in address:
        raise InvalidArgumentError(
            f"--scheduler {address!r} is not a scheduler address; give tcp://HOST:PORT, "
            "'local', 'threads', 'synchronous' or 'processes'")
    with _connect(address) as client:
        yield client


#: Most --workers a LocalCluster is built with (processes on one machine).
MAX_WORKERS = 256


@contextlib.contextmanager
def dask_client(workers: int | None, scheduler: str | None, gpus_per_run: int = 0) -> Iterator[Any]:
    """Yield the ``distributed.Client`` that training commands (score, retrain, prune-curve,
    easy-hard) hand to the library as ``client``, or None (runs one after another here).
    ``workers``: a ``LocalCluster`` of that many processes with one thread each (each with
    resource ``GPU=gpus_per_run`` when asked); ``scheduler``: an existing cluster's address.

    With :func:`dask_scheduler`, the only place scorebank creates a Dask client."""
    if workers is not None and scheduler is not None:
        raise InvalidArgumentError(f"give --workers {workers!r} or --scheduler {scheduler!r}, not both")
    if workers is not None and not 1 <= workers <= MAX_WORKERS:
        raise InvalidArgumentError(f"--workers {workers!r} is out of range; give 1..{MAX_WORKERS}")
    if not 0 <= gpus_per_run <= 64:
        raise InvalidArgumentError(f"--gpus-per-run {gpus_per_run!r} is out of range; give 0..64")
    if workers is None and scheduler is None:
        if gpus_per_run:
            raise InvalidArgumentError("--gpus-per-run asks Dask workers for GPUs; give --workers or --scheduler too")
        yield None
        return
    from distributed import Client, LocalCluster

    if workers is not None:
        resources = {"GPU": gpus_per_run} if gpus_per_run else None
        import logging

        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                          resources=resources, silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
            yield client
        return
    if "://" not in scheduler and ":" not in scheduler:
        raise InvalidArgumentError(f"--scheduler {scheduler!r} is not a scheduler address; give tcp://HOST:PORT")
    with _connect(scheduler) as client:
        yield client


def _connect(address: str) -> Any:
    """A ``distributed.Client`` connected to the scheduler at ``address`` (a failure to
    connect within 10 s is a :class:`ScorebankError` quoting the address)."""
    from distributed import Client

    try:
        return Client(address, timeout="10s")
    except (OSError, TimeoutError) as exc:
        raise ScorebankError(f"cannot connect to Dask scheduler {address!r}: {exc}") from None


def execution_group(overwrite_help: str) -> OptionGroup:
    """The options of a command that trains runs, in the order its help lists them: --device,
    --overwrite (``overwrite_help`` says what it replaces) and where the runs go, --workers,
    --scheduler, --gpus-per-run (:func:`dask_client`).  The command receives them as one dict
    (:func:`~scorebank.cli.options.with_groups`) and hands it to :func:`execution`."""
    return OptionGroup({
        "device": (Device, "auto"),
        "overwrite": (bool, typer.Option(False, "--overwrite", help=overwrite_help)),
        "workers": (Workers, None),
        "scheduler": (Scheduler, None),
        "gpus_per_run": (GpusPerRun, 0),
    })


@contextlib.contextmanager
def execution(options: dict) -> Iterator[dict]:
    """Yield the keyword arguments that library training functions (``score``,
    ``retrain_manifest``, ``prune_curve``, ...) take from an :func:`execution_group`:
    ``device``, ``overwrite``, ``client`` (:func:`dask_client`, open meanwhile) and ``gpus_per_run``."""
    with dask_client(options["workers"], options["scheduler"], options["gpus_per_run"]) as client:
        yield {"device": options["device"], "overwrite": options["overwrite"], "client": client,
               "gpus_per_run": options["gpus_per_run"]}


def print_json(obj: Any) -> None:
    """Print strict JSON: NaN and infinities become null."""
    sys.stdout.write(json.dumps(_finite(obj), indent=2, sort_keys=False, default=_json_default,
                                allow_nan=False) + "\n")


def _finite(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, (np.generic, np.ndarray)):
        obj = obj.tolist()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
