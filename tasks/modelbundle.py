"""The model artifact: ``model.tar.gz`` holding ``xgboost-model.json``, ``transform.json``, ``metadata.json``.

Training writes it; evaluation, the inference server and deployment read it through
:func:`load_model_bundle`, so every consumer applies the same transform and the same
booster (no training/serving skew). Archives come from S3 and may have been written by
anyone with access to the bucket, so extraction refuses anything that could land
outside the destination folder.
"""

from __future__ import annotations

import json
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from tasks.errors import DataError, StageError

MODEL_FILE = "xgboost-model.json"
TRANSFORM_FILE = "transform.json"
METADATA_FILE = "metadata.json"
BUNDLE_FILES = (MODEL_FILE, TRANSFORM_FILE, METADATA_FILE)


def _refusal(member: tarfile.TarInfo, dest: Path) -> str | None:
    """Why ``member`` may not be extracted into ``dest``, or None when it is safe."""
    name = member.name
    posix = PurePosixPath(name)
    if posix.is_absolute() or name.startswith("\\") or re.match(r"^[A-Za-z]:[\\/]", name):
        return "has an absolute path"
    if ".." in posix.parts:
        return "climbs out of the folder with '..'"
    if member.isdev() or member.isfifo():
        return "is a device or pipe"
    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        return "is not a regular file or folder"
    if member.issym() or member.islnk():
        link = PurePosixPath(member.linkname)
        if link.is_absolute():
            return f"links to the absolute path {member.linkname}"
        base = dest / posix.parent if member.issym() else dest
        target = Path(os.path.normpath(base / link))
        if not target.is_relative_to(dest):
            return f"links outside the folder ({member.linkname})"
    return None


def extract_model_tar(tar_path: str | os.PathLike[str], dest_dir: str | os.PathLike[str]) -> Path:
    """Unpack a model archive into ``dest_dir`` after checking every member; returns the folder."""
    dest = Path(dest_dir).resolve()
    try:
        with tarfile.open(tar_path, "r:*") as archive:
            members = archive.getmembers()
            for member in members:
                reason = _refusal(member, dest)
                if reason:
                    raise StageError(f"refusing model archive {tar_path}: member {member.name!r} {reason}")
            dest.mkdir(parents=True, exist_ok=True)
            archive.extractall(dest, members=members, filter="data")
    except tarfile.FilterError as exc:
        raise StageError(f"refusing model archive {tar_path}: {exc}") from None
    except (tarfile.ReadError, EOFError) as exc:
        raise StageError(f"model archive {tar_path} is not a readable tar.gz file ({exc})") from None
    except FileNotFoundError:
        raise StageError(f"model archive {tar_path} does not exist") from None
    return dest


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise StageError(f"model folder {path.parent} has no {path.name}; is it an updraft model?")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise StageError(f"{path} is not valid JSON ({exc})") from None


@dataclass(frozen=True)
class ModelBundle:
    """A trained model ready to predict: the booster, its fitted transform and its training record."""

    model_dir: Path
    booster: Any  # xgboost.Booster
    spec: dict[str, Any]
    metadata: dict[str, Any]

    @property
    def task(self) -> str:
        return self.spec["task"]

    @property
    def feature_names(self) -> list[str]:
        return list(self.spec["feature_names"])

    def predict_features(self, X: np.ndarray) -> np.ndarray:
        """Predictions on already-transformed rows: binary P(positive) (n,), multiclass (n, k), regression (n,)."""
        X = np.asarray(X, dtype=np.float32)
        n_features = len(self.spec["feature_names"])
        if X.ndim != 2 or X.shape[1] != n_features:
            raise DataError(f"expected rows of {n_features} features, got an array of shape {X.shape}")
        if X.shape[0] == 0:
            k = len(self.spec.get("label_classes") or [])
            return np.empty((0, k) if self.task == "multiclass_classification" else (0,), dtype=np.float32)
        return np.asarray(self.booster.inplace_predict(X))

    def predict_frame(self, df: Any) -> list:
        """Raw input columns → transform → JSON-ready predictions, one per row.

        Binary: the probability of the positive class; multiclass: the predicted original
        label (string); regression: the value.
        """
        from tasks.features.transform import apply_transform, decode_labels

        predictions = self.predict_features(apply_transform(df, self.spec))
        if self.task == "multiclass_classification":
            return list(decode_labels(predictions.argmax(axis=1), self.spec))
        return predictions.astype(np.float64).tolist()


def load_model_bundle(model_dir: str | os.PathLike[str], nthread: int = 1) -> ModelBundle:
    """Load an extracted model folder once; ``nthread`` 1 suits serving, where requests bring the parallelism."""
    import xgboost as xgb

    folder = Path(model_dir)
    if not folder.is_dir():
        raise StageError(f"model folder {folder} does not exist")
    spec = _read_json(folder / TRANSFORM_FILE)
    metadata = _read_json(folder / METADATA_FILE)
    model_path = folder / MODEL_FILE
    if not model_path.is_file():
        raise StageError(f"model folder {folder} has no {MODEL_FILE}; is it an updraft model?")
    booster = xgb.Booster()
    try:
        booster.load_model(str(model_path))
    except xgb.core.XGBoostError as exc:
        raise StageError(f"{model_path} is not an XGBoost model ({str(exc).splitlines()[0]})") from None
    booster.set_param({"nthread": int(nthread)})
    if metadata.get("task") not in (None, spec.get("task")):
        raise StageError(
            f"model folder {folder}: metadata.json says task {metadata.get('task')!r} but transform.json "
            f"says {spec.get('task')!r}"
        )
    n_features = len(spec.get("feature_names") or [])
    if booster.num_features() != n_features:
        raise StageError(
            f"model folder {folder}: the booster expects {booster.num_features()} features but "
            f"transform.json lists {n_features}"
        )
    return ModelBundle(model_dir=folder, booster=booster, spec=spec, metadata=metadata)
