"""XGBoost for classification, regression and ranking: parameters, checks and the boosting loop.

The loop is ours rather than ``xgboost.train`` so that it can stop and resume anywhere:
it runs one ``Booster.update`` per round with the round's true number, keeps the
evaluation history and early-stopping state itself, and writes them with the booster to
a checkpoint every ``checkpoint_interval`` rounds. XGBoost's samplers (``subsample``,
``colsample_*``, dart) keep random state inside the booster's updaters, which no saved
model holds; so when the parameters sample, the loop restarts its booster from the
checkpoint's bytes at every checkpoint, and an interrupted run resumed from a checkpoint
builds exactly the trees an uninterrupted one does.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from images.training.checkpoints import Checkpoint, TrainingState, save_checkpoint
from images.training.distributed import Collective
from images.training.hyperparameters import parse_hyperparameter, pop_int
from tasks.errors import ConfigError
from tasks.training import container

#: task -> (XGBoost objective, default evaluation metric)
OBJECTIVES: dict[str, tuple[str, str]] = {
    "binary_classification": ("binary:logistic", "auc"),
    "multiclass_classification": ("multi:softprob", "mlogloss"),
    "regression": ("reg:squarederror", "rmse"),
    "ranking": ("rank:ndcg", "ndcg@10"),
}

DEFAULT_NUM_ROUND = 300
DEFAULT_EARLY_STOPPING_ROUNDS = 20
DEFAULT_CHECKPOINT_INTERVAL = 5
DEFAULT_MAX_DEPTH = 6
DEFAULT_ETA = 0.1
DEFAULT_NTHREAD = 2

#: Set from transform.json's task; a hyperparameter may not change them.
_TASK_PARAMS = ("objective", "num_class")
#: Parameters that change where or how fast a booster trains, not what it learns: a
#: checkpoint written on another instance type still resumes.
_RUNTIME_PARAMS = ("nthread", "n_jobs", "device", "verbosity")
#: Ranking metrics computed here rather than by XGBoost, whose map@k takes 0/1 labels only:
#: ours counts a relevance grade above 0 as relevant (on 0/1 labels the two agree).
_OWN_RANKING_METRIC = re.compile(r"^map@(\d+)$")
#: XGBoost's rule (its EarlyStopping callback) for metrics where larger is better.
_MAXIMIZED = ("auc", "aucpr", "pre", "pre@", "map", "ndcg", "auc@", "aucpr@", "map@", "ndcg@")


@dataclass
class XGBoostSettings:
    """The job's hyperparameters split into XGBoost's parameters and the loop's own."""

    params: dict[str, Any]
    num_round: int
    early_stopping_rounds: int
    #: Every metric printed, in order; the first drives early stopping.
    eval_metrics: list[str]
    checkpoint_interval: int
    #: Those of ``eval_metrics`` the loop computes itself (the rest are XGBoost's ``eval_metric``).
    own_metrics: list[str] = field(default_factory=list)


def default_nthread(env: Mapping[str, str]) -> int:
    """``OMP_NUM_THREADS``, else the training toolkit's ``SM_NUM_CPUS``, else 2 (a shared laptop's fair share)."""
    for name in (container.OMP_NUM_THREADS, container.SM_NUM_CPUS):
        value = (env.get(name) or "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return DEFAULT_NTHREAD


def resolve_settings(raw: Mapping[str, Any], task: str, num_classes: int, env: Mapping[str, str]) -> XGBoostSettings:
    """Split the job's hyperparameters into XGBoost parameters and the loop's own; apply the defaults."""
    params = {str(k): parse_hyperparameter(v) for k, v in raw.items()}
    for name in _TASK_PARAMS:
        if name in params:
            raise ConfigError(f"hyperparameter {name!r} is set by the task ({task}) in transform.json; remove it")
    num_round = pop_int(params, raw, "num_round", DEFAULT_NUM_ROUND, 1)
    early_stopping = pop_int(params, raw, "early_stopping_rounds", DEFAULT_EARLY_STOPPING_ROUNDS, 0)
    interval = pop_int(params, raw, "checkpoint_interval", DEFAULT_CHECKPOINT_INTERVAL, 0)

    objective, _ = OBJECTIVES[task]
    metrics = params.pop("eval_metric", list(container.DEFAULT_METRICS[task]))
    if isinstance(metrics, str):
        metrics = [m.strip() for m in metrics.split(",") if m.strip()]
    if not isinstance(metrics, list) or not metrics or not all(isinstance(m, str) for m in metrics):
        raise ConfigError(f"hyperparameter 'eval_metric' must name one or more metrics, got {raw.get('eval_metric')!r}")

    own = [m for m in metrics if task == "ranking" and _OWN_RANKING_METRIC.match(m)]
    native = [m for m in metrics if m not in own]
    xgb_params: dict[str, Any] = {"objective": objective, "eval_metric": native}
    if not native:  # otherwise XGBoost would add the objective's default metric
        xgb_params["disable_default_eval_metric"] = True
    if task == "multiclass_classification":
        xgb_params["num_class"] = num_classes
    xgb_params["max_depth"] = DEFAULT_MAX_DEPTH
    if "learning_rate" not in params:
        xgb_params["eta"] = DEFAULT_ETA
    if "nthread" not in params and "n_jobs" not in params:
        xgb_params["nthread"] = default_nthread(env)
    xgb_params.update(params)
    return XGBoostSettings(xgb_params, num_round, early_stopping, metrics, interval, own)


def resolve_params(
    raw: Mapping[str, Any], task: str, num_classes: int, nthread_env: Mapping[str, str]
) -> tuple[dict[str, Any], int, int, list[str]]:
    """``(xgb_params, num_round, early_stopping_rounds, eval_metrics)``: :func:`resolve_settings` as a tuple."""
    s = resolve_settings(raw, task, num_classes, nthread_env)
    return s.params, s.num_round, s.early_stopping_rounds, s.eval_metrics


def xgboost_message(exc: Exception) -> str:
    """XGBoost's own reason without its timestamp, source location and native stack trace."""
    text = str(exc).split("Stack trace:")[0].strip()
    text = re.sub(r"^\[\d\d:\d\d:\d\d\]\s+\S+:\d+:\s*", "", text)
    return " ".join(text.split())


def check_params(params: dict[str, Any], X: np.ndarray, y: np.ndarray) -> None:
    """Fail before training on any hyperparameter XGBoost rejects or would silently ignore."""
    import xgboost as xgb

    n = min(len(y), 64)
    probe = xgb.DMatrix(X[:n], label=y[:n])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            booster = xgb.Booster(params, [probe])
            booster.update(probe, 0)
        except xgb.core.XGBoostError as exc:
            raise ConfigError(f"invalid hyperparameter: {xgboost_message(exc)}") from None
    for warning in caught:
        match = re.search(r"Parameters: \{(.*?)\} are not used", str(warning.message), re.S)
        if match:
            names = ", ".join(n.strip().strip('"') for n in match.group(1).split(","))
            raise ConfigError(f"hyperparameter(s) {names} are not used by XGBoost; check the spelling")


def is_maximized(metric: str) -> bool:
    """Whether early stopping wants ``metric`` larger (XGBoost's own rule)."""
    return metric != "mape" and any(metric.startswith(prefix) for prefix in _MAXIMIZED)


def uses_randomness(params: Mapping[str, Any]) -> bool:
    """Whether training draws random numbers (row or column sampling, dart, sampled ranking pairs)."""

    def below_one(name: str) -> bool:
        value = params.get(name)
        return isinstance(value, (int, float)) and not isinstance(value, bool) and value < 1

    return (
        any(below_one(n) for n in ("subsample", "colsample_bytree", "colsample_bylevel", "colsample_bynode"))
        or params.get("sampling_method") == "gradient_based"
        or params.get("booster") == "dart"
        or params.get("lambdarank_pair_method") == "mean"
        or params.get("feature_selector") in ("shuffle", "random")
    )


def mean_average_precision(labels: np.ndarray, scores: np.ndarray, qid: np.ndarray, k: int) -> float:
    """MAP@k over queries, as XGBoost's ``map@k``: relevant = label > 0; each query's sum of precision@i at
    its relevant positions i <= k, over min(relevant rows, k); a query without relevant rows counts 1.

    ``qid`` holds dense query ids 0..G-1 (any order); ties in ``scores`` keep the rows' order.
    """
    if len(labels) == 0:
        return float("nan")
    order = np.lexsort((-scores, qid))  # by query, then score descending; stable
    q = qid[order]
    relevant = (labels[order] > 0).astype(np.float64)
    groups = int(q.max()) + 1
    starts = np.searchsorted(q, np.arange(groups))
    position = np.arange(len(q)) - starts[q]
    cumulative = np.cumsum(relevant)
    before = np.concatenate([[0.0], cumulative])[starts][q]
    hits = cumulative - before
    in_top = position < k
    precision_sum = np.bincount(q, weights=relevant * in_top * hits / (position + 1), minlength=groups)
    total = np.bincount(q, weights=relevant, minlength=groups)
    present = np.bincount(q, minlength=groups) > 0
    ap = np.where(total > 0, precision_sum / np.maximum(np.minimum(total, k), 1), 1.0)
    return float(ap[present].mean())


def own_metric_scores(
    booster: Any, metrics: Sequence[str], evals: Sequence[tuple[Any, str, np.ndarray, np.ndarray | None]]
) -> list[tuple[str, str, float]]:
    """``(data, metric, value)`` of the loop's own metrics on each ``(dmatrix, name, labels, qid)``."""
    out = []
    for metric in metrics:
        k = int(_OWN_RANKING_METRIC.match(metric).group(1))  # type: ignore[union-attr]
        for dmatrix, name, labels, qid in evals:
            scores = booster.predict(dmatrix, output_margin=True)
            out.append((name, metric, mean_average_precision(labels, scores, qid, k)))
    return out


def parse_eval(text: str) -> list[tuple[str, str, float]]:
    """``Booster.eval_set``'s ``[3]\\ttrain-auc:0.9\\tvalidation-auc:0.8`` as ``(data, metric, value)``."""
    out = []
    for item in text.split("\t")[1:]:
        name, _, value = item.rpartition(":")
        data, _, metric = name.partition("-")
        out.append((data, metric, float(value)))
    return out


def checkpoint_settings(
    task: str, feature_names: Sequence[str], settings: XGBoostSettings, arrays: Sequence[np.ndarray | None], hosts: int
) -> dict[str, Any]:
    """What a checkpoint must have been written with to be resumed: everything the model depends on."""
    digest = hashlib.sha256()
    for array in arrays:
        if array is not None:
            digest.update(str(array.shape).encode())
            digest.update(memoryview(np.ascontiguousarray(array)).cast("B"))
    return {
        "task": task,
        "feature_names": list(feature_names),
        "params": {k: v for k, v in settings.params.items() if k not in _RUNTIME_PARAMS},
        "num_round": settings.num_round,
        "early_stopping_rounds": settings.early_stopping_rounds,
        "eval_metrics": list(settings.eval_metrics),
        "hosts": hosts,
        "data_sha256": digest.hexdigest(),
    }


class StopFlag:
    """Set by SIGTERM: SageMaker's stop gives 120 s before SIGKILL, enough to finish a round and save."""

    requested = False


@dataclass
class CheckpointPlan:
    """Where and how often the loop checkpoints; ``folder`` None on hosts that do not write them."""

    interval: int
    folder: Path | None
    settings: dict[str, Any]


def _new_booster(params: dict[str, Any], cache: list[Any], model: bytes | None) -> Any:
    import xgboost as xgb

    try:
        return xgb.Booster(params, cache, model_file=bytearray(model) if model is not None else None)
    except xgb.core.XGBoostError as exc:
        raise ConfigError(f"XGBoost failed: {xgboost_message(exc)}") from None


def boost(
    settings: XGBoostSettings,
    dtrain: Any,
    dvalid: Any,
    *,
    plan: CheckpointPlan,
    resume: Checkpoint | None,
    stop: type[StopFlag],
    collective: Collective,
    labels: Sequence[tuple[np.ndarray, np.ndarray | None]] = (),
) -> tuple[Any, TrainingState]:
    """Run boosting rounds up to ``num_round`` (or early stopping, or SIGTERM); returns the booster and the state.

    With early stopping the booster returned ends at the best round; the state keeps
    every round's metrics. ``resume`` continues a checkpoint's booster and state.
    ``labels`` gives ``(labels, qid)`` of train and validation, for the loop's own metrics.
    """
    import xgboost as xgb

    evals = [(dtrain, container.CHANNEL_TRAIN), (dvalid, container.CHANNEL_VALIDATION)]
    cache = [dtrain, dvalid]
    state = resume.state if resume is not None else TrainingState()
    booster = _new_booster(settings.params, cache, resume.model if resume is not None else None)
    primary = settings.eval_metrics[0]
    maximize = is_maximized(primary)
    restart = settings.checkpoint_interval > 0 and uses_randomness(settings.params)

    def stopped_early() -> bool:
        return settings.early_stopping_rounds > 0 and state.rounds_since_best >= settings.early_stopping_rounds

    while state.rounds < settings.num_round and not stopped_early():
        epoch = state.rounds
        try:
            booster.update(dtrain, iteration=epoch)
            scores = parse_eval(booster.eval_set(evals, epoch)) if settings.params["eval_metric"] else []
            if settings.own_metrics:
                own_evals = [(d, name, y, q) for (d, name), (y, q) in zip(evals, labels)]
                scores += own_metric_scores(booster, settings.own_metrics, own_evals)
        except xgb.core.XGBoostError as exc:
            raise ConfigError(f"XGBoost failed: {xgboost_message(exc)}") from None
        values = collective.mean(np.array([v for _, _, v in scores], dtype=np.float64))
        for (data, metric, _), value in zip(scores, values):
            state.history.setdefault(data, {}).setdefault(metric, []).append(float(value))
        print(
            f"[{epoch}]\t" + "\t".join(container.format_metric(f"{d}:{m}", v) for (d, m, _), v in zip(scores, values)),
            flush=True,
        )
        printed = state.history.get(container.CHANNEL_VALIDATION, {})
        if primary not in printed:
            raise ConfigError(
                f"early stopping follows eval_metric {primary!r} but XGBoost reported "
                f"{', '.join(printed) or 'no metric'}; name the metric as XGBoost prints it"
            )
        score = printed[primary][-1]
        best = state.best_score
        if best is None or (np.greater(score, best) if maximize else np.greater(best, score)):
            state.best_score, state.best_iteration, state.rounds_since_best = float(score), epoch, 0
        else:
            state.rounds_since_best += 1
        state.rounds = epoch + 1

        signalled = collective.any(stop.requested)
        finished = signalled or stopped_early() or state.rounds >= settings.num_round
        boundary = plan.interval > 0 and state.rounds % plan.interval == 0
        # Stopped between checkpoints: save now, unless the run samples, where only a
        # checkpoint at a boundary resumes to the very same model (the last one stays).
        save = plan.folder is not None and (boundary or (signalled and plan.interval > 0 and not restart))
        reload = restart and boundary and not finished
        if save or reload:
            raw = bytes(booster.save_raw("ubj"))
            if save:
                save_checkpoint(Checkpoint(state=_copy(state), settings=plan.settings, model=raw), plan.folder)
            if reload:
                booster = _new_booster(settings.params, cache, raw)
        if signalled:
            kept = ""
            if restart and not boundary:
                last = state.rounds - state.rounds % plan.interval
                kept = f"; the checkpoint of round {last} stays" if last else "; no checkpoint yet"
            print(f"stop requested (SIGTERM): ending after round {epoch}{kept}", flush=True)
            break

    if settings.early_stopping_rounds > 0 and state.best_iteration is not None:
        booster = booster[: state.best_iteration + 1]
    return booster, state


def _copy(state: TrainingState) -> TrainingState:
    return TrainingState.from_json(state.to_json())
