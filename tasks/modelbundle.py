"""The model artifact: ``model.tar.gz`` holding the model file, ``transform.json`` and ``metadata.json``.

Training writes it; evaluation, the inference server and deployment read it through
:func:`load_model_bundle`, so every consumer applies the same transform and the same
model (no training/serving skew). The model file depends on ``metadata.json``'s
``algorithm``: ``xgboost-model.json`` (an XGBoost booster, for classification, regression
and ranking) or ``isolation-forest.json`` (an IsolationForest's trees, for anomaly
detection, scored here with NumPy). Archives come from S3 and may have been written by
anyone with access to the bucket, so extraction refuses anything that could land
outside the destination folder, and no model format is a pickle: loading a model reads
data, it never runs code.
"""

from __future__ import annotations

import json
import math
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Mapping, Sequence

import numpy as np

from tasks.errors import DataError, StageError

MODEL_FILE = "xgboost-model.json"
FOREST_FILE = "isolation-forest.json"
TRANSFORM_FILE = "transform.json"
METADATA_FILE = "metadata.json"
#: The files of an XGBoost bundle (every bundle written before anomaly detection existed).
BUNDLE_FILES = (MODEL_FILE, TRANSFORM_FILE, METADATA_FILE)

ALGORITHM_XGBOOST = "xgboost"
ALGORITHM_ISOLATION_FOREST = "isolation_forest"
#: A user's own training script (``train.entry_point``): its model is served by its own
#: ``code/inference.py`` with SageMaker's framework-container hooks ``model_fn`` and ``predict_fn``.
ALGORITHM_SCRIPT = "script"
SCRIPT_INFERENCE_FILE = "code/inference.py"
#: metadata.json's ``algorithm`` -> the model file it names. Bundles without the field are XGBoost.
MODEL_FILES: dict[str, str] = {
    ALGORITHM_XGBOOST: MODEL_FILE,
    ALGORITHM_ISOLATION_FOREST: FOREST_FILE,
    ALGORITHM_SCRIPT: SCRIPT_INFERENCE_FILE,
}
FOREST_FORMAT = "updraft.isolation-forest/1"

#: Tasks whose predictions are one float per row, returned as they are by ``predict_frame``.
_SCORE_TASKS = ("regression", "ranking", "anomaly_detection")


def bundle_files(algorithm: str = ALGORITHM_XGBOOST) -> tuple[str, str, str]:
    """The three files a bundle of ``algorithm`` holds (what a packer must put in ``model.tar.gz``)."""
    if algorithm not in MODEL_FILES:
        raise StageError(f"unknown model algorithm {algorithm!r} (known: {', '.join(MODEL_FILES)})")
    return (MODEL_FILES[algorithm], TRANSFORM_FILE, METADATA_FILE)


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


def average_path_length(n_samples: np.ndarray) -> np.ndarray:
    """The mean depth at which a point is isolated among ``n`` (the iForest paper's c(n)).

    Equal to scikit-learn's ``_average_path_length``: 0 for n <= 1, 1 for n == 2, else
    2 (ln(n - 1) + Euler's gamma) - 2 (n - 1) / n.
    """
    n = np.asarray(n_samples, dtype=np.float64)
    out = np.zeros_like(n)
    out[n == 2] = 1.0
    big = n > 2
    out[big] = 2.0 * (np.log(n[big] - 1.0) + np.euler_gamma) - 2.0 * (n[big] - 1.0) / n[big]
    return out


@dataclass(frozen=True)
class _Tree:
    left: np.ndarray  # intp; -1 at leaves
    right: np.ndarray
    feature: np.ndarray  # intp; any value at leaves
    threshold: np.ndarray  # float64
    missing_left: np.ndarray  # bool: where a missing value goes
    leaf_value: np.ndarray  # float64: depth (edges) + c(n_node_samples), the path length a row ending here counts
    depth: int  # longest root-to-leaf path, in edges


class IsolationForestScorer:
    """An IsolationForest read from ``isolation-forest.json``, scoring rows with NumPy alone.

    ``score_samples`` equals scikit-learn's ``IsolationForest.score_samples`` (the same
    trees, the same comparisons in float64, the same sum); ``anomaly_scores`` is its
    negation, so higher means more anomalous. ``offset_`` is scikit-learn's threshold:
    a row is an outlier where ``score_samples < offset_``, i.e. ``anomaly_scores > -offset_``.
    """

    def __init__(self, trees: Sequence[_Tree], n_features: int, max_samples: int, offset: float) -> None:
        self.trees = list(trees)
        self.n_features = n_features
        self.max_samples = max_samples
        self.offset_ = offset

    @classmethod
    def from_document(cls, doc: Mapping[str, Any], n_features: int, origin: str = FOREST_FILE) -> IsolationForestScorer:
        """Check and load the JSON document; anything malformed is a :class:`StageError` naming ``origin``."""

        def bad(reason: str) -> StageError:
            return StageError(f"{origin} is not a valid updraft isolation forest: {reason}")

        if not isinstance(doc, Mapping) or doc.get("format") != FOREST_FORMAT:
            found = doc.get("format") if isinstance(doc, Mapping) else type(doc).__name__
            raise bad(f"format {found!r}, expected {FOREST_FORMAT!r}")
        if doc.get("n_features") != n_features:
            raise bad(f"it was fitted on {doc.get('n_features')!r} features but transform.json lists {n_features}")
        max_samples, offset = doc.get("max_samples_"), doc.get("offset_")
        if isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 1:
            raise bad(f"max_samples_ must be a positive integer, got {max_samples!r}")
        if isinstance(offset, bool) or not isinstance(offset, (int, float)) or not math.isfinite(offset):
            raise bad(f"offset_ must be a number, got {offset!r}")
        raw_trees = doc.get("trees")
        if not isinstance(raw_trees, list) or not raw_trees:
            raise bad("it has no trees")
        trees = [cls._tree(raw, n_features, i, bad) for i, raw in enumerate(raw_trees)]
        return cls(trees, n_features, int(max_samples), float(offset))

    @staticmethod
    def _tree(raw: Any, n_features: int, index: int, bad: Any) -> _Tree:
        keys = ("children_left", "children_right", "feature", "threshold", "n_node_samples", "missing_go_to_left")
        if not isinstance(raw, Mapping) or any(not isinstance(raw.get(k), list) for k in keys):
            raise bad(f"tree {index} must hold the lists {', '.join(keys)}")
        sizes = {len(raw[k]) for k in keys}
        if len(sizes) != 1 or 0 in sizes:
            raise bad(f"tree {index}: its lists differ in length or are empty")
        try:
            left = np.asarray(raw["children_left"], dtype=np.int64)
            right = np.asarray(raw["children_right"], dtype=np.int64)
            feature = np.asarray(raw["feature"], dtype=np.int64)
            threshold = np.asarray(raw["threshold"], dtype=np.float64)
            samples = np.asarray(raw["n_node_samples"], dtype=np.int64)
            missing_left = np.asarray(raw["missing_go_to_left"], dtype=np.int64)
        except (TypeError, ValueError, OverflowError) as exc:
            raise bad(f"tree {index}: {exc}") from None
        nodes = np.arange(len(left))
        leaf = left == -1
        # Children come after their parent (scikit-learn builds depth first): walks always end.
        internal_ok = (left > nodes) & (right > nodes) & (left < len(left)) & (right < len(left))
        if not np.all(np.where(leaf, right == -1, internal_ok)):
            raise bad(f"tree {index}: children must be -1 at leaves and later nodes elsewhere")
        if np.any(~leaf & ((feature < 0) | (feature >= n_features))):
            raise bad(f"tree {index}: a split uses a feature outside 0..{n_features - 1}")
        if np.any(samples < 1) or np.any((missing_left != 0) & (missing_left != 1)):
            raise bad(f"tree {index}: n_node_samples must be >= 1 and missing_go_to_left 0 or 1")
        depth = np.zeros(len(left), dtype=np.int64)
        for node in np.flatnonzero(~leaf):  # parents first, so a child's depth is known in one pass
            depth[left[node]] = depth[right[node]] = depth[node] + 1
        return _Tree(
            left=left.astype(np.intp),
            right=right.astype(np.intp),
            feature=np.where(leaf, 0, feature).astype(np.intp),
            threshold=threshold,
            missing_left=missing_left.astype(bool),
            leaf_value=depth + average_path_length(samples),
            depth=int(depth.max()),
        )

    def score_samples(self, X: np.ndarray) -> np.ndarray:
        """scikit-learn's ``score_samples``: in [-1, 0), lower is more abnormal."""
        X = np.asarray(X, dtype=np.float32)
        rows = np.arange(X.shape[0])
        path = np.zeros(X.shape[0], dtype=np.float64)
        for tree in self.trees:
            node = np.zeros(X.shape[0], dtype=np.intp)
            for _ in range(tree.depth):
                values = X[rows, tree.feature[node]].astype(np.float64)
                go_left = np.where(np.isnan(values), tree.missing_left[node], values <= tree.threshold[node])
                node = np.where(tree.left[node] >= 0, np.where(go_left, tree.left[node], tree.right[node]), node)
            path += tree.leaf_value[node]
        denominator = len(self.trees) * float(average_path_length(np.array([self.max_samples]))[0])
        if denominator == 0:  # one training row: every path is empty, as in scikit-learn
            return -np.ones(X.shape[0])
        return -(2.0 ** (-path / denominator))

    def anomaly_scores(self, X: np.ndarray) -> np.ndarray:
        """Higher = more anomalous (``-score_samples``, in (0, 1])."""
        return -self.score_samples(X)


@dataclass(frozen=True)
class ModelBundle:
    """A trained model ready to predict: the model (a booster or a forest), its fitted transform and its record."""

    model_dir: Path
    booster: Any  # xgboost.Booster; None for an isolation forest
    spec: dict[str, Any]
    metadata: dict[str, Any]
    forest: IsolationForestScorer | None = None
    script: "ScriptModel | None" = None

    @property
    def task(self) -> str:
        return self.spec["task"]

    @property
    def algorithm(self) -> str:
        return self.metadata.get("algorithm") or ALGORITHM_XGBOOST

    @property
    def feature_names(self) -> list[str]:
        return list(self.spec["feature_names"])

    def predict_features(self, X: np.ndarray) -> np.ndarray:
        """Predictions on already-transformed rows.

        Binary: P(positive) (n,); multiclass: (n, k) probabilities; regression: the value
        (n,); ranking: the raw ranking score (n,), comparable within a query; anomaly
        detection: the anomaly score (n,), higher = more anomalous.
        """
        X = np.asarray(X, dtype=np.float32)
        n_features = len(self.spec["feature_names"])
        if X.ndim != 2 or X.shape[1] != n_features:
            raise DataError(f"expected rows of {n_features} features, got an array of shape {X.shape}")
        if X.shape[0] == 0:
            k = len(self.spec.get("label_classes") or [])
            return np.empty((0, k) if self.task == "multiclass_classification" else (0,), dtype=np.float32)
        if self.forest is not None:
            return self.forest.anomaly_scores(X)
        if self.script is not None:
            return self.script.predict(X)
        return np.asarray(self.booster.inplace_predict(X))

    def predict_frame(self, df: Any) -> list:
        """Raw input columns → transform → JSON-ready predictions, one per row.

        Binary: the probability of the positive class; multiclass: the predicted original
        label (string); regression: the value; ranking: the score (sort a query's rows by
        it, highest first); anomaly detection: the anomaly score (higher = more anomalous).
        """
        from tasks.features.transform import apply_transform, decode_labels

        predictions = self.predict_features(apply_transform(df, self.spec))
        if self.task == "multiclass_classification":
            return list(decode_labels(predictions.argmax(axis=1), self.spec))
        return predictions.astype(np.float64).tolist()


def load_model_bundle(model_dir: str | os.PathLike[str], nthread: int = 1) -> ModelBundle:
    """Load an extracted model folder once; ``nthread`` 1 suits serving, where requests bring the parallelism."""
    folder = Path(model_dir)
    if not folder.is_dir():
        raise StageError(f"model folder {folder} does not exist")
    spec = _read_json(folder / TRANSFORM_FILE)
    metadata = _read_json(folder / METADATA_FILE)
    if metadata.get("task") not in (None, spec.get("task")):
        raise StageError(
            f"model folder {folder}: metadata.json says task {metadata.get('task')!r} but transform.json "
            f"says {spec.get('task')!r}"
        )
    algorithm = metadata.get("algorithm") or ALGORITHM_XGBOOST
    if algorithm not in MODEL_FILES:
        raise StageError(
            f"model folder {folder}: metadata.json names algorithm {algorithm!r}, which this updraft cannot "
            f"load (known: {', '.join(MODEL_FILES)})"
        )
    model_path = folder / MODEL_FILES[algorithm]
    if not model_path.is_file():
        raise StageError(f"model folder {folder} has no {model_path.name}; is it an updraft model?")
    n_features = len(spec.get("feature_names") or [])
    if algorithm == ALGORITHM_SCRIPT:
        return ModelBundle(model_dir=folder, booster=None, spec=spec, metadata=metadata, script=ScriptModel.load(folder, n_features))
    if algorithm == ALGORITHM_ISOLATION_FOREST:
        forest = IsolationForestScorer.from_document(_read_json(model_path), n_features, origin=str(model_path))
        return ModelBundle(model_dir=folder, booster=None, spec=spec, metadata=metadata, forest=forest)

    import xgboost as xgb

    booster = xgb.Booster()
    try:
        booster.load_model(str(model_path))
    except xgb.core.XGBoostError as exc:
        raise StageError(f"{model_path} is not an XGBoost model ({str(exc).splitlines()[0]})") from None
    booster.set_param({"nthread": int(nthread)})
    if booster.num_features() != n_features:
        raise StageError(
            f"model folder {folder}: the booster expects {booster.num_features()} features but "
            f"transform.json lists {n_features}"
        )
    return ModelBundle(model_dir=folder, booster=booster, spec=spec, metadata=metadata)


@dataclass(frozen=True)
class ScriptModel:
    """A user script's model behind its own ``code/inference.py`` (``model_fn(model_dir)``, ``predict_fn(data, model)``).

    Loading it runs that file, as SageMaker's framework containers do: load bundles only
    from buckets you control. ``predict_fn`` gets the transformed float32 rows (n x features).
    """

    model: Any
    predict_fn: Any
    n_features: int

    @classmethod
    def load(cls, folder: Path, n_features: int) -> "ScriptModel":
        import importlib.util
        import sys

        path = folder / SCRIPT_INFERENCE_FILE
        module_name = f"updraft_inference_{abs(hash(str(path.resolve()))):x}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise StageError(f"cannot load {path}")
        module = importlib.util.module_from_spec(spec)
        sys.path.insert(0, str(path.parent))  # its own helpers next to it, as the toolkit allows
        try:
            spec.loader.exec_module(module)
        except ImportError as exc:
            raise StageError(f"{path} needs a package this environment lacks ({exc}); install it where the model is served") from None
        finally:
            sys.path.remove(str(path.parent))
        missing = [name for name in ("model_fn", "predict_fn") if not callable(getattr(module, name, None))]
        if missing:
            raise StageError(f"{path} must define {' and '.join(missing)} (SageMaker's inference hooks)")
        return cls(model=module.model_fn(str(folder)), predict_fn=module.predict_fn, n_features=n_features)

    def predict(self, X: np.ndarray) -> np.ndarray:
        out = np.asarray(self.predict_fn(X, self.model))
        if out.shape[0] != X.shape[0]:
            raise StageError(f"the script's predict_fn returned {out.shape[0]} predictions for {X.shape[0]} rows")
        return out
