"""Judge a trained model against baselines fitted on the same data and against the champion: the pipeline's gate.

A model is only worth registering if it beats what a constant, a regularised linear
model and a shallow tree already achieve on the same test rows, and if it is not worse
than the model serving the endpoint today (the champion); a metric on its own ("AUC
0.83") says nothing about either. Every metric comes with a bootstrap interval, the
champion comparison is a paired bootstrap (both models scored on the same resampled
rows), and the decision comes with sentences saying which comparison decided and with
what numbers, so the report and the registry can show it to a person.

Per task (see docs/design.md, "the evaluate stage"): binary (ROC-AUC; PR-AUC, log loss,
F1/recall/precision/accuracy at the chosen threshold, Brier score, expected calibration
error and a reliability table), multiclass (macro-F1; accuracy, log loss), regression
(RMSE; MAE, R²), ranking (NDCG@k per query; MAP@k; the bootstrap resamples queries) and
anomaly detection (ROC-AUC against labels where the data has them; precision@k, PR-AUC;
without labels it cannot be judged, and the gate says so rather than pass a model nobody
checked). Metrics per value of a segment column (``evaluate.segment``) show where a model
is weak.

The package is laid out by what each part decides: ``metric_names`` (which metric, how it is
named), ``bootstrap`` (resampling), ``metrics`` and ``calibration`` (metrics in resampled
form), ``splits`` and ``scores`` (reading the data and the model's output), ``baselines``,
``ranking`` and ``anomaly`` (the predictors to beat), ``main_score`` and ``judge`` (each
task judged on the test rows), ``champion``, ``gate`` and ``slices`` (the comparisons),
``result`` (the verdict and its JSON), ``evaluation`` (:func:`evaluate_model`, the pure core)
and ``stage`` (the Prefect task, the only part that touches a Target). The names below are
re-exported so callers import from ``tasks.evaluate``; a module-level setting
(``MAX_SLICES``, ...) is read in the module that defines it, so patch it there.
"""

from __future__ import annotations

from tasks.evaluate.anomaly import precision_at_k
from tasks.evaluate.baselines import MAX_BASELINE_TRAIN_ROWS
from tasks.evaluate.bootstrap import CI_LEVEL, N_BOOTSTRAP, Resampled, bootstrap_interval, bootstrap_many
from tasks.evaluate.calibration import CALIBRATION_BINS, reliability_table
from tasks.evaluate.champion import ChampionLookup, same_transform
from tasks.evaluate.evaluation import evaluate_model
from tasks.evaluate.gate import MIN_CLASS_ROWS, MIN_GATE_UNITS
from tasks.evaluate.judge import MAX_FEATURE_CHOICE_ROWS, MAX_ROC_POINTS, MAX_SCATTER_POINTS
from tasks.evaluate.metric_names import main_metric, metric_label
from tasks.evaluate.ranking import MAX_POPULARITY_VALUES, POPULARITY_PRIOR_ROWS, RANKING_K, RankedQueries
from tasks.evaluate.result import EvaluationResult, evaluation_json, load_evaluation
from tasks.evaluate.scores import PredictsFeatures
from tasks.evaluate.slices import MAX_SLICES, MIN_SLICE_UNITS
from tasks.evaluate.splits import GROUP_COLUMN, LABEL_COLUMN, SEGMENT_COLUMN
from tasks.evaluate.stage import MAX_CURATED_ROWS_FOR_CHAMPION, curated_test_rows, evaluate_stage, find_champion

__all__ = [
    "bootstrap_interval",
    "bootstrap_many",
    "CALIBRATION_BINS",
    "ChampionLookup",
    "CI_LEVEL",
    "curated_test_rows",
    "evaluate_model",
    "evaluate_stage",
    "evaluation_json",
    "EvaluationResult",
    "find_champion",
    "GROUP_COLUMN",
    "LABEL_COLUMN",
    "load_evaluation",
    "main_metric",
    "MAX_BASELINE_TRAIN_ROWS",
    "MAX_CURATED_ROWS_FOR_CHAMPION",
    "MAX_FEATURE_CHOICE_ROWS",
    "MAX_POPULARITY_VALUES",
    "MAX_ROC_POINTS",
    "MAX_SCATTER_POINTS",
    "MAX_SLICES",
    "metric_label",
    "MIN_CLASS_ROWS",
    "MIN_GATE_UNITS",
    "MIN_SLICE_UNITS",
    "N_BOOTSTRAP",
    "POPULARITY_PRIOR_ROWS",
    "precision_at_k",
    "PredictsFeatures",
    "RankedQueries",
    "RANKING_K",
    "reliability_table",
    "Resampled",
    "same_transform",
    "SEGMENT_COLUMN",
]
