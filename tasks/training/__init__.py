"""The train stage: a SageMaker training job on ``aws``, the same entry point as a local process elsewhere.

``container`` holds the SageMaker contract, ``local_job`` runs the entry point as a
process, ``jobs`` builds the ``CreateTrainingJob`` request and runs or records the job,
``stage`` is the Prefect task (the only place that takes a ``Target``).

The names below load on first use: the training container imports
``tasks.training.container`` and must not pull in Prefect, boto3 or fsspec (seconds of
start-up, and packages its image does not install).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tasks.training.local_job import TrainResult
    from tasks.training.stage import train_stage, training_channels

__all__ = ["TrainResult", "train_stage", "training_channels"]

_LAZY = {
    "TrainResult": "tasks.training.local_job",
    "train_stage": "tasks.training.stage",
    "training_channels": "tasks.training.stage",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
