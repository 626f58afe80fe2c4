"""The local job runner: the training entry point as a process, with SageMaker's layout, end to end."""

from __future__ import annotations

import json
import logging
import os
import sys
import tarfile
import threading
import time

import fsspec
import pandas as pd
import pytest

from tasks.errors import StageError
from tasks.modelbundle import load_model_bundle
from tasks.training import container, training_channels
from tasks.training.local_job import (
    TrainResult,
    download_checkpoints,
    run_local_training_job,
)
from tests.unit.test_train_entrypoint import write_feature_splits


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """The runner passes OMP_NUM_THREADS on; one thread is plenty for these few rows on a shared machine."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture
def features(tmp_path):
    folder = tmp_path / "bucket" / "features" / "run-1"
    write_feature_splits(folder, "binary_classification", n_train=400, n_valid=150)
    (folder / "train" / "_SUCCESS").write_text("")  # writer's marker files are not data
    return folder


def _channels(folder) -> dict[str, str]:
    """The train stage's channels, on local paths: two split folders and transform.json's own path."""
    return training_channels(str(folder))


def test_runs_the_entry_point_and_uploads_model_tar_gz(features, tmp_path, capfd, caplog):
    fs = fsspec.filesystem("file")
    model_uri = str(tmp_path / "bucket" / "models" / "run-1" / "model.tar.gz")
    work = tmp_path / "runs" / "run-1" / "train"

    with caplog.at_level(logging.INFO, logger="updraft.train"):
        result = run_local_training_job(
            job_name="demo-run-1",
            work_dir=work,
            channels=_channels(features),
            hyperparameters={"max_depth": 3, "eta": 0.3, "early_stopping_rounds": 5},
            fs=fs,
            output_model_uri=model_uri,
            environment={"UPDRAFT_RUN_ID": "run-1"},
        )

    assert isinstance(result, TrainResult)
    assert (result.job_name, result.model_uri, result.status) == ("demo-run-1", model_uri, "Completed")
    assert set(result.metrics) == {"train:auc", "validation:auc"}
    assert 0.75 < result.metrics["validation:auc"] <= 1.0
    assert result.duration_s > 0
    with tarfile.open(model_uri) as archive:  # uploaded, files at the archive root as SageMaker packs them
        assert sorted(archive.getnames()) == ["metadata.json", "transform.json", "xgboost-model.json"]
    bundle = load_model_bundle(result.model_dir)
    assert bundle.metadata["metrics"] == pytest.approx(result.metrics)
    assert bundle.metadata["run_id"] == "run-1"
    assert bundle.metadata["training_job_name"] == "demo-run-1"

    # The contract's files, as SageMaker writes them: hyperparameters all strings.
    config = work / "opt_ml" / "input" / "config"
    assert json.loads((config / "hyperparameters.json").read_text()) == {
        "max_depth": "3", "eta": "0.3", "early_stopping_rounds": "5"
    }
    assert set(json.loads((config / "inputdataconfig.json").read_text())) == {"train", "validation", "transform"}
    assert json.loads((config / "resourceconfig.json").read_text())["current_host"] == "algo-1"
    assert (work / "opt_ml" / "input" / "data" / "transform" / "transform.json").is_file()

    # The log: in train.log and through our logger, never on stdout (the CLI's --json owns it).
    log = (work / "train.log").read_text()
    assert "validation:auc=" in log
    messages = [r.getMessage() for r in caplog.records]
    assert "[demo-run-1] validation:auc=" + log.split("\nvalidation:auc=")[1].split("\n")[0] in messages
    assert not any("]\t" in m for m in messages)  # per-round lines only at DEBUG (-v), not at INFO
    assert capfd.readouterr().out == ""


def test_a_failing_job_raises_with_the_failure_text(features, tmp_path):
    with pytest.raises(StageError, match=r"training job demo-bad failed: .*max_depth"):
        run_local_training_job(
            job_name="demo-bad",
            work_dir=tmp_path / "work",
            channels=_channels(features),
            hyperparameters={"max_depth": "very"},
            fs=fsspec.filesystem("file"),
            output_model_uri=str(tmp_path / "out" / "model.tar.gz"),
        )
    assert not (tmp_path / "out" / "model.tar.gz").exists()


def test_a_rerun_starts_from_a_clean_folder(features, tmp_path):
    """A failure file left by an earlier attempt must not make a good run look failed (or the reverse)."""
    work = tmp_path / "work"
    stale = work / "opt_ml" / "output" / "failure"
    stale.parent.mkdir(parents=True)
    stale.write_text("an earlier attempt failed")
    result = run_local_training_job(
        job_name="demo-again",
        work_dir=work,
        channels=_channels(features),
        hyperparameters={"num_round": 5},
        fs=fsspec.filesystem("file"),
        output_model_uri=str(tmp_path / "out" / "model.tar.gz"),
    )
    assert result.status == "Completed"
    assert not stale.exists()


def test_an_empty_channel_is_named(features, tmp_path):
    channels = _channels(features)
    channels["validation"] = str(tmp_path / "nothing-here") + "/"
    with pytest.raises(StageError, match=r"channel 'validation': nothing found"):
        run_local_training_job(
            job_name="demo-empty",
            work_dir=tmp_path / "work",
            channels=channels,
            hyperparameters={},
            fs=fsspec.filesystem("file"),
            output_model_uri=str(tmp_path / "out" / "model.tar.gz"),
        )


def test_a_job_past_its_max_runtime_is_stopped(features, tmp_path):
    with pytest.raises(StageError, match="ran past max_runtime_s=0.5"):
        run_local_training_job(
            job_name="demo-slow",
            work_dir=tmp_path / "work",
            channels=_channels(features),
            hyperparameters={"num_round": 1000000, "early_stopping_rounds": 0},
            fs=fsspec.filesystem("file"),
            output_model_uri=str(tmp_path / "out" / "model.tar.gz"),
            max_runtime_s=0.5,
        )


# --- several hosts, checkpoints, stopping: a tiny stand-in entry point shows what each host sees ---

FAKE_ENTRY = r'''
import json, os, signal, sys, time
from pathlib import Path

base = Path(os.environ["SAGEMAKER_BASE_DIR"])
host = os.environ["SM_CURRENT_HOST"]
hps = json.loads((base / "input/config/hyperparameters.json").read_text())
checkpoint = base / "checkpoints" / "state.json"
state = json.loads(checkpoint.read_text()) if checkpoint.is_file() else {"epoch": 0}
resumed_from = state["epoch"]
report = {
    "host": host,
    "hosts": json.loads(os.environ["SM_HOSTS"]),
    "resourceconfig": json.loads((base / "input/config/resourceconfig.json").read_text()),
    "inputdataconfig": json.loads((base / "input/config/inputdataconfig.json").read_text()),
    "addresses": os.environ.get("UPDRAFT_HOST_ADDRESSES"),
    "tracker_port": os.environ.get("UPDRAFT_TRACKER_PORT"),
    "omp": os.environ.get("OMP_NUM_THREADS"),
    "cwd": os.getcwd(),
    "train": sorted(p.name for p in Path(os.environ["SM_CHANNEL_TRAIN"]).iterdir()),
    "validation": sorted(p.name for p in Path(os.environ["SM_CHANNEL_VALIDATION"]).iterdir()),
    "resumed_from": resumed_from,
}
out = base / "output/data"
out.mkdir(parents=True, exist_ok=True)
(out / "report.json").write_text(json.dumps(report))
print(f"{host} starting at epoch {resumed_from}", flush=True)
for epoch in range(resumed_from + 1, int(hps.get("epochs", "3")) + 1):
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.write_text(json.dumps({"epoch": epoch, "host": host}))
    print(f"[{epoch}]\tvalidation:score={epoch / 10}", flush=True)
    if hps.get("crash_at") == str(epoch):
        (base / "output/failure").write_text(f"crashed at epoch {epoch} on {host}")
        sys.exit(3)
if hps.get("fail_on") == host:
    print("about to fail", flush=True)
    (base / "output/failure").write_text(f"{host} could not reach its peers")
    sys.exit(1)
if hps.get("exit_without_reason") == host:
    print("Traceback (most recent call last):", flush=True)
    print("ZeroDivisionError: division by zero", flush=True)
    sys.exit(1)
if hps.get("hang_on") == host:
    time.sleep(120)
if host == "algo-1":
    model = Path(os.environ["SM_MODEL_DIR"])
    (model / "weights.json").write_text(json.dumps({"epochs": epoch if resumed_from < int(hps.get("epochs", "3")) else resumed_from}))
print(f"validation:score={resumed_from + 0.5}", flush=True)
'''


@pytest.fixture
def fake_entry(tmp_path):
    path = tmp_path / "fake_entry.py"
    path.write_text(FAKE_ENTRY)
    return [sys.executable, str(path)]


@pytest.fixture
def six_part_features(tmp_path):
    """Feature splits whose train folder holds six data files (plus a writer's marker) to shard."""
    folder = tmp_path / "features6"
    write_feature_splits(folder, "binary_classification", n_train=60, n_valid=20)
    train = folder / "train"
    frame = pd.concat([pd.read_parquet(p) for p in sorted(train.glob("*.parquet"))])
    for p in train.glob("*.parquet"):
        p.unlink()
    for i in range(6):
        frame[i * 10 : (i + 1) * 10].to_parquet(train / f"part.{i}.parquet", index=False)
    (train / "_SUCCESS").write_text("")
    return folder


def _report(work, host):
    return json.loads((work / "hosts" / host / "opt_ml" / "output" / "data" / "report.json").read_text())


def test_several_hosts_run_together_with_their_own_folders_and_a_train_shard_each(six_part_features, tmp_path, fake_entry, caplog):
    work = tmp_path / "work"
    with caplog.at_level(logging.INFO, logger="updraft.train"):
        result = run_local_training_job(
            job_name="multi",
            work_dir=work,
            channels=_channels(six_part_features),
            hyperparameters={"epochs": 2},
            fs=fsspec.filesystem("file"),
            output_model_uri=str(tmp_path / "out" / "model.tar.gz"),
            instance_count=3,
            entry_command=fake_entry,
        )

    reports = {h: _report(work, h) for h in ("algo-1", "algo-2", "algo-3")}
    shards = []
    for index, (host, report) in enumerate(reports.items()):
        assert report["host"] == host
        assert report["hosts"] == ["algo-1", "algo-2", "algo-3"]
        assert report["resourceconfig"] == {"current_host": host, "hosts": ["algo-1", "algo-2", "algo-3"],
                                            "network_interface_name": "lo"}
        assert report["inputdataconfig"]["train"]["S3DistributionType"] == "ShardedByS3Key"
        assert report["inputdataconfig"]["validation"]["S3DistributionType"] == "FullyReplicated"
        # ShardedByS3Key: data file i goes to host i % 3; the marker is not data and every host gets it
        assert report["train"] == sorted(["_SUCCESS", f"part.{index}.parquet", f"part.{index + 3}.parquet"])
        assert report["validation"] == ["part.0.parquet", "part.1.parquet"]  # replicated whole
        assert json.loads(report["addresses"]) == {h: "127.0.0.1" for h in reports}
        assert report["cwd"] == str(work / "hosts" / host)
        shards += [n for n in report["train"] if n.endswith(".parquet")]
    assert sorted(shards) == [f"part.{i}.parquet" for i in range(6)]  # every file once
    assert len({r["tracker_port"] for r in reports.values()}) == 1 and int(reports["algo-1"]["tracker_port"]) > 0

    # algo-1's model is the job's; its final metric lines are the job's metrics
    with tarfile.open(result.model_uri) as archive:
        assert archive.getnames() == ["weights.json"]
    assert result.metrics == {"validation:score": 0.5}
    # one log per host, and the job's log with every line prefixed by its host
    combined = (work / "train.log").read_text().splitlines()
    assert {line.split("]")[0] + "]" for line in combined} == {"[algo-1]", "[algo-2]", "[algo-3]"}
    assert "algo-2 starting at epoch 0" in (work / "hosts" / "algo-2" / "train.log").read_text()
    assert "[multi/algo-3] algo-3 starting at epoch 0" in [r.getMessage() for r in caplog.records]


def test_a_failing_host_stops_the_others_and_fails_the_job(six_part_features, tmp_path, fake_entry):
    started = time.monotonic()
    with pytest.raises(StageError, match=r"training job multi-bad failed on algo-2: algo-2 could not reach its peers"):
        run_local_training_job(
            job_name="multi-bad",
            work_dir=tmp_path / "work",
            channels=_channels(six_part_features),
            hyperparameters={"epochs": 1, "fail_on": "algo-2", "hang_on": "algo-1"},
            fs=fsspec.filesystem("file"),
            output_model_uri=str(tmp_path / "out" / "model.tar.gz"),
            instance_count=2,
            entry_command=fake_entry,
        )
    assert time.monotonic() - started < 30  # algo-1 would hang 120 s: it was stopped
    assert not (tmp_path / "out" / "model.tar.gz").exists()


def test_without_a_failure_file_the_error_quotes_the_end_of_the_log(features, tmp_path, fake_entry):
    with pytest.raises(StageError, match=r"exit status 1 without a failure file(.|\n)*ZeroDivisionError: division by zero"):
        run_local_training_job(
            job_name="crash",
            work_dir=tmp_path / "work",
            channels=_channels(features),
            hyperparameters={"exit_without_reason": "algo-1"},
            fs=fsspec.filesystem("file"),
            output_model_uri=str(tmp_path / "out" / "model.tar.gz"),
            entry_command=fake_entry,
        )


def test_more_hosts_than_train_files_is_refused_with_what_to_change(features, tmp_path, fake_entry):
    with pytest.raises(StageError, match=r"'train' has 2 data file\(s\) but the job runs on 3 instances.*instance_count"):
        run_local_training_job(
            job_name="too-many",
            work_dir=tmp_path / "work",
            channels=_channels(features),
            hyperparameters={},
            fs=fsspec.filesystem("file"),
            output_model_uri=str(tmp_path / "out" / "model.tar.gz"),
            instance_count=3,
            entry_command=fake_entry,
        )


def test_a_rerun_after_a_crash_resumes_from_the_checkpoints(features, tmp_path, fake_entry):
    """The checkpoint folder lives outside the attempt's opt_ml, so the next attempt finds it."""
    work = tmp_path / "runs" / "run-1" / "train"
    kwargs = {"job_name": "resume", "work_dir": work, "channels": _channels(features), "fs": fsspec.filesystem("file"),
              "output_model_uri": str(tmp_path / "out" / "model.tar.gz"), "entry_command": fake_entry}
    with pytest.raises(StageError, match="crashed at epoch 2 on algo-1"):
        run_local_training_job(hyperparameters={"epochs": 4, "crash_at": 2}, **kwargs)
    assert json.loads((work / "checkpoints" / "algo-1" / "state.json").read_text())["epoch"] == 2

    result = run_local_training_job(hyperparameters={"epochs": 4}, **kwargs)

    assert json.loads((work / "opt_ml" / "output" / "data" / "report.json").read_text())["resumed_from"] == 2
    assert result.metrics == {"validation:score": 2.5}
    assert (work / "opt_ml" / "checkpoints").resolve() == (work / "checkpoints" / "algo-1").resolve()


def test_checkpoints_sync_to_their_uri_so_another_machine_resumes(features, tmp_path, fake_entry):
    fs = fsspec.filesystem("file")
    uri = str(tmp_path / "bucket" / "checkpoints" / "job") + "/"
    common = {"job_name": "spot", "channels": _channels(features), "fs": fs, "checkpoint_uri": uri,
              "output_model_uri": str(tmp_path / "out" / "model.tar.gz"), "entry_command": fake_entry}
    with pytest.raises(StageError, match="crashed at epoch 3"):
        run_local_training_job(work_dir=tmp_path / "machine-a", hyperparameters={"epochs": 5, "crash_at": 3}, **common)
    # uploaded even though the attempt failed (SageMaker syncs as the job goes)
    assert json.loads((tmp_path / "bucket" / "checkpoints" / "job" / "state.json").read_text())["epoch"] == 3

    run_local_training_job(work_dir=tmp_path / "machine-b", hyperparameters={"epochs": 5}, **common)

    report = json.loads((tmp_path / "machine-b" / "opt_ml" / "output" / "data" / "report.json").read_text())
    assert report["resumed_from"] == 3
    assert json.loads((tmp_path / "bucket" / "checkpoints" / "job" / "state.json").read_text())["epoch"] == 5


def test_newer_local_checkpoints_are_not_overwritten_by_older_remote_ones(tmp_path):
    fs = fsspec.filesystem("file")
    remote = tmp_path / "remote"
    remote.mkdir()
    (remote / "state.json").write_text("old")
    (remote / "other.json").write_text("only there")
    os.utime(remote / "state.json", (1_000_000, 1_000_000))
    local = tmp_path / "local"
    local.mkdir()
    (local / "state.json").write_text("new")

    assert download_checkpoints(fs, str(remote), local) == 1
    assert (local / "state.json").read_text() == "new"
    assert (local / "other.json").read_text() == "only there"
    assert download_checkpoints(fs, str(tmp_path / "nothing-yet"), local) == 0


def test_a_stop_request_stops_the_job(features, tmp_path, fake_entry):
    stop = threading.Event()
    timer = threading.Timer(0.5, stop.set)
    timer.start()
    started = time.monotonic()
    try:
        with pytest.raises(StageError, match="training job stopped-job was stopped before it completed"):
            run_local_training_job(
                job_name="stopped-job",
                work_dir=tmp_path / "work",
                channels=_channels(features),
                hyperparameters={"hang_on": "algo-1", "epochs": 1},
                fs=fsspec.filesystem("file"),
                output_model_uri=str(tmp_path / "out" / "model.tar.gz"),
                entry_command=fake_entry,
                stop_event=stop,
            )
    finally:
        timer.cancel()
    assert time.monotonic() - started < 30


# --- the real entry point across hosts and attempts ---


def test_two_local_hosts_train_one_xgboost_model_end_to_end(tmp_path):
    """Two entry-point processes, one train file each (ShardedByS3Key), join XGBoost's tracker; algo-1's model is packed."""
    features = tmp_path / "features"
    write_feature_splits(features, "binary_classification", n_train=800, n_valid=300)  # two files per split
    work = tmp_path / "work"
    result = run_local_training_job(
        job_name="two-hosts",
        work_dir=work,
        channels=_channels(features),
        hyperparameters={"num_round": 15, "max_depth": 3, "eta": 0.3, "early_stopping_rounds": 5},
        fs=fsspec.filesystem("file"),
        output_model_uri=str(tmp_path / "out" / "model.tar.gz"),
        instance_count=2,
    )

    assert result.metrics["validation:auc"] > 0.8
    bundle = load_model_bundle(result.model_dir)
    assert bundle.metadata["hosts"] == 2
    assert bundle.metadata["rows"]["train"] == 800  # the cluster's total: each host read its half
    assert bundle.metadata["metrics"] == pytest.approx(result.metrics)
    for host in ("algo-1", "algo-2"):
        assert f"host={host} rank={int(host[-1]) - 1} of 2" in (work / "hosts" / host / "train.log").read_text()
    assert "[algo-2] host algo-2: training done; algo-1 writes the model" in (work / "train.log").read_text()


def test_the_real_entry_point_resumes_from_checkpoints_synced_through_their_uri(features, tmp_path):
    fs = fsspec.filesystem("file")
    uri = str(tmp_path / "bucket" / "checkpoints" / "job-1")
    common = {"job_name": "ckpt", "channels": _channels(features), "fs": fs, "checkpoint_uri": uri,
              "hyperparameters": {"num_round": 10, "early_stopping_rounds": 0, "checkpoint_interval": 5},
              "output_model_uri": str(tmp_path / "out" / "model.tar.gz")}
    first = run_local_training_job(work_dir=tmp_path / "machine-a", **common)
    assert (tmp_path / "bucket" / "checkpoints" / "job-1" / container.CHECKPOINT_FILE).is_file()

    second = run_local_training_job(work_dir=tmp_path / "machine-b", **common)

    assert "resuming from checkpoint at round 10" in (tmp_path / "machine-b" / "train.log").read_text()
    assert second.metrics == pytest.approx(first.metrics)
