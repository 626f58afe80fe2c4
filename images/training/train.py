"""The training container's entry point: ``python -m images.training.train`` (the image's ``train``).

It honours SageMaker's training contract (see :mod:`tasks.training.container`) and
nothing else: channels ``train`` and ``validation`` hold Parquet files of float32
feature columns plus ``_label`` (and ``_group`` for ranking), channel ``transform``
holds ``transform.json``, the hyperparameters arrive as strings, ``resourceconfig.json``
lists the instances. It reads nothing from AWS, so the very same process runs in
SageMaker and on a laptop.

Tasks: binary and multiclass classification, regression and ranking train XGBoost
(:mod:`images.training.xgb`; on the instance's GPU when it has one, across all the job's
instances when it has several, see :mod:`images.training.distributed`), with
checkpoints in ``/opt/ml/checkpoints`` that a restarted job resumes from
(:mod:`images.training.checkpoints`); anomaly detection fits an IsolationForest
(:mod:`images.training.anomaly`).

Metrics are printed as ``<data>:<metric>=<value>`` (per round after a ``[round]`` prefix,
and once more at the end, alone on a line, for the best iteration): the job's metric
definitions and the local runner both parse that form. Any failure writes its reason to
``output/failure`` (SageMaker shows it as FailureReason) and exits non-zero. On SIGTERM
(a stopped job, a spot interruption) training ends after the current round, writes a
checkpoint, and the model is still saved.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import sys
import threading
import time
import traceback
from importlib import metadata as dist_metadata
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from images.training.channels import (
    GROUP_COLUMN,
    LABEL_COLUMN,
    TRANSFORM_FORMATS,
    Split,
    channel_files,
    check_labels,
    read_channel,
    read_transform_spec,
)
from images.training.checkpoints import Checkpoint, read_checkpoint_bytes
from images.training.devices import choose_device
from images.training.distributed import Cluster, channel_distribution, join_cluster, read_cluster, shard_files
from images.training.hyperparameters import parse_hyperparameter
from images.training.xgb import (
    DEFAULT_EARLY_STOPPING_ROUNDS,
    DEFAULT_NUM_ROUND,
    OBJECTIVES,
    CheckpointPlan,
    StopFlag,
    XGBoostSettings,
    boost,
    check_params,
    checkpoint_settings,
    default_nthread,
    resolve_params,
    resolve_settings,
)
from tasks.errors import ConfigError, UpdraftError
from tasks.training import container

# The entry point and the names callers use from this module (tasks/training/dask_train.py
# among them), wherever they are defined.
__all__ = [
    "DEFAULT_EARLY_STOPPING_ROUNDS",
    "DEFAULT_NUM_ROUND",
    "GROUP_COLUMN",
    "LABEL_COLUMN",
    "OBJECTIVES",
    "TRANSFORM_FORMATS",
    "XGBoostSettings",
    "check_labels",
    "check_params",
    "default_nthread",
    "main",
    "parse_hyperparameter",
    "read_transform_spec",
    "resolve_params",
    "resolve_settings",
    "train",
    "write_failure",
]

ANOMALY_TASK = "anomaly_detection"


def train(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Train from the container's folders and write the model folder; returns the metadata written.

    On every host but hosts[0] of a multi-instance job nothing is written and ``{}`` is returned.
    """
    env = os.environ if env is None else env
    started = time.monotonic()
    spec, spec_path = read_transform_spec(container.channel_dir(container.CHANNEL_TRANSFORM))
    try:
        raw_hps = container.read_hyperparameters()
    except (ValueError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read the hyperparameters: {exc}") from None
    try:
        cluster = read_cluster()
        input_config = container.read_input_data_config()
    except (ValueError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read the job's config files: {exc}") from None
    if spec["task"] == ANOMALY_TASK:
        return _train_forest(spec, spec_path, raw_hps, cluster, env, started)
    return _train_xgboost(spec, spec_path, raw_hps, cluster, input_config, env, started)


def _read_splits(task: str, feature_names: list[str], num_classes: int, cluster: Cluster,
                 input_config: Mapping[str, Any]) -> tuple[Split, Split]:
    splits = []
    for channel in (container.CHANNEL_TRAIN, container.CHANNEL_VALIDATION):
        distribution = channel_distribution(channel, input_config)
        files, row_shard = shard_files(channel_files(channel), cluster, distribution, whole_queries=task == "ranking")
        splits.append(
            read_channel(channel, feature_names, files, task=task, num_classes=num_classes, row_shard=row_shard)
        )
    return splits[0], splits[1]


def _checkpoint_folder(cluster: Cluster, interval: int) -> Path | None:
    """hosts[0]'s checkpoint folder, when checkpoints are on and the folder can be written."""
    if interval == 0 or not cluster.is_master:
        return None
    folder = container.checkpoints_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"checkpoints off: cannot create {folder} ({exc.strerror or exc})", flush=True)
        return None
    if not os.access(folder, os.W_OK):
        print(f"checkpoints off: {folder} is not writable", flush=True)
        return None
    return folder


def _find_checkpoint(plan: CheckpointPlan) -> bytes | None:
    """hosts[0]: the checkpoint to resume from, if there is one written for these very settings."""
    if plan.folder is None:
        return None
    data = read_checkpoint_bytes(plan.folder)
    if data is None:
        return None
    found = Checkpoint.decode(data, str(plan.folder / container.CHECKPOINT_FILE))
    differ = found.differences(plan.settings)
    if differ:
        print(
            f"ignoring the checkpoint in {plan.folder}: it was written for other settings or data "
            f"(differ: {', '.join(differ)}); training from round 0",
            flush=True,
        )
        return None
    return data


def _train_xgboost(spec: dict[str, Any], spec_path: Path, raw_hps: Mapping[str, Any], cluster: Cluster,
                   input_config: Mapping[str, Any], env: Mapping[str, str], started: float) -> dict[str, Any]:
    import xgboost as xgb

    task = spec["task"]
    feature_names = list(spec["feature_names"])
    num_classes = len(spec.get("label_classes") or [])
    settings = resolve_settings(raw_hps, task, num_classes, env)
    device = choose_device(settings.params, env)
    if device.device is not None:
        settings.params["device"] = device.device
    print(f"device={device.name} ({device.reason})", flush=True)

    train_split, valid_split = _read_splits(task, feature_names, num_classes, cluster, input_config)
    assert train_split.y is not None and valid_split.y is not None  # read_channel requires labels here
    hosts = f" host={cluster.current_host} rank={cluster.rank} of {cluster.size}" if cluster.size > 1 else ""
    groups = f" queries train={train_split.groups} validation={valid_split.groups}" if task == "ranking" else ""
    print(
        f"task={task} objective={settings.params['objective']} rows train={train_split.rows} "
        f"validation={valid_split.rows}{groups} features={len(feature_names)} num_round={settings.num_round} "
        f"early_stopping_rounds={settings.early_stopping_rounds}{hosts}",
        flush=True,
    )
    check_params(settings.params, train_split.X, train_split.y)
    plan = CheckpointPlan(
        interval=settings.checkpoint_interval,
        folder=_checkpoint_folder(cluster, settings.checkpoint_interval),
        settings=checkpoint_settings(
            task, feature_names, settings,
            [train_split.X, train_split.y, train_split.qid, valid_split.X, valid_split.y, valid_split.qid],
            cluster.size,
        ),
    )

    with join_cluster(cluster, env) as collective:
        shared = collective.share(_find_checkpoint(plan) if cluster.is_master else None)
        resume = Checkpoint.decode(shared, "the checkpoint") if shared is not None else None
        resumed_from = resume.state.rounds if resume is not None else None
        if resume is not None:
            print(f"resuming from checkpoint at round {resumed_from}", flush=True)
        if settings.params.get("tree_method", "hist") in ("hist", "auto"):
            # Quantised once, shared by both splits: about half the memory of a DMatrix.
            dtrain = xgb.QuantileDMatrix(train_split.X, label=train_split.y, qid=train_split.qid)
            dvalid = xgb.QuantileDMatrix(valid_split.X, label=valid_split.y, qid=valid_split.qid, ref=dtrain)
        else:  # exact and approx need the raw values
            dtrain = xgb.DMatrix(train_split.X, label=train_split.y, qid=train_split.qid)
            dvalid = xgb.DMatrix(valid_split.X, label=valid_split.y, qid=valid_split.qid)
        booster, state = boost(
            settings, dtrain, dvalid, plan=plan, resume=resume, stop=StopFlag, collective=collective,
            labels=[(train_split.y, train_split.qid), (valid_split.y, valid_split.qid)],
        )
        totals = collective.mean(np.array([train_split.rows, valid_split.rows], dtype=np.float64)) * collective.size

    if not cluster.is_master:
        print(f"host {cluster.current_host}: training done; {cluster.hosts[0]} writes the model", flush=True)
        return {}

    primary = settings.eval_metrics[0]
    rounds_run = len(state.history[container.CHANNEL_VALIDATION][primary])
    early = settings.early_stopping_rounds > 0
    best = state.best_iteration if early and state.best_iteration is not None else rounds_run - 1
    final = {
        f"{data}:{metric}": float(values[best])
        for data, per_metric in state.history.items()
        for metric, values in per_metric.items()
    }
    print(f"rounds={rounds_run} best_iteration={best} (early stopping {'on' if early else 'off'})", flush=True)
    for name, value in final.items():
        print(container.format_metric(name, value), flush=True)

    out = container.model_dir()
    out.mkdir(parents=True, exist_ok=True)
    booster.save_model(str(out / container.MODEL_FILE))
    shutil.copyfile(spec_path, out / container.TRANSFORM_FILE)
    record = _metadata(spec, env, algorithm=container.ALGORITHM_XGBOOST, metrics=final, started=started)
    record.update({
        "best_iteration": best,
        "rounds": rounds_run,
        "resumed_from_round": resumed_from,
        "stopped_early_by_signal": StopFlag.requested,
        "device": device.name,
        "hosts": cluster.size,
        "hyperparameters": dict(settings.params),
        "rows": {container.CHANNEL_TRAIN: int(totals[0]), container.CHANNEL_VALIDATION: int(totals[1])},
    })
    if task == "ranking":
        record["group"] = spec.get("group")
    record["duration_s"] = round(time.monotonic() - started, 3)
    (out / container.METADATA_FILE).write_text(json.dumps(record, indent=2))
    return record


def _train_forest(spec: dict[str, Any], spec_path: Path, raw_hps: Mapping[str, Any], cluster: Cluster,
                  env: Mapping[str, str], started: float) -> dict[str, Any]:
    from images.training.anomaly import (
        anomaly_metrics,
        export_isolation_forest,
        fit_isolation_forest,
        resolve_forest_settings,
    )
    from tasks.modelbundle import IsolationForestScorer

    if cluster.size > 1:
        raise ConfigError(
            f"anomaly_detection trains on one instance but the job has {cluster.size}; set train.instance_count to 1"
        )
    feature_names = list(spec["feature_names"])
    settings = resolve_forest_settings(raw_hps)
    train_split, valid_split = _read_splits(ANOMALY_TASK, feature_names, 0, cluster, {})
    print(
        f"task={ANOMALY_TASK} algorithm=isolation_forest rows train={train_split.rows} validation={valid_split.rows} "
        f"features={len(feature_names)} n_estimators={settings.n_estimators} max_samples={settings.max_samples}",
        flush=True,
    )
    model = fit_isolation_forest(train_split.X, settings, n_jobs=default_nthread(env))
    document = export_isolation_forest(model, len(feature_names))
    # Scored exactly as evaluation and serving will score it: through the exported trees.
    scorer = IsolationForestScorer.from_document(document, len(feature_names))
    metrics, note = anomaly_metrics(valid_split.y, scorer.anomaly_scores(valid_split.X), settings.k)
    final = {f"{container.CHANNEL_VALIDATION}:{name}": value for name, value in metrics.items()}
    print(f"evaluation on {container.CHANNEL_VALIDATION}: {note}", flush=True)
    for name, value in final.items():
        print(container.format_metric(name, value), flush=True)

    out = container.model_dir()
    out.mkdir(parents=True, exist_ok=True)
    (out / container.FOREST_FILE).write_text(json.dumps(document))
    shutil.copyfile(spec_path, out / container.TRANSFORM_FILE)
    record = _metadata(spec, env, algorithm=container.ALGORITHM_ISOLATION_FOREST, metrics=final, started=started)
    record.update({
        "best_iteration": None,
        "rounds": None,
        # Outlier when the anomaly score is above this (scikit-learn's -offset_; 0.5 for contamination 'auto').
        "anomaly_threshold": -float(model.offset_),
        "device": "cpu",
        "hosts": 1,
        "hyperparameters": settings.to_json(),
        "rows": {container.CHANNEL_TRAIN: train_split.rows, container.CHANNEL_VALIDATION: valid_split.rows},
        "labelled_rows": {
            name: (int(np.sum(~np.isnan(split.y))) if split.y is not None else 0)
            for name, split in ((container.CHANNEL_TRAIN, train_split), (container.CHANNEL_VALIDATION, valid_split))
        },
    })
    record["duration_s"] = round(time.monotonic() - started, 3)
    (out / container.METADATA_FILE).write_text(json.dumps(record, indent=2))
    return record


def _metadata(spec: Mapping[str, Any], env: Mapping[str, str], *, algorithm: str, metrics: dict[str, float],
              started: float) -> dict[str, Any]:
    """The fields every model's metadata.json has: what it is, what it was trained on, with what."""
    return {
        "task": spec["task"],
        "algorithm": algorithm,
        "label": spec.get("label"),
        "label_classes": spec.get("label_classes"),
        "feature_names": list(spec["feature_names"]),
        "input_columns": spec.get("input_columns"),
        "metrics": metrics,
        "versions": _versions(),
        "run_id": env.get(container.UPDRAFT_RUN_ID) or None,
        "training_job_name": env.get(container.TRAINING_JOB_NAME) or None,
        "data_manifest_hash": env.get(container.UPDRAFT_DATA_MANIFEST_HASH) or None,
        "git_revision": env.get(container.UPDRAFT_GIT_REVISION) or None,
    }


def _dist_version(*names: str) -> str | None:
    for name in names:
        try:
            return dist_metadata.version(name)
        except dist_metadata.PackageNotFoundError:
            continue
    return None


def _versions() -> dict[str, str | None]:
    """The libraries the model depends on, read from the installed distributions (nothing is imported)."""
    return {
        "python": platform.python_version(),
        "xgboost": _dist_version("xgboost", "xgboost-cpu"),
        "numpy": np.__version__,
        "pandas": _dist_version("pandas"),
        "scikit-learn": _dist_version("scikit-learn"),
    }


def write_failure(text: str) -> None:
    path = container.failure_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def require_writable_outputs() -> None:
    """Fail in the first second, not after hours of training, when the job cannot write its results.

    The image runs as a non-root user; SageMaker may mount ``/opt/ml`` owned by root, and
    then the model could never be saved. The message names the fix.
    """
    for folder in (container.model_dir(), container.failure_file().parent):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / f".updraft-write-probe-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise UpdraftError(
                f"{folder} is not writable by user {os.getuid()} ({exc.strerror}): build the training image "
                "without its USER line (images/training/Dockerfile) for a platform that mounts /opt/ml owned by root"
            ) from None


def main(argv: list[str] | None = None) -> int:
    """Run training; on failure write ``output/failure`` and return non-zero (SageMaker's contract)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv not in ([], ["train"]):
        print(f"usage: train (got {' '.join(argv)})", file=sys.stderr)
        return 2
    previous = signal.getsignal(signal.SIGTERM)

    def request_stop(signum: int, frame: Any) -> None:
        StopFlag.requested = True

    StopFlag.requested = False
    on_main_thread = threading.current_thread() is threading.main_thread()
    if on_main_thread:  # signal handlers can only be set there (it always is in the container)
        signal.signal(signal.SIGTERM, request_stop)
    try:
        require_writable_outputs()
        train()
    except UpdraftError as exc:
        message = " ".join(str(exc).split())
        print(f"training failed: {message}", file=sys.stderr, flush=True)
        write_failure(message)
        return 1
    except Exception as exc:  # a bug: keep the traceback in the log, the reason where SageMaker shows it
        traceback.print_exc()
        message = " ".join(f"{type(exc).__name__}: {exc}".split())
        write_failure(message)
        return 1
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
