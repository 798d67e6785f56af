"""``scorebank bench --dispatch``: what running ``score``'s runs as Dask tasks buys.

Scores the same seeds twice in one process, into two temporary stores: one after the other
here (torch's default thread count), then as one task per run on the given
``distributed.Client`` (:mod:`scorebank.pipeline.dispatch`: one torch thread per task on a
one-thread worker).  Reports both wall times and their ratio ``workers_over_sequential``
(goal <= 0.6 with 2 workers on 2 cores for 4 digits seeds).  The data set is loaded once
and handed to both, so the ratio compares training and writing only; the cluster's start
and the workers' first import of torch and scorebank are not timed (the caller built the
client; :func:`_warm` runs on every worker first)."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from scorebank.pipeline.config import ScoreConfig, check_seeds
from scorebank.pipeline.datasets import load_dataset
from scorebank.pipeline.scoring import score

#: quantity -> goal (at most)
TARGETS = {"workers_over_sequential": 0.6}


def _warm() -> None:
    import scorebank.pipeline.scoring  # noqa: F401 - torch and the training code, imported once


def bench_dispatch(config: ScoreConfig, seeds: tuple[int, ...], client, *, device: str = "cpu",
                   progress: Callable[[str], None] | None = None) -> dict:
    """Wall seconds of ``score(config, seeds)`` sequentially and with ``client``, and their
    ratio (module docstring)."""
    seeds = check_seeds(seeds)
    say = progress or (lambda msg: None)
    data = load_dataset(config.dataset, data_dir=config.data_dir, download=config.download, limit=config.limit)
    client.run(_warm)
    workers = client.scheduler_info().get("workers", {})
    with tempfile.TemporaryDirectory(prefix="scorebank-bench-") as tmp:
        say(f"sequential: {len(seeds)} runs")
        start = time.perf_counter()
        score(config, seeds, Path(tmp) / "sequential.zarr", device=device, data=data)
        sequential = time.perf_counter() - start
        say(f"{len(workers)} workers: {len(seeds)} runs")
        start = time.perf_counter()
        score(config, seeds, Path(tmp) / "workers.zarr", device=device, data=data, client=client)
        parallel = time.perf_counter() - start
    return {"runs": len(seeds), "epochs": config.epochs, "workers": len(workers),
            "worker_threads": sum(int(w.get("nthreads", 0)) for w in workers.values()),
            "sequential_s": sequential, "workers_s": parallel, "workers_over_sequential": parallel / sequential}
