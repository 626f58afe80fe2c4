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
from tests.unit.test_train_entrypoint import CLASSES, layout_opt_ml, raw_rows, write_feature_splits

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
