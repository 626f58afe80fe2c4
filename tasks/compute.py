"""Where Dask work runs: an existing scheduler when one is named, else a small LocalCluster.

The kernels never know which; workers reach S3 through the storage options they are
given (and inherit ``AWS_ENDPOINT_URL`` when started here), so nothing assumes a
filesystem shared with the client.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any, Iterator

import numpy as np
from distributed import Client


@contextlib.contextmanager
def dask_client(
    scheduler_address: str | None = None,
    n_workers: int | None = None,
    memory_limit: str | int | None = None,
    *,
    device: str = "cpu",
) -> Iterator[Client]:
    """Yield a connected ``distributed.Client``; close whatever this call started.

    ``memory_limit`` (per worker, e.g. ``"1GiB"``) applies only to a cluster started here;
    Dask's default splits the machine's memory between the workers. ``device`` ``gpu`` (or
    ``auto`` on a machine with GPUs and dask-cuda) starts dask-cuda's ``LocalCUDACluster``,
    one worker per GPU; a named scheduler is used as it is.
    """
    address = scheduler_address or os.environ.get("DASK_SCHEDULER_ADDRESS")
    if address:
        with Client(address) as client:
            yield client
        return

    logging.getLogger("distributed").setLevel(logging.WARNING)
    gpu_cluster = _cuda_cluster(device, n_workers, memory_limit)
    if gpu_cluster is not None:
        with gpu_cluster as cluster, Client(cluster) as client:
            yield client
        return

    from distributed import LocalCluster

    workers = n_workers or max(1, min(2, os.cpu_count() or 1))
    with LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        silence_logs=logging.WARNING,
        memory_limit="auto" if memory_limit is None else memory_limit,
    ) as cluster, Client(cluster) as client:
        yield client


def _cuda_cluster(device: str, n_workers: int | None, memory_limit: str | int | None) -> Any:
    """A ``LocalCUDACluster`` (not started yet) when GPU workers are asked for and possible."""
    if device == "cpu":
        return None
    try:
        from dask_cuda import LocalCUDACluster
    except ImportError:
        if device == "gpu":
            raise RuntimeError("dask.device is gpu but dask-cuda is not installed: pip install dask-cuda") from None
        return None
    from tasks.features.numeric import array_module

    if array_module(device) is np:
        return None  # auto, and this machine has no usable GPU
    extra: dict[str, Any] = {} if n_workers is None else {"n_workers": n_workers}
    if memory_limit is not None:
        extra["memory_limit"] = memory_limit
    return LocalCUDACluster(threads_per_worker=1, dashboard_address=None, silence_logs=logging.WARNING, **extra)
