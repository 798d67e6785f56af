"""Fixtures of the pipeline tests that run Dask tasks on a real process cluster."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def process_client():
    """A ``distributed.Client`` of a process LocalCluster (2 workers, 1 thread each), started
    once for every module that asks for it (a start costs seconds on 2 cores).  Tests that
    kill its workers leave it usable: the nannies restart them."""
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
    # not the default scheduler: it lives for the whole session, and every later test's Dask
    # computations would otherwise run on its worker processes (which see neither this
    # process's monkeypatches nor its memory:// file system)
    with cluster, distributed.Client(cluster, set_as_default=False) as c:
        yield c


@pytest.fixture
def one_thread():
    """The workers train with one torch thread: so does the sequential reference (a test
    before may have changed this process's count)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
