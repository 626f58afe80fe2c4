"""The model artifact: packed as SageMaker packs it, unpacked safely, predicting as the design says."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from images.training import train as entry
from tasks.errors import DataError, StageError
from tasks.features.transform import apply_transform
from tasks.modelbundle import extract_model_tar, load_model_bundle
from tasks.training import container
from tasks.training.local_job import pack_model_dir
from tests.unit.test_train_entrypoint import (
    CLASSES,
    layout_opt_ml,
    raw_rows,
    write_feature_splits,
)

TASKS = ("binary_classification", "multiclass_classification", "regression")


@pytest.fixture(scope="module")
def model_tars(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One model.tar.gz per task, trained by the real entry point and packed by the local job's packer."""
    tars = {}
    for task in TASKS:
        root = tmp_path_factory.mktemp(task)
        write_feature_splits(root / "features", task, n_train=600, n_valid=200)
        base = root / "opt_ml"
        layout_opt_ml(base, root / "features", {"num_round": "40", "max_depth": "3", "eta": "0.3"})
        with pytest.MonkeyPatch.context() as mp:
            for name in ("SM_MODEL_DIR", "SM_HPS", "SM_CHANNEL_TRAIN", "SM_CHANNEL_VALIDATION", "SM_CHANNEL_TRANSFORM"):
                mp.delenv(name, raising=False)
            mp.setenv(container.BASE_DIR_ENV, str(base))
            assert entry.main([]) == 0
        tars[task] = pack_model_dir(base / "model", root / "model.tar.gz")
    return tars


def test_the_archive_holds_the_three_files_at_its_root(model_tars):
    with tarfile.open(model_tars["binary_classification"]) as archive:
        assert sorted(archive.getnames()) == ["metadata.json", "transform.json", "xgboost-model.json"]


@pytest.mark.parametrize("task", TASKS)
def test_round_trip_predicts_raw_rows_as_the_design_says(task, model_tars, tmp_path):
    folder = extract_model_tar(model_tars[task], tmp_path / "model")
    bundle = load_model_bundle(folder)
    rows = raw_rows(task, 200, seed=99).drop(columns=["target"])
    truth = raw_rows(task, 200, seed=99)["target"]

    assert bundle.spec["task"] == bundle.metadata["task"] == task
    X = apply_transform(rows, bundle.spec)
    probabilities = bundle.predict_features(X)
    predictions = bundle.predict_frame(rows)
    assert len(predictions) == len(rows)
    json.dumps(predictions)  # JSON-ready

    if task == "binary_classification":
        assert probabilities.shape == (200,)
        assert all(isinstance(p, float) and 0.0 <= p <= 1.0 for p in predictions)
        assert predictions == pytest.approx(probabilities.tolist(), abs=1e-7)
        accuracy = np.mean((np.array(predictions) > 0.5) == (truth == "yes"))
        assert accuracy > 0.7
    elif task == "multiclass_classification":
        assert probabilities.shape == (200, 3)
        assert probabilities.sum(axis=1) == pytest.approx(np.ones(200), abs=1e-5)
        assert set(predictions) <= set(CLASSES[task])
        assert predictions == [CLASSES[task][i] for i in probabilities.argmax(axis=1)]
        assert np.mean(np.array(predictions) == truth.to_numpy()) > 0.6
    else:
        assert probabilities.shape == (200,)
        assert all(isinstance(p, float) for p in predictions)
        assert np.corrcoef(predictions, truth.astype(float))[0, 1] > 0.7


def test_predict_frame_needs_the_input_columns(model_tars, tmp_path):
    bundle = load_model_bundle(extract_model_tar(model_tars["regression"], tmp_path / "m"))
    with pytest.raises(DataError, match="city"):
        bundle.predict_frame(pd.DataFrame({"age": [30.0], "income": [1000.0]}))


def test_predict_features_checks_the_width(model_tars, tmp_path):
    bundle = load_model_bundle(extract_model_tar(model_tars["binary_classification"], tmp_path / "m"))
    with pytest.raises(DataError, match="3 features"):
        bundle.predict_features(np.zeros((2, 5), dtype=np.float32))
    assert bundle.predict_features(np.zeros((0, 3), dtype=np.float32)).shape == (0,)


def test_serving_uses_one_thread_unless_told(model_tars, tmp_path):
    folder = extract_model_tar(model_tars["binary_classification"], tmp_path / "m")
    assert json.loads(load_model_bundle(folder).booster.save_config())["learner"]["generic_param"]["nthread"] == "1"
    assert json.loads(load_model_bundle(folder, nthread=2).booster.save_config())["learner"]["generic_param"]["nthread"] == "2"


def test_a_folder_without_the_model_files_is_refused(model_tars, tmp_path):
    folder = extract_model_tar(model_tars["binary_classification"], tmp_path / "m")
    (folder / "metadata.json").unlink()
    with pytest.raises(StageError, match="no metadata.json"):
        load_model_bundle(folder)


# --- hostile archives -----------------------------------------------------------------


def _tar(tmp_path: Path, *members: tuple[tarfile.TarInfo, bytes | None]) -> Path:
    path = tmp_path / "hostile.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
            else:
                archive.addfile(info)
    return path


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


@pytest.mark.parametrize(
    ("member", "reason"),
    [
        (_file("../evil"), "'..'"),
        (_file("model/../../evil"), "'..'"),
        (_file("/tmp/updraft-evil-absolute"), "absolute path"),
        (_link("passwd", "/etc/passwd"), "absolute path /etc/passwd"),
        (_link("sneaky", "../../etc/passwd"), "links outside"),
        (_link("hard", "../outside", tarfile.LNKTYPE), "links outside"),
        (_link("tty", "", tarfile.CHRTYPE), "device"),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "symlink-absolute", "symlink-out", "hardlink-out", "device"],
)
def test_hostile_members_are_refused_and_nothing_is_written(member, reason, tmp_path):
    archive = _tar(tmp_path, _file("xgboost-model.json", b"{}"), member)
    dest = tmp_path / "box" / "model"

    with pytest.raises(StageError, match=reason):
        extract_model_tar(archive, dest)

    assert not dest.exists()  # checked before anything is unpacked
    assert not (tmp_path / "box" / "evil").exists() and not (tmp_path / "evil").exists()
    assert not Path("/tmp/updraft-evil-absolute").exists()


def test_links_that_stay_inside_are_kept(tmp_path):
    archive = _tar(tmp_path, _file("data/model.json", b"{}"), _link("current", "data/model.json"))
    dest = extract_model_tar(archive, tmp_path / "model")
    assert (dest / "current").read_bytes() == b"{}"


def test_a_file_that_is_not_a_tar_is_a_clear_error(tmp_path):
    path = tmp_path / "model.tar.gz"
    path.write_bytes(b"not a tarball")
    with pytest.raises(StageError, match="not a readable tar.gz"):
        extract_model_tar(path, tmp_path / "model")


# --- isolation forests: scored with NumPy, never unpickled ----------------------------------


def _fitted_forest(max_features: float = 1.0, contamination: object = "auto"):
    from sklearn.ensemble import IsolationForest

    rng = np.random.default_rng(11)
    X = rng.normal(size=(700, 5)).astype(np.float32)
    X[::37, 2] = np.nan  # scikit-learn learns where missing values go
    model = IsolationForest(n_estimators=25, max_features=max_features, contamination=contamination, random_state=3)
    return model.fit(X), X


@pytest.mark.parametrize(("max_features", "contamination"), [(1.0, "auto"), (0.6, 0.1)])
def test_the_numpy_forest_scores_as_scikit_learn_does(max_features, contamination):
    from images.training.anomaly import export_isolation_forest
    from tasks.modelbundle import IsolationForestScorer

    model, X = _fitted_forest(max_features, contamination)
    rng = np.random.default_rng(12)
    queries = np.vstack([X[:50], rng.normal(0, 4, size=(200, 5)).astype(np.float32)])
    queries[::7, 0] = np.nan
    queries[1, :] = np.nan

    scorer = IsolationForestScorer.from_document(json.loads(json.dumps(export_isolation_forest(model, 5))), 5)

    np.testing.assert_allclose(scorer.score_samples(queries), model.score_samples(queries), rtol=1e-12, atol=0)
    np.testing.assert_allclose(scorer.anomaly_scores(queries), -model.score_samples(queries), rtol=1e-12)
    assert scorer.offset_ == model.offset_
    # The threshold means the same: outliers where scikit-learn predicts -1.
    np.testing.assert_array_equal(scorer.anomaly_scores(queries) > -scorer.offset_, model.predict(queries) == -1)


def _forest_bundle(tmp_path: Path, document: dict | None = None) -> Path:
    from images.training.anomaly import export_isolation_forest

    model, _ = _fitted_forest()
    folder = tmp_path / "forest"
    folder.mkdir()
    names = [f"x{i}" for i in range(5)]
    spec = {"format": "updraft.transform/1", "task": "anomaly_detection", "label": "y", "label_classes": None,
            "input_columns": names, "categorical": [], "feature_names": names,
            "numeric": [{"name": n, "mean": 0.0, "std": 1.0, "fill": 0.0, "count": 1, "null_count": 0,
                         "min": -1.0, "max": 1.0} for n in names]}
    (folder / "transform.json").write_text(json.dumps(spec))
    (folder / "metadata.json").write_text(json.dumps({"task": "anomaly_detection", "algorithm": "isolation_forest"}))
    (folder / "isolation-forest.json").write_text(json.dumps(document or export_isolation_forest(model, 5)))
    return folder


def test_an_isolation_forest_bundle_loads_without_xgboost_files_and_predicts_frames(tmp_path):
    bundle = load_model_bundle(_forest_bundle(tmp_path))

    assert bundle.algorithm == "isolation_forest" and bundle.booster is None
    frame = pd.DataFrame({f"x{i}": [0.0, 9.0] for i in range(5)})
    scores = bundle.predict_frame(frame)
    assert all(isinstance(s, float) for s in scores)
    assert scores[1] > scores[0]  # the far point is the more anomalous
    assert bundle.predict_features(np.zeros((0, 5), dtype=np.float32)).shape == (0,)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda d: d.update(format="pickle"), "format 'pickle'"),
        (lambda d: d.update(n_features=4), "fitted on 4 features"),
        (lambda d: d["trees"][0].update(children_left=[0] * len(d["trees"][0]["children_left"])), "children must be"),
        (lambda d: d["trees"][0].update(feature=[99] * len(d["trees"][0]["feature"])), "outside 0..4"),
        (lambda d: d["trees"][0].pop("threshold"), "must hold the lists"),
        (lambda d: d.update(offset_="nan"), "offset_"),
    ],
    ids=["format", "width", "cycle", "feature", "missing-array", "offset"],
)
def test_a_malformed_forest_is_refused(damage, reason, tmp_path):
    from images.training.anomaly import export_isolation_forest

    document = export_isolation_forest(_fitted_forest()[0], 5)
    damage(document)
    with pytest.raises(StageError, match=reason):
        load_model_bundle(_forest_bundle(tmp_path, document))


def test_bundles_without_an_algorithm_are_xgboost_and_unknown_ones_are_refused(model_tars, tmp_path):
    folder = extract_model_tar(model_tars["regression"], tmp_path / "m")
    metadata = json.loads((folder / "metadata.json").read_text())
    assert metadata["algorithm"] == "xgboost"
    del metadata["algorithm"]  # as every bundle written before anomaly detection
    (folder / "metadata.json").write_text(json.dumps(metadata))
    assert load_model_bundle(folder).algorithm == "xgboost"

    (folder / "metadata.json").write_text(json.dumps({**metadata, "algorithm": "pickle"}))
    with pytest.raises(StageError, match="algorithm 'pickle'"):
        load_model_bundle(folder)


def test_bundle_files_name_each_algorithms_model_file():
    from tasks.modelbundle import BUNDLE_FILES, bundle_files

    assert bundle_files() == BUNDLE_FILES
    assert bundle_files("isolation_forest") == ("isolation-forest.json", "transform.json", "metadata.json")
