"""What makes a stage's stored result reusable, and the Prefect options each stage runs with.

The keys are computed on an in-memory filesystem standing in for S3: no endpoint, no Prefect server.
"""

from __future__ import annotations

import dataclasses
import shutil
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from fsspec.implementations.memory import MemoryFileSystem

from tasks.config import load_config
from tasks.errors import ConfigError, DataError
from tasks.resume import (
    DEFAULT_TIMEOUTS_S,
    RESUMABLE,
    RunStages,
    StageCache,
    config_fingerprint,
    local_endpoint_died,
    retry_unless_user_error,
    stage_key,
    stage_timeout_s,
)

CONFIG = {
    "name": "claims",
    "bucket": "data",
    "source": "raw/",
    "contract": "contract.yaml",
    "label": "is_fraud",
    "task": "binary_classification",
}


class InMemoryS3(MemoryFileSystem):
    """S3 paths (``s3://bucket/key``) kept in memory; no ETags, so versions are told apart by size."""

    store: dict[str, Any] = {}
    pseudo_dirs = [""]

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        return super()._strip_protocol(path.removeprefix("s3://"))

    def find(self, path: str, **kwargs: Any) -> Any:
        """Names as s3fs gives them: ``bucket/key``, no leading slash."""
        found = super().find(path, **kwargs)
        if isinstance(found, dict):
            return {name.lstrip("/"): info for name, info in found.items()}
        return [name.lstrip("/") for name in found]


@dataclasses.dataclass(frozen=True)
class MemoryTarget:
    """A target whose S3 is :class:`InMemoryS3`."""

    fs_id: str

    def filesystem(self) -> Any:
        return InMemoryS3(skip_instance_cache=True)


@pytest.fixture()
def memory_s3() -> Any:
    InMemoryS3.store.clear()
    InMemoryS3.pseudo_dirs[:] = [""]
    yield InMemoryS3(skip_instance_cache=True)
    InMemoryS3.store.clear()


def write_config(folder: Path, **changes: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "contract.yaml").write_text("schema_type: dataframe\ncolumns: {}\n")
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump({**CONFIG, **changes}))
    return path


def key(stage: str, config_path: Path, **inputs: Any) -> str:
    config = load_config(config_path)
    return stage_key(stage, config, MemoryTarget("m"), {"config": config, "target": None, "run_id": "r1", **inputs})


def test_key_names_the_run_and_stage_and_is_stable(tmp_path: Path, memory_s3: Any) -> None:
    memory_s3.pipe("data/raw/a.csv", b"x,y\n1,0\n")
    path = write_config(tmp_path / "a")
    first = key("ingest", path)
    assert first.startswith("claims/r1/ingest-") and first == key("ingest", path)
    assert key("ingest", path).split("-")[-1] != key("preprocess", path).split("-")[-1]


def test_what_is_computed_changes_the_key_where_it_runs_does_not(tmp_path: Path, memory_s3: Any) -> None:
    base = key("train", write_config(tmp_path / "a"), features_uri="s3://data/features/r1/")
    assert key("train", write_config(tmp_path / "b", train={"hyperparameters": {"max_depth": 3}}), features_uri="s3://data/features/r1/") != base
    # the Dask cluster and Prefect's own settings are not what the stage computes
    assert key("train", write_config(tmp_path / "c", dask={"device": "cpu", "memory_limit": "1GiB"}, stages={"timeout_s": {"train": 60}}),
               features_uri="s3://data/features/r1/") == base
    # the same contract in another folder (another machine's checkout) is the same config...
    assert key("train", write_config(tmp_path / "elsewhere" / "d"), features_uri="s3://data/features/r1/") == base
    # ...a contract whose content changed is not
    changed = write_config(tmp_path / "e")
    (changed.parent / "contract.yaml").write_text("schema_type: dataframe\ncolumns: {age: {dtype: int64}}\n")
    assert key("train", changed, features_uri="s3://data/features/r1/") != base


def test_ingest_key_follows_the_raw_files_not_what_updraft_writes_beside_them(tmp_path: Path, memory_s3: Any) -> None:
    path = write_config(tmp_path / "a", source="s3://data/")  # the bucket's root: outputs land under the source
    memory_s3.pipe("data/a.csv", b"x\n1\n")
    before = key("ingest", path)
    memory_s3.pipe("data/curated/claims/part-0.parquet", b"PAR1")
    memory_s3.pipe("data/prefect/results/claims/r1/ingest-abc", b"pickle")
    memory_s3.pipe("data/README", b"not data")
    assert key("ingest", path) == before
    memory_s3.pipe("data/b.csv", b"x\n2\n")
    assert key("ingest", path) != before


def test_a_retrained_model_makes_evaluate_register_and_deploy_run_again(tmp_path: Path, memory_s3: Any) -> None:
    path = write_config(tmp_path / "a")
    memory_s3.pipe("data/models/r1/model.tar.gz", b"model one")
    memory_s3.pipe("data/features/r1/transform.json", b"{}")
    inputs = {"features_uri": "s3://data/features/r1/", "model_dir": "/here/model"}
    evaluate, register = key("evaluate", path, **inputs), key("register", path, model_uri="s3://data/models/r1/model.tar.gz")
    assert key("evaluate", path, **dict(inputs, model_dir="/another/machine/model")) == evaluate  # local paths do not count
    memory_s3.pipe("data/models/r1/model.tar.gz", b"model two, longer")
    assert key("evaluate", path, **inputs) != evaluate
    assert key("register", path, model_uri="s3://data/models/r1/model.tar.gz") != register


def test_config_fingerprint_ignores_where_the_training_script_lives(tmp_path: Path) -> None:
    for folder in ("a", "b"):
        (tmp_path / folder / "src").mkdir(parents=True)
        (tmp_path / folder / "src" / "train.py").write_text("print('train')\n")
    a = load_config(write_config(tmp_path / "a", train={"entry_point": "train.py", "source_dir": "src"}))
    b = load_config(write_config(tmp_path / "b", train={"entry_point": "train.py", "source_dir": "src"}))
    assert config_fingerprint(a) == config_fingerprint(b)
    (tmp_path / "b" / "src" / "train.py").write_text("print('other')\n")
    assert config_fingerprint(a) != config_fingerprint(b)


def test_timeouts_default_sanely_follow_the_config_and_can_be_lifted(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path / "a"))
    assert stage_timeout_s(config, "ingest") == DEFAULT_TIMEOUTS_S["ingest"]
    assert stage_timeout_s(config, "train") > config.train.max_runtime_s
    tuned = load_config(write_config(
        tmp_path / "b", train={"max_runtime_s": 600, "spot": True, "max_wait_s": 1200},
        tune={"ranges": {"eta": {"type": "continuous", "min": 0.01, "max": 0.3}}, "max_trials": 8, "max_parallel": 2},
    ))
    assert stage_timeout_s(tuned, "train") >= 4 * 1200  # four waves of spot jobs
    canary = load_config(write_config(tmp_path / "c", deploy={"strategy": "canary", "wait_s": 3600}))
    assert stage_timeout_s(canary, "deploy") >= 2 * 3600
    custom = load_config(write_config(tmp_path / "d", stages={"timeout_s": {"train": 60, "report": None}}))
    assert stage_timeout_s(custom, "train") == 60 and stage_timeout_s(custom, "report") is None


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        ({"timeout_s": {"training": 60}}, "unknown stage 'stages.timeout_s.training'"),
        ({"timeout_s": {"train": -1}}, "stages.timeout_s.train must be a positive number"),
        ({"timeout_s": {"train": "1h"}}, "stages.timeout_s.train must be a positive number"),
        ({"results_prefix": "/"}, "must be a key prefix inside the bucket"),
        ({"resume": "yes"}, "'stages.resume' has the wrong type"),
    ],
)
def test_stages_section_errors_name_the_key(tmp_path: Path, stages: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write_config(tmp_path, stages=stages))


def test_results_prefix_is_normalised(tmp_path: Path) -> None:
    assert load_config(write_config(tmp_path, stages={"results_prefix": "runs/state"})).stages.results_prefix == "runs/state/"


class SavedStorage:
    """What RunStages hands Prefect: a storage block that looks saved (no server here)."""


@pytest.fixture()
def saved_storage(monkeypatch: pytest.MonkeyPatch) -> Any:
    from prefect.filesystems import RemoteFileSystem

    def fake(config: Any, target: Any) -> RemoteFileSystem:
        storage = RemoteFileSystem(basepath=f"s3://{config.bucket}/{config.stages.results_prefix}".rstrip("/"))
        storage._block_document_id = uuid.uuid4()
        return storage

    monkeypatch.setattr("tasks.resume.result_storage", fake)


def test_run_stages_resumes_the_stages_that_cost_work_and_reruns_the_report(tmp_path: Path, saved_storage: Any) -> None:
    from tasks.deploy import deploy_stage
    from tasks.evaluate import evaluate_stage
    from tasks.features.preprocess import preprocess_stage
    from tasks.ingest import ingest_stage
    from tasks.registry import register_stage
    from tasks.report import report_stage
    from tasks.training import train_stage

    config = load_config(write_config(tmp_path, stages={"timeout_s": {"evaluate": 99}}))
    stages = RunStages(config, MemoryTarget("m"))
    for stage in (ingest_stage, preprocess_stage, train_stage, evaluate_stage, register_stage, deploy_stage):
        wrapped = stages(stage)
        assert stage.name in RESUMABLE
        assert isinstance(wrapped.cache_policy, StageCache) and wrapped.persist_result is True
        assert wrapped.result_storage.basepath == "s3://data/prefect/results"
        assert wrapped.retries == stage.retries and wrapped.fn is stage.fn
    assert stages(evaluate_stage).timeout_seconds == 99
    report = stages(report_stage)
    assert not isinstance(report.cache_policy, StageCache) and report.timeout_seconds == DEFAULT_TIMEOUTS_S["report"]

    alone = RunStages(config, MemoryTarget("m"), resume=False)(train_stage)  # a stage flow: timeout only
    assert not isinstance(alone.cache_policy, StageCache) and alone.timeout_seconds == stage_timeout_s(config, "train")
    assert stages(deploy_stage, refresh=True).refresh_cache is True and not stages(deploy_stage).refresh_cache


def test_a_resumed_run_redeploys_only_a_local_endpoint_of_its_own_that_died(tmp_path: Path) -> None:
    """The endpoint record of a run whose server is gone (crashed, machine restarted): deploy again.
    Deleted on purpose, redeployed by another run, still serving, or on aws: leave it."""
    import subprocess
    import sys

    from tasks.aws.target import Target
    from tasks.deploy.local_endpoints import EndpointInfo, _write_state, endpoints_root

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()

    def record(name: str, run_id: str, pid: int) -> None:
        folder = endpoints_root() / name
        folder.mkdir(parents=True, exist_ok=True)
        _write_state(folder, EndpointInfo(
            name=name, url="http://127.0.0.1:9/invocations", port=9, pid=pid, model_uri="s3://b/m",
            created_at="2026-11-27T00:00:00Z", run_id=run_id, model_dir=str(tmp_path),
        ))

    local, aws = Target(kind="embedded", region="us-east-1"), Target(kind="aws", region="us-east-1")
    record("claims", "run-1", dead.pid)
    assert local_endpoint_died(local, "claims", "run-1")
    assert not local_endpoint_died(aws, "claims", "run-1")
    assert not local_endpoint_died(local, "claims", "run-0")  # another run's since: not ours to replace
    assert not local_endpoint_died(local, "other", "run-1")  # no record: deleted on purpose


def test_no_timeout_where_prefect_could_not_enforce_it(tmp_path: Path) -> None:
    """The ingest watcher runs flows in a thread, where Prefect's timeout cannot interrupt a stage."""
    from tasks.ingest import ingest_stage

    config = load_config(write_config(tmp_path, stages={"resume": False}))
    seen: list[Any] = []
    thread = threading.Thread(target=lambda: seen.append(RunStages(config, MemoryTarget("m"))(ingest_stage).timeout_seconds))
    thread.start()
    thread.join()
    assert seen == [None]


def test_safe_stages_retry_with_backoff_and_the_others_never_retry() -> None:
    from prefect.states import Failed

    from tasks.deploy import deploy_stage
    from tasks.evaluate import evaluate_stage
    from tasks.features.preprocess import preprocess_stage
    from tasks.ingest import ingest_stage
    from tasks.registry import register_stage
    from tasks.report import report_stage
    from tasks.training import train_stage

    for stage in (ingest_stage, preprocess_stage, evaluate_stage, report_stage):
        assert stage.retries == 2 and stage.retry_delay_seconds == [10, 20] and stage.retry_jitter_factor == 0.5
        assert stage.retry_condition_fn is retry_unless_user_error
    for stage in (train_stage, register_stage, deploy_stage):  # a job name, a version, an endpoint: once
        assert not stage.retries
    assert retry_unless_user_error(None, None, Failed(data=TimeoutError("S3 took too long"))) is True
    assert retry_unless_user_error(None, None, Failed(data=DataError("no rows"))) is False


def test_a_resumed_train_result_gets_its_model_back_when_the_folder_is_gone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tasks.resume import with_local_model
    from tasks.training.local_job import TrainResult

    calls: list[tuple[str, Path]] = []

    def fetch(fs: Any, model_uri: str, work_dir: Path, *, run_id: str) -> Path:
        calls.append((model_uri, Path(work_dir)))
        (Path(work_dir) / "model").mkdir(parents=True)
        return Path(work_dir) / "model"

    monkeypatch.setattr("tasks.training.stage.fetch_model", fetch)
    here = tmp_path / "model"
    here.mkdir()
    (here / "model.ubj").write_bytes(b"m")
    result = TrainResult(job_name="j", model_uri="s3://data/models/r1/model.tar.gz", model_dir=str(here))
    assert with_local_model(result, MemoryTarget("m"), "r1") is result and calls == []
    shutil.rmtree(here)
    moved = with_local_model(result, MemoryTarget("m"), "r1")
    assert calls == [("s3://data/models/r1/model.tar.gz", Path(moved.model_dir).parent)]
    assert Path(moved.model_dir).is_dir() and moved.model_uri == result.model_uri
