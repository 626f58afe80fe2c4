"""Checkpoints: a job killed or stopped mid-way and started again with the same folders ends with the same model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

from images.training import train as entry
from images.training.checkpoints import Checkpoint, TrainingState, save_checkpoint
from tasks.training import container
from tests.unit.test_train_entrypoint import REPO, layout_opt_ml, write_feature_splits

CHECKPOINT = Path("checkpoints") / container.CHECKPOINT_FILE
#: Sampling rows and columns: the case where resuming exactly needs the loop's restarts.
SAMPLED = {"eta": "0.05", "max_depth": "4", "subsample": "0.8", "colsample_bynode": "0.7",
           "early_stopping_rounds": "15", "checkpoint_interval": "5"}


@pytest.fixture(scope="module")
def features(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("features")
    write_feature_splits(folder, n_train=6000, n_valid=1000)
    return folder


def _env(base: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SM_") and not k.startswith("UPDRAFT_")}
    env.update({container.BASE_DIR_ENV: str(base), container.OMP_NUM_THREADS: "1", container.SM_NUM_GPUS: "0"})
    return env


def _start(base: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "images.training.train", "train"],
        cwd=REPO, env=_env(base), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def _run(base: Path) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "images.training.train", "train"],
        cwd=REPO, env=_env(base), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _interrupt(base: Path, sig: int) -> tuple[int, str]:
    """Start a run and send ``sig`` the moment its first checkpoint lands."""
    proc = _start(base)
    deadline = time.monotonic() + 120
    while not (base / CHECKPOINT).exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)
    if proc.poll() is None:
        proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    return proc.returncode, out


def _model(base: Path) -> tuple[xgb.Booster, dict]:
    folder = base / "model"
    return xgb.Booster(model_file=str(folder / container.MODEL_FILE)), json.loads((folder / container.METADATA_FILE).read_text())


def _assert_same_model(a: Path, b: Path, features: Path) -> None:
    (booster_a, meta_a), (booster_b, meta_b) = _model(a), _model(b)
    X = pd.read_parquet(features / "test")[meta_a["feature_names"]].to_numpy(np.float32)
    assert booster_a.num_boosted_rounds() == booster_b.num_boosted_rounds()
    np.testing.assert_array_equal(booster_a.inplace_predict(X), booster_b.inplace_predict(X))
    for key in ("rounds", "best_iteration", "metrics"):
        assert meta_a[key] == meta_b[key], key


def test_a_killed_run_resumes_from_its_checkpoint_to_the_same_model(tmp_path, features):
    # Patient early stopping: the run goes on long after its first checkpoint, so the kill lands mid-way.
    hps = {"num_round": "300", **SAMPLED, "early_stopping_rounds": "30"}
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    layout_opt_ml(reference, features, hps)
    layout_opt_ml(killed, features, hps)
    _run(reference)

    code, _ = _interrupt(killed, signal.SIGKILL)

    assert code == -signal.SIGKILL, "the run ended before it could be killed mid-way"
    assert not (killed / "model" / container.MODEL_FILE).exists()
    rounds_saved = Checkpoint.decode((killed / CHECKPOINT).read_bytes(), "test").state.rounds
    assert rounds_saved > 0 and rounds_saved % 5 == 0

    out = _run(killed)  # the job starts again on the same folders, as SageMaker restarts a spot job

    resumed_at = int(out.split("resuming from checkpoint at round ")[1].split()[0])
    assert resumed_at >= rounds_saved
    first_round = next(line for line in out.splitlines() if line.startswith("["))
    assert first_round.startswith(f"[{resumed_at}]\t")  # rounds before it were not trained again
    _assert_same_model(reference, killed, features)
    assert _model(killed)[1]["resumed_from_round"] == resumed_at
    # Early stopping's state came back with the checkpoint: it stopped where the reference did.
    assert _model(killed)[1]["rounds"] < 300


def test_sigterm_ends_after_the_round_with_a_checkpoint_and_the_rerun_completes_the_model(tmp_path, features):
    """No sampling: the stop's own round is saved, wherever it falls."""
    hps = {"num_round": "150", "eta": "0.05", "max_depth": "4", "early_stopping_rounds": "0", "checkpoint_interval": "7"}
    reference, stopped = tmp_path / "reference", tmp_path / "stopped"
    layout_opt_ml(reference, features, hps)
    layout_opt_ml(stopped, features, hps)

    code, out = _interrupt(stopped, signal.SIGTERM)

    assert code == 0, out
    assert "stop requested (SIGTERM): ending after round" in out
    _, partial = _model(stopped)
    assert partial["stopped_early_by_signal"] is True and partial["rounds"] < 150
    assert Checkpoint.decode((stopped / CHECKPOINT).read_bytes(), "test").state.rounds == partial["rounds"]

    out = _run(stopped)

    assert f"resuming from checkpoint at round {partial['rounds']}" in out
    _run(reference)
    _assert_same_model(reference, stopped, features)
    assert _model(stopped)[1]["rounds"] == 150


# --- in process: what is written, and when a checkpoint is not resumed ----------------------


@pytest.fixture
def base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in list(os.environ):
        if name.startswith(("SM_", "UPDRAFT_")):
            monkeypatch.delenv(name)
    folder = tmp_path / "opt_ml"
    monkeypatch.setenv(container.BASE_DIR_ENV, str(folder))
    monkeypatch.setenv(container.OMP_NUM_THREADS, "1")
    monkeypatch.setenv(container.SM_NUM_GPUS, "0")
    return folder


@pytest.fixture(scope="module")
def small_features(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("small")
    write_feature_splits(folder, n_train=500, n_valid=150)
    return folder


def _main(capsys: pytest.CaptureFixture) -> str:
    code = entry.main([])
    out = capsys.readouterr().out
    assert code == 0, out
    return out


def test_checkpoints_are_written_every_interval_in_one_file(base, small_features, capsys):
    layout_opt_ml(base, small_features, {"num_round": "23", "early_stopping_rounds": "0", "checkpoint_interval": "5"})

    _main(capsys)

    assert container.checkpoints_dir() == base / "checkpoints"
    assert [p.name for p in (base / "checkpoints").iterdir()] == [container.CHECKPOINT_FILE]  # no temporary left
    checkpoint = Checkpoint.decode((base / CHECKPOINT).read_bytes(), "test")
    assert checkpoint.state.rounds == 20  # the last multiple of 5
    assert len(checkpoint.state.history["validation"]["auc"]) == 20
    booster = xgb.Booster(model_file=bytearray(checkpoint.model))
    assert booster.num_boosted_rounds() == 20


def test_a_finished_run_started_again_resumes_from_its_last_checkpoint(base, small_features, capsys, tmp_path, monkeypatch):
    hps = {"num_round": "23", **SAMPLED, "early_stopping_rounds": "0"}
    layout_opt_ml(base, small_features, hps)
    _main(capsys)
    first = (base / "model" / container.MODEL_FILE).read_bytes()

    out = _main(capsys)

    assert "resuming from checkpoint at round 20" in out
    assert out.count("\n[") == 3  # rounds 20, 21, 22 only
    assert (base / "model" / container.MODEL_FILE).read_bytes() == first


def test_a_checkpoint_of_other_settings_is_ignored(base, small_features, capsys):
    layout_opt_ml(base, small_features, {"num_round": "10", "max_depth": "3"})
    _main(capsys)
    (base / "input" / "config" / "hyperparameters.json").write_text(json.dumps({"num_round": "10", "max_depth": "2"}))

    out = _main(capsys)

    assert "ignoring the checkpoint" in out and "differ: params" in out
    assert "resuming" not in out
    assert json.loads((base / "model" / "metadata.json").read_text())["resumed_from_round"] is None


def test_checkpoint_interval_zero_writes_none(base, small_features, capsys):
    layout_opt_ml(base, small_features, {"num_round": "10", "checkpoint_interval": "0"})
    _main(capsys)
    assert not (base / CHECKPOINT).exists()


def test_a_damaged_checkpoint_fails_with_what_to_do(base, small_features, capsys):
    layout_opt_ml(base, small_features, {"num_round": "5"})
    (base / "checkpoints").mkdir(parents=True)
    (base / CHECKPOINT).write_text('{"format": "updraft.checkpoint/1", "state": ')

    code = entry.main([])

    assert code != 0
    failure = (base / "output" / "failure").read_text()
    assert "cannot be read" in failure and "empty checkpoint location" in failure


def test_checkpoints_round_trip_and_replace_atomically(tmp_path):
    state = TrainingState(rounds=5, history={"validation": {"auc": [0.5, 0.7]}}, best_iteration=1, best_score=0.7,
                          rounds_since_best=3)
    first = Checkpoint(state=state, settings={"num_round": 9}, model=b"\x00\x01model")
    path = save_checkpoint(first, tmp_path)
    save_checkpoint(Checkpoint(state=TrainingState(rounds=10), settings={}, model=b"new"), tmp_path)

    loaded = Checkpoint.decode(path.read_bytes(), str(path))
    assert loaded.state.rounds == 10 and loaded.model == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == [container.CHECKPOINT_FILE]
    again = Checkpoint.decode(first.encode(), "x")
    assert again.state == state and again.model == first.model
    assert again.differences({"num_round": 9}) == [] and again.differences({"num_round": 10}) == ["num_round"]
