"""The evaluate stage's shell: find the champion through the registry, read the splits, run
:func:`~tasks.evaluate.evaluation.evaluate_model`, store ``evaluation.json``.

The only module of the package that touches a Target, the registry or the curated data.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.aws.target import Target
from tasks.config import PipelineConfig
from tasks.errors import DataError
from tasks.evaluate.champion import ChampionLookup, same_transform
from tasks.evaluate.evaluation import evaluate_model
from tasks.evaluate.result import EvaluationResult, evaluation_json
from tasks.layout import Layout
from tasks.resume import SAFE_TO_RETRY

log = logging.getLogger("updraft.evaluate")

#: The raw test rows for a champion with another transform are rebuilt from curated data of
#: at most this many rows (read whole in the evaluate stage's memory, about 1 GB at 25 columns).
MAX_CURATED_ROWS_FOR_CHAMPION = 5_000_000


def curated_test_rows(
    curated_uri: str, spec: Mapping[str, Any], storage_options: Mapping[str, Any] | None = None,
    max_rows: int = MAX_CURATED_ROWS_FOR_CHAMPION,
) -> pd.DataFrame:
    """This run's test rows as raw curated columns, rebuilt with the split's own rule.

    The split is a function of each row's values and transform.json's ``split`` record
    (``tasks.features.split``), so applying it again to the curated files, read whole as
    preprocess reads them, finds the same test rows (and rows ingested since, which no model
    trained on). Both models then score them through their own transform.json.
    """
    import fsspec
    import pyarrow.parquet as pq

    from tasks.features.partitions import drop_unlabelled
    from tasks.features.split import TEST, SplitPlan, assign_splits

    plan = SplitPlan.from_json(spec["split"])
    fs, root = fsspec.core.url_to_fs(curated_uri, **dict(storage_options or {}))
    files = sorted(p for p in fs.find(root) if p.endswith(".parquet"))
    if not files:
        raise DataError(f"no curated Parquet files under {curated_uri}")
    total = 0
    for path in files:
        with fs.open(path, "rb") as handle:
            total += pq.ParquetFile(handle).metadata.num_rows
    if total > max_rows:
        raise DataError(f"the curated data holds {total:,} rows, more than the {max_rows:,} the evaluate stage reads whole")
    frames = []
    for path in files:
        with fs.open(path, "rb") as handle:
            frame = pq.ParquetFile(handle).read().to_pandas()
        frame, _ = drop_unlabelled(frame, spec["label"], spec["task"])
        frames.append(frame[assign_splits(frame, plan, label=spec["label"]) == TEST])
    return pd.concat(frames, ignore_index=True)


def find_champion(config: PipelineConfig, target: Target, run_id: str, spec: Mapping[str, Any], work_dir: Any) -> ChampionLookup | None:
    """The endpoint's current model, ready to score, or None when there is none (a first deployment).

    Never raises for the champion's sake: whatever goes wrong is said in words in the
    lookup (``unavailable`` when rerunning may help, ``incomparable`` when it cannot)."""
    import botocore.exceptions

    from tasks.aws.errors import error_message, is_call_missing

    try:
        from tasks.registry import champion_model_data
    except ImportError:  # this updraft's registry does not look champions up yet
        log.info("no champion lookup in tasks.registry: judging against the baselines only")
        return None
    try:
        url = champion_model_data(target.client("sagemaker"), config.name, config.endpoint_name)
    except botocore.exceptions.ClientError as exc:
        if is_call_missing(exc):
            log.info("the %s target has no SageMaker model registry: no champion to compare with", target.kind)
            return None
        return ChampionLookup(unavailable=f"looking up the champion of endpoint {config.endpoint_name!r} failed: {error_message(exc)}")
    except botocore.exceptions.BotoCoreError as exc:
        return ChampionLookup(unavailable=f"looking up the champion of endpoint {config.endpoint_name!r} failed: {exc}")
    if not url:
        return None
    current = Layout(config.bucket, config.name).model(run_id)
    if url.rstrip("/") == current:
        return None  # this run's own model is registered already (evaluate run again): no other champion
    from tasks.errors import StageError
    from tasks.modelbundle import load_model_bundle
    from tasks.training.stage import fetch_model

    fs = target.filesystem()
    try:
        folder = fetch_model(fs, url, work_dir, run_id="champion", then="the registry names a model that is not there")
    except (DataError, StageError, OSError) as exc:
        return ChampionLookup(source=url, unavailable=f"its model at {url} could not be downloaded: {exc}")
    try:
        champion = load_model_bundle(folder, nthread=os.cpu_count() or 1)
    except (StageError, DataError, OSError, ValueError) as exc:
        return ChampionLookup(source=url, incomparable=f"the champion at {url} cannot be loaded: {exc}")
    rows = None
    if not same_transform(spec, champion.spec) and champion.spec.get("task") == spec.get("task"):
        try:
            rows = curated_test_rows(
                Layout(config.bucket, config.name).curated(), spec, target.storage_options(), max_rows=MAX_CURATED_ROWS_FOR_CHAMPION
            )
        except (DataError, OSError, KeyError, ValueError) as exc:
            return ChampionLookup(bundle=champion, source=url, incomparable=(
                f"the champion's transform differs from this run's and the raw test rows to score it through its own"
                f" transform.json could not be rebuilt from the curated data ({exc})"))
    return ChampionLookup(bundle=champion, source=url, rows=rows)


@task(
    name="evaluate",
    cache_policy=NO_CACHE,
    **SAFE_TO_RETRY,
)
def evaluate_stage(config: PipelineConfig, target: Target, run_id: str, features_uri: str, model_dir: str) -> EvaluationResult:
    """Evaluate the run's model on its test split against the baselines and the champion;
    store ``evaluation.json`` beside the model."""
    from tasks.modelbundle import load_model_bundle
    from tasks.runs import run_dir

    base = features_uri.rstrip("/") + "/"
    options = target.storage_options()
    train = pd.read_parquet(base + "train/", storage_options=options)
    test = pd.read_parquet(base + "test/", storage_options=options)
    settings = config.evaluate
    validation = None
    if config.task == "binary_classification" and settings.threshold_rule == "max_f1":
        validation = pd.read_parquet(base + "validation/", storage_options=options)
    bundle = load_model_bundle(model_dir, nthread=os.cpu_count() or 1)  # a batch job: use every core
    champion = find_champion(config, target, run_id, bundle.spec, run_dir(run_id) / "evaluate" / "champion")
    result = evaluate_model(
        bundle=bundle, train=train, test=test, task=config.task, min_lift=config.gate.min_lift,
        n_bootstrap=settings.bootstrap, validation=validation, champion=champion,
        max_regression=config.gate.max_regression, confidence=config.gate.confidence, threshold=settings.threshold,
        threshold_rule=settings.threshold_rule, ndcg_k=settings.ndcg_k, precision_k=settings.precision_k,
        segment=settings.segment,
    )
    uri = Layout(config.bucket, config.name).evaluation(run_id)
    target.filesystem().pipe_file(uri, evaluation_json(result).encode("utf-8"), ContentType="application/json")
    log.info("gate %s: %s", "passed" if result.passed else "failed", result.reason)
    return result
