"""Local hyperparameter tuning with Optuna: trials are local training jobs, the best one's model goes on."""

from __future__ import annotations

import json
import logging
import math
import random
import tarfile
import threading
import time

import fsspec
import pytest

from tasks.config import HyperparameterRange, TuneConfig
from tasks.errors import StageError
from tasks.training import training_channels
from tasks.training.local_job import TrainResult, run_local_training_job
from tasks.training.local_tuning import run_local_tuning, trial_job_name
from tests.unit.test_train_entrypoint import write_feature_splits

pytest.importorskip("optuna", reason="local tuning needs optuna (a dependency of updraft)")


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


class FakeTrials:
    """Stands in for the local runner: a trial's metrics are a known function of its hyperparameters."""

    def __init__(self, score, fail_when=lambda hps: False, delay=lambda: 0.0):
        self.score, self.fail_when, self.delay = score, fail_when, delay
        self.calls: list[dict] = []
        self.lock = threading.Lock()

    def __call__(self, *, job_name, hyperparameters, output_model_uri, environment, **kwargs) -> TrainResult:
        with self.lock:
            self.calls.append({"job_name": job_name, "hps": dict(hyperparameters), "env": dict(environment)})
        time.sleep(self.delay())
        if self.fail_when(hyperparameters):
            raise StageError(f"training job {job_name} failed: out of memory")
        return TrainResult(job_name=job_name, model_uri=output_model_uri, metrics=self.score(hyperparameters))


def _tune(tmp_path, ranges, train_fn, **tune_kwargs):
    return run_local_tuning(
        job_name="demo-run-1",
        work_dir=tmp_path / "tune",
        tune=TuneConfig(ranges=tuple(ranges), **tune_kwargs),
        channels={"train": "s3://b/f/train/"},
        hyperparameters={"num_round": 50, "max_depth": 6},
        fs=None,
        output_prefix="s3://b/models/run-1/trials",
        train_fn=train_fn,
    )


SPACE = [
    HyperparameterRange("eta", "continuous", 0.001, 1.0, scaling="log"),
    HyperparameterRange("max_depth", "integer", 2, 8),
    HyperparameterRange("momentum", "continuous", 0.5, 0.999, scaling="reverse_log"),
    HyperparameterRange("booster", "categorical", values=("gbtree", "dart")),
]


def test_ranges_are_sampled_with_their_type_and_scaling(tmp_path):
    fake = FakeTrials(lambda hps: {"validation:rmse": abs(math.log10(hps["eta"]) + 1)})
    result = _tune(tmp_path, SPACE, fake, max_trials=40, max_parallel=4, strategy="random")

    tried = [c["hps"] for c in fake.calls]
    assert len(tried) == 40
    assert all(0.001 <= h["eta"] <= 1.0 for h in tried)
    assert all(isinstance(h["max_depth"], int) and 2 <= h["max_depth"] <= 8 for h in tried)
    assert all(0.5 <= h["momentum"] <= 0.999 for h in tried)
    assert {h["booster"] for h in tried} == {"gbtree", "dart"}
    # log scaling: about as many values below 0.03 (3 decades down) as above it
    assert 10 <= sum(h["eta"] < 0.0316 for h in tried) <= 30
    # reverse_log: dense near max; a uniform draw would put only ~16% above 0.92
    assert sum(h["momentum"] > 0.92 for h in tried) >= 15
    # fixed hyperparameters ride along, searched ones override
    assert all(h["num_round"] == 50 for h in tried) and len({h["max_depth"] for h in tried}) > 1
    # rmse is minimised: the best trial has the lowest value
    assert result.objective == "validation:rmse" and not result.maximize
    assert result.best.objective == min(t.objective for t in result.trials)
    assert result.best_hyperparameters["num_round"] == 50


def test_failed_trials_are_recorded_and_the_search_goes_on(tmp_path, caplog):
    fake = FakeTrials(lambda hps: {"train:auc": 0.99, "validation:auc": 1 - hps["eta"]}, fail_when=lambda hps: hps["eta"] > 0.3)
    with caplog.at_level(logging.INFO, logger="updraft.train"):
        result = _tune(tmp_path, SPACE[:1], fake, max_trials=8, max_parallel=2, strategy="random")

    states = {t.job_name: t.state for t in result.trials}
    assert set(states.values()) == {"Completed", "Failed"}
    failed = [t for t in result.trials if t.state == "Failed"]
    assert all("out of memory" in t.error and t.objective is None for t in failed)
    assert result.objective == "validation:auc" and result.maximize  # the first validation metric printed
    assert result.best.objective == max(t.objective for t in result.trials if t.state == "Completed")
    assert result.best_result.model_uri == f"s3://b/models/run-1/trials/{result.best.job_name}/output/model.tar.gz"
    table = json.loads((tmp_path / "tune" / "trials.json").read_text())
    assert table == result.table() and [row["trial"] for row in table] == list(range(1, 9))
    messages = [r.getMessage() for r in caplog.records]
    assert sum("failed after" in m for m in messages) == len(failed)
    assert sum(" completed in " in m and "best so far" in m for m in messages) == 8 - len(failed)


def test_a_search_where_every_trial_fails_is_an_error(tmp_path):
    fake = FakeTrials(lambda hps: {}, fail_when=lambda hps: True)
    with pytest.raises(StageError, match=r"tuning job demo-run-1: all 3 trials failed; the first: .*out of memory"):
        _tune(tmp_path, SPACE[:1], fake, max_trials=3, max_parallel=2)


def test_a_trial_without_the_objective_metric_counts_as_failed(tmp_path):
    fake = FakeTrials(lambda hps: {"validation:auc": 0.7})
    with pytest.raises(StageError, match=r"printed no value for the objective validation:ndcg@10 .*validation:auc"):
        _tune(tmp_path, SPACE[:1], fake, max_trials=2, max_parallel=1, objective="validation:ndcg@10")


def test_trials_run_in_parallel_with_a_share_of_the_cpus_each(tmp_path, monkeypatch):
    monkeypatch.setattr("tasks.training.local_tuning._cpu_count", lambda: 8)
    running, peak = [0], [0]
    lock = threading.Lock()

    def score(hps):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.2)
        with lock:
            running[0] -= 1
        return {"validation:auc": hps["eta"]}

    fake = FakeTrials(score)
    _tune(tmp_path, SPACE[:1], fake, max_trials=6, max_parallel=3)
    assert peak[0] == 3
    assert {c["env"]["OMP_NUM_THREADS"] for c in fake.calls} == {"2"}  # 8 cpus // 3 trials
    assert [c["job_name"] for c in sorted(fake.calls, key=lambda c: c["job_name"])] == [
        f"demo-run-1-t00{i}" for i in range(1, 7)
    ]


def test_the_same_seed_tries_the_same_hyperparameters_whatever_order_trials_finish(tmp_path):
    def run(seed_dir, delay_seed):
        rng = random.Random(delay_seed)
        fake = FakeTrials(lambda hps: {"validation:auc": -abs(hps["eta"] - 0.1)}, delay=lambda: rng.random() * 0.05)
        result = _tune(seed_dir, SPACE, fake, max_trials=8, max_parallel=2)
        return [t.hyperparameters for t in result.trials]

    assert run(tmp_path / "a", 1) == run(tmp_path / "b", 2)


def test_trial_job_names_stay_valid_for_sagemaker():
    assert trial_job_name("demo-run-1", 3) == "demo-run-1-t003"
    long = trial_job_name("x" * 63, 12)
    assert len(long) == 63 and long.endswith("-t012")


def test_a_small_search_beats_a_bad_fixed_setting_with_real_training_jobs(tmp_path):
    """Four real trials, two at a time: the search finds a setting far better than a deliberately bad one."""
    features = tmp_path / "features"
    write_feature_splits(features, "binary_classification", n_train=300, n_valid=150)
    fs = fsspec.filesystem("file")
    channels = training_channels(str(features))
    fixed = {"num_round": 20, "early_stopping_rounds": 5}
    # min_child_weight far above the data's total hessian: no tree can split, AUC stays at 0.5
    bad = run_local_training_job(
        job_name="bad", work_dir=tmp_path / "bad", channels=channels, hyperparameters={**fixed, "min_child_weight": 2000},
        fs=fs, output_model_uri=str(tmp_path / "bad.tar.gz"),
    )

    result = run_local_tuning(
        job_name="tune-1",
        work_dir=tmp_path / "tune",
        tune=TuneConfig(
            ranges=(
                HyperparameterRange("min_child_weight", "continuous", 0.1, 2000, scaling="log"),
                HyperparameterRange("max_depth", "integer", 2, 5),
                HyperparameterRange("grow_policy", "categorical", values=("depthwise", "lossguide")),
            ),
            max_trials=4,
            max_parallel=2,
        ),
        channels=channels,
        hyperparameters=fixed,
        fs=fs,
        output_prefix=str(tmp_path / "models" / "trials"),
    )

    assert bad.metrics["validation:auc"] == pytest.approx(0.5)
    assert result.objective == "validation:auc"
    assert result.best.objective > bad.metrics["validation:auc"] + 0.2
    assert [t.state for t in result.trials] == ["Completed"] * 4
    best_tar = tmp_path / "models" / "trials" / result.best.job_name / "output" / "model.tar.gz"
    assert result.best_result.model_uri == str(best_tar)
    with tarfile.open(best_tar) as archive:
        assert "xgboost-model.json" in archive.getnames()
    metadata = json.loads((tmp_path / "tune" / result.best.job_name.split("-")[-1] / "model" / "metadata.json").read_text())
    assert metadata["metrics"]["validation:auc"] == result.best.objective
