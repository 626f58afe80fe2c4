"""Preprocess: curated Parquet -> transform.json + float32 feature splits, on Dask.

Two passes over the data, each one task per partition:

1. fit: every partition drops unlabelled rows, assigns splits by row hash and returns
   small partials (train-split column moments and category counts, label counts,
   row counts); the partials merge pairwise in a tree, so the client receives one
   small object whatever the number of partitions.
2. transform: every partition applies the fitted spec (:func:`apply_transform`, the
   function the endpoint uses) and writes its rows to the train, validation and test
   folders, one Parquet file per partition and split.

The kernels see pandas partitions and NumPy blocks; which scheduler runs them (threads,
a LocalCluster, a remote cluster) is the caller's choice.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

import dask
import dask.dataframe as dd
import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.aws.target import Target
from tasks.config import SUPPORTED_TASKS, Features, PipelineConfig, SplitConfig
from tasks.errors import ConfigError, DataError
from tasks.features.split import DEFAULT_SALT, SPLITS, TRAIN, assign_splits
from tasks.features.stats import (
    ColumnMoments,
    category_counts,
    column_moments,
    empty_moments,
    merge_counts,
    merge_moments,
    tree_reduce,
)
from tasks.features.transform import (
    CLASSIFICATION_TASKS,
    apply_transform,
    build_spec,
    category_strings,
    encode_labels,
    numeric_values,
)
from tasks.layout import Layout

if TYPE_CHECKING:
    from distributed import Client

log = logging.getLogger("updraft.preprocess")

LABEL_COLUMN = "_label"
TRANSFORM_FILE = "transform.json"


@dataclass
class PreprocessResult:
    rows: dict[str, int]
    features_uri: str
    transform_uri: str
    feature_names: list[str]


@dataclass
class FitPartial:
    """What one partition (or a merged group of them) contributes to the fit."""

    rows: dict[str, int]
    unlabelled: int
    moments: ColumnMoments
    counts: dict[str, dict[str, int]]
    labels: dict[str, int] = field(default_factory=dict)


def merge_partials(a: FitPartial, b: FitPartial) -> FitPartial:
    return FitPartial(
        rows={name: a.rows[name] + b.rows[name] for name in SPLITS},
        unlabelled=a.unlabelled + b.unlabelled,
        moments=merge_moments(a.moments, b.moments),
        counts={col: merge_counts(a.counts[col], b.counts[col]) for col in a.counts},
        labels=merge_counts(a.labels, b.labels),
    )


def drop_unlabelled(frame: pd.DataFrame, label: str, task: str) -> tuple[pd.DataFrame, int]:
    """Rows that have a label (a finite number for regression), and how many had none."""
    if task in CLASSIFICATION_TASKS:
        keep = category_strings(frame[label]).notna().to_numpy()
    else:
        keep = np.isfinite(numeric_values(frame[label], label))
    dropped = int(len(frame) - keep.sum())
    return (frame if dropped == 0 else frame[keep]), dropped


def fit_partition(
    frame: pd.DataFrame, *, features: Features, label: str, task: str, split: SplitConfig, salt: str
) -> FitPartial:
    """The partials of one partition: statistics of its train rows, counts of all its labelled rows."""
    frame, dropped = drop_unlabelled(frame, label, task)
    codes = assign_splits(frame, split, salt)
    train = frame[codes == TRAIN]
    if features.numeric:
        block = np.column_stack([numeric_values(train[c], c) for c in features.numeric])
        moments = column_moments(block)
    else:
        moments = empty_moments(0)
    return FitPartial(
        rows={name: int((codes == i).sum()) for i, name in enumerate(SPLITS)},
        unlabelled=dropped,
        moments=moments,
        counts={c: category_counts(train[c]) for c in features.categorical},
        labels=category_counts(frame[label]) if task in CLASSIFICATION_TASKS else {},
    )


def transform_partition(
    frame: pd.DataFrame,
    *,
    part: int,
    spec: Mapping[str, Any],
    features_uri: str,
    storage_options: Mapping[str, Any] | None,
    split: SplitConfig,
    salt: str,
) -> dict[str, int]:
    """Encode one partition and write its rows of each split as ``<split>/part.NNNNN.parquet``."""
    frame, _ = drop_unlabelled(frame, spec["label"], spec["task"])
    codes = assign_splits(frame, split, salt)
    matrix = apply_transform(frame, spec)
    labels = encode_labels(frame[spec["label"]], spec)
    fs, root = fsspec.core.url_to_fs(features_uri, **(storage_options or {}))
    root = root.rstrip("/")
    written = {}
    for i, name in enumerate(SPLITS):
        rows = codes == i
        written[name] = int(rows.sum())
        if not written[name]:
            continue
        part_matrix = matrix[rows]
        columns = {fname: part_matrix[:, j] for j, fname in enumerate(spec["feature_names"])}
        columns[LABEL_COLUMN] = labels[rows]
        with fs.open(f"{root}/{name}/part.{part:05d}.parquet", "wb") as out:
            pq.write_table(pa.table(columns), out)
    return written


def preprocess_dataset(
    *,
    curated_uri: str,
    features_uri: str,
    features: Features,
    kinds: dict[str, str],
    label: str,
    task: str,
    split: SplitConfig,
    input_columns: list[str],
    storage_options: dict | None,
    client: "Client | None" = None,
) -> PreprocessResult:
    """Fit the transform on the train split of the curated data and write every split's features.

    ``client`` is a ``distributed.Client``; without one Dask's current default scheduler
    runs the work. ``input_columns`` are the feature columns in contract order (the CSV
    order the endpoint accepts).
    """
    _check_request(features=features, kinds=kinds, label=label, task=task, input_columns=input_columns)
    storage_options = dict(storage_options or {})
    features_uri = features_uri.rstrip("/") + "/"
    transform_uri = features_uri + TRANSFORM_FILE
    salt = DEFAULT_SALT

    started = time.perf_counter()
    curated = _read_curated(curated_uri, storage_options, list(dict.fromkeys([*features.all, label])))
    _check_columns(curated, features, label, task, curated_uri)
    parts = curated.to_delayed()
    fit_task = dask.delayed(fit_partition, pure=True)
    partials = [fit_task(p, features=features, label=label, task=task, split=split, salt=salt) for p in parts]
    fitted: FitPartial = _compute([tree_reduce(partials, dask.delayed(merge_partials, pure=True))], client)[0]
    fit_s = time.perf_counter() - started

    if fitted.unlabelled:
        log.warning("dropped %d rows with no value in label %r", fitted.unlabelled, label)
    labelled = sum(fitted.rows.values())
    if labelled == 0:
        raise DataError(f"no row of the curated data at {curated_uri} has a value in label {label!r}")
    for name in SPLITS:
        if fitted.rows[name] == 0:
            hint = "lower split.validation and split.test" if name == "train" else f"add rows or raise split.{name}"
            raise DataError(f"the {name} split has no rows ({labelled} labelled rows in all): {hint}")

    spec = build_spec(
        task=task,
        label=label,
        label_classes=_label_classes(fitted.labels, label, task),
        input_columns=input_columns,
        features=features,
        moments=fitted.moments,
        counts=fitted.counts,
        split=split,
        split_hash=salt,
    )
    _warn_degenerate(spec)

    fs, root = fsspec.core.url_to_fs(features_uri, **storage_options)
    root = root.rstrip("/")
    for name in SPLITS:
        if fs.exists(f"{root}/{name}"):
            fs.rm(f"{root}/{name}", recursive=True)
        fs.makedirs(f"{root}/{name}", exist_ok=True)
    with fs.open(f"{root}/{TRANSFORM_FILE}", "w") as out:
        json.dump(spec, out, indent=2, allow_nan=False)

    started = time.perf_counter()
    write_task = dask.delayed(transform_partition, pure=False)  # it writes files: never deduplicate
    shared_spec = dask.delayed(spec, traverse=False)  # one graph node, shipped to each worker once
    writes = [
        write_task(p, part=i, spec=shared_spec, features_uri=features_uri, storage_options=storage_options, split=split, salt=salt)
        for i, p in enumerate(parts)
    ]
    written = tree_reduce(_compute(writes, client), lambda a, b: {k: a[k] + b[k] for k in SPLITS})
    transform_s = time.perf_counter() - started
    if written != fitted.rows:
        raise RuntimeError(f"transform wrote {written} rows but the fit counted {fitted.rows}")

    log.info(
        "preprocessed %d rows (%s) in %d partitions: fit %.2f s, transform+write %.2f s, %.0f rows/s",
        labelled,
        ", ".join(f"{k} {v}" for k, v in written.items()),
        len(parts),
        fit_s,
        transform_s,
        labelled / max(fit_s + transform_s, 1e-9),
    )
    return PreprocessResult(
        rows=written, features_uri=features_uri, transform_uri=transform_uri, feature_names=list(spec["feature_names"])
    )


def require_features(fs: Any, features_uri: str, *, run_id: str, then: str = "run the preprocess stage first") -> str:
    """The run's features folder, once it holds ``transform.json`` and every split; returns it with a trailing ``/``.

    Train and evaluate may be scheduled apart from preprocess, so they check that its
    output is all there before starting a job on half of it. ``then`` ends the message:
    what the user runs to make the features.
    """
    base = features_uri.rstrip("/") + "/"
    missing = [] if fs.exists(base + TRANSFORM_FILE) else [TRANSFORM_FILE]
    missing += [f"{name}/" for name in SPLITS if not fs.find(base + name)]
    if len(missing) == 1 + len(SPLITS):
        raise DataError(f"no features for run {run_id} at {base}: {then}")
    if missing:
        raise DataError(f"the features of run {run_id} at {base} lack {', '.join(missing)}: {then}")
    return base


def _check_request(*, features: Features, kinds: Mapping[str, str], label: str, task: str, input_columns: list[str]) -> None:
    if task not in SUPPORTED_TASKS:
        raise ConfigError(f"task {task!r} cannot be preprocessed yet; use one of {', '.join(SUPPORTED_TASKS)}")
    if not features.all:
        raise ConfigError("no feature columns: list some under features.numeric or features.categorical")
    if label in features.all:
        raise ConfigError(f"label {label!r} is also listed as a feature; remove it from features")
    if LABEL_COLUMN in features.all:
        raise ConfigError(f"a feature may not be named {LABEL_COLUMN!r} (it names the encoded label column)")
    for name in features.numeric:
        if kinds.get(name) == "categorical":
            raise ConfigError(f"column {name!r} is categorical in the contract; list it under features.categorical")
    outside = [c for c in features.all if c not in input_columns]
    if outside:
        raise ConfigError(f"feature {outside[0]!r} is not a column of the contract ({', '.join(input_columns)})")
    if task == "regression" and kinds.get(label) == "categorical":
        raise DataError(f"regression needs a numeric label, but {label!r} is categorical in the contract")


def _read_curated(curated_uri: str, storage_options: dict[str, Any], columns: list[str]) -> dd.DataFrame:
    """Every curated file, checked for the columns preprocess needs.

    All columns are read (the split hashes whole rows, so reruns split identically);
    day-partition folder names must not become columns. Files whose kept extra columns
    differ (``extra_columns: keep`` over sparse JSON) are not supported here yet.
    """
    import pyarrow.parquet as pq

    fs, root = fsspec.core.url_to_fs(curated_uri, **storage_options)
    files = sorted(p for p in fs.find(root) if p.endswith(".parquet"))
    if not files:
        raise DataError(f"no curated Parquet files under {curated_uri}: run the ingest stage first")
    with fs.open(files[0]) as handle:
        present = list(pq.read_schema(handle).names)
    absent = [c for c in columns if c not in present]
    if absent:
        raise DataError(f"the curated data at {curated_uri} has no column {absent[0]!r} (columns: {', '.join(present)})")
    return dd.read_parquet(
        [fs.unstrip_protocol(p) for p in files],
        storage_options=storage_options,
        dataset={"partitioning": None},
    )


def _check_columns(curated: dd.DataFrame, features: Features, label: str, task: str, curated_uri: str) -> None:
    columns = list(curated.columns)
    absent = [c for c in (*features.all, label) if c not in columns]
    if absent:
        raise DataError(f"the curated data at {curated_uri} has no column {absent[0]!r} (columns: {', '.join(columns)})")
    dtype = curated.dtypes[label]
    if task == "regression" and (not pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype)):
        raise DataError(f"regression needs a numeric label, but {label!r} has dtype {dtype}")


def _compute(objects: list, client: "Client | None") -> list:
    if client is not None:
        return client.gather(client.compute(objects))
    return list(dask.compute(*objects))


def _label_classes(counts: Mapping[str, int], label: str, task: str) -> list[str] | None:
    if task not in CLASSIFICATION_TASKS:
        return None
    classes = sorted(counts)
    shown = ", ".join(classes[:5]) + (", ..." if len(classes) > 5 else "")
    if task == "binary_classification" and len(classes) != 2:
        raise DataError(
            f"binary_classification needs exactly 2 distinct values in label {label!r}, found {len(classes)}"
            f" ({shown}); fix the label or use multiclass_classification"
        )
    if len(classes) < 2:
        raise DataError(f"multiclass_classification needs at least 2 distinct values in label {label!r}, found {len(classes)} ({shown})")
    return classes


def _warn_degenerate(spec: Mapping[str, Any]) -> None:
    for entry in spec["numeric"]:
        if entry["count"] == 0:
            log.warning("column %r has no values in the train split: it is encoded as a constant 0", entry["name"])
        elif entry["std"] == 0:
            log.warning("column %r is constant (%s) in the train split: it carries no information", entry["name"], entry["min"])
    for entry in spec["categorical"]:
        if not entry["vocabulary"]:
            log.warning("column %r has no values in the train split: every row gets the unseen code 0", entry["name"])


@task(name="preprocess", cache_policy=NO_CACHE)
def preprocess_stage(
    config: PipelineConfig,
    target: Target,
    run_id: str,
    features: Features,
    kinds: dict[str, str],
    input_columns: list[str],
    client: "Client | None" = None,
) -> PreprocessResult:
    """Preprocess the dataset's curated data into this run's feature splits on ``target``."""
    layout = Layout(config.bucket, config.name)
    return preprocess_dataset(
        curated_uri=layout.curated(),
        features_uri=layout.features(run_id),
        features=features,
        kinds=kinds,
        label=config.label,
        task=config.task,
        split=config.split,
        input_columns=input_columns,
        storage_options=target.storage_options(),
        client=client,
    )
