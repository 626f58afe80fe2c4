"""What the Prefect UI is shown of a stage's Dask work; the client a stage gets outside Prefect.

Inside a task run (prefect-dask's client, the artifact) it is checked end to end in
tests/e2e/test_prefect_server.py.
"""

from __future__ import annotations

from distributed import Client

from tasks.compute import prefect_dask_client, summarize_task_stream


def record(key: str, start: float, stop: float, worker: str, status: str = "OK") -> dict:
    return {"key": key, "worker": worker, "status": status, "startstops": ({"action": "compute", "start": start, "stop": stop},)}


def test_task_stream_is_summed_per_task_prefix_busiest_first() -> None:
    rows = summarize_task_stream([
        record("('fit_partition-1a2b', 0)", 0.0, 1.0, "tcp://w1"),
        record("('fit_partition-1a2b', 1)", 0.0, 2.0, "tcp://w2"),
        record("('transform_partition-9f', 0)", 1.0, 1.5, "tcp://w1", status="error"),
        {"key": "read_piece-77", "worker": "tcp://w1", "status": "OK",
         "startstops": ({"action": "transfer", "start": 0.0, "stop": 9.0},)},  # moving data is not compute
    ])
    assert rows == [
        {"task": "fit_partition", "tasks": 2, "compute_s": 3.0, "workers": 2, "errors": 0},
        {"task": "transform_partition", "tasks": 1, "compute_s": 0.5, "workers": 1, "errors": 1},
        {"task": "read_piece", "tasks": 1, "compute_s": 0.0, "workers": 1, "errors": 0},
    ]


def test_outside_a_prefect_task_the_stage_keeps_its_client() -> None:
    with prefect_dask_client(None, artifact_key="k") as none:
        assert none is None
    with Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None) as client:
        with prefect_dask_client(client, artifact_key="k") as same:
            assert same is client
