"""The gate: the model against a constant, a linear model and a shallow tree, on the same rows."""

from __future__ import annotations

import json
import time
from typing import Any, Callable

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from tasks.errors import ConfigError, DataError
from tasks.evaluate import EvaluationResult, evaluate_model

FEATURES = ["f0", "f1", "f2", "f3"]


class FakeBundle:
    """Duck-typed ``ModelBundle``: predictions from a known function of the features."""

    def __init__(self, predict: Callable[[np.ndarray], np.ndarray], label_classes: list[str] | None = None) -> None:
        self._predict = predict
        self.spec: dict[str, Any] = {"feature_names": FEATURES, "label_classes": label_classes}
        self.metadata: dict[str, Any] = {}

    def predict_features(self, X: np.ndarray) -> np.ndarray:
        assert X.dtype == np.float32 and X.shape[1] == len(FEATURES)
        return self._predict(X)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-z))


# An interaction no linear model or depth-3 tree captures well: the true function wins.
def _binary_logit(X: np.ndarray) -> np.ndarray:
    return 1.5 * X[:, 0] + 3.0 * X[:, 1] * X[:, 2]


def _regression_mean(X: np.ndarray) -> np.ndarray:
    return 2.0 * X[:, 0] + 3.0 * X[:, 1] * X[:, 2] + np.sin(3 * X[:, 3])


def _multiclass_scores(X: np.ndarray) -> np.ndarray:
    z = np.stack([X[:, 0] * X[:, 1], -X[:, 0] * X[:, 1], X[:, 2] * 1.5], axis=1) * 3
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def make_split(task: str, n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, len(FEATURES))).astype(np.float32)
    if task == "binary_classification":
        y = (rng.random(n) < _sigmoid(_binary_logit(X))).astype(np.float64)
    elif task == "regression":
        y = _regression_mean(X) + rng.normal(scale=0.3, size=n)
    else:
        p = _multiclass_scores(X)
        y = (p.cumsum(axis=1) < rng.random(n)[:, None]).sum(axis=1).astype(np.float64)
    frame = pd.DataFrame(X, columns=FEATURES)
    frame["_label"] = y
    return frame


@pytest.fixture(scope="module")
def binary() -> tuple[pd.DataFrame, pd.DataFrame]:
    return make_split("binary_classification", 2000, 1), make_split("binary_classification", 1500, 2)


def oracle(task: str) -> FakeBundle:
    if task == "binary_classification":
        return FakeBundle(lambda X: _sigmoid(_binary_logit(X)), ["no", "yes"])
    if task == "regression":
        return FakeBundle(_regression_mean)
    return FakeBundle(_multiclass_scores, ["red", "green", "blue"])


def test_a_strong_binary_model_beats_every_baseline_and_passes(binary):
    train, test = binary
    result = evaluate_model(bundle=oracle("binary_classification"), train=train, test=test, task="binary_classification")

    expected_auc = roc_auc_score(test["_label"], _sigmoid(_binary_logit(test[FEATURES].to_numpy())))
    assert result.metric == "roc_auc" and result.greater_is_better
    assert result.model == pytest.approx(expected_auc)
    assert set(result.baselines) == {"constant", "logistic_regression", "decision_tree"}
    assert result.best_baseline in ("logistic_regression", "decision_tree")
    assert result.model > max(result.baselines.values())
    assert result.lift == pytest.approx(result.model - result.baselines[result.best_baseline])
    assert result.passed
    assert result.reason.startswith(f"model ROC-AUC {result.model:.3f} beats the best baseline ({result.best_baseline}, ")
    assert "min_lift 0.000" in result.reason
    assert set(result.secondary) == {"pr_auc", "log_loss", "accuracy"}
    assert 0.5 < result.secondary["accuracy"] <= 1
    assert result.n_test == len(test)


def test_the_constant_baseline_scores_an_auc_of_one_half(binary):
    train, test = binary
    result = evaluate_model(bundle=oracle("binary_classification"), train=train, test=test, task="binary_classification")
    assert result.baselines["constant"] == pytest.approx(0.5)


def test_a_model_no_better_than_the_prior_does_not_pass_and_says_why(binary):
    train, test = binary
    prior = float(train["_label"].mean())
    bundle = FakeBundle(lambda X: np.full(X.shape[0], prior))
    result = evaluate_model(bundle=bundle, train=train, test=test, task="binary_classification")

    assert result.model == pytest.approx(0.5)
    assert not result.passed
    assert result.lift < 0
    assert "does not beat the best baseline" in result.reason
    assert result.best_baseline in result.reason


def test_min_lift_is_respected(binary):
    train, test = binary
    bundle = oracle("binary_classification")
    lift = evaluate_model(bundle=bundle, train=train, test=test, task="binary_classification").lift

    above = evaluate_model(bundle=bundle, train=train, test=test, task="binary_classification", min_lift=lift + 0.01)
    assert not above.passed
    assert "by only" in above.reason and f"min_lift {lift + 0.01:.3f}" in above.reason
    below = evaluate_model(bundle=bundle, train=train, test=test, task="binary_classification", min_lift=lift - 0.01)
    assert below.passed and below.min_lift == pytest.approx(lift - 0.01)


def test_rmse_counts_lower_as_better():
    train, test = make_split("regression", 2000, 3), make_split("regression", 1000, 4)
    good = evaluate_model(bundle=oracle("regression"), train=train, test=test, task="regression")

    assert good.metric == "rmse" and not good.greater_is_better
    assert set(good.baselines) == {"constant", "ridge", "decision_tree"}
    assert good.best_baseline == min(good.baselines, key=good.baselines.get)
    assert good.model < good.baselines[good.best_baseline]
    assert good.lift == pytest.approx(good.baselines[good.best_baseline] - good.model) and good.lift > 0
    assert good.passed
    assert good.baselines["constant"] == pytest.approx(
        np.sqrt(np.mean((test["_label"] - train["_label"].mean()) ** 2))
    )
    assert set(good.secondary) == {"mae", "r2"} and 0.5 < good.secondary["r2"] <= 1

    # A model that is far off has a *higher* RMSE than the baselines: it must fail, not "win" by a larger number.
    bad = evaluate_model(
        bundle=FakeBundle(lambda X: _regression_mean(X) + 10.0), train=train, test=test, task="regression"
    )
    assert bad.model > max(bad.baselines.values())
    assert not bad.passed and bad.lift < 0
    assert "does not beat" in bad.reason and "lower is better" in bad.reason


def test_multiclass_uses_macro_f1_and_reports_a_confusion_matrix():
    train, test = make_split("multiclass", 2000, 5), make_split("multiclass", 1200, 6)
    result = evaluate_model(bundle=oracle("multiclass"), train=train, test=test, task="multiclass_classification")

    predicted = _multiclass_scores(test[FEATURES].to_numpy()).argmax(axis=1)
    assert result.metric == "macro_f1" and result.greater_is_better
    assert result.model == pytest.approx(f1_score(test["_label"], predicted, average="macro"))
    assert result.passed
    assert set(result.secondary) == {"accuracy", "log_loss"}
    confusion = result.plots["confusion"]
    assert confusion["labels"] == ["red", "green", "blue"]
    assert np.asarray(confusion["matrix"]).sum() == len(test)
    assert np.trace(np.asarray(confusion["matrix"])) == (predicted == test["_label"].to_numpy()).sum()


@pytest.mark.parametrize("task", ["binary_classification", "multiclass_classification", "regression"])
def test_the_bootstrap_interval_contains_the_point_estimate(task):
    train, test = make_split(task, 1500, 7), make_split(task, 1000, 8)
    result = evaluate_model(bundle=oracle(task), train=train, test=test, task=task, seed=3)
    lo, hi = result.model_ci
    assert lo < result.model < hi
    assert hi - lo < 0.2 * abs(result.model)  # an interval, not the whole range


def test_the_interval_on_ten_thousand_rows_takes_well_under_a_second():
    train, test = make_split("binary_classification", 500, 9), make_split("binary_classification", 10_000, 10)
    bundle = oracle("binary_classification")

    def cpu_seconds(n_bootstrap: int) -> float:
        # CPU time, not wall time: other work on a shared machine must not fail this test.
        start = time.process_time()
        evaluate_model(bundle=bundle, train=train, test=test, task="binary_classification", n_bootstrap=n_bootstrap)
        return time.process_time() - start

    cpu_seconds(1)  # warm-up: imports and first allocations
    # The bootstrap's own cost: the same evaluation with 400 resamples against a single one.
    assert cpu_seconds(400) - cpu_seconds(1) < 1.0


def test_roc_curves_for_the_report_are_short_and_cover_every_predictor(binary):
    train, test = binary
    result = evaluate_model(bundle=oracle("binary_classification"), train=train, test=test, task="binary_classification")
    curves = result.plots["roc"]
    assert set(curves) == {"model", "constant", "logistic_regression", "decision_tree"}
    for name, curve in curves.items():
        assert 2 <= len(curve["fpr"]) == len(curve["tpr"]) <= 200
        assert curve["fpr"][0] == 0 and curve["fpr"][-1] == 1 and curve["tpr"][-1] == 1
        assert curve["auc"] == pytest.approx(result.baselines.get(name, result.model))


def test_regression_plot_data_pairs_actual_and_predicted_values():
    train, test = make_split("regression", 800, 11), make_split("regression", 900, 12)
    result = evaluate_model(bundle=oracle("regression"), train=train, test=test, task="regression")
    scatter = result.plots["scatter"]
    assert len(scatter["actual"]) == len(scatter["predicted"]) == 500
    # Each pair is one test row: its label and the model's prediction for that row.
    actual, predicted = np.asarray(scatter["actual"]), np.asarray(scatter["predicted"])
    rows_actual = test["_label"].to_numpy()
    rows_predicted = _regression_mean(test[FEATURES].to_numpy())
    same_row = (np.abs(actual[:, None] - rows_actual[None, :]) < 1e-5) & (
        np.abs(predicted[:, None] - rows_predicted[None, :]) < 1e-5
    )
    assert same_row.any(axis=1).all()


def test_the_result_is_json_ready_and_round_trips(binary):
    train, test = binary
    result = evaluate_model(bundle=oracle("binary_classification"), train=train, test=test, task="binary_classification")
    data = json.loads(json.dumps(result.to_dict()))
    assert {
        "task", "metric", "greater_is_better", "model", "model_ci", "baselines", "best_baseline", "lift",
        "min_lift", "passed", "reason", "secondary", "n_test", "plots",
    } == set(data)
    assert EvaluationResult.from_dict(data) == result


def test_a_single_class_test_split_is_a_data_error(binary):
    train, test = binary
    only_negatives = test[test["_label"] == 0]
    with pytest.raises(DataError, match="the test split holds only one class; AUC is undefined: add data or change split.test"):
        evaluate_model(bundle=oracle("binary_classification"), train=train, test=only_negatives, task="binary_classification")


def test_an_empty_test_split_is_a_data_error(binary):
    train, test = binary
    with pytest.raises(DataError, match="test split is empty"):
        evaluate_model(bundle=oracle("binary_classification"), train=train, test=test.iloc[:0], task="binary_classification")


def test_a_test_split_without_the_models_features_is_a_data_error(binary):
    train, test = binary
    with pytest.raises(DataError, match="lacks feature column 'f3'"):
        evaluate_model(
            bundle=oracle("binary_classification"), train=train, test=test.drop(columns=["f3"]), task="binary_classification"
        )


def test_a_model_trained_for_another_task_is_refused(binary):
    train, test = binary
    bundle = oracle("binary_classification")
    bundle.spec["task"] = "regression"
    with pytest.raises(ConfigError, match="trained for regression but the config says task 'binary_classification'"):
        evaluate_model(bundle=bundle, train=train, test=test, task="binary_classification")


def test_an_undefined_metric_is_null_in_the_json():
    train = make_split("regression", 300, 13)
    test = make_split("regression", 200, 14).assign(_label=1.0)  # R² is undefined on a constant target
    result = evaluate_model(bundle=oracle("regression"), train=train, test=test, task="regression")
    data = result.to_dict()
    assert data["secondary"]["r2"] is None
    json.dumps(data, allow_nan=False)


@pytest.mark.parametrize(
    "task, objective", [("binary_classification", "binary:logistic"), ("multiclass_classification", "multi:softprob")]
)
def test_a_real_xgboost_model_folder_is_judged_like_any_other(tmp_path, task, objective):
    """The documented model folder (xgboost-model.json, transform.json, metadata.json), loaded by tasks.modelbundle."""
    import xgboost as xgb

    from tasks.modelbundle import load_model_bundle

    kind = "multiclass" if task == "multiclass_classification" else task
    train, test = make_split(kind, 2000, 21), make_split(kind, 1000, 22)
    classes = ["red", "green", "blue"] if kind == "multiclass" else ["0", "1"]
    params = {"objective": objective, "max_depth": 4, "eta": 0.2, "nthread": 1, "seed": 0}
    if kind == "multiclass":
        params["num_class"] = 3
    booster = xgb.train(params, xgb.DMatrix(train[FEATURES], label=train["_label"]), num_boost_round=120)
    booster.save_model(str(tmp_path / "xgboost-model.json"))
    spec = {
        "format": "updraft.transform/1", "task": task, "label": "y", "label_classes": classes,
        "input_columns": FEATURES,
        "numeric": [{"name": f, "count": 2000, "null_count": 0, "mean": 0.0, "std": 1.0, "min": -4.0, "max": 4.0,
                     "fill": 0.0} for f in FEATURES],
        "categorical": [], "feature_names": FEATURES, "split": {"validation": 0.15, "test": 0.15, "hash": "x"},
    }
    (tmp_path / "transform.json").write_text(json.dumps(spec))
    (tmp_path / "metadata.json").write_text(json.dumps(
        {"task": task, "label": "y", "label_classes": classes, "feature_names": FEATURES, "input_columns": FEATURES,
         "metrics": {}, "versions": {}, "run_id": "r1"}
    ))

    result = evaluate_model(bundle=load_model_bundle(tmp_path), train=train, test=test, task=task)

    proba = booster.inplace_predict(test[FEATURES].to_numpy(dtype=np.float32))
    if kind == "multiclass":
        assert result.model == pytest.approx(f1_score(test["_label"], proba.argmax(axis=1), average="macro"))
        assert result.plots["confusion"]["labels"] == classes
    else:
        assert result.model == pytest.approx(roc_auc_score(test["_label"], proba))
    assert result.passed, result.reason
    assert result.model_ci[0] < result.model < result.model_ci[1]
