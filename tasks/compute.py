"""Where Dask work runs: an existing scheduler when one is named, else a small LocalCluster.

The kernels never know which; workers reach S3 through the storage options they are
given (and inherit ``AWS_ENDPOINT_URL`` when started here), so nothing assumes a
filesystem shared with the client.

Inside a Prefect task, :func:`prefect_dask_client` hands the stage prefect-dask's client
on that same cluster and records what the cluster did for the task run, so the Dask work
shows in the Prefect UI (an artifact per run, the dashboard link in the task's log).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import defaultdict
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


# --------------------------------------------------------------------------------------
# Prefect's view of the cluster

log = logging.getLogger("updraft.compute")


@contextlib.contextmanager
def prefect_dask_client(client: Client | None, *, artifact_key: str | None = None) -> Iterator[Client | None]:
    """The stage's client on ``client``'s cluster, from prefect-dask when in a Prefect task run.

    prefect-dask's ``get_dask_client`` is how a Prefect task reaches a Dask cluster: it
    follows the task run (a client closed with it, in the task's sync or async mode). The
    cluster stays the one updraft started or was given, so its Dask work (fit, transform,
    write) runs where it always did; what the cluster ran meanwhile is published as a
    table artifact under ``artifact_key`` (per task prefix: tasks, compute seconds,
    workers), and the dashboard link, when the cluster has one, goes to the task's log.
    Outside a task run, or without a cluster, ``client`` is handed back as it is.
    """
    from prefect.context import TaskRunContext

    if client is None or TaskRunContext.get() is None:
        yield client
        return
    from distributed import get_task_stream
    from prefect_dask import get_dask_client

    from prefect import get_run_logger

    logger = get_run_logger()
    # get_dask_client finds the cluster through the current client: make it this one
    with client.as_current(), get_dask_client(address=client.scheduler.address) as stage_client:
        workers = len(stage_client.scheduler_info().get("workers", {}))
        link = stage_client.dashboard_link if _has_dashboard(stage_client) else None
        logger.info(
            "Dask cluster at %s: %d workers%s", client.scheduler.address, workers, f", dashboard {link}" if link else ""
        )
        with get_task_stream(stage_client) as stream:
            yield stage_client
        if artifact_key:
            _publish_dask_work(stream.data, artifact_key, client.scheduler.address, workers, link)


def _has_dashboard(client: Client) -> bool:
    """Whether the dashboard link leads somewhere: the scheduler serves one, with its pages (bokeh) installed."""
    import importlib.util

    if importlib.util.find_spec("bokeh") is None:
        return False  # the scheduler answers on the port, but every page is a 404
    return bool(client.scheduler_info().get("services", {}).get("dashboard"))


def summarize_task_stream(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per task prefix (``fit_partition``, ``transform_partition``...): how many ran, compute seconds, on how many workers, errors.

    ``records`` are Dask's task stream entries (``get_task_stream(...).data``).
    """
    from dask.utils import key_split

    tasks: dict[str, int] = defaultdict(int)
    seconds: dict[str, float] = defaultdict(float)
    workers: dict[str, set[str]] = defaultdict(set)
    errors: dict[str, int] = defaultdict(int)
    for record in records:
        prefix = key_split(record.get("key"))
        tasks[prefix] += 1
        workers[prefix].add(str(record.get("worker")))
        if record.get("status") == "error":
            errors[prefix] += 1
        for span in record.get("startstops", ()):
            if span.get("action") == "compute":
                seconds[prefix] += float(span["stop"]) - float(span["start"])
    rows = [
        {"task": prefix, "tasks": tasks[prefix], "compute_s": round(seconds[prefix], 3),
         "workers": len(workers[prefix]), "errors": errors[prefix]}
        for prefix in tasks
    ]
    return sorted(rows, key=lambda row: -row["compute_s"])


def _publish_dask_work(records: list[dict[str, Any]], key: str, address: str, workers: int, link: str | None) -> None:
    from prefect.artifacts import create_table_artifact

    rows = summarize_task_stream(records)
    total = sum(row["compute_s"] for row in rows)
    where = f"{workers} workers at {address}" + (f" (dashboard: {link})" if link else "")
    try:
        create_table_artifact(
            table=rows,
            key=key,
            description=f"Dask work of this task: {sum(r['tasks'] for r in rows)} tasks, {total:.1f} compute seconds on {where}",
        )
    except Exception as exc:  # the record is a courtesy; the stage's result stands without it
        log.warning("could not publish the Dask work summary as a Prefect artifact: %s", exc)
