"""The training container's entry point: ``python -m images.training.train`` (the image's ``train``).

It honours SageMaker's training contract (see :mod:`tasks.training.container`) and
nothing else: channels ``train`` and ``validation`` hold Parquet files of float32
feature columns plus ``_label``, channel ``transform`` holds ``transform.json``, the
hyperparameters arrive as strings. It reads nothing from AWS, so the very same process
runs in SageMaker and on a laptop.

Metrics are printed as ``<data>:<metric>=<value>`` (per round after a ``[round]`` prefix,
and once more at the end, alone on a line, for the best iteration): the job's metric
definitions and the local runner both parse that form. Any failure writes its reason to
``output/failure`` (SageMaker shows it as FailureReason) and exits non-zero. On SIGTERM
(a stopped job) training ends after the current round and the model is still saved.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import signal
import sys
import threading
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from tasks.errors import ConfigError, DataError, UpdraftError
from tasks.training import container

LABEL_COLUMN = "_label"
#: transform.json formats this entry point reads (format 2 adds per-column transforms).
TRANSFORM_FORMATS = ("updraft.transform/1", "updraft.transform/2")

#: task -> (XGBoost objective, default evaluation metric)
OBJECTIVES: dict[str, tuple[str, str]] = {
    "binary_classification": ("binary:logistic", "auc"),
    "multiclass_classification": ("multi:softprob", "mlogloss"),
    "regression": ("reg:squarederror", "rmse"),
}

DEFAULT_NUM_ROUND = 300
DEFAULT_EARLY_STOPPING_ROUNDS = 20
DEFAULT_MAX_DEPTH = 6
DEFAULT_ETA = 0.1
DEFAULT_NTHREAD = 2

#: Hyperparameters the entry point consumes itself (they are not XGBoost parameters).
_OWN_INT_PARAMS = {"num_round": 1, "early_stopping_rounds": 0}
#: Set from transform.json's task; a hyperparameter may not change them.
_TASK_PARAMS = ("objective", "num_class")
_INT_RE = re.compile(r"^[-+]?\d+$")


def parse_hyperparameter(value: Any) -> Any:
    """A hyperparameter string as SageMaker passes it, turned back into a bool, int, float or list."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if _INT_RE.match(text):
        return int(text)
    try:
        return float(text)
    except ValueError:
        pass
    if text.startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            pass
    return text


def resolve_params(raw: Mapping[str, Any], task: str, num_classes: int, nthread_env: Mapping[str, str]) -> tuple[dict[str, Any], int, int, list[str]]:
    """Split the job's hyperparameters into XGBoost parameters and our own; apply the defaults.

    Returns ``(xgb_params, num_round, early_stopping_rounds, eval_metrics)``.
    """
    params = {str(k): parse_hyperparameter(v) for k, v in raw.items()}
    for name in _TASK_PARAMS:
        if name in params:
            raise ConfigError(
                f"hyperparameter {name!r} is set by the task ({task}) in transform.json; remove it"
            )
    own: dict[str, int] = {}
    defaults = {"num_round": DEFAULT_NUM_ROUND, "early_stopping_rounds": DEFAULT_EARLY_STOPPING_ROUNDS}
    for name, minimum in _OWN_INT_PARAMS.items():
        value = params.pop(name, defaults[name])
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(f"hyperparameter {name!r} must be an integer >= {minimum}, got {raw.get(name)!r}")
        own[name] = value

    objective, default_metric = OBJECTIVES[task]
    metrics = params.pop("eval_metric", default_metric)
    if isinstance(metrics, str):
        metrics = [m.strip() for m in metrics.split(",") if m.strip()]
    if not isinstance(metrics, list) or not metrics or not all(isinstance(m, str) for m in metrics):
        raise ConfigError(f"hyperparameter 'eval_metric' must name one or more metrics, got {raw.get('eval_metric')!r}")

    xgb_params: dict[str, Any] = {"objective": objective, "eval_metric": metrics}
    if task == "multiclass_classification":
        xgb_params["num_class"] = num_classes
    xgb_params["max_depth"] = DEFAULT_MAX_DEPTH
    if "learning_rate" not in params:
        xgb_params["eta"] = DEFAULT_ETA
    if "nthread" not in params and "n_jobs" not in params:
        xgb_params["nthread"] = default_nthread(nthread_env)
    xgb_params.update(params)
    return xgb_params, own["num_round"], own["early_stopping_rounds"], metrics


def default_nthread(env: Mapping[str, str]) -> int:
    """``OMP_NUM_THREADS``, else the training toolkit's ``SM_NUM_CPUS``, else 2 (a shared laptop's fair share)."""
    for name in (container.OMP_NUM_THREADS, container.SM_NUM_CPUS):
        value = (env.get(name) or "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return DEFAULT_NTHREAD


def read_transform_spec(channel: Path) -> tuple[dict[str, Any], Path]:
    """The fitted transform: ``transform.json`` at the channel's root (or, alone, anywhere below it)."""
    if not channel.is_dir():
        raise DataError(f"training channel 'transform' is missing: expected a folder at {channel}")
    path = channel / container.TRANSFORM_FILE
    if not path.is_file():
        found = sorted(channel.rglob(container.TRANSFORM_FILE))
        if len(found) != 1:
            raise DataError(
                f"training channel 'transform' must hold exactly one {container.TRANSFORM_FILE}; "
                f"found {len(found)} under {channel}"
            )
        path = found[0]
    try:
        spec = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{container.TRANSFORM_FILE} is not valid JSON: {exc}") from None
    if not isinstance(spec, dict) or spec.get("format") not in TRANSFORM_FORMATS:
        raise DataError(
            f"{container.TRANSFORM_FILE} is not a spec of format {' or '.join(TRANSFORM_FORMATS)} "
            f"(format={spec.get('format') if isinstance(spec, dict) else None!r})"
        )
    task = spec.get("task")
    if task not in OBJECTIVES:
        raise ConfigError(
            f"task {task!r} cannot be trained by this release (supported: {', '.join(OBJECTIVES)})"
        )
    names = spec.get("feature_names")
    if not isinstance(names, list) or not names:
        raise DataError(f"{container.TRANSFORM_FILE} lists no feature_names")
    if task != "regression":
        classes = spec.get("label_classes")
        if not isinstance(classes, list) or len(classes) < 2:
            raise DataError(f"{container.TRANSFORM_FILE}: a {task} needs at least two label_classes, got {classes!r}")
        if task == "binary_classification" and len(classes) != 2:
            raise DataError(
                f"{container.TRANSFORM_FILE}: binary_classification needs exactly two label classes, "
                f"got {len(classes)}; use multiclass_classification"
            )
    return spec, path


def read_split(channel_name: str, feature_names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """One channel's Parquet files as ``(X float32 n×f, y float64)``; files named ``_*``/``.*`` are metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = container.channel_dir(channel_name)
    if not folder.is_dir():
        raise DataError(
            f"training channel {channel_name!r} is missing: expected a folder at {folder} "
            f"(or {container.channel_env_var(channel_name)})"
        )
    files = sorted(
        p for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(("_", ".")) for part in p.relative_to(folder).parts)
    )
    if not files:
        raise DataError(f"training channel {channel_name!r} holds no Parquet files ({folder})")
    columns = [*feature_names, LABEL_COLUMN]
    tables = []
    for path in files:
        try:
            schema = pq.read_schema(path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"training channel {channel_name!r}: {path.name} is not a Parquet file ({exc})") from None
        missing = [c for c in columns if c not in schema.names]
        if missing:
            raise DataError(
                f"training channel {channel_name!r}: {path.name} lacks column(s) {', '.join(missing)} "
                "named by transform.json"
            )
        tables.append(pq.read_table(path, columns=columns))
    table = pa.concat_tables(tables)
    if table.num_rows == 0:
        raise DataError(f"training channel {channel_name!r} has no rows")
    X = np.column_stack([table.column(n).to_numpy(zero_copy_only=False).astype(np.float32, copy=False) for n in feature_names])
    y = table.column(LABEL_COLUMN).to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    if np.isnan(y).any():
        raise DataError(f"training channel {channel_name!r}: {int(np.isnan(y).sum())} rows have no {LABEL_COLUMN}")
    return X, y


def check_labels(y: np.ndarray, task: str, num_classes: int, channel_name: str) -> None:
    if task == "regression":
        return
    bad = (y != np.round(y)) | (y < 0) | (y >= num_classes)
    if bad.any():
        raise DataError(
            f"training channel {channel_name!r}: {int(bad.sum())} labels are not class indices in "
            f"[0, {num_classes}) (first: {float(y[bad][0]):g})"
        )


def _xgboost_message(exc: Exception) -> str:
    """XGBoost's own reason without its timestamp, source location and native stack trace."""
    text = str(exc).split("Stack trace:")[0].strip()
    text = re.sub(r"^\[\d\d:\d\d:\d\d\]\s+\S+:\d+:\s*", "", text)
    return " ".join(text.split())


class _Stop:
    """Set by SIGTERM: SageMaker's stop gives 120 s before SIGKILL, enough to finish a round and save."""

    requested = False


def _progress_callback(stop: type[_Stop]) -> Any:
    import xgboost as xgb

    class PrintMetrics(xgb.callback.TrainingCallback):
        def after_iteration(self, model: Any, epoch: int, evals_log: dict) -> bool:
            parts = [
                container.format_metric(f"{data}:{metric}", values[-1])
                for data, metrics in evals_log.items()
                for metric, values in metrics.items()
            ]
            print(f"[{epoch}]\t" + "\t".join(parts), flush=True)
            if stop.requested:
                print(f"stop requested (SIGTERM): ending after round {epoch}", flush=True)
            return stop.requested

    return PrintMetrics()


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
            raise ConfigError(f"invalid hyperparameter: {_xgboost_message(exc)}") from None
    for warning in caught:
        match = re.search(r"Parameters: \{(.*?)\} are not used", str(warning.message), re.S)
        if match:
            names = ", ".join(n.strip().strip('"') for n in match.group(1).split(","))
            raise ConfigError(f"hyperparameter(s) {names} are not used by XGBoost; check the spelling")


def train(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Train from the container's folders and write the model folder; returns the metadata written."""
    import xgboost as xgb

    env = os.environ if env is None else env
    started = time.monotonic()
    spec, spec_path = read_transform_spec(container.channel_dir(container.CHANNEL_TRANSFORM))
    task = spec["task"]
    feature_names = list(spec["feature_names"])
    num_classes = len(spec.get("label_classes") or [])
    try:
        raw_hps = container.read_hyperparameters()
    except (ValueError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read the hyperparameters: {exc}") from None
    params, num_round, early_stopping, metrics = resolve_params(raw_hps, task, num_classes, env)
    hosts = container.read_hosts()
    if len(hosts) > 1:
        raise ConfigError(
            f"updraft trains on one instance but the job has {len(hosts)}; set train.instance_count to 1"
        )

    X_train, y_train = read_split(container.CHANNEL_TRAIN, feature_names)
    X_valid, y_valid = read_split(container.CHANNEL_VALIDATION, feature_names)
    check_labels(y_train, task, num_classes, container.CHANNEL_TRAIN)
    check_labels(y_valid, task, num_classes, container.CHANNEL_VALIDATION)
    print(
        f"task={task} objective={params['objective']} rows train={len(y_train)} validation={len(y_valid)} "
        f"features={len(feature_names)} num_round={num_round} early_stopping_rounds={early_stopping}",
        flush=True,
    )
    check_params(params, X_train, y_train)

    if params.get("tree_method", "hist") in ("hist", "auto"):
        # Quantised once, shared by both splits: about half the memory of a DMatrix.
        dtrain = xgb.QuantileDMatrix(X_train, label=y_train)
        dvalid = xgb.QuantileDMatrix(X_valid, label=y_valid, ref=dtrain)
    else:  # exact and approx need the raw values
        dtrain = xgb.DMatrix(X_train, label=y_train)
        dvalid = xgb.DMatrix(X_valid, label=y_valid)
    callbacks: list[Any] = [_progress_callback(_Stop)]
    primary = metrics[0]
    if early_stopping > 0:
        callbacks.append(
            xgb.callback.EarlyStopping(
                rounds=early_stopping, metric_name=primary, data_name=container.CHANNEL_VALIDATION, save_best=True
            )
        )
    history: dict[str, dict[str, list[float]]] = {}
    try:
        booster = xgb.train(
            params,
            dtrain,
            num_boost_round=num_round,
            evals=[(dtrain, container.CHANNEL_TRAIN), (dvalid, container.CHANNEL_VALIDATION)],
            evals_result=history,
            callbacks=callbacks,
            verbose_eval=False,
        )
    except xgb.core.XGBoostError as exc:
        raise ConfigError(f"XGBoost failed: {_xgboost_message(exc)}") from None

    rounds_run = len(history[container.CHANNEL_VALIDATION][primary])
    best = booster.num_boosted_rounds() - 1 if early_stopping > 0 else rounds_run - 1
    final = {
        f"{data}:{metric}": float(values[best])
        for data, per_metric in history.items()
        for metric, values in per_metric.items()
    }
    print(f"rounds={rounds_run} best_iteration={best} (early stopping {'on' if early_stopping else 'off'})", flush=True)
    for name, value in final.items():
        print(container.format_metric(name, value), flush=True)

    out = container.model_dir()
    out.mkdir(parents=True, exist_ok=True)
    booster.save_model(str(out / container.MODEL_FILE))
    shutil.copyfile(spec_path, out / container.TRANSFORM_FILE)
    metadata = {
        "task": task,
        "label": spec.get("label"),
        "label_classes": spec.get("label_classes"),
        "feature_names": feature_names,
        "input_columns": spec.get("input_columns"),
        "metrics": final,
        "versions": _versions(),
        "run_id": env.get(container.UPDRAFT_RUN_ID) or None,
        "training_job_name": env.get(container.TRAINING_JOB_NAME) or None,
        "best_iteration": best,
        "rounds": rounds_run,
        "stopped_early_by_signal": _Stop.requested,
        "hyperparameters": dict(params),
        "rows": {container.CHANNEL_TRAIN: int(len(y_train)), container.CHANNEL_VALIDATION: int(len(y_valid))},
        "duration_s": round(time.monotonic() - started, 3),
    }
    (out / container.METADATA_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=False))
    return metadata


def _versions() -> dict[str, str]:
    import pandas
    import xgboost

    return {
        "python": platform.python_version(),
        "xgboost": xgboost.__version__,
        "numpy": np.__version__,
        "pandas": pandas.__version__,
    }


def write_failure(text: str) -> None:
    path = container.failure_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def main(argv: list[str] | None = None) -> int:
    """Run training; on failure write ``output/failure`` and return non-zero (SageMaker's contract)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv not in ([], ["train"]):
        print(f"usage: train (got {' '.join(argv)})", file=sys.stderr)
        return 2
    previous = signal.getsignal(signal.SIGTERM)

    def request_stop(signum: int, frame: Any) -> None:
        _Stop.requested = True

    _Stop.requested = False
    on_main_thread = threading.current_thread() is threading.main_thread()
    if on_main_thread:  # signal handlers can only be set there (it always is in the container)
        signal.signal(signal.SIGTERM, request_stop)
    try:
        train()
    except UpdraftError as exc:
        message = str(exc)
        print(f"training failed: {message}", file=sys.stderr, flush=True)
        write_failure(message)
        return 1
    except Exception as exc:  # a bug: keep the traceback in the log, the reason where SageMaker shows it
        traceback.print_exc()
        message = f"{type(exc).__name__}: {exc}"
        write_failure(message)
        return 1
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
