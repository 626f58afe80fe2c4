"""What each Dask worker runs on one partition: split codes, fit partials, the transform.

Kept apart from :mod:`tasks.features.preprocess` (the client side, which also holds the
Prefect task) so a worker imports only NumPy, pandas, pyarrow and fsspec: Prefect alone
costs each worker process about 80 MB, which matters where workers run under a tight
memory limit. Every function here is a pure function of its partition and small inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.config import Features, SplitConfig
from tasks.features.numeric import array_module, numeric_stats
from tasks.features.sketch import QuantileSketch
from tasks.features.split import SPLITS, TRAIN, PlanPartial, SplitPlan, assign_splits, plan_partial
from tasks.features.stats import ColumnMoments, category_counts, merge_counts, merge_moments
from tasks.features.transform import (
    CLASS_LABEL_TASKS,
    OPTIONAL_LABEL_TASKS,
    apply_transform,
    category_codes,
    category_strings,
    coded_columns,
    encode_labels,
    group_ids,
    numeric_values,
    outputs_of,
)

LABEL_COLUMN = "_label"
#: The ranking query id of each row (int64, :func:`tasks.features.transform.group_ids`); never a feature.
GROUP_COLUMN = "_group"
#: The raw value of ``evaluate.segment`` (a string, :func:`tasks.features.transform.category_strings`;
#: null where missing), carried so the evaluation can report metrics per value; never a feature.
SEGMENT_COLUMN = "_segment"


@dataclass(frozen=True)
class Piece:
    """One partition: some row groups of one curated file."""

    uri: str
    row_groups: tuple[int, ...]
    rows: int


def read_piece(piece: Piece, storage_options: Mapping[str, Any] | None) -> pd.DataFrame:
    """A partition as pandas, read with pyarrow alone (no Dask DataFrame machinery on the
    workers: it costs each worker process about 100 MB before it reads a byte)."""
    fs, path = fsspec.core.url_to_fs(piece.uri, **(storage_options or {}))
    with fs.open(path, "rb") as handle:
        table = pq.ParquetFile(handle).read_row_groups(list(piece.row_groups))
    frame = table.to_pandas()
    del table
    _release_memory()
    return frame


def _release_memory() -> None:
    """Hand memory freed by a partition's arrays back to the OS (Arrow's allocator keeps it
    for reuse otherwise): a worker at rest then sits near its baseline, below Dask's pause
    threshold, where data larger than memory streams through workers with tight limits."""
    pa.default_memory_pool().release_unused()


@dataclass
class FitPartial:
    """What one partition (or a merged group of them) contributes to the fit."""

    rows: dict[str, int]
    unlabelled: int
    moments: ColumnMoments
    counts: dict[str, dict[str, int]]
    labels: dict[str, int] = field(default_factory=dict)
    log_moments: ColumnMoments | None = None
    sketches: dict[str, QuantileSketch] = field(default_factory=dict)
    infinite: dict[str, int] = field(default_factory=dict)
    #: Ranking: the smallest and largest relevance grade over every split's labelled rows.
    label_min: float = math.inf
    label_max: float = -math.inf
    #: Rows whose group (query) value is missing.
    null_groups: int = 0


def merge_partials(a: FitPartial, b: FitPartial) -> FitPartial:
    return FitPartial(
        rows={name: a.rows[name] + b.rows[name] for name in SPLITS},
        unlabelled=a.unlabelled + b.unlabelled,
        moments=merge_moments(a.moments, b.moments),
        counts={col: merge_counts(a.counts[col], b.counts[col]) for col in a.counts},
        labels=merge_counts(a.labels, b.labels),
        log_moments=merge_moments(a.log_moments, b.log_moments) if a.log_moments is not None else None,
        sketches={col: a.sketches[col].merge(b.sketches[col]) for col in a.sketches},
        infinite=merge_counts(a.infinite, b.infinite),
        label_min=min(a.label_min, b.label_min),
        label_max=max(a.label_max, b.label_max),
        null_groups=a.null_groups + b.null_groups,
    )


def drop_unlabelled(frame: pd.DataFrame, label: str, task: str) -> tuple[pd.DataFrame, int]:
    """Rows that have a label (a finite number for regression and ranking), and how many had
    none. Anomaly detection keeps every row: its label is optional (unknown, not missing data)."""
    if task in OPTIONAL_LABEL_TASKS:
        return frame, 0
    if task in CLASS_LABEL_TASKS:
        keep = category_codes(frame[label])[0] >= 0
    else:
        keep = np.isfinite(numeric_values(frame[label], label))
    dropped = int(len(frame) - keep.sum())
    return (frame if dropped == 0 else frame[keep]), dropped


def plan_partition(frame: pd.DataFrame, *, label: str, task: str, split: SplitConfig, salt: str) -> PlanPartial:
    """The split-plan partial of one partition's labelled rows (stratified and time splits)."""
    frame, _ = drop_unlabelled(frame, label, task)
    return plan_partial(frame, split, label, salt=salt)


def split_codes(frame: pd.DataFrame, *, label: str, task: str, plan: SplitPlan) -> np.ndarray:
    """The split code of each labelled row of the partition (int8, one byte a row).

    Computed once per partition and kept on the workers for the transform pass: hashing
    every row is among the costliest steps, and the codes are small."""
    frame, _ = drop_unlabelled(frame, label, task)
    codes = assign_splits(frame, plan, label=label)
    _release_memory()
    return codes


def fit_partition(
    frame: pd.DataFrame,
    *,
    features: Features,
    label: str,
    task: str,
    plan: SplitPlan,
    codes: np.ndarray | None = None,
    device: str = "cpu",
    group: str | None = None,
) -> FitPartial:
    """The partials of one partition: statistics of its train rows, counts of all its labelled rows.

    Only what the configured transforms need is computed: log moments for log1p columns,
    quantile sketches for median, clipping and bins, value counts for vocabularies and
    one-hot columns (hashed columns need none). ``device`` picks where the numeric
    statistics run (:func:`tasks.features.numeric.array_module`). Ranking adds the range
    of the relevance grades; ``group`` (the query column) the count of rows without a query.
    """
    frame, dropped = drop_unlabelled(frame, label, task)
    if codes is None:
        codes = assign_splits(frame, plan, label=label)
    _check_codes(codes, frame)
    train = frame[codes == TRAIN]
    numeric = numeric_stats(train, features, array_module(device))
    counted = [c for c in features.categorical if features.categorical_transform(c).encode != "hash"]
    counts = {c: category_counts(train[c]) for c in counted}
    labels = category_counts(frame[label]) if task in CLASS_LABEL_TASKS else {}
    grades = numeric_values(frame[label], label) if task == "ranking" and len(frame) else None
    null_groups = int((category_codes(frame[group])[0] < 0).sum()) if group is not None else 0
    del train
    _release_memory()
    return FitPartial(
        rows={name: int((codes == i).sum()) for i, name in enumerate(SPLITS)},
        unlabelled=dropped,
        moments=numeric.moments,
        counts=counts,
        labels=labels,
        log_moments=numeric.log_moments,
        sketches=numeric.sketches,
        infinite=numeric.infinite,
        label_min=float(grades.min()) if grades is not None else math.inf,
        label_max=float(grades.max()) if grades is not None else -math.inf,
        null_groups=null_groups,
    )


@dataclass
class Written:
    """What one partition's transform wrote, and how many of its values the fit never saw."""

    rows: dict[str, int]
    unseen: dict[str, int] = field(default_factory=dict)


def merge_written(a: Written, b: Written) -> Written:
    return Written({k: a.rows[k] + b.rows[k] for k in SPLITS}, merge_counts(a.unseen, b.unseen))


#: How feature files are written (benchmarks/output_format.py, 2M rows x 25 float32 + label):
#: pyarrow's default dictionary-encodes every column, which costs most of the write time on
#: scaled floats and saves nothing there (193 MB, 1.0 s); dictionary on the code columns and
#: the label only gives 171 MB in 0.42 s, read back in 0.09 s. zstd would save 9% more for
#: +0.24 s; snappy is read by every consumer (XGBoost via pyarrow, Spark, SageMaker's
#: containers). One row group per file here (partitions are under 1Mi rows).
PARQUET_OPTIONS: dict[str, Any] = {"compression": "snappy", "row_group_size": 1 << 20}


def transform_partition(
    frame: pd.DataFrame,
    *,
    part: int,
    spec: Mapping[str, Any],
    features_uri: str,
    storage_options: Mapping[str, Any] | None,
    plan: SplitPlan,
    codes: np.ndarray | None = None,
    device: str = "cpu",
    segment: str | None = None,
) -> Written:
    """Encode one partition and write its rows of each split as ``<split>/part.NNNNN.parquet``:
    the features, ``_label``, for ranking ``_group`` (the query id; rows are not sorted by
    it here: the training entry point sorts), and with ``segment`` (``evaluate.segment``)
    that column's raw values as text in ``_segment``."""
    frame, _ = drop_unlabelled(frame, spec["label"], spec["task"])
    if codes is None:
        codes = assign_splits(frame, plan, label=spec["label"])
    _check_codes(codes, frame)
    matrix = apply_transform(frame, spec, xp=array_module(device))
    labels = encode_labels(frame[spec["label"]], spec)
    # Rows grouped by split once (a stable sort keeps their order within a split): each
    # column is then gathered once and sliced, rather than filtered once per split.
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(SPLITS) + 1))
    names = list(spec["feature_names"])
    grouped = {fname: matrix[:, j].take(order) for j, fname in enumerate(names)}
    grouped[LABEL_COLUMN] = labels.take(order)
    if spec.get("group"):
        grouped[GROUP_COLUMN] = group_ids(frame[spec["group"]]).take(order)
    if segment:
        text = category_strings(frame[segment]).to_numpy(dtype=object, na_value=None)
        grouped[SEGMENT_COLUMN] = pa.array(text.take(order), type=pa.string())
    options = {**PARQUET_OPTIONS, "use_dictionary": [*coded_columns(spec), LABEL_COLUMN, *([SEGMENT_COLUMN] if segment else [])]}
    fs, root = fsspec.core.url_to_fs(features_uri, **(storage_options or {}))
    root = root.rstrip("/")
    written = {}
    for i, name in enumerate(SPLITS):
        start, stop = int(bounds[i]), int(bounds[i + 1])
        written[name] = stop - start
        if not written[name]:
            continue
        table = pa.table({fname: values[start:stop] for fname, values in grouped.items()})
        with fs.open(f"{root}/{name}/part.{part:05d}.parquet", "wb") as out:
            pq.write_table(table, out, **options)
    unseen = _unseen(frame, spec, matrix)
    del matrix, grouped
    _release_memory()
    return Written(written, unseen)


def _check_codes(codes: np.ndarray, frame: pd.DataFrame) -> None:
    if len(codes) != len(frame):
        raise RuntimeError(f"{len(codes)} split codes for a partition of {len(frame)} labelled rows: the data changed during preprocess")


def _unseen(frame: pd.DataFrame, spec: Mapping[str, Any], matrix: np.ndarray) -> dict[str, int]:
    """Per vocabulary or one-hot column, the rows that hold a value but got the unseen
    encoding (code 0, or no one-hot column set): read off the encoded matrix."""
    position = {name: j for j, name in enumerate(spec["feature_names"])}
    unseen = {}
    for entry in spec["categorical"]:
        encode = entry.get("encode", "vocabulary")
        if encode == "hash":
            continue
        if encode == "onehot":
            columns = [position[f] for f in outputs_of(spec, entry["name"])]
            zero = ~matrix[:, columns].any(axis=1) if columns else np.ones(len(frame), dtype=bool)
        else:
            zero = matrix[:, position[entry["name"]]] == entry["oov_code"]
        n = int(zero.sum()) - _missing_count(frame[entry["name"]])
        if n > 0:
            unseen[entry["name"]] = n
    return unseen


def _missing_count(values: pd.Series) -> int:
    if pd.api.types.is_float_dtype(values.dtype):
        return int((~np.isfinite(values.to_numpy(dtype=np.float64, na_value=np.nan))).sum())
    return int(values.isna().sum())
