"""The gate's decisions on crafted cases: baselines, the champion (paired bootstrap), ties and tiny test sets.

Every verdict must say in words which comparison decided and with what numbers: that is
what a person reads in ``evaluation.json``, the registry and the report.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tasks.evaluate import (
    MIN_CLASS_ROWS,
    MIN_GATE_UNITS,
    ChampionLookup,
    evaluate_model,
    evaluation_json,
)

FEATURES = ["f0", "f1", "f2"]


class Bundle:
    """Duck-typed ``ModelBundle``: predictions from a known function of the features."""

    def __init__(self, predict: Callable[[np.ndarray], np.ndarray], task: str = "binary_classification", run_id: str = "r0") -> None:
        self._predict = predict
        self.spec: dict[str, Any] = {"task": task, "feature_names": FEATURES}
        self.metadata = {"run_id": run_id}

    def predict_features(self, X: np.ndarray) -> np.ndarray:
        return self._predict(X)


def _logit(X: np.ndarray) -> np.ndarray:
    return 1.2 * X[:, 0] + 2.5 * X[:, 1] * X[:, 2]  # an interaction the linear baseline and a depth-3 tree miss


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-z))


def _split(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3)).astype(np.float32)
    frame = pd.DataFrame(X, columns=FEATURES)
    frame["_label"] = (rng.random(n) < _sigmoid(_logit(X))).astype(float)
    return frame


def _noisy(scale: float, seed: int = 7) -> Callable[[np.ndarray], np.ndarray]:
    """The true probability blurred by noise that depends on the row only: a weaker model, deterministically."""

    def predict(X: np.ndarray) -> np.ndarray:
        noise = np.sin(np.asarray(X, np.float64) @ np.array([12.9898, 78.233, 37.719]) + seed) * 43758.5453
        return _sigmoid(_logit(X) + scale * 2 * (noise - np.floor(noise) - 0.5) * 3)

    return predict


ORACLE = lambda X: _sigmoid(_logit(X))


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, pd.DataFrame]:
    return _split(2000, 1), _split(2000, 2)


def _evaluate(data: tuple[pd.DataFrame, pd.DataFrame], model: Callable, champion: Any = None, **kwargs: Any):
    train, test = data
    return evaluate_model(bundle=Bundle(model), train=train, test=test, task="binary_classification",
                          champion=champion, n_bootstrap=500, **kwargs)


def _check(result: Any, name: str) -> dict[str, Any]:
    return next(c for c in result.gate["checks"] if c["check"] == name)


def test_no_champion_is_a_first_deployment_and_the_baselines_decide(data):
    result = _evaluate(data, ORACLE)
    assert result.passed and result.champion is None
    assert "no champion to compare with (first deployment): the baselines decide" in result.reason
    assert result.gate["decided_by"] == "baseline"
    assert _check(result, "champion")["status"] == "none" and _check(result, "champion")["passed"] is None
    assert _check(result, "baseline")["passed"] and _check(result, "test_size")["passed"]
    # the lift over the best baseline comes with its paired interval
    lo, hi = result.lift_ci
    assert 0 < lo < result.lift < hi


def test_beating_the_baselines_but_regressing_against_the_champion_fails(data):
    challenger = _noisy(1.0)
    result = _evaluate(data, challenger, champion=Bundle(ORACLE, run_id="champion-run"))

    assert _check(result, "baseline")["passed"], "the challenger does beat every baseline"
    assert not result.passed and result.gate["decided_by"] == "champion"
    champion = result.champion
    assert champion["status"] == "compared" and champion["run_id"] == "champion-run"
    assert champion["difference"] == pytest.approx(champion["challenger"] - champion["value"]) and champion["difference"] < 0
    assert champion["lower_bound"] < 0 and champion["difference_ci"][0] == champion["lower_bound"]
    assert champion["challenger"] == pytest.approx(result.model) and champion["units"] == len(data[1])
    assert "may be worse than the champion by more than max_regression" in result.reason
    assert f"one-sided 95% lower bound {champion['lower_bound']:.3f}" in result.reason
    assert "(run champion-run)" in result.reason and "paired bootstrap over 2000 test rows" in result.reason
    assert result.reason.startswith("model ROC-AUC") and "beats the best baseline" in result.reason
    # ...and evaluation.json says the same, with the numbers
    data_json = json.loads(evaluation_json(result))
    assert data_json["passed"] is False and data_json["gate"]["decided_by"] == "champion"
    assert data_json["champion"]["lower_bound"] == pytest.approx(champion["lower_bound"])


def test_max_regression_lets_a_small_shortfall_through(data):
    strict = _evaluate(data, _noisy(1.0), champion=Bundle(ORACLE))
    shortfall = -strict.champion["lower_bound"]
    tolerant = _evaluate(data, _noisy(1.0), champion=Bundle(ORACLE), max_regression=shortfall + 0.001)
    assert tolerant.passed and "not a regression" in tolerant.reason
    assert tolerant.champion["lower_bound"] == pytest.approx(strict.champion["lower_bound"])  # same resamples


def test_the_confidence_level_sets_how_sure_the_gate_must_be(data):
    """A higher confidence widens the one-sided bound: the same shortfall passes at 60% and fails at 99%."""
    at_60 = _evaluate(data, _noisy(0.3), champion=Bundle(ORACLE), confidence=0.6)
    at_99 = _evaluate(data, _noisy(0.3), champion=Bundle(ORACLE), confidence=0.99)
    assert at_99.champion["lower_bound"] < at_60.champion["lower_bound"] < 0
    allowed = -(at_60.champion["lower_bound"] + at_99.champion["lower_bound"]) / 2
    assert _evaluate(data, _noisy(0.3), champion=Bundle(ORACLE), confidence=0.6, max_regression=allowed).passed
    failed = _evaluate(data, _noisy(0.3), champion=Bundle(ORACLE), confidence=0.99, max_regression=allowed)
    assert not failed.passed and "at 99% confidence this model may be worse" in failed.reason


def test_a_better_challenger_passes_against_the_champion(data):
    result = _evaluate(data, ORACLE, champion=Bundle(_noisy(1.0)))
    assert result.passed and result.gate["decided_by"] == "champion"
    assert result.champion["lower_bound"] > 0 and result.champion["p_regression"] == 0
    assert "not a regression" in result.reason


def test_a_tie_with_the_champion_passes(data):
    """Tie: the challenger scores the test rows exactly as the champion does (a retrain on the
    same data). Every paired resample then differs by exactly 0, the bound is 0, and the rule
    "not worse by more than max_regression" holds even at max_regression 0."""
    result = _evaluate(data, ORACLE, champion=Bundle(ORACLE))
    assert result.passed
    assert result.champion["difference"] == 0 and result.champion["lower_bound"] == 0
    assert result.champion["difference_ci"] == [0, 0]
    assert "(a tie: the two models score these rows identically)" in result.reason


def test_a_tie_with_the_best_baseline_fails(data):
    """Tie: a lift of exactly min_lift. The gate asks for more than min_lift, so a tie does not pass."""
    lift = _evaluate(data, ORACLE).lift
    tied = _evaluate(data, ORACLE, min_lift=lift)
    assert not tied.passed and tied.gate["decided_by"] == "baseline"
    assert "ties the best baseline" in tied.reason and "a tie does not pass" in tied.reason


@pytest.mark.parametrize("rows", [12, MIN_GATE_UNITS - 1])
def test_a_tiny_test_set_cannot_conclude_and_fails_safe(data, rows):
    train, test = data
    tiny = pd.concat([test[test["_label"] == 1].head(rows // 2), test[test["_label"] == 0].head(rows - rows // 2)])
    result = evaluate_model(bundle=Bundle(ORACLE), train=train, test=tiny, task="binary_classification", n_bootstrap=500)
    assert not result.passed and result.gate["decided_by"] == "test_size"
    assert f"only {rows} test rows were judged: the gate needs at least {MIN_GATE_UNITS} to conclude" in result.reason
    assert "fails safe: add data or raise split.test" in result.reason
    lo, hi = result.model_ci
    assert hi - lo > 0.1  # the interval the reason quotes is wide: that is why the gate does not conclude
    assert f"[{lo:.3f}, {hi:.3f}]" in result.reason


def test_too_few_rows_of_a_class_cannot_conclude(data):
    train, test = data
    rare = pd.concat([test[test["_label"] == 1].head(MIN_CLASS_ROWS - 2), test[test["_label"] == 0].head(400)])
    result = evaluate_model(bundle=Bundle(ORACLE), train=train, test=rare, task="binary_classification", n_bootstrap=300)
    assert not result.passed and result.gate["decided_by"] == "test_size"
    assert f"hold {MIN_CLASS_ROWS - 2} of class 1" in result.reason and f"at least {MIN_CLASS_ROWS} of each class" in result.reason


def test_a_champion_that_cannot_be_read_fails_safe(data):
    lookup = ChampionLookup(source="s3://b/models/r0/model.tar.gz", unavailable="its model at s3://b/models/r0/model.tar.gz could not be downloaded: timeout")
    result = _evaluate(data, ORACLE, champion=lookup)
    assert _check(result, "baseline")["passed"] and not result.passed
    assert result.gate["decided_by"] == "champion" and result.champion["status"] == "unavailable"
    assert "could not be downloaded: timeout" in result.reason and "fails safe" in result.reason


def test_a_champion_for_another_task_is_said_in_words_and_the_baselines_decide(data):
    result = _evaluate(data, ORACLE, champion=Bundle(lambda X: X[:, 0], task="regression"))
    assert result.passed and result.champion["status"] == "incomparable"
    assert "it was trained for regression, this run for binary_classification" in result.reason
    assert "the champion comparison is skipped and the baselines decide" in result.reason


def test_the_champion_comparison_follows_the_metrics_direction():
    """RMSE: lower is better, so a challenger with a higher RMSE regresses (difference < 0)."""
    rng = np.random.default_rng(3)
    frames = []
    for seed in (11, 12):
        X = np.random.default_rng(seed).normal(size=(1500, 3)).astype(np.float32)
        frame = pd.DataFrame(X, columns=FEATURES)
        frame["_label"] = _logit(X) + rng.normal(scale=0.2, size=1500)
        frames.append(frame)
    train, test = frames
    exact = Bundle(_logit, task="regression")
    off = Bundle(lambda X: _logit(X) + 0.4 * np.sign(X[:, 0]), task="regression")
    result = evaluate_model(bundle=off, train=train, test=test, task="regression", champion=exact, n_bootstrap=300)
    assert _check(result, "baseline")["passed"] and not result.passed
    assert result.champion["challenger"] > result.champion["value"]  # the challenger's RMSE is higher...
    assert result.champion["difference"] < 0 and result.champion["lower_bound"] < 0  # ...so it is worse
    assert "(lower is better)" in result.reason
    back = evaluate_model(bundle=exact, train=train, test=test, task="regression", champion=off, n_bootstrap=300)
    assert back.passed and back.champion["difference"] > 0


def test_too_few_judged_queries_cannot_conclude():
    def queries(n: int, seed: int) -> pd.DataFrame:
        rng = np.random.default_rng(seed)
        rows = pd.DataFrame(rng.normal(size=(n * 6, 3)).astype(np.float32), columns=FEATURES)
        rows["_label"] = (rows["f0"] > 0.5).astype(float) + (rows["f0"] > 1.2)
        rows["_group"] = np.repeat(np.arange(n), 6)
        return rows

    ranker = Bundle(lambda X: X[:, 0], task="ranking")
    result = evaluate_model(bundle=ranker, train=queries(200, 1), test=queries(20, 2), task="ranking", n_bootstrap=300)
    judged = int(result.secondary["queries"])
    assert judged < MIN_GATE_UNITS and not result.passed
    assert f"only {judged} test queries were judged" in result.reason


def test_every_check_is_in_evaluation_json_with_its_numbers(data):
    result = _evaluate(data, _noisy(1.0), champion=Bundle(ORACLE))
    gate = json.loads(evaluation_json(result))["gate"]
    assert [c["check"] for c in gate["checks"]] == ["test_size", "baseline", "champion"]
    assert gate["min_lift"] == 0 and gate["max_regression"] == 0 and gate["confidence"] == 0.95
    baseline = gate["checks"][1]
    assert baseline["lift"] == pytest.approx(result.lift) and "paired 95% interval of the lift" in baseline["detail"]
    assert not math.isnan(baseline["lift_ci"][0])
