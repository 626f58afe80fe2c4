"""What a stage scheduled on its own reads of an earlier run: found whole, or one line naming the command to run first."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import fsspec
import pytest

from tasks.errors import DataError
from tasks.evaluate import EvaluationResult, evaluation_json, load_evaluation
from tasks.features.preprocess import require_features
from tasks.ingest import require_curated
from tasks.modelbundle import BUNDLE_FILES
from tasks.training.stage import fetch_model

THEN = "run 'updraft earlier --config c.yaml' first"


@pytest.fixture()
def fs() -> fsspec.AbstractFileSystem:
    return fsspec.filesystem("file")


def _write(path: Path, data: bytes = b"x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_curated_data_is_found_or_named_with_the_command_that_makes_it(fs, tmp_path):
    curated = f"{tmp_path}/curated/claims/"
    with pytest.raises(DataError) as err:
        require_curated(fs, curated, then=THEN)
    assert str(err.value) == f"no curated data at {curated}: {THEN}"

    _write(tmp_path / "curated" / "claims" / "claims_csv-0123" / "part.0.parquet")
    assert require_curated(fs, curated, then=THEN) == curated


def test_features_need_the_transform_and_every_split(fs, tmp_path):
    base = f"{tmp_path}/features/r1"
    with pytest.raises(DataError) as err:
        require_features(fs, base, run_id="r1", then=THEN)
    assert str(err.value) == f"no features for run r1 at {base}/: {THEN}"

    _write(tmp_path / "features" / "r1" / "transform.json", b"{}")
    _write(tmp_path / "features" / "r1" / "train" / "part.00000.parquet")
    with pytest.raises(DataError) as err:
        require_features(fs, base, run_id="r1", then=THEN)
    assert str(err.value) == f"the features of run r1 at {base}/ lack validation/, test/: {THEN}"

    for split in ("validation", "test"):
        _write(tmp_path / "features" / "r1" / split / "part.00000.parquet")
    assert require_features(fs, base, run_id="r1", then=THEN) == base + "/"


def _model_tar(path: Path, files: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_a_model_is_downloaded_and_unpacked_fresh(fs, tmp_path):
    model_uri = str(tmp_path / "models" / "r1" / "model.tar.gz")
    work = tmp_path / "work"
    with pytest.raises(DataError) as err:
        fetch_model(fs, model_uri, work, run_id="r1", then=THEN)
    assert str(err.value) == f"no model for run r1 at {model_uri}: {THEN}"

    _model_tar(Path(model_uri), {name: f"old {name}".encode() for name in (*BUNDLE_FILES, "stale.txt")})
    first = fetch_model(fs, model_uri, work, run_id="r1", then=THEN)
    assert (first / "stale.txt").is_file()

    # A retrained model replaces the folder: nothing of the previous one lingers.
    _model_tar(Path(model_uri), {name: f"new {name}".encode() for name in BUNDLE_FILES})
    model_dir = fetch_model(fs, model_uri, work, run_id="r1", then=THEN)
    assert model_dir == (work / "model").resolve()
    assert sorted(p.name for p in model_dir.iterdir()) == sorted(BUNDLE_FILES)
    assert (model_dir / BUNDLE_FILES[0]).read_text() == f"new {BUNDLE_FILES[0]}"


def _evaluation() -> EvaluationResult:
    return EvaluationResult(
        task="binary_classification",
        metric="roc_auc",
        greater_is_better=True,
        model=0.81,
        model_ci=[0.78, 0.84],
        baselines={"constant": 0.5, "logistic_regression": 0.7},
        best_baseline="logistic_regression",
        lift=0.11,
        min_lift=0.0,
        passed=True,
        reason="model ROC-AUC 0.810 beats the best baseline",
        secondary={"pr_auc": 0.4},
        n_test=450,
        plots={"roc": {"model": {"fpr": [0.0, 1.0], "tpr": [0.0, 1.0], "auc": 0.81}}},
    )


def test_the_evaluation_reads_back_as_written(fs, tmp_path):
    uri = str(tmp_path / "models" / "r1" / "evaluation.json")
    _write(Path(uri), evaluation_json(_evaluation()).encode())
    assert load_evaluation(fs, uri, run_id="r1", then=THEN) == _evaluation()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no evaluation for run r1 at {uri}: " + THEN),
        (b"<html>not json", "{uri} is not valid JSON ("),
        (json.dumps({"metric": "roc_auc", "passed": True}).encode(), "{uri} is not an updraft evaluation (no 'task'): " + THEN),
        (b"[1, 2]", "{uri} is not an updraft evaluation (no 'task'): " + THEN),
    ],
)
def test_an_unusable_evaluation_names_the_command_that_remakes_it(fs, tmp_path, content, message):
    uri = str(tmp_path / "models" / "r1" / "evaluation.json")
    if content is not None:
        _write(Path(uri), content)
    with pytest.raises(DataError) as err:
        load_evaluation(fs, uri, run_id="r1", then=THEN)
    assert str(err.value).startswith(message.format(uri=uri))
    assert str(err.value).endswith(THEN)
