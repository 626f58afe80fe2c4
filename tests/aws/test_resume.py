"""A failed run resumes: rerun with the same run id, the stages that completed are not run again.

Against moto, in this process: a clean run of run R on one fresh endpoint; then, on another
fresh endpoint, run R fails in register (after ingest, preprocess, train and evaluate
completed), its local folder is wiped (as on another machine) and R runs again.
"""

from __future__ import annotations

import collections
import logging
import shutil
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from distributed import LocalCluster

from tasks.aws.embedded import EmbeddedAWS
from tasks.aws.target import resolve_target
from tasks.runs import runs_root
from tasks.sample import write_sample

RUN = "20261127-120000-abc123"
STAGE_WORK = {  # the function each stage's Prefect task calls to do its work
    "ingest": ("tasks.ingest.stage", "ingest_dataset"),
    "preprocess": ("tasks.features.preprocess", "preprocess_dataset"),
    "train": ("tasks.training.stage", "run_local_training_job"),
    "evaluate": ("tasks.evaluate.stage", "evaluate_model"),
    "register": ("tasks.registry", "register_model"),
}


@pytest.fixture()
def prefect_in_process(prefect_api: str) -> Iterator[None]:
    """Flows in this process on the session's Prefect server (tests/conftest.py); Prefect read
    its settings when it was imported, before the server was there."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: prefect_api}):
        yield


@pytest.fixture()
def sample(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, dict[str, Any], list[Path]]]:
    """A small claims dataset whose model the gate rejects (so no endpoint process starts), on a one-worker cluster."""
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    written = write_sample(tmp_path / "sample", n_rows=800)
    config = yaml.safe_load(Path(written.config).read_text())
    config["train"] = {"hyperparameters": {"num_round": 20}}
    config["evaluate"] = {"bootstrap": 100}
    config["gate"] = {"min_lift": 0.9}  # unreachable: registered as Rejected, deploy skipped
    Path(written.config).write_text(yaml.safe_dump(config))
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None,
                      silence_logs=logging.WARNING) as cluster:
        monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", cluster.scheduler_address)
        yield Path(written.config), config, list(written.data_files)


@pytest.fixture()
def calls(monkeypatch: pytest.MonkeyPatch) -> collections.Counter[str]:
    """How often each stage really did its work; register fails the first time it is asked."""
    import importlib

    counter: collections.Counter[str] = collections.Counter()
    for stage, (module_name, attr) in STAGE_WORK.items():
        module = importlib.import_module(module_name)
        real = getattr(module, attr)

        def counted(*args: Any, _stage: str = stage, _real: Any = real, **kwargs: Any) -> Any:
            counter[_stage] += 1
            if _stage == "register" and counter[_stage] == 1:
                raise ConnectionError("the model registry went away")
            return _real(*args, **kwargs)

        monkeypatch.setattr(module, attr, counted)
    return counter


def _upload(aws: EmbeddedAWS, config: dict[str, Any], files: list[Path]) -> None:
    s3 = resolve_target("embedded").client("s3")
    s3.create_bucket(Bucket=config["bucket"])
    for path in files:
        s3.upload_file(str(path), config["bucket"], config["source"] + path.name)


def _run(config_path: Path) -> Any:
    from flows.pipeline import pipeline_flow

    return pipeline_flow(str(config_path), run_id=RUN, target_kind="embedded", return_state=True)


def _comparable(summary: dict[str, Any]) -> dict[str, Any]:
    """The summary less what differs between two runs of the same work: how long things took."""
    out = {k: v for k, v in summary.items() if k != "timings_s"}
    out["train"] = {k: v for k, v in summary["train"].items() if k != "duration_s"}
    return out


def _task_states(flow_run_id: Any) -> dict[str, str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {run.name.rsplit("-", 1)[0]: run.state.name for run in runs}  # task run names: <task>-<3 hex>


def test_a_rerun_after_a_failure_skips_completed_stages_and_ends_like_a_clean_run(
    prefect_in_process: None, sample: tuple[Path, dict[str, Any], list[Path]], calls: collections.Counter[str]
) -> None:
    config_path, config, files = sample
    calls["register"] = 1  # the clean run's register must not fail
    with EmbeddedAWS() as aws:
        _upload(aws, config, files)
        clean = _run(config_path).result()
    shutil.rmtree(runs_root() / RUN)
    calls.clear()

    with EmbeddedAWS() as aws:
        _upload(aws, config, files)
        failed = _run(config_path)
        assert failed.is_failed()
        with pytest.raises(ConnectionError, match="registry went away"):
            failed.result()
        assert dict(calls) == {"ingest": 1, "preprocess": 1, "train": 1, "evaluate": 1, "register": 1}
        shutil.rmtree(runs_root() / RUN)  # the rerun happens on a machine without the first attempt's files

        resumed_state = _run(config_path)
        resumed = resumed_state.result()

        # the completed stages were not run again: their results came back from S3
        assert dict(calls) == {"ingest": 1, "preprocess": 1, "train": 1, "evaluate": 1, "register": 2}
        states = _task_states(resumed_state.state_details.flow_run_id)
        assert states == {
            "ingest": "Cached", "preprocess": "Cached", "train": "Cached", "evaluate": "Cached",
            "register": "Completed", "deploy": "Completed", "report": "Completed",
        }
        fs = resolve_target("embedded").filesystem()
        stored = sorted(p.rsplit("/", 1)[-1].split("-")[0] for p in fs.find(f"s3://{config['bucket']}/prefect/results/{config['name']}/{RUN}/"))
        assert stored == ["deploy", "evaluate", "ingest", "preprocess", "register", "train"]

    # the model the rerun hands on is on this machine again, and the run ends as a clean one did
    assert Path(resumed["train"]["model_dir"]).is_dir()
    assert resumed["register"]["approval_status"] == "Rejected" and resumed["deploy"]["skipped"]
    assert _comparable(resumed) == _comparable(clean)
