"""What the entry point reads from its channels: transform.json, and Parquet splits as NumPy arrays.

Channel ``transform`` holds ``transform.json`` (the fitted spec: task, feature names,
label classes). Channels ``train`` and ``validation`` hold Parquet files of float32
feature columns named by the spec's ``feature_names``, plus ``_label`` (the encoded
label) and, for ranking, ``_group`` (an int64 query id per row). Files whose name or
folder starts with ``_`` or ``.`` are metadata and skipped, as Dask and Spark write them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tasks.errors import ConfigError, DataError
from tasks.training import container

LABEL_COLUMN = container.LABEL_COLUMN
GROUP_COLUMN = container.GROUP_COLUMN
#: transform.json formats this entry point reads (format 2 adds per-column transforms).
TRANSFORM_FORMATS = ("updraft.transform/1", "updraft.transform/2")
TASKS = ("binary_classification", "multiclass_classification", "regression", "ranking", "anomaly_detection")
CLASSIFICATION_TASKS = ("binary_classification", "multiclass_classification")


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
    if task not in TASKS:
        raise ConfigError(f"task {task!r} cannot be trained by this release (supported: {', '.join(TASKS)})")
    names = spec.get("feature_names")
    if not isinstance(names, list) or not names:
        raise DataError(f"{container.TRANSFORM_FILE} lists no feature_names")
    if task in CLASSIFICATION_TASKS:
        classes = spec.get("label_classes")
        if not isinstance(classes, list) or len(classes) < 2:
            raise DataError(f"{container.TRANSFORM_FILE}: a {task} needs at least two label_classes, got {classes!r}")
        if task == "binary_classification" and len(classes) != 2:
            raise DataError(
                f"{container.TRANSFORM_FILE}: binary_classification needs exactly two label classes, "
                f"got {len(classes)}; use multiclass_classification"
            )
    return spec, path


def channel_files(channel_name: str) -> list[Path]:
    """The channel's data files, sorted by path (the order every host agrees on when it shards them)."""
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
    return files


@dataclass
class Split:
    """One channel as arrays. For ranking the rows are sorted by query and ``qid`` holds dense ids 0..G-1."""

    X: np.ndarray  # float32, rows x features
    y: np.ndarray | None  # float64; None when the channel has no label column (anomaly detection only)
    qid: np.ndarray | None = None  # int64, non-decreasing; ranking only

    @property
    def rows(self) -> int:
        return int(self.X.shape[0])

    @property
    def groups(self) -> int:
        return 0 if self.qid is None or len(self.qid) == 0 else int(self.qid[-1]) + 1


def order_by_group(group: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(order, qid)``: a stable sort of the rows by query id, and dense ids 0..G-1 in that order.

    Query ids are arbitrary int64 values (hashes of the query) in any order; XGBoost needs
    each query's rows together and ``qid`` non-decreasing. The sort is stable so the rows of
    one query keep their order, which keeps training deterministic.
    """
    order = np.argsort(group, kind="stable")
    _, qid = np.unique(group[order], return_inverse=True)
    return order, qid.astype(np.int64).reshape(-1)


def read_channel(
    channel_name: str,
    feature_names: Sequence[str],
    files: Sequence[Path],
    *,
    task: str,
    num_classes: int = 0,
    row_shard: tuple[int, int] | None = None,
) -> Split:
    """Read ``files`` of one channel into a :class:`Split`, checking the columns and labels ``task`` needs.

    ``row_shard=(rank, size)`` keeps every size-th row (for ranking, every size-th query, so a
    query stays on one host): how hosts share a channel that has fewer files than hosts.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    ranking = task == "ranking"
    label_optional = task == "anomaly_detection"
    required = [*feature_names, *([] if label_optional else [LABEL_COLUMN]), *([GROUP_COLUMN] if ranking else [])]
    tables = []
    for path in files:
        try:
            schema = pq.read_schema(path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"training channel {channel_name!r}: {path.name} is not a Parquet file ({exc})") from None
        missing = [c for c in required if c not in schema.names]
        if missing:
            hint = " (ranking needs each row's query id in _group)" if GROUP_COLUMN in missing else ""
            raise DataError(
                f"training channel {channel_name!r}: {path.name} lacks column(s) {', '.join(missing)} "
                f"named by transform.json{hint}"
            )
        columns = [*required, *([LABEL_COLUMN] if label_optional and LABEL_COLUMN in schema.names else [])]
        table = pq.read_table(path, columns=columns)
        if label_optional and LABEL_COLUMN not in schema.names:
            table = table.append_column(LABEL_COLUMN, pa.nulls(table.num_rows, pa.float64()))
        tables.append(table.select([*feature_names, LABEL_COLUMN, *([GROUP_COLUMN] if ranking else [])]))
    table = pa.concat_tables(tables, promote_options="permissive")
    if table.num_rows == 0:
        raise DataError(f"training channel {channel_name!r} has no rows")

    X = np.column_stack(
        [table.column(n).to_numpy(zero_copy_only=False).astype(np.float32, copy=False) for n in feature_names]
    )
    label = table.column(LABEL_COLUMN)
    has_label = label.null_count < table.num_rows or not label_optional
    y = label.to_numpy(zero_copy_only=False).astype(np.float64, copy=False) if has_label else None
    group = None
    if ranking:
        column = table.column(GROUP_COLUMN)
        if column.null_count or not pa.types.is_integer(column.type):
            raise DataError(
                f"training channel {channel_name!r}: {GROUP_COLUMN} must hold an integer query id on every row "
                f"(type {column.type}, {column.null_count} missing)"
            )
        group = column.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)

    if row_shard is not None:
        rank, size = row_shard
        if group is not None:
            _, dense = np.unique(group, return_inverse=True)
            keep = dense.reshape(-1) % size == rank
        else:
            keep = np.arange(len(X)) % size == rank
        X, group = X[keep], (group[keep] if group is not None else None)
        y = y[keep] if y is not None else None
        if len(X) == 0:
            raise DataError(
                f"training channel {channel_name!r} has too few rows to give host {rank + 1} of {size} any; "
                "train on fewer instances"
            )
    check_labels(y, task, num_classes, channel_name)
    if group is None:
        return Split(X=X, y=y)
    order, qid = order_by_group(group)
    return Split(X=X[order], y=y[order] if y is not None else None, qid=qid)


def check_labels(y: np.ndarray | None, task: str, num_classes: int, channel_name: str) -> None:
    """Labels the task can learn from: class indices, relevance grades, 0/1 anomaly flags, or any number.

    ``num_classes`` is the length of transform.json's ``label_classes`` (0 where there are none).
    """
    if y is None:
        return
    missing = np.isnan(y)
    if task == "anomaly_detection":  # NaN = not known; the rest must be flags
        bad = ~missing & (y != 0) & (y != 1)
        if bad.any():
            raise DataError(
                f"training channel {channel_name!r}: {int(bad.sum())} labels are not 0 (normal) or 1 (anomaly) "
                f"(first: {float(y[bad][0]):g}); leave unknown ones empty"
            )
        return
    if missing.any():
        raise DataError(f"training channel {channel_name!r}: {int(missing.sum())} rows have no {LABEL_COLUMN}")
    if task == "ranking":
        bad = (y != np.round(y)) | (y < 0)
        if bad.any():
            raise DataError(
                f"training channel {channel_name!r}: {int(bad.sum())} labels are not relevance grades "
                f"(whole numbers >= 0; first: {float(y[bad][0]):g})"
            )
    elif task in CLASSIFICATION_TASKS:
        bad = (y != np.round(y)) | (y < 0) | (y >= num_classes)
        if bad.any():
            raise DataError(
                f"training channel {channel_name!r}: {int(bad.sum())} labels are not class indices in "
                f"[0, {num_classes}) (first: {float(y[bad][0]):g})"
            )
