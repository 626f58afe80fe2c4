"""Training checkpoints in ``/opt/ml/checkpoints``, so a stopped or interrupted job resumes where it was.

SageMaker copies that folder to the job's checkpoint S3 location while the job runs and
back onto the instance when a job (a managed-spot job after an interruption, or a new job
given the same location) starts. A checkpoint is one JSON file holding the booster (UBJSON,
base64) and everything early stopping needs (rounds done, the evaluation history, the best
round and score, the rounds since), written to a temporary file and renamed over the old
one, so a reader never sees half of it. ``settings`` records what the model depends on: a
checkpoint written for other settings or other data is not resumed.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks.errors import DataError
from tasks.training import container

CHECKPOINT_FORMAT = "updraft.checkpoint/1"


@dataclass
class TrainingState:
    """How far boosting got: enough to continue it, early stopping included, as if never interrupted."""

    rounds: int = 0
    #: data name -> metric name -> one value per round (what ``xgboost.train``'s evals_result holds).
    history: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    best_iteration: int | None = None
    best_score: float | None = None
    rounds_since_best: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "rounds": self.rounds,
            "history": self.history,
            "best_iteration": self.best_iteration,
            "best_score": self.best_score,
            "rounds_since_best": self.rounds_since_best,
        }

    @classmethod
    def from_json(cls, raw: Any) -> TrainingState:
        if not isinstance(raw, dict) or not isinstance(raw.get("rounds"), int):
            raise ValueError("its state lacks the rounds done")
        if not isinstance(raw.get("history"), dict):
            raise ValueError("its state lacks the evaluation history")
        history = {
            str(data): {str(metric): [float(v) for v in values] for metric, values in metrics.items()}
            for data, metrics in raw["history"].items()
        }
        best = raw.get("best_iteration")
        score = raw.get("best_score")
        return cls(
            rounds=int(raw["rounds"]),
            history=history,
            best_iteration=int(best) if best is not None else None,
            best_score=float(score) if score is not None else None,
            rounds_since_best=int(raw.get("rounds_since_best") or 0),
        )


@dataclass
class Checkpoint:
    """A booster after ``state.rounds`` rounds, and the settings it was trained with."""

    state: TrainingState
    settings: dict[str, Any]
    model: bytes  # Booster.save_raw("ubj")

    def encode(self) -> bytes:
        return json.dumps(
            {
                "format": CHECKPOINT_FORMAT,
                "state": self.state.to_json(),
                "settings": self.settings,
                "model_ubj_base64": base64.b64encode(self.model).decode("ascii"),
            }
        ).encode()

    @classmethod
    def decode(cls, data: bytes, origin: str) -> Checkpoint:
        """Parse a checkpoint; a damaged one is a :class:`DataError` that says how to get past it."""
        try:
            raw = json.loads(data)
            if not isinstance(raw, dict) or raw.get("format") != CHECKPOINT_FORMAT:
                raise ValueError(f"format is not {CHECKPOINT_FORMAT}")
            if not isinstance(raw.get("settings"), dict):
                raise ValueError("it lacks its settings")
            return cls(
                state=TrainingState.from_json(raw.get("state")),
                settings=raw["settings"],
                model=base64.b64decode(raw["model_ubj_base64"], validate=True),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(
                f"the checkpoint {origin} cannot be read ({exc}); delete it, or give the job an empty "
                "checkpoint location, to train from the start"
            ) from None

    def differences(self, settings: dict[str, Any]) -> list[str]:
        """The names of the settings that differ from ``settings`` (empty: this checkpoint can be resumed)."""
        names = sorted(set(self.settings) | set(settings))
        return [n for n in names if _canonical(self.settings.get(n)) != _canonical(settings.get(n))]


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def checkpoint_path(folder: Path | None = None) -> Path:
    return (folder or container.checkpoints_dir()) / container.CHECKPOINT_FILE


def read_checkpoint_bytes(folder: Path | None = None) -> bytes | None:
    """The checkpoint file's bytes, or None when there is none."""
    path = checkpoint_path(folder)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def save_checkpoint(checkpoint: Checkpoint, folder: Path | None = None) -> Path:
    """Write the checkpoint atomically: a temporary file in the same folder, flushed, then renamed."""
    path = checkpoint_path(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A dot name: SageMaker's sync may upload it, but a reader never takes it for a checkpoint.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as out:
        out.write(checkpoint.encode())
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    return path
