"""Preprocess: curated Parquet -> transform.json + float32 feature splits, on Dask.

Two passes over the data, each one task per partition (three when the split needs a plan):

0. plan (stratified and time splits only): per-class or time-column quantile sketches,
   merged into the cut points every worker then applies (``tasks.features.split``).
1. fit: every partition drops unlabelled rows, assigns splits (the codes stay on the
   worker for pass 2) and returns small partials: train-split column moments (and of
   log1p'd values where asked), quantile sketches where a median, clipping or bins are
   asked, category counts, label counts, row counts. The partials merge pairwise in a
   tree, so the client receives one small object whatever the number of partitions.
2. transform: every partition applies the fitted spec (:func:`apply_transform`, the
   function the endpoint uses) and writes its rows to the train, validation and test
   folders, one Parquet file per partition and split.

The kernels see pandas partitions and NumPy (or CuPy) arrays; which scheduler runs them
(threads, a LocalCluster, a remote cluster named by ``DASK_SCHEDULER_ADDRESS``) is the
caller's choice, and workers reach the data only through the storage options given.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

import dask
import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.aws.target import Target
from tasks.config import SUPPORTED_TASKS, Features, PipelineConfig, SplitConfig
from tasks.errors import ConfigError, DataError
from tasks.features.partitions import (
    GROUP_COLUMN,
    LABEL_COLUMN,
    SEGMENT_COLUMN,
    Piece,
    read_piece,
    FitPartial,
    Written,
    fit_partition,
    merge_partials,
    merge_written,
    plan_partition,
    split_codes,
    transform_partition,
)
from tasks.features.split import DEFAULT_SALT, SPLITS, SplitPlan, finish_plan, merge_plan_partials, needs_plan
from tasks.features.stats import tree_reduce
from tasks.features.transform import CLASS_LABEL_TASKS, OPTIONAL_LABEL_TASKS, build_spec
from tasks.layout import Layout
from tasks.resume import SAFE_TO_RETRY

if TYPE_CHECKING:
    from distributed import Client

log = logging.getLogger("updraft.preprocess")

TRANSFORM_FILE = "transform.json"


@dataclass
class PreprocessResult:
    rows: dict[str, int]
    features_uri: str
    transform_uri: str
    feature_names: list[str]


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
    device: str = "auto",
    group: str | None = None,
    segment: str | None = None,
) -> PreprocessResult:
    """Fit the transform on the train split of the curated data and write every split's features.

    ``client`` is a ``distributed.Client``; without one Dask's current default scheduler
    runs the work. ``input_columns`` are the feature columns in contract order (the CSV
    order the endpoint accepts). ``device``: ``auto`` runs the numeric work on a worker's GPU
    when it has one (CuPy kernels), ``cpu`` never, ``gpu`` always (an error where it cannot).

    Per task: ``ranking`` needs ``group``, the query column: its value's id goes to a
    ``_group`` column of every split (rows with no query form one group, with a warning),
    and the label is a relevance grade of 0 or more. ``anomaly_detection`` keeps rows with no
    label (``_label`` NaN: unknown); its label, where present, is binary, and the second class
    in sorted order marks an anomaly. ``segment`` (``evaluate.segment``) names a column whose
    raw values every split carries as text in ``_segment`` (never a feature), so the
    evaluation can report metrics per value. See docs/design.md ("transform.json").
    """
    _check_request(features=features, kinds=kinds, label=label, task=task, input_columns=input_columns, group=group)
    storage_options = dict(storage_options or {})
    features_uri = features_uri.rstrip("/") + "/"
    transform_uri = features_uri + TRANSFORM_FILE
    salt = DEFAULT_SALT

    started = time.perf_counter()
    pieces, schema, stored_bytes = _plan_reads(curated_uri, storage_options)
    _check_columns(schema, features, label, task, curated_uri, group)
    _check_segment(schema, segment, label, curated_uri)
    _warn_ranking_split(task, group, split)
    read = dask.delayed(read_piece, pure=True)
    parts = _keep_in_memory_if_small([read(piece, storage_options) for piece in pieces], stored_bytes, client)
    plan = _split_plan(parts, label=label, task=task, split=split, salt=salt, client=client)
    codes_task = dask.delayed(split_codes, pure=True)
    codes = [codes_task(p, label=label, task=task, plan=plan) for p in parts]
    fit_task = dask.delayed(fit_partition, pure=True)
    partials = [
        fit_task(p, features=features, label=label, task=task, plan=plan, codes=c, device=device, group=group)
        for p, c in zip(parts, codes)
    ]
    fitted, codes = _fit_keeping_codes(tree_reduce(partials, dask.delayed(merge_partials, pure=True)), codes, client)
    fit_s = time.perf_counter() - started

    if fitted.unlabelled:
        log.warning("dropped %d rows with no value in label %r", fitted.unlabelled, label)
    labelled = sum(fitted.rows.values())
    optional = task in OPTIONAL_LABEL_TASKS
    if labelled == 0 and not optional:
        raise DataError(f"no row of the curated data at {curated_uri} has a value in label {label!r}")
    for name in SPLITS:
        if fitted.rows[name] == 0:
            hint = "lower split.validation and split.test" if name == "train" else f"add rows or raise split.{name}"
            raise DataError(f"the {name} split has no rows ({labelled} {'' if optional else 'labelled '}rows in all): {hint}")
    if optional:
        log.info("label %r is known for %d of %d rows; the others are kept unlabelled", label, sum(fitted.labels.values()), labelled)
    if task == "ranking":
        _check_grades(fitted, label)
        if fitted.null_groups:
            log.warning(
                "%d rows have no value in the group column %r: they form one query of their own (group id 0);"
                " fill the column to rank them with the rows they belong with",
                fitted.null_groups,
                group,
            )

    spec = build_spec(
        task=task,
        label=label,
        label_classes=_label_classes(fitted.labels, label, task),
        input_columns=input_columns,
        features=features,
        moments=fitted.moments,
        log_moments=fitted.log_moments,
        sketches=fitted.sketches,
        counts=fitted.counts,
        split=plan.to_json(),
        group=group if task == "ranking" else None,
    )
    _warn_degenerate(spec)
    for name, n in sorted(fitted.infinite.items()):
        log.warning("column %r has %d infinite values in the train split: they count as missing and are imputed", name, n)

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
        write_task(
            p, part=i, spec=shared_spec, features_uri=features_uri, storage_options=storage_options, plan=plan, codes=c,
            device=device, segment=segment,
        )
        for i, (p, c) in enumerate(zip(parts, codes))
    ]
    done: Written = tree_reduce(_compute(writes, client), merge_written)
    written = done.rows
    transform_s = time.perf_counter() - started
    kept = {e["name"]: len(e.get("vocabulary", [])) for e in spec["categorical"]}
    for name, n in sorted(done.unseen.items()):
        distinct = len(fitted.counts.get(name, {}))
        if distinct > kept[name]:  # expected: the vocabulary keeps only the most frequent values
            log.info("column %r: %d rows encode as unseen (values outside its %d most frequent of %d in train, or new)", name, n, kept[name], distinct)
        else:
            log.warning("column %r: %d rows hold values the train split never had; they encode as unseen", name, n)
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


def _fit_keeping_codes(fit: Any, codes: list, client: "Client | None") -> tuple[FitPartial, list]:
    """The merged fit, and each partition's split codes left where they were computed (futures
    on the cluster; arrays without one) for the transform pass to reuse."""
    if client is None:
        fitted, *values = dask.compute(fit, *codes)
        return fitted, values
    futures = client.compute([fit, *codes])
    return futures[0].result(), futures[1:]


def _split_plan(parts: list, *, label: str, task: str, split: SplitConfig, salt: str, client: "Client | None") -> SplitPlan:
    """The fitted split: a light pass first where the split needs one (stratified cut points
    per class, time cut points), else the configuration itself."""
    if not needs_plan(split):
        return finish_plan(None, split, salt)
    task_ = dask.delayed(plan_partition, pure=True)
    partials = [task_(p, label=label, task=task, split=split, salt=salt) for p in parts]
    merged = _compute([tree_reduce(partials, dask.delayed(merge_plan_partials, pure=True))], client)[0]
    return finish_plan(merged, split, salt)


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


def _check_request(
    *, features: Features, kinds: Mapping[str, str], label: str, task: str, input_columns: list[str], group: str | None = None
) -> None:
    if task not in SUPPORTED_TASKS:
        raise ConfigError(f"task {task!r} cannot be preprocessed yet; use one of {', '.join(SUPPORTED_TASKS)}")
    if task == "ranking" and not group:
        raise ConfigError("task ranking needs 'group': the column whose rows are ranked together (a query or session id)")
    if group is not None and task != "ranking":
        raise ConfigError(f"'group' is only for task ranking, not {task}; for a grouped split use split.column")
    if group is not None and group == label:
        raise ConfigError(f"'group' {group!r} is the label; name the query column")
    if not features.all:
        raise ConfigError("no feature columns: list some under features.numeric, features.categorical or features.datetime")
    if label in features.all:
        raise ConfigError(f"label {label!r} is also listed as a feature; remove it from features")
    for reserved, what in (
        (LABEL_COLUMN, "the encoded label column"),
        (GROUP_COLUMN, "the ranking query id column"),
        (SEGMENT_COLUMN, "the evaluation's segment column"),
    ):
        if reserved in features.all:
            raise ConfigError(f"a feature may not be named {reserved!r} (it names {what})")
    for name in features.numeric:
        if kinds.get(name) == "categorical":
            raise ConfigError(f"column {name!r} is categorical in the contract; list it under features.categorical")
        if kinds.get(name) == "datetime":
            raise ConfigError(f"column {name!r} is a datetime in the contract; list it under features.datetime")
    for name in features.datetime:
        if kinds.get(name) not in (None, "datetime"):
            raise ConfigError(f"column {name!r} is {kinds[name]} in the contract, not a datetime; move it out of features.datetime")
    for name in features.transforms:
        if name not in features.numeric and name not in features.categorical:
            raise ConfigError(f"features.transforms names {name!r}, which is not a numeric or categorical feature")
    outside = [c for c in features.all if c not in input_columns]
    if outside:
        raise ConfigError(f"feature {outside[0]!r} is not a column of the contract ({', '.join(input_columns)})")
    if task in ("regression", "ranking") and kinds.get(label) == "categorical":
        what = "a numeric label" if task == "regression" else "a numeric relevance grade as its label"
        raise DataError(f"{task} needs {what}, but {label!r} is categorical in the contract")


#: About how much bigger a partition is in memory (pandas, Arrow strings) than as Parquet.
IN_MEMORY_FACTOR = 4
#: The share of the cluster's memory limit the read partitions may take to be kept between passes.
KEEP_SHARE = 0.25


def _keep_in_memory_if_small(parts: list, stored_bytes: int, client: "Client | None") -> list:
    """The partitions, read once and kept on the workers for both passes when they take
    at most ``KEEP_SHARE`` of the cluster's memory limit (reading is a fifth of the work);
    otherwise each pass reads them again, so data larger than memory streams through."""
    if client is None:
        return parts
    workers = client.scheduler_info().get("workers", {}).values()
    limit = sum(int(w.get("memory_limit") or 0) for w in workers)
    if not limit or stored_bytes * IN_MEMORY_FACTOR > KEEP_SHARE * limit:
        log.info("curated data (%.0f MB stored) is read once per pass: too big to keep in %.0f MB of workers", stored_bytes / 1e6, limit / 1e6)
        return parts
    return client.persist(parts)


#: Row groups are gathered into one partition up to about this many bytes (uncompressed):
#: small enough for workers with a tight memory limit, big enough to amortise a task.
PARTITION_BYTES = 128 * 2**20


def _plan_reads(curated_uri: str, storage_options: dict[str, Any]) -> tuple[list[Piece], pa.Schema, int]:
    """The partitions (row groups of each curated file, from the files' footers), the
    first file's schema, and the stored size of all files.

    Every column is read (the split hashes whole rows, so reruns split identically);
    day-partition folder names do not become columns. Files whose kept extra columns
    differ (``extra_columns: keep`` over sparse JSON) are not supported here yet.
    """
    fs, root = fsspec.core.url_to_fs(curated_uri, **storage_options)
    found = fs.find(root, detail=True)
    files = sorted(p for p in found if p.endswith(".parquet"))
    if not files:
        raise DataError(f"no curated Parquet files under {curated_uri}: run the ingest stage first")
    pieces: list[Piece] = []
    schema = None
    for path in files:
        with fs.open(path, "rb") as handle:
            meta = pq.ParquetFile(handle).metadata
        if schema is None:
            schema = meta.schema.to_arrow_schema()
        group: list[int] = []
        rows = size = 0
        for i in range(meta.num_row_groups):
            rg = meta.row_group(i)
            if group and size + rg.total_byte_size > PARTITION_BYTES:
                pieces.append(Piece(fs.unstrip_protocol(path), tuple(group), rows))
                group, rows, size = [], 0, 0
            group.append(i)
            rows += rg.num_rows
            size += rg.total_byte_size
        if group or not pieces:
            pieces.append(Piece(fs.unstrip_protocol(path), tuple(group), rows))
    return pieces, schema, sum(int(found[p].get("size") or 0) for p in files)


def _check_columns(schema: pa.Schema, features: Features, label: str, task: str, curated_uri: str, group: str | None = None) -> None:
    columns = list(schema.names)
    absent = [c for c in (*features.all, label) if c not in columns]
    if absent:
        raise DataError(f"the curated data at {curated_uri} has no column {absent[0]!r} (columns: {', '.join(columns)})")
    if group is not None and group not in columns:
        raise DataError(
            f"the group column {group!r} (the query whose rows are ranked together) is not in the curated data at"
            f" {curated_uri} (columns: {', '.join(columns)}): add it to the contract and the data, or name another column"
        )
    kind = schema.field(label).type
    numeric = pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind)
    if task == "regression" and not numeric:
        raise DataError(f"regression needs a numeric label, but {label!r} has dtype {kind}")
    if task == "ranking" and not numeric:
        raise DataError(f"ranking needs a numeric relevance grade (0 = not relevant) as its label, but {label!r} has dtype {kind}")


def _check_segment(schema: pa.Schema, segment: str | None, label: str, curated_uri: str) -> None:
    """``evaluate.segment`` must be a column of the curated data other than the label."""
    if segment is None:
        return
    if segment == label:
        raise ConfigError(f"evaluate.segment {segment!r} is the label; name another column")
    if segment not in schema.names:
        raise DataError(
            f"evaluate.segment {segment!r} is not a column of the curated data at {curated_uri}"
            f" (columns: {', '.join(schema.names)}): name one of them, or add it to the contract and the data"
        )


def _check_grades(fitted: FitPartial, label: str) -> None:
    """Relevance grades must be 0 or more: NDCG's gains (and XGBoost's rank:ndcg) are undefined below."""
    if fitted.label_min < 0:
        raise DataError(
            f"ranking needs relevance grades of 0 or more in label {label!r} (higher is more relevant),"
            f" found {fitted.label_min:g}: shift or recode the grades"
        )
    log.info("relevance grades in label %r range from %g to %g", label, fitted.label_min, fitted.label_max)


def _warn_ranking_split(task: str, group: str | None, split: SplitConfig) -> None:
    """A query whose rows straddle splits leaks between train and test; the config's default
    (``method: group`` on the query column) never does, but a user may choose otherwise."""
    if task == "ranking" and not (split.method == "group" and split.column == group):
        log.warning(
            "split.method %s%s may put rows of one query (%r) in several splits, so a query is judged on rows"
            " it trained on; use split.method group with split.column %s (the default for ranking)",
            split.method,
            f" on {split.column!r}" if split.column else "",
            group,
            group,
        )


def _compute(objects: list, client: "Client | None") -> list:
    if client is not None:
        return client.gather(client.compute(objects))
    return list(dask.compute(*objects))


def _label_classes(counts: Mapping[str, int], label: str, task: str) -> list[str] | None:
    if task not in CLASS_LABEL_TASKS:
        return None
    classes = sorted(counts)
    shown = ", ".join(classes[:5]) + (", ..." if len(classes) > 5 else "")
    if task == "anomaly_detection":
        return _anomaly_classes(counts, classes, shown, label)
    if task == "binary_classification" and len(classes) != 2:
        raise DataError(
            f"binary_classification needs exactly 2 distinct values in label {label!r}, found {len(classes)}"
            f" ({shown}); fix the label or use multiclass_classification"
        )
    if len(classes) < 2:
        raise DataError(f"multiclass_classification needs at least 2 distinct values in label {label!r}, found {len(classes)} ({shown})")
    return classes


def _anomaly_classes(counts: Mapping[str, int], classes: list[str], shown: str, label: str) -> list[str] | None:
    """Two classes, the anomaly second in sorted order (``0``/``1``, ``false``/``true``); None
    when no row has a label (the detector is judged without labels)."""
    if not classes:
        log.warning("label %r has no values: the anomaly detector trains unsupervised and cannot be judged against labels", label)
        return None
    if len(classes) != 2:
        raise DataError(
            f"anomaly_detection needs label {label!r} to hold exactly 2 distinct values (normal, then anomaly in sorted"
            f" order, e.g. 0/1 or false/true) or none at all, found {len(classes)} ({shown}): recode the label,"
            " or leave it empty to train unsupervised"
        )
    normal, anomaly = classes
    if counts[anomaly] > counts[normal]:
        log.warning(
            "label %r: %r is taken as the anomaly (second in sorted order) but holds %d of %d labelled rows, more than"
            " %r: if %r is the anomaly, recode the label so that the anomaly sorts last (e.g. 0 normal, 1 anomaly)",
            label, anomaly, counts[anomaly], counts[anomaly] + counts[normal], normal, normal,
        )
    return classes


def _warn_degenerate(spec: Mapping[str, Any]) -> None:
    for entry in spec["numeric"]:
        if entry["count"] == 0:
            log.warning(
                "column %r has no values in the train split: every row gets its fill value %s", entry["name"], entry["fill"]
            )
        elif entry["std"] == 0:
            log.warning("column %r is constant (%s) in the train split: it carries no information", entry["name"], entry["min"])
    for entry in spec["categorical"]:
        if entry.get("encode") != "hash" and not entry["vocabulary"]:
            log.warning("column %r has no values in the train split: every row gets the unseen code 0", entry["name"])


@task(
    name="preprocess",
    cache_policy=NO_CACHE,
    **SAFE_TO_RETRY,
)
def preprocess_stage(
    config: PipelineConfig,
    target: Target,
    run_id: str,
    features: Features,
    kinds: dict[str, str],
    input_columns: list[str],
    client: "Client | None" = None,
) -> PreprocessResult:
    """Preprocess the dataset's curated data into this run's feature splits on ``target``.

    Safe to retry: each attempt replaces the run's split folders. The Dask work goes
    through prefect-dask's client on ``client``'s cluster and is summarised for the Prefect
    UI (``tasks.compute.prefect_dask_client``).
    """
    from tasks.compute import prefect_dask_client

    layout = Layout(config.bucket, config.name)
    features, input_columns = features_without_group(config, features, input_columns)
    with prefect_dask_client(client, artifact_key=f"{config.name}-preprocess-dask") as stage_client:
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
            client=stage_client,
            device=config.dask.device,
            group=config.group,
            segment=config.evaluate.segment,
        )


def features_without_group(config: PipelineConfig, features: Features, input_columns: list[str]) -> tuple[Features, list[str]]:
    """The features, less the ranking group column where they are the contract's default.

    A query id names which rows are ranked together; as a feature it would let a model
    learn per-query quirks that never carry to new queries. So it is a feature only when
    the config lists it explicitly (``features.numeric`` / ``categorical``)."""
    group = config.group
    listed = config.features is not None and bool(config.features.all)
    if group is None or listed or group not in features.all:
        return features, input_columns
    kept = Features(
        numeric=tuple(c for c in features.numeric if c != group),
        categorical=tuple(c for c in features.categorical if c != group),
        datetime=tuple(c for c in features.datetime if c != group),
        transforms={k: v for k, v in features.transforms.items() if k != group},
    )
    return kept, [c for c in input_columns if c != group]
