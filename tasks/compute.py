"""Where Dask work runs: an existing scheduler when one is named, else a small LocalCluster.

The kernels never know which; workers reach S3 through the storage options they are
given (and inherit ``AWS_ENDPOINT_URL`` when started here), so nothing assumes a
filesystem shared with the client.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator

from distributed import Client


@contextlib.contextmanager
def dask_client(
    scheduler_address: str | None = None, n_workers: int | None = None, memory_limit: str | int | None = None
) -> Iterator[Client]:
    """Yield a connected ``distributed.Client``; close whatever this call started.

    ``memory_limit`` (per worker, e.g. ``"1GiB"``) applies only to a cluster started here;
    Dask's default splits the machine's memory between the workers.
    """
    address = scheduler_address or os.environ.get("DASK_SCHEDULER_ADDRESS")
    if address:
        with Client(address) as client:
            yield client
        return

    from distributed import LocalCluster

    logging.getLogger("distributed").setLevel(logging.WARNING)
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
