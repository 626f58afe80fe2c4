"""Training on the preprocess Dask cluster with ``xgboost.dask`` (``train.backend: dask``).

For feature splits too large for one training instance: every Dask worker reads its share
of the Parquet files (row groups, straight from S3 with the storage options it is given),
keeps it in its own memory, and XGBoost trains across the workers with its collective
(Rabit) over the cluster's network. The client sees only file footers, the fitted
``transform.json`` and the finished booster; no feature row passes through it.

It is the training container's job done another way, so it borrows the container's rules
rather than restating them: hyperparameters are parsed and defaulted by
``images.training.train.resolve_params``, transform.json is checked by its
``read_transform_spec``, labels by its ``check_labels``, and the artifact is the same model
folder (``xgboost-model.json``, ``transform.json``, ``metadata.json``) packed by
``pack_model_dir``, so evaluation and serving load it through
:func:`tasks.modelbundle.load_model_bundle` unchanged. What differs: XGBoost's threads per
worker are the worker's own (unless the hyperparameters name ``nthread``), and the metric
lines (``[round]\\tvalidation:auc=...`` per round, ``validation:auc=...`` alone at the end)
go to the ``updraft.train`` logger and ``<work_dir>/train.log``, never to stdout (it
belongs to the CLI's ``--json``).

Two things are XGBoost's own on several workers. AUC (``auc``, ``aucpr``) is combined from
each worker's AUC: close to, not equal to, the AUC of the whole split (sums such as
``logloss``, ``rmse`` and ``mlogloss`` are exact; the evaluate stage computes every figure
exactly on the test split). Ranking (``_group`` holds the query id) trains with the
container's ``rank:ndcg``; a query whose rows sit on two workers is ranked as two smaller
queries, so it pays to keep each query's rows in one file. There are no checkpoints: a
failed Dask job starts again from round 0.

The functions that run on workers import NumPy, pyarrow, fsspec and XGBoost, never
Prefect or boto3 (as in :mod:`tasks.features.partitions`).
"""

from __future__ import annotations

import json
import logging
import operator
import platform
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from importlib import metadata as dist_metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import xgboost as xgb
from fsspec.core import strip_protocol
from fsspec.implementations.local import LocalFileSystem

from images.training import train as entry
from images.training.xgb import xgboost_message
from tasks.errors import ConfigError, DataError, StageError, UpdraftError
from tasks.training import container
from tasks.training.local_job import TrainResult, log_container_line, pack_model_dir

if TYPE_CHECKING:
    from distributed import Client, Future

logger = logging.getLogger("updraft.train")

BACKEND = "dask"
LABEL_COLUMN = container.LABEL_COLUMN
#: The query id of each row, for ranking (int64 hashes; XGBoost's ``qid`` once made dense).
GROUP_COLUMN = container.GROUP_COLUMN
RANKING = "ranking"
#: Row groups are gathered into one Dask partition up to about this many bytes (uncompressed),
#: as preprocess partitions its input: balanced reads, few tasks.
PIECE_BYTES = 128 * 2**20
#: Rows of the first partition that check the hyperparameters before training (as the container does).
PROBE_ROWS = 64
_TOPIC_PREFIX = "updraft-train-rounds"


@dataclass(frozen=True)
class SplitPiece:
    """One Dask partition of a split: some row groups of one Parquet file, with their row count from the footer."""

    uri: str
    row_groups: tuple[int, ...]
    rows: int


@dataclass(frozen=True)
class SplitOnDask:
    """A split as Dask arrays whose chunks live on the workers (``qid`` for ranking only);
    ``futures`` are the worker tasks behind them, the piece reads first."""

    X: Any
    y: Any
    qid: Any
    rows: int
    futures: list


def train_on_dask(
    client: "Client",
    *,
    features_uri: str,
    storage_options: Mapping[str, Any] | None,
    hyperparameters: Mapping[str, Any],
    job_name: str,
    output_model_uri: str,
    fs: Any,
    environment: Mapping[str, str] | None = None,
    work_dir: str | Path | None = None,
) -> TrainResult:
    """Train on the cluster behind ``client`` from preprocess's splits; upload ``model.tar.gz`` to ``output_model_uri``.

    ``features_uri`` is the run's features folder (``train/``, ``validation/``,
    ``transform.json``). ``fs`` is the caller's filesystem for that folder and the model's
    destination (footers, transform.json, the upload); workers open the data themselves
    with ``storage_options``. ``environment`` carries ``UPDRAFT_RUN_ID`` as a job's
    Environment does. ``work_dir`` receives ``model/`` (the unpacked artifact, the
    result's ``model_dir``), ``model.tar.gz`` and ``train.log``; a temporary folder when
    not given.
    """
    started = time.monotonic()
    environment = dict(environment or {})
    work = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix=f"updraft-{job_name}-"))
    work.mkdir(parents=True, exist_ok=True)
    model_dir = work / "model"
    if model_dir.exists():  # a rerun starts clean: a stale model would mislead
        shutil.rmtree(model_dir)
    model_dir.mkdir(parents=True)
    log = _TrainLog(job_name, work / "train.log")

    base = features_uri.rstrip("/") + "/"
    spec = read_spec(fs, base + container.TRANSFORM_FILE, model_dir)
    task = spec["task"]
    feature_names = list(spec["feature_names"])
    num_classes = len(spec.get("label_classes") or [])
    params, num_round, early_stopping, metrics = resolve_dask_params(hyperparameters, task, num_classes)
    threads = _worker_threads(client)

    splits = {
        name: load_split(
            client, plan_split_reads(fs, base + name, name, task, feature_names), channel=name,
            feature_names=feature_names, task=task, num_classes=num_classes, storage_options=dict(storage_options or {}),
        )
        for name in (container.CHANNEL_TRAIN, container.CHANNEL_VALIDATION)
    }
    rows = {name: split.rows for name, split in splits.items()}
    log.emit(
        f"task={task} objective={params['objective']} rows train={rows[container.CHANNEL_TRAIN]} "
        f"validation={rows[container.CHANNEL_VALIDATION]} features={len(feature_names)} num_round={num_round} "
        f"early_stopping_rounds={early_stopping} backend={BACKEND} workers={len(threads)} threads={sum(threads.values())}"
    )
    # Both splits read in parallel; a bad file or label fails here with the container's message.
    _raise_first_error(*(f for split in splits.values() for f in split.futures))
    _raise_first_error(client.submit(_check_params_on_piece, splits[container.CHANNEL_TRAIN].futures[0], params, pure=False))

    booster, history = _train_booster(client, splits, params, num_round, early_stopping, metrics[0], job_name)
    del splits  # the workers may drop their copies of the data

    rounds_run = len(history[container.CHANNEL_VALIDATION][metrics[0]])
    best = booster.num_boosted_rounds() - 1 if early_stopping > 0 else rounds_run - 1
    for epoch in range(rounds_run):  # the full record in train.log; the logger had them live
        log.write(_round_line(epoch, {d: {m: v[epoch] for m, v in per.items()} for d, per in history.items()}))
    final = {
        f"{data}:{metric}": float(values[best])
        for data, per_metric in history.items()
        for metric, values in per_metric.items()
    }
    log.emit(f"rounds={rounds_run} best_iteration={best} (early stopping {'on' if early_stopping else 'off'})")
    for name, value in final.items():
        log.emit(container.format_metric(name, value))

    booster.save_model(str(model_dir / container.MODEL_FILE))
    metadata = _metadata(spec, environment, job_name=job_name, metrics=final, params=params, threads=threads)
    metadata.update({"best_iteration": best, "rounds": rounds_run, "rows": rows})
    metadata["duration_s"] = round(time.monotonic() - started, 3)
    (model_dir / container.METADATA_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=False))

    tar_path = pack_model_dir(model_dir, work / "model.tar.gz")
    upload_file(fs, tar_path, output_model_uri)
    duration = round(time.monotonic() - started, 3)
    logger.info("training job %s: completed on Dask in %.1f s, model at %s", job_name, duration, output_model_uri)
    return TrainResult(
        job_name=job_name,
        model_uri=output_model_uri,
        metrics=final,
        model_dir=str(model_dir),
        duration_s=duration,
        status="Completed",
    )


def _train_booster(
    client: "Client",
    splits: Mapping[str, "SplitOnDask"],
    params: dict[str, Any],
    num_round: int,
    early_stopping: int,
    primary: str,
    job_name: str,
) -> tuple[xgb.Booster, dict[str, dict[str, list[float]]]]:
    """``xgboost.dask.train`` over the splits as the container trains: early stopping on the
    validation split's first metric, keeping the best round; each round's line logged live."""
    import xgboost.dask as dxgb

    train, valid = splits[container.CHANNEL_TRAIN], splits[container.CHANNEL_VALIDATION]
    topic = f"{_TOPIC_PREFIX}-{job_name}-{uuid.uuid4().hex[:8]}"
    callbacks: list[Any] = [_RoundsToClient(topic)]
    if early_stopping > 0:
        callbacks.append(
            xgb.callback.EarlyStopping(
                rounds=early_stopping, metric_name=primary, data_name=container.CHANNEL_VALIDATION, save_best=True
            )
        )
    client.subscribe_topic(topic, lambda event: log_container_line(job_name, str(event[1])))
    try:
        if params.get("tree_method", "hist") in ("hist", "auto"):
            # Quantised on the workers; the validation split against the train split's cuts.
            dtrain = dxgb.DaskQuantileDMatrix(client, train.X, train.y, qid=train.qid)
            dvalid = dxgb.DaskQuantileDMatrix(client, valid.X, valid.y, qid=valid.qid, ref=dtrain)
        else:  # exact and approx need the raw values
            dtrain = dxgb.DaskDMatrix(client, train.X, train.y, qid=train.qid)
            dvalid = dxgb.DaskDMatrix(client, valid.X, valid.y, qid=valid.qid)
        output = dxgb.train(
            client,
            params,
            dtrain,
            num_boost_round=num_round,
            evals=[(dtrain, container.CHANNEL_TRAIN), (dvalid, container.CHANNEL_VALIDATION)],
            callbacks=callbacks,
            verbose_eval=False,
        )
    except xgb.core.XGBoostError as exc:
        raise ConfigError(f"XGBoost failed on the Dask cluster: {xgboost_message(exc)}") from None
    finally:
        client.unsubscribe_topic(topic)
    return output["booster"], output["history"]


def read_spec(fs: Any, transform_uri: str, model_dir: Path) -> dict[str, Any]:
    """transform.json, copied byte for byte into the model folder and checked by the container's own rules."""
    try:
        raw = fs.cat_file(strip_protocol(transform_uri))
    except FileNotFoundError:
        raise DataError(f"no {container.TRANSFORM_FILE} at {transform_uri}: run the preprocess stage first") from None
    (model_dir / container.TRANSFORM_FILE).write_bytes(raw)
    spec, _ = entry.read_transform_spec(model_dir)
    return spec


def resolve_dask_params(
    hyperparameters: Mapping[str, Any], task: str, num_classes: int
) -> tuple[dict[str, Any], int, int, list[str]]:
    """The container's parameters and defaults (``resolve_params``), with XGBoost's threads left to each worker.

    ``nthread`` stays only when the hyperparameters name it (or ``n_jobs``): otherwise
    ``xgboost.dask`` gives each worker as many threads as the worker has, where the
    container's default would give every worker the launching machine's share.
    Returns ``(xgb_params, num_round, early_stopping_rounds, eval_metrics)``, the metrics
    those XGBoost computes (the container adds its own for ranking, e.g. ``map@10``).
    """
    if task not in entry.OBJECTIVES:
        raise ConfigError(
            f"task {task!r} cannot be trained on the Dask backend (it trains {', '.join(entry.OBJECTIVES)} "
            "with XGBoost); set train.backend: container"
        )
    params, num_round, early_stopping, metrics = entry.resolve_params(hyperparameters, task, num_classes, {})
    if not {"nthread", "n_jobs"} & {str(k) for k in hyperparameters}:
        params.pop("nthread", None)
    # Metrics the container's loop computes itself (not XGBoost's eval_metric) have no
    # distributed form here: the first metric must be XGBoost's, the others are left out.
    native = list(params.get("eval_metric") or [])
    own = [m for m in metrics if m not in native]
    if metrics[0] in own:
        raise ConfigError(
            f"eval_metric {metrics[0]!r} is computed by the training container only, and the first metric drives "
            f"early stopping; on train.backend dask put one XGBoost computes first (e.g. {native[0] if native else 'ndcg@10'})"
        )
    if own:
        logger.info("metrics %s are computed by the training container only; on Dask: %s", ", ".join(own), ", ".join(native))
    return params, num_round, early_stopping, native


def split_columns(task: str, feature_names: list[str]) -> list[str]:
    """The columns a split's files must hold: the features, ``_label``, and ``_group`` for ranking."""
    return [*feature_names, LABEL_COLUMN, *([GROUP_COLUMN] if task == RANKING else [])]


def plan_split_reads(fs: Any, folder_uri: str, channel: str, task: str, feature_names: list[str]) -> list[SplitPiece]:
    """A split's partitions from its files' footers (read on the client: metadata only).

    Files and folders named ``_*`` or ``.*`` are writers' markers, not data (as in the
    container's channels). Every file must hold the columns transform.json names.
    """
    root = strip_protocol(folder_uri).rstrip("/")
    files = sorted(
        path for path in (fs.find(root) if fs.isdir(root) else [])
        if not any(part.startswith(("_", ".")) for part in path[len(root) + 1 :].split("/"))
    )
    if not files:
        raise DataError(f"training channel {channel!r} holds no Parquet files ({folder_uri})")
    columns = split_columns(task, feature_names)
    pieces: list[SplitPiece] = []
    for path in files:
        name = path.rsplit("/", 1)[-1]
        try:
            with fs.open(path, "rb") as handle:
                meta = pq.ParquetFile(handle).metadata
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"training channel {channel!r}: {name} is not a Parquet file ({exc})") from None
        present = set(meta.schema.to_arrow_schema().names)
        missing = [c for c in columns if c not in present]
        if missing:
            raise DataError(
                f"training channel {channel!r}: {name} lacks column(s) {', '.join(missing)} named by transform.json"
                + (" (ranking needs the query id of each row in _group)" if GROUP_COLUMN in missing else "")
            )
        uri = fs.unstrip_protocol(path)
        group: list[int] = []
        rows = size = 0
        for i in range(meta.num_row_groups):
            row_group = meta.row_group(i)
            if group and size + row_group.total_byte_size > PIECE_BYTES:
                pieces.append(SplitPiece(uri, tuple(group), rows))
                group, rows, size = [], 0, 0
            if row_group.num_rows:
                group.append(i)
                rows += row_group.num_rows
                size += row_group.total_byte_size
        if group:
            pieces.append(SplitPiece(uri, tuple(group), rows))
    if not pieces:
        raise DataError(f"training channel {channel!r} has no rows ({folder_uri})")
    return pieces


def load_split(
    client: "Client",
    pieces: list[SplitPiece],
    *,
    channel: str,
    feature_names: list[str],
    task: str,
    num_classes: int,
    storage_options: Mapping[str, Any],
) -> SplitOnDask:
    """A split read on the workers (one task per piece, kept in their memory) as Dask arrays.

    Returns at once: the reads run while the caller goes on, and it waits on ``futures``
    (reads first, in piece order) to see a bad file or label before XGBoost starts. The
    shapes come from the footers, so nothing is gathered.
    """
    import dask
    import dask.array as da

    futures = [
        client.submit(
            read_split_piece, piece, feature_names=feature_names, task=task, num_classes=num_classes,
            channel=channel, storage_options=storage_options, pure=False,
        )
        for piece in pieces
    ]
    width = len(feature_names)

    def column(index: int | None, parts: list, shape: Callable[[int], tuple[int, ...]], dtype: Any) -> Any:
        """One Dask array from the pieces' futures (item ``index`` of each, or the whole value)."""
        pick = dask.delayed(operator.getitem, pure=True) if index is not None else dask.delayed(np.asarray, pure=True)
        chunks = [
            da.from_delayed(pick(part, index) if index is not None else pick(part), shape=shape(piece.rows), dtype=dtype)
            for part, piece in zip(parts, pieces)
        ]
        return da.concatenate(chunks, axis=0)

    X = column(0, futures, lambda n: (n, width), np.float32)
    y = column(1, futures, lambda n: (n,), np.float32)
    qid = None
    if task == RANKING:
        # XGBoost keeps query ids as uint32 and preprocess writes 63-bit hashes: each split's
        # ids become their rank among the split's distinct ids (order kept, so each piece stays
        # sorted), computed and applied on the workers.
        distinct = client.submit(_merge_distinct, [client.submit(_distinct_query_ids, f, pure=False) for f in futures], pure=False)
        dense = [client.submit(_dense_query_ids, f, distinct, pure=False) for f in futures]
        qid = column(None, dense, lambda n: (n,), np.uint32)
        futures = [*futures, *dense]
    return SplitOnDask(X=X, y=y, qid=qid, rows=sum(p.rows for p in pieces), futures=futures)


def read_split_piece(
    piece: SplitPiece,
    *,
    feature_names: list[str],
    task: str,
    num_classes: int,
    channel: str,
    storage_options: Mapping[str, Any] | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """On a worker: one partition as ``(X float32 n×f, y float32, qid int64 or None)``, labels checked.

    Labels are float32 because XGBoost stores them so; for ranking the rows come sorted by
    query id (a stable sort), as XGBoost needs each query's rows together.
    """
    fs, path = fsspec.core.url_to_fs(piece.uri, **(storage_options or {}))
    columns = split_columns(task, feature_names)
    with fs.open(path, "rb") as handle:
        table = pq.ParquetFile(handle).read_row_groups(list(piece.row_groups), columns=columns)
    name = piece.uri.rsplit("/", 1)[-1]
    X = np.empty((table.num_rows, len(feature_names)), dtype=np.float32)
    for j, fname in enumerate(feature_names):
        X[:, j] = table.column(fname).to_numpy(zero_copy_only=False)
    y = table.column(LABEL_COLUMN).to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    try:
        entry.check_labels(y, task, num_classes, channel)
    except DataError as exc:
        raise DataError(f"{exc} (in {name})") from None
    qid = None
    if task == RANKING:
        group = table.column(GROUP_COLUMN)
        if not pa.types.is_integer(group.type) or group.null_count:
            raise DataError(
                f"training channel {channel!r}: {GROUP_COLUMN} in {name} must hold an integer query id on every row "
                f"(type {group.type}, {group.null_count} missing)"
            )
        qid = group.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
        order = np.argsort(qid, kind="stable")
        X, y, qid = X[order], y[order], qid[order]
    return X, y.astype(np.float32), qid


def _distinct_query_ids(part: tuple[np.ndarray, np.ndarray, np.ndarray | None]) -> np.ndarray:
    """On a worker: the sorted distinct query ids of one partition."""
    return np.unique(part[2])


def _merge_distinct(parts: list[np.ndarray]) -> np.ndarray:
    """On a worker: every distinct query id of a split, sorted (8 bytes a query, not a row)."""
    merged = np.unique(np.concatenate(parts))
    if len(merged) >= 2**32:
        raise DataError(f"{len(merged)} distinct query ids in one split: XGBoost takes fewer than 2**32")
    return merged


def _dense_query_ids(part: tuple[np.ndarray, np.ndarray, np.ndarray | None], distinct: np.ndarray) -> np.ndarray:
    """On a worker: a partition's query ids as their rank among the split's (uint32, same order)."""
    return np.searchsorted(distinct, part[2]).astype(np.uint32)


def _check_params_on_piece(part: tuple[np.ndarray, np.ndarray, np.ndarray | None], params: dict[str, Any]) -> None:
    """On a worker: the container's hyperparameter check, on the first rows of a partition it already holds."""
    X, y, _ = part
    _route_xgboost_warnings_here()
    entry.check_params(params, X[:PROBE_ROWS], y[:PROBE_ROWS])


def _route_xgboost_warnings_here() -> None:
    """Make XGBoost's native warnings Python warnings on this thread too.

    XGBoost registers its log callback for the thread that imported it only (the registry
    is thread-local), and Dask runs tasks on other threads: there an unused-parameter
    warning goes straight to stderr and ``check_params`` cannot see it. The callback object
    xgboost already holds is registered again (never a new one: the old one must stay alive).
    """
    lib = getattr(xgb.core, "_LIB", None)
    callback = getattr(lib, "callback", None)
    if callback is not None:
        lib.XGBRegisterLogCallback(callback)


def _raise_first_error(*futures: "Future") -> None:
    """Wait for worker tasks; re-raise the first failure, an :class:`UpdraftError` as it is."""
    from distributed import wait

    wait(list(futures))
    for future in futures:
        if future.status != "error":
            continue
        exc = future.exception()
        if isinstance(exc, UpdraftError):
            raise exc
        raise StageError(f"a Dask worker failed while preparing training: {type(exc).__name__}: {exc}") from exc


class _RoundsToClient(xgb.callback.TrainingCallback):
    """Each round's metrics, sent by the rank-0 worker as a Dask event the client logs as the
    container's ``[round]`` line: progress of a long job shows while it runs."""

    def __init__(self, topic: str) -> None:
        super().__init__()
        self.topic = topic

    def after_iteration(self, model: Any, epoch: int, evals_log: dict) -> bool:
        from distributed import get_worker
        from xgboost import collective

        if collective.get_rank() == 0:
            latest = {data: {metric: values[-1] for metric, values in per.items()} for data, per in evals_log.items()}
            try:
                get_worker().log_event(self.topic, _round_line(epoch, latest))
            except ValueError:  # not on a Dask worker (nothing to report to)
                pass
        return False


def _round_line(epoch: int, latest: Mapping[str, Mapping[str, float]]) -> str:
    """The container's per-round line: ``[epoch]`` then tab-separated ``data:metric=value``."""
    parts = [container.format_metric(f"{data}:{metric}", value) for data, per in latest.items() for metric, value in per.items()]
    return f"[{epoch}]\t" + "\t".join(parts)


class _TrainLog:
    """``train.log`` in the work folder plus the ``updraft.train`` logger, as the local job runner keeps them."""

    def __init__(self, job_name: str, path: Path) -> None:
        self.job_name = job_name
        self.path = path
        path.write_text("")

    def write(self, line: str) -> None:
        with open(self.path, "a", encoding="utf-8") as out:
            out.write(line + "\n")

    def emit(self, line: str) -> None:
        self.write(line)
        log_container_line(self.job_name, line)


def _worker_threads(client: "Client") -> dict[str, int]:
    """Each worker's thread count (what XGBoost uses there); fails when the cluster has no worker."""
    workers = client.scheduler_info(n_workers=-1).get("workers", {})
    if not workers:
        raise StageError(
            f"the Dask cluster at {client.scheduler.address} has no workers: start some, or unset "
            "DASK_SCHEDULER_ADDRESS to let updraft start a local cluster"
        )
    return {address: int(info.get("nthreads") or 1) for address, info in workers.items()}


def _metadata(
    spec: Mapping[str, Any],
    environment: Mapping[str, str],
    *,
    job_name: str,
    metrics: dict[str, float],
    params: dict[str, Any],
    threads: Mapping[str, int],
) -> dict[str, Any]:
    """metadata.json with the container's fields (what the model is, what it was trained on, with
    what), ``backend: dask`` and the workers it ran on; a Dask job has no checkpoint or signal."""
    record: dict[str, Any] = {
        "task": spec["task"],
        "algorithm": container.ALGORITHM_XGBOOST,
        "backend": BACKEND,
        "label": spec.get("label"),
        "label_classes": spec.get("label_classes"),
        "feature_names": list(spec["feature_names"]),
        "input_columns": spec.get("input_columns"),
        "metrics": metrics,
        "versions": _versions(),
        "run_id": environment.get(container.UPDRAFT_RUN_ID) or None,
        "training_job_name": job_name,
        "data_manifest_hash": environment.get(container.UPDRAFT_DATA_MANIFEST_HASH) or None,
        "git_revision": environment.get(container.UPDRAFT_GIT_REVISION) or None,
        "resumed_from_round": None,
        "stopped_early_by_signal": False,
        "device": str(params.get("device", "cpu")),
        "hosts": len({address.rsplit(":", 1)[0] for address in threads}),
        "workers": {"count": len(threads), "threads": sum(threads.values())},
        "hyperparameters": dict(params),
    }
    if spec["task"] == RANKING:
        record["group"] = spec.get("group")
    return record


def _versions() -> dict[str, str | None]:
    """The container's list of libraries the model depends on, plus the Dask ones it was trained with."""
    import dask
    import distributed
    import pandas

    try:
        sklearn: str | None = dist_metadata.version("scikit-learn")
    except dist_metadata.PackageNotFoundError:
        sklearn = None
    return {
        "python": platform.python_version(),
        "xgboost": xgb.__version__,
        "numpy": np.__version__,
        "pandas": pandas.__version__,
        "scikit-learn": sklearn,
        "pyarrow": pa.__version__,
        "dask": dask.__version__,
        "distributed": distributed.__version__,
    }


def upload_file(fs: Any, local: Path, uri: str) -> None:
    """Put ``local`` at ``uri`` on ``fs`` (a local destination's folder is created first)."""
    path = strip_protocol(uri)
    if isinstance(fs, LocalFileSystem):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    fs.put_file(str(local), path)
