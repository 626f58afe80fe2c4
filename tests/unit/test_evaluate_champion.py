"""The champion (the endpoint's current model) scored on the same test rows as the challenger.

With the same transform the champion scores the test split's feature rows; with another
transform (other features, or statistics refitted on more data) both models score the raw
test rows, rebuilt from the curated data by the split's own rule, each through its own
transform.json. A champion that cannot be scored is said in words, never a crash.
"""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from botocore.exceptions import ClientError
from sklearn.metrics import roc_auc_score

from tasks.config import (
    EvaluateConfig,
    Features,
    GateConfig,
    PipelineConfig,
    SplitConfig,
)
from tasks.evaluate import (
    ChampionLookup,
    curated_test_rows,
    evaluate_model,
    evaluate_stage,
    find_champion,
    same_transform,
)
from tasks.features.preprocess import preprocess_dataset
from tasks.features.transform import encode_labels
from tasks.modelbundle import load_model_bundle

KINDS = {"amount": "numeric", "age": "numeric", "kind": "categorical", "region": "categorical", "label": "categorical"}
INPUTS = ["amount", "age", "kind", "region"]


def _curated(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "amount": rng.exponential(100, n).round(2),
        "age": rng.normal(40, 10, n).round(1),
        "kind": rng.choice(["clinic", "hospital", "lab"], n),
        "region": rng.choice(["north", "south", "east", "west", "islands"], n, p=[0.3, 0.3, 0.2, 0.18, 0.02]),
    })
    logit = 0.02 * (frame["amount"] - 100) + 0.08 * (frame["age"] - 40) + np.where(frame["kind"] == "lab", 1.5, -0.5)
    frame["label"] = np.where(rng.random(n) < 1 / (1 + np.exp(-logit)), "fraud", "ok")
    return frame


def _preprocess(curated_uri: str, out: Path, features: Features) -> dict[str, Any]:
    result = preprocess_dataset(
        curated_uri=curated_uri, features_uri=str(out) + "/", features=features, kinds=KINDS, label="label",
        task="binary_classification", split=SplitConfig(), input_columns=[c for c in INPUTS if c in features.all],
        storage_options=None, segment="region",
    )
    return {"uri": result.features_uri, "spec": json.loads(Path(result.transform_uri).read_text())}


def _train_bundle(features: dict[str, Any], folder: Path, run_id: str, rounds: int = 40, depth: int = 3) -> Path:
    """A real model folder (xgboost-model.json, transform.json, metadata.json) trained on the features' train split."""
    import xgboost as xgb

    spec = features["spec"]
    train = pd.read_parquet(features["uri"] + "train/")
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": depth, "eta": 0.3, "nthread": 1, "seed": 0},
        xgb.DMatrix(train[spec["feature_names"]], label=train["_label"]), num_boost_round=rounds,
    )
    folder.mkdir(parents=True)
    booster.save_model(str(folder / "xgboost-model.json"))
    (folder / "transform.json").write_text(json.dumps(spec))
    (folder / "metadata.json").write_text(json.dumps({
        "task": spec["task"], "label": spec["label"], "label_classes": spec["label_classes"],
        "feature_names": spec["feature_names"], "input_columns": spec["input_columns"], "metrics": {}, "versions": {},
        "run_id": run_id, "algorithm": "xgboost",
    }))
    return folder


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Curated data, this run's features and model, and two champions: same transform, and one without 'age'."""
    root = tmp_path_factory.mktemp("project")
    curated = root / "curated"
    curated.mkdir()
    frame = _curated(3000, 0)
    for i, start in enumerate(range(0, len(frame), 1000)):
        frame.iloc[start : start + 1000].to_parquet(curated / f"part-{i}.parquet", index=False)
    full = _preprocess(str(curated) + "/", root / "features", Features(numeric=("amount", "age"), categorical=("kind",)))
    narrow = _preprocess(str(curated) + "/", root / "features-old", Features(numeric=("amount",), categorical=("kind",)))
    return {
        "curated": str(curated) + "/",
        "features": full,
        "challenger": _train_bundle(full, root / "challenger", "run-new"),
        "same_champion": _train_bundle(full, root / "champion-same", "run-same", rounds=5, depth=1),
        "old_champion": _train_bundle(narrow, root / "champion-old", "run-old"),
    }


def _splits(project: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    base = project["features"]["uri"]
    return pd.read_parquet(base + "train/"), pd.read_parquet(base + "test/")


def test_the_raw_test_rows_rebuilt_from_curated_data_are_the_test_splits_rows(project):
    rows = curated_test_rows(project["curated"], project["features"]["spec"])
    _, test = _splits(project)
    assert len(rows) == len(test)
    # the same rows: their segment values and labels agree as multisets, and the model scores them alike
    assert sorted(rows["region"]) == sorted(test["_segment"])
    challenger = load_model_bundle(project["challenger"])
    from_raw = np.sort(np.asarray(challenger.predict_frame(rows)))
    from_features = np.sort(challenger.predict_features(test[challenger.feature_names].to_numpy(np.float32)))
    np.testing.assert_allclose(from_raw, from_features, rtol=1e-6)


def test_a_champion_with_the_same_transform_scores_the_test_split(project):
    train, test = _splits(project)
    challenger, champion = load_model_bundle(project["challenger"]), load_model_bundle(project["same_champion"])
    assert same_transform(challenger.spec, champion.spec)
    result = evaluate_model(bundle=challenger, train=train, test=test, task="binary_classification", champion=champion,
                            n_bootstrap=400, segment="region")
    comparison = result.champion
    X = test[champion.feature_names].to_numpy(np.float32)
    assert comparison["status"] == "compared" and comparison["scored_on"] == "the test split's rows"
    assert comparison["run_id"] == "run-same" and comparison["algorithm"] == "xgboost"
    assert comparison["value"] == pytest.approx(roc_auc_score(test["_label"], champion.predict_features(X)))
    assert comparison["challenger"] == pytest.approx(result.model) and comparison["units"] == len(test)
    assert comparison["difference"] == pytest.approx(result.model - comparison["value"])


def test_a_champion_with_another_transform_scores_the_raw_rows_through_its_own_transform(project):
    train, test = _splits(project)
    challenger, champion = load_model_bundle(project["challenger"]), load_model_bundle(project["old_champion"])
    assert not same_transform(challenger.spec, champion.spec) and "age" not in champion.feature_names
    rows = curated_test_rows(project["curated"], challenger.spec)
    result = evaluate_model(bundle=challenger, train=train, test=test, task="binary_classification", n_bootstrap=400,
                            champion=ChampionLookup(bundle=champion, source="s3://b/models/run-old/model.tar.gz", rows=rows))
    comparison = result.champion
    y = encode_labels(rows["label"], challenger.spec)
    assert comparison["status"] == "compared" and "raw test rows re-read from the curated data" in comparison["scored_on"]
    assert comparison["units"] == len(rows) == len(test)
    assert comparison["value"] == pytest.approx(roc_auc_score(y, champion.predict_frame(rows)))
    assert comparison["challenger"] == pytest.approx(roc_auc_score(y, challenger.predict_frame(rows)))
    assert comparison["challenger"] == pytest.approx(result.model)  # the same rows the test split holds
    assert comparison["source"] == "s3://b/models/run-old/model.tar.gz"


def test_a_champion_with_another_transform_and_no_raw_rows_is_said_in_words(project):
    train, test = _splits(project)
    challenger, champion = load_model_bundle(project["challenger"]), load_model_bundle(project["old_champion"])
    result = evaluate_model(bundle=challenger, train=train, test=test, task="binary_classification", champion=champion,
                            n_bootstrap=200)
    assert result.champion["status"] == "incomparable"
    assert "its transform differs from this run's" in result.reason and "the baselines decide" in result.reason
    assert result.passed == (result.lift > 0)


class _Fake:
    def __init__(self, spec: dict[str, Any], predict: Any) -> None:
        self.spec, self._predict, self.metadata = spec, predict, {}

    def predict_features(self, X: np.ndarray) -> np.ndarray:
        return self._predict(X)


def _multiclass_split(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.normal(size=(n, 2)).astype(np.float32), columns=["a", "b"])
    frame["_label"] = np.select([frame["a"] > 0.5, frame["b"] > 0.5], [0.0, 1.0], 2.0)
    return frame


def _proba(X: np.ndarray) -> np.ndarray:
    z = np.stack([X[:, 0] - 0.5, X[:, 1] - 0.5, np.zeros(len(X))], axis=1) * 4
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def test_a_multiclass_champion_is_read_by_class_name_not_by_column():
    train, test = _multiclass_split(1500, 1), _multiclass_split(900, 2)
    spec = {"task": "multiclass_classification", "feature_names": ["a", "b"], "label_classes": ["red", "green", "blue"]}
    champion_spec = {**spec, "label_classes": ["blue", "red", "green"]}  # the same model, its columns in another order
    champion = _Fake(champion_spec, lambda X: _proba(X)[:, [2, 0, 1]])
    result = evaluate_model(bundle=_Fake(spec, _proba), train=train, test=test, task="multiclass_classification",
                            champion=champion, n_bootstrap=200)
    assert result.champion["status"] == "compared" and result.champion["difference"] == 0  # a tie, read correctly


def test_a_binary_champion_with_other_classes_cannot_be_scored():
    rng = np.random.default_rng(0)
    frames = []
    for n in (600, 400):
        X = rng.normal(size=(n, 2)).astype(np.float32)
        frames.append(pd.DataFrame(X, columns=["a", "b"]).assign(_label=(X[:, 0] > 0).astype(float)))
    spec = {"task": "binary_classification", "feature_names": ["a", "b"], "label_classes": ["no", "yes"]}
    champion = _Fake({**spec, "label_classes": ["ok", "fraud"]}, lambda X: 1 / (1 + np.exp(-X[:, 0])))
    result = evaluate_model(bundle=_Fake(spec, lambda X: 1 / (1 + np.exp(-X[:, 0]))), train=frames[0], test=frames[1],
                            task="binary_classification", champion=champion, n_bootstrap=200)
    assert result.champion["status"] == "incomparable"
    assert "its label classes ['ok', 'fraud'] are not this run's ['no', 'yes']" in result.reason


def test_the_paired_difference_is_far_narrower_than_either_models_interval(project):
    """Both models meet the same resamples, so luck that moves both cancels in the difference."""
    train, test = _splits(project)
    challenger = load_model_bundle(project["challenger"])
    nudged = _Fake(challenger.spec, lambda X: challenger.predict_features(X) * 0.999 + 0.0005 * (X[:, 0] > 0))
    result = evaluate_model(bundle=challenger, train=train, test=test, task="binary_classification", champion=nudged,
                            n_bootstrap=400)
    lo, hi = result.champion["difference_ci"]
    champion_lo, champion_hi = result.champion["ci"]
    assert (hi - lo) < 0.2 * (champion_hi - champion_lo)


# --------------------------------------------------------------------------------------
# the stage: the champion from the registry, through tasks.registry.champion_model_data


class _LocalFS:
    """Stands for the target's S3 filesystem: s3:// URIs map to a local folder."""

    def __init__(self, root: Path) -> None:
        self.root, self.written = root, {}

    def _path(self, uri: str) -> Path:
        return self.root / uri.removeprefix("s3://")

    def get_file(self, uri: str, dest: str) -> None:
        if not self._path(uri).exists():
            raise FileNotFoundError(uri)
        shutil.copy(self._path(uri), dest)

    def pipe_file(self, uri: str, data: bytes, **kwargs: Any) -> None:
        self.written[uri] = data


class _Target:
    kind = "embedded"

    def __init__(self, fs: _LocalFS) -> None:
        self.fs = fs

    def filesystem(self) -> _LocalFS:
        return self.fs

    def storage_options(self) -> dict[str, Any]:
        return {}

    def client(self, service: str) -> Any:
        return object()


def _config(**evaluate: Any) -> PipelineConfig:
    return PipelineConfig(
        name="claims", bucket="b", source="raw/", contract="c.yaml", label="label", task="binary_classification",
        evaluate=EvaluateConfig(**evaluate), gate=GateConfig(max_regression=0.0),
    )


def _tar(folder: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(dest, "w:gz") as archive:
        for path in folder.iterdir():
            archive.add(path, arcname=path.name)


def test_the_stage_scores_the_registrys_champion_and_stores_why(project, tmp_path, monkeypatch):
    fs = _LocalFS(tmp_path / "s3")
    _tar(project["same_champion"], fs.root / "b/models/run-same/model.tar.gz")
    monkeypatch.setattr("tasks.runs.run_dir", lambda run_id: tmp_path / "runs" / run_id)
    asked = []
    monkeypatch.setattr(
        "tasks.registry.champion_model_data",
        lambda sm, group, endpoint: asked.append((group, endpoint)) or "s3://b/models/run-same/model.tar.gz", raising=False,
    )
    result = evaluate_stage.fn(_config(segment="region", bootstrap=200), _Target(fs), "run-new",
                               project["features"]["uri"], str(project["challenger"]))
    assert asked == [("claims", "claims")]  # the group is the config's name; the endpoint the config's
    assert result.champion["status"] == "compared" and result.champion["run_id"] == "run-same"
    assert result.slices["column"] == "region" and {r["value"] for r in result.slices["rows"]} >= {"north", "islands"}
    stored = json.loads(fs.written["s3://b/models/run-new/evaluation.json"])
    assert stored["champion"]["source"] == "s3://b/models/run-same/model.tar.gz" and stored["reason"] == result.reason


def test_the_stage_without_a_champion_judges_against_the_baselines(project, tmp_path, monkeypatch):
    fs = _LocalFS(tmp_path / "s3")
    monkeypatch.setattr("tasks.runs.run_dir", lambda run_id: tmp_path / "runs" / run_id)
    monkeypatch.setattr("tasks.registry.champion_model_data", lambda *a: None, raising=False)
    result = evaluate_stage.fn(_config(bootstrap=200), _Target(fs), "run-new", project["features"]["uri"], str(project["challenger"]))
    assert result.champion is None and "first deployment" in result.reason and result.passed


def _error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": f"{code} says no"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "ListTags")


@pytest.mark.parametrize(
    "answer, expect",
    [
        (None, None),
        ("s3://b/models/run-new/model.tar.gz", None),  # this run's own model, registered already
        (_error("InternalFailure", 500), None),  # a target whose SageMaker lacks the call (moto): no champion
        (_error("AccessDeniedException", 400), "unavailable: looking up the champion of endpoint 'claims' failed: AccessDeniedException says no"),
        ("s3://b/models/gone/model.tar.gz", "unavailable: its model at s3://b/models/gone/model.tar.gz could not be downloaded"),
    ],
)
def test_find_champion_says_what_it_found(tmp_path, monkeypatch, answer, expect):
    def lookup(sm: Any, group: str, endpoint: str) -> str | None:
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr("tasks.registry.champion_model_data", lookup, raising=False)
    found = find_champion(_config(), _Target(_LocalFS(tmp_path)), "run-new", {}, tmp_path / "work")
    if expect is None:
        assert found is None
    else:
        kind, text = expect.split(": ", 1)
        assert getattr(found, kind).startswith(text)


def test_find_champion_without_the_registry_lookup_is_no_champion(tmp_path, monkeypatch):
    import tasks.registry

    monkeypatch.delattr(tasks.registry, "champion_model_data", raising=False)
    assert find_champion(_config(), _Target(_LocalFS(tmp_path)), "run-new", {}, tmp_path / "work") is None


def test_find_champion_loads_the_model_and_rebuilds_raw_rows_when_transforms_differ(project, tmp_path, monkeypatch):
    fs = _LocalFS(tmp_path / "s3")
    _tar(project["old_champion"], fs.root / "b/models/run-old/model.tar.gz")
    monkeypatch.setattr("tasks.registry.champion_model_data", lambda *a: "s3://b/models/run-old/model.tar.gz", raising=False)
    monkeypatch.setattr("tasks.evaluate.stage.Layout.curated", lambda self: project["curated"])
    found = find_champion(_config(), _Target(fs), "run-new", project["features"]["spec"], tmp_path / "work")
    assert found.bundle.metadata["run_id"] == "run-old" and found.unavailable is None and found.incomparable is None
    assert found.rows is not None and len(found.rows) == len(_splits(project)[1])
    # the curated data over the limit: said in words rather than read whole
    monkeypatch.setattr("tasks.evaluate.stage.MAX_CURATED_ROWS_FOR_CHAMPION", 100)
    capped = find_champion(_config(), _Target(fs), "run-new", project["features"]["spec"], tmp_path / "work2")
    assert capped.rows is None and "more than the 100 the evaluate stage reads whole" in capped.incomparable
