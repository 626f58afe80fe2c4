"""The local job runner: the training entry point as a process, with SageMaker's layout, end to end."""

from __future__ import annotations

import json
import logging
import tarfile

import fsspec
import pytest

from tasks.errors import StageError
from tasks.modelbundle import load_model_bundle
from tasks.training import training_channels
from tasks.training.local_job import TrainResult, run_local_training_job
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
