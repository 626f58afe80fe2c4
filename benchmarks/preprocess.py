"""Time updraft's preprocess against a one-process pandas job and scikit-learn, on the same data.

    python benchmarks/preprocess.py [--rows 2000000] [--workers 2]

Generates a table like the baseline in ENVIRONMENT.md (float32 numerics with 1% missing,
categoricals of cardinality 10 to 100,000, a binary label) as local Parquet files, then
runs each contender end to end: read, assign splits by row hash, fit on train,
transform every row, write the train/validation/test Parquet. Prints rows/s and ratios.
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.compute import dask_client  # noqa: E402
from tasks.config import Features, SplitConfig  # noqa: E402
from tasks.features.preprocess import preprocess_dataset  # noqa: E402
from tasks.features.split import SPLITS, assign_splits  # noqa: E402

CARDINALITIES = (10, 100, 1_000, 10_000, 100_000)
SPLIT = SplitConfig()


def generate(folder: Path, rows: int, numerics: int, files: int, seed: int = 0) -> Features:
    """Write ``rows`` rows as ``files`` Parquet files; return the feature columns."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    bounds = np.linspace(0, rows, files + 1).astype(int)
    numeric = tuple(f"x{i:02d}" for i in range(numerics))
    categorical = tuple(f"c{card}" for card in CARDINALITIES)
    for i in range(files):
        n = int(bounds[i + 1] - bounds[i])
        data: dict[str, np.ndarray] = {}
        for j, name in enumerate(numeric):
            col = rng.normal(j, 1 + j, n).astype(np.float32)
            col[rng.random(n) < 0.01] = np.nan
            data[name] = col
        for card, name in zip(CARDINALITIES, categorical):
            codes = np.minimum(rng.zipf(1.3, n), card) - 1
            data[name] = np.char.add("v", codes.astype(str)).astype(object)
        data["label"] = (rng.random(n) < 0.2).astype(np.int64)
        pd.DataFrame(data).to_parquet(folder / f"part-{i:03d}.parquet", index=False)
    return Features(numeric=numeric, categorical=categorical)


def run_updraft(curated: Path, out: Path, features: Features, workers: int) -> tuple[int, float]:
    """Rows and seconds, leaving out the cluster start (a pipeline starts it once for all stages)."""
    started = time.perf_counter()
    with dask_client(n_workers=workers) as client:
        print(f"  (LocalCluster with {workers} workers started in {time.perf_counter() - started:.1f} s, not counted)")
        began = time.perf_counter()
        result = preprocess_dataset(
            curated_uri=str(curated) + "/",
            features_uri=str(out) + "/",
            features=features,
            kinds={**{c: "numeric" for c in features.numeric}, **{c: "categorical" for c in features.categorical}},
            label="label",
            task="binary_classification",
            split=SPLIT,
            input_columns=list(features.all),
            storage_options=None,
            client=client,
        )
        elapsed = time.perf_counter() - began
    return sum(result.rows.values()), elapsed


def _read_and_split(curated: Path) -> tuple[pd.DataFrame, np.ndarray]:
    frame = pd.read_parquet(curated)
    frame = frame[frame["label"].notna()].reset_index(drop=True)
    return frame, assign_splits(frame, SPLIT)


def _write_splits(matrix: np.ndarray, names: list[str], labels: np.ndarray, codes: np.ndarray, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for i, split in enumerate(SPLITS):
        rows = codes == i
        frame = pd.DataFrame(matrix[rows], columns=names)
        frame["_label"] = labels[rows].astype(np.float64)
        frame.to_parquet(out / f"{split}.parquet", index=False)


def run_pandas(curated: Path, out: Path, features: Features) -> tuple[int, float]:
    """What a careful one-process pandas job does: column statistics, fillna, map to codes."""
    started = time.perf_counter()
    frame, codes = _read_and_split(curated)
    train = frame[codes == 0]
    means = train[list(features.numeric)].mean()
    stds = train[list(features.numeric)].std(ddof=0).replace(0, 1)
    columns = []
    for name in features.numeric:
        columns.append(((frame[name].fillna(means[name]) - means[name]) / stds[name]).to_numpy(np.float32))
    for name in features.categorical:
        vocabulary = train[name].value_counts().index[:1000]
        columns.append((vocabulary.get_indexer(frame[name]) + 1).astype(np.float32))
    _write_splits(np.column_stack(columns), list(features.all), frame["label"].to_numpy(), codes, out)
    return len(frame), time.perf_counter() - started


def run_sklearn(curated: Path, out: Path, features: Features) -> tuple[int, float]:
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OrdinalEncoder, StandardScaler

    started = time.perf_counter()
    frame, codes = _read_and_split(curated)
    for name in features.categorical:
        frame[name] = frame[name].astype(object)
    transformer = ColumnTransformer(
        [
            ("numeric", make_pipeline(SimpleImputer(strategy="mean"), StandardScaler()), list(features.numeric)),
            (
                "categorical",
                OrdinalEncoder(
                    handle_unknown="use_encoded_value", unknown_value=-1, encoded_missing_value=-1, max_categories=1000
                ),
                list(features.categorical),
            ),
        ]
    )
    transformer.fit(frame[codes == 0])
    matrix = transformer.transform(frame).astype(np.float32)
    _write_splits(matrix, list(features.all), frame["label"].to_numpy(), codes, out)
    return len(frame), time.perf_counter() - started


def _time(label: str, run: Callable[[], tuple[int, float]]) -> float:
    print(f"{label} ...", flush=True)
    rows, elapsed = run()
    print(f"  {rows:,} rows in {elapsed:.2f} s: {rows / elapsed:,.0f} rows/s", flush=True)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--numerics", type=int, default=20)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--skip-sklearn", action="store_true", help="scikit-learn is about 6x slower than pandas")
    parser.add_argument("--workdir", type=Path, default=None, help="kept afterwards when given")
    args = parser.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="updraft-bench-"))
    try:
        started = time.perf_counter()
        features = generate(workdir / "curated", args.rows, args.numerics, args.files)
        size = sum(p.stat().st_size for p in (workdir / "curated").glob("*.parquet")) / 1e6
        print(
            f"{args.rows:,} rows, {len(features.numeric)} numerics (1% missing), categoricals of cardinality "
            f"{', '.join(map(str, CARDINALITIES))}: {size:.0f} MB Parquet in {args.files} files "
            f"(generated in {time.perf_counter() - started:.1f} s)"
        )
        times = {"updraft": _time("updraft", lambda: run_updraft(workdir / "curated", workdir / "updraft", features, args.workers))}
        times["pandas"] = _time("pandas", lambda: run_pandas(workdir / "curated", workdir / "pandas", features))
        if not args.skip_sklearn:
            times["scikit-learn"] = _time("scikit-learn", lambda: run_sklearn(workdir / "curated", workdir / "sklearn", features))
        print("\nspeed of updraft relative to each (higher is better for updraft):")
        for name, seconds in times.items():
            if name != "updraft":
                print(f"  {name:>12}: {seconds / times['updraft']:.2f}x")
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
