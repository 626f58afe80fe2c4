"""The SageMaker training-container contract: every path, file and variable name in one place.

SageMaker starts the image as ``docker run IMAGE train`` with ``/opt/ml`` mounted. The
root is overridable with ``SAGEMAKER_BASE_DIR`` (as in aws/sagemaker-training-toolkit)
so the same entry point runs as a plain process on a temporary folder, which is how
the local job runner and the tests use it. Paths are resolved when asked for, never at
import, so a caller can point the environment elsewhere first.

``SM_*`` variables exist only where the training toolkit (or our local runner) sets
them; they are read first and the files under ``input/config`` are the fallback.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Mapping

from tasks import modelbundle as _bundle

# Files the entry point writes to the model folder (the root of model.tar.gz); the
# artifact's format is owned by tasks.modelbundle, which every consumer reads it through.
MODEL_FILE = _bundle.MODEL_FILE  # an XGBoost booster
FOREST_FILE = _bundle.FOREST_FILE  # an IsolationForest's trees, as JSON
TRANSFORM_FILE = _bundle.TRANSFORM_FILE
METADATA_FILE = _bundle.METADATA_FILE
#: metadata.json's ``algorithm``: which model file the bundle holds.
ALGORITHM_XGBOOST = _bundle.ALGORITHM_XGBOOST
ALGORITHM_ISOLATION_FOREST = _bundle.ALGORITHM_ISOLATION_FOREST

DEFAULT_BASE_DIR = "/opt/ml"
BASE_DIR_ENV = "SAGEMAKER_BASE_DIR"

# Relative to the base folder.
INPUT_DIR = "input"
INPUT_CONFIG_DIR = "input/config"
INPUT_DATA_DIR = "input/data"
HYPERPARAMETERS_FILE = "hyperparameters.json"
INPUT_DATA_CONFIG_FILE = "inputdataconfig.json"
RESOURCE_CONFIG_FILE = "resourceconfig.json"
MODEL_DIR = "model"
OUTPUT_DIR = "output"
OUTPUT_DATA_DIR = "output/data"
FAILURE_FILE = "output/failure"
CHECKPOINTS_DIR = "checkpoints"
#: The one file a training checkpoint lives in (booster and early-stopping state together,
#: so a single rename makes it consistent); see images/training/checkpoints.py.
CHECKPOINT_FILE = "updraft-checkpoint.json"

# Environment variables (training toolkit names; SageMaker itself sets TRAINING_JOB_NAME).
SM_PREFIX = "SM_"
SM_CHANNEL_PREFIX = "SM_CHANNEL_"
SM_CHANNELS = "SM_CHANNELS"
SM_MODEL_DIR = "SM_MODEL_DIR"
SM_HPS = "SM_HPS"
SM_OUTPUT_DATA_DIR = "SM_OUTPUT_DATA_DIR"
SM_CURRENT_HOST = "SM_CURRENT_HOST"
SM_HOSTS = "SM_HOSTS"
SM_NUM_CPUS = "SM_NUM_CPUS"
SM_NUM_GPUS = "SM_NUM_GPUS"
SM_INPUT_DATA_CONFIG = "SM_INPUT_DATA_CONFIG"
TRAINING_JOB_NAME = "TRAINING_JOB_NAME"
OMP_NUM_THREADS = "OMP_NUM_THREADS"
#: updraft's own: the pipeline run the job belongs to (passed as the job's Environment).
UPDRAFT_RUN_ID = "UPDRAFT_RUN_ID"
#: updraft's own, recorded in metadata.json: the hash of the data manifest the features came
#: from and the git revision of the code (both passed as the job's Environment by the stage).
UPDRAFT_DATA_MANIFEST_HASH = "UPDRAFT_DATA_MANIFEST_HASH"
UPDRAFT_GIT_REVISION = "UPDRAFT_GIT_REVISION"
#: Multi-instance training. SageMaker's hosts resolve by DNS (algo-1, algo-2...); a local run
#: of several processes names their addresses instead, as a JSON map host -> IP.
UPDRAFT_HOST_ADDRESSES = "UPDRAFT_HOST_ADDRESSES"
#: The port XGBoost's tracker listens on, on hosts[0]; every host knows it without asking.
UPDRAFT_TRACKER_PORT = "UPDRAFT_TRACKER_PORT"
DEFAULT_TRACKER_PORT = 9099
#: Seconds hosts wait for one another: the slowest host's start and data download count.
UPDRAFT_TRACKER_TIMEOUT = "UPDRAFT_TRACKER_TIMEOUT"
DEFAULT_TRACKER_TIMEOUT_S = 900

# inputdataconfig.json's S3DistributionType for a channel: every host gets all of its files
# (and the entry point shards them), or SageMaker already gave each host its share.
FULLY_REPLICATED = "FullyReplicated"
SHARDED_BY_S3_KEY = "ShardedByS3Key"

DEFAULT_HOST = "algo-1"

# The channels updraft's training entry point reads, and what each holds.
CHANNEL_TRAIN = "train"
CHANNEL_VALIDATION = "validation"
CHANNEL_TRANSFORM = "transform"
CHANNEL_CONTENT_TYPES: dict[str, str] = {
    CHANNEL_TRAIN: "application/x-parquet",
    CHANNEL_VALIDATION: "application/x-parquet",
    CHANNEL_TRANSFORM: "application/json",
}
#: Columns of the train/validation Parquet files besides the features: the encoded label, and
#: for ranking the query id (int64, any values; rows of one query are ranked together).
LABEL_COLUMN = "_label"
GROUP_COLUMN = "_group"

#: The metrics the entry point prints by default for each task (``<data>:<metric>=<value>``,
#: data ``train`` and ``validation``; anomaly detection prints validation only, and only when
#: the validation channel has labels). The first is the one early stopping and tuning follow.
DEFAULT_METRICS: dict[str, tuple[str, ...]] = {
    "binary_classification": ("auc",),
    "multiclass_classification": ("mlogloss",),
    "regression": ("rmse",),
    "ranking": ("ndcg@10", "map@10"),
    "anomaly_detection": ("roc_auc", "precision_at_k"),
}


def base_dir() -> Path:
    return Path(os.environ.get(BASE_DIR_ENV) or DEFAULT_BASE_DIR)


def input_config_dir() -> Path:
    return base_dir() / INPUT_CONFIG_DIR


def channel_env_var(channel: str) -> str:
    return SM_CHANNEL_PREFIX + channel.upper().replace("-", "_")


def channel_dir(channel: str) -> Path:
    """Where the channel's files are: ``SM_CHANNEL_<NAME>`` first, else ``input/data/<name>``."""
    return Path(os.environ.get(channel_env_var(channel)) or base_dir() / INPUT_DATA_DIR / channel)


def checkpoints_dir() -> Path:
    """``checkpoints`` under the base folder: SageMaker syncs it with the job's CheckpointConfig S3 URI."""
    return base_dir() / CHECKPOINTS_DIR


def model_dir() -> Path:
    return Path(os.environ.get(SM_MODEL_DIR) or base_dir() / MODEL_DIR)


def output_data_dir() -> Path:
    return Path(os.environ.get(SM_OUTPUT_DATA_DIR) or base_dir() / OUTPUT_DATA_DIR)


def failure_file() -> Path:
    return base_dir() / FAILURE_FILE


def _read_json(path: Path) -> Any:
    if not path.exists():
        return None
    return json.loads(path.read_text())


def read_hyperparameters() -> dict[str, Any]:
    """The job's hyperparameters: ``SM_HPS`` (JSON) first, else ``hyperparameters.json``, else none.

    Values from the file are strings, as SageMaker writes them; ``SM_HPS`` may hold
    JSON numbers and booleans. Callers parse both the same way.
    """
    raw = os.environ.get(SM_HPS)
    if raw:
        value = json.loads(raw)
    else:
        value = _read_json(input_config_dir() / HYPERPARAMETERS_FILE)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"hyperparameters must be a JSON object, got {type(value).__name__}")
    return value


def read_hosts() -> list[str]:
    """The job's instances: ``SM_HOSTS`` first, else ``resourceconfig.json``'s ``hosts``."""
    raw = os.environ.get(SM_HOSTS)
    if raw:
        return list(json.loads(raw))
    return list((_read_json(input_config_dir() / RESOURCE_CONFIG_FILE) or {}).get("hosts") or [])


def read_current_host() -> str:
    """This instance's name: ``SM_CURRENT_HOST`` first, else ``resourceconfig.json``, else ``algo-1``."""
    raw = os.environ.get(SM_CURRENT_HOST)
    if raw:
        return raw
    return str((_read_json(input_config_dir() / RESOURCE_CONFIG_FILE) or {}).get("current_host") or DEFAULT_HOST)


def read_input_data_config() -> dict[str, dict[str, Any]]:
    """Each channel's settings (``S3DistributionType``...).

    ``SM_INPUT_DATA_CONFIG`` first, else ``inputdataconfig.json``, else none.
    """
    raw = os.environ.get(SM_INPUT_DATA_CONFIG)
    value = json.loads(raw) if raw else _read_json(input_config_dir() / INPUT_DATA_CONFIG_FILE)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{INPUT_DATA_CONFIG_FILE} must be a JSON object, got {type(value).__name__}")
    return value


def stringify_hyperparameters(hyperparameters: Mapping[str, Any]) -> dict[str, str]:
    """Hyperparameters as SageMaker passes them: every value a string (booleans as ``true``/``false``)."""
    out: dict[str, str] = {}
    for name, value in hyperparameters.items():
        if isinstance(value, bool):
            out[str(name)] = "true" if value else "false"
        elif isinstance(value, str):
            out[str(name)] = value
        elif isinstance(value, (int, float)):
            out[str(name)] = repr(value)
        else:
            out[str(name)] = json.dumps(value)
    return out


# What the entry point prints for each metric: ``<data>:<metric>=<value>``. Per round the
# pairs follow a ``[round]`` prefix on one line; at the end each pair stands alone on its
# line (the best iteration's values). SageMaker's metric definitions search every line, so
# they chart the rounds and end on the final value; the local runner reads the lone lines.
METRIC_NAME_PATTERN = r"[\w.@-]+:[\w.@-]+"
METRIC_VALUE_PATTERN = r"[-+0-9.eE]+|nan|inf|-inf"
_METRIC_LINE = re.compile(rf"^({METRIC_NAME_PATTERN})=({METRIC_VALUE_PATTERN})$")


def format_metric(name: str, value: float) -> str:
    return f"{name}={format(float(value), '.8g')}"


def parse_metric_line(line: str) -> tuple[str, float] | None:
    """``(name, value)`` when ``line`` is a lone final metric line, else None."""
    match = _METRIC_LINE.match(line.strip())
    if not match:
        return None
    try:
        return match.group(1), float(match.group(2))
    except ValueError:
        return None


def metric_regex(name: str) -> str:
    """A SageMaker ``MetricDefinitions`` regex whose first group captures ``name``'s value."""
    return re.escape(name) + r"=([-+0-9.eE]+)"
