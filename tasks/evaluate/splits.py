"""Reading the train, validation and test splits preprocess wrote: the reserved columns and
the feature matrix, label and query ids, with errors that say to rerun preprocess.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tasks.errors import DataError

LABEL_COLUMN = "_label"
#: The ranking query id column preprocess writes (``tasks.features.partitions.GROUP_COLUMN``).
GROUP_COLUMN = "_group"
#: The raw value of ``evaluate.segment`` that preprocess carries into every split (a string,
#: null where missing; ``tasks.features.partitions.SEGMENT_COLUMN``); never a feature.
SEGMENT_COLUMN = "_segment"

#: Columns of a split that are never model inputs.
_NOT_FEATURES = (LABEL_COLUMN, GROUP_COLUMN, SEGMENT_COLUMN)


def _split_xy(frame: pd.DataFrame, feature_names: list[str], split: str) -> tuple[np.ndarray, np.ndarray]:
    if LABEL_COLUMN not in frame.columns:
        raise DataError(f"the {split} split has no {LABEL_COLUMN!r} column: rerun preprocess for this run")
    missing = [c for c in feature_names if c not in frame.columns]
    if missing:
        raise DataError(
            f"the {split} split lacks feature column {missing[0]!r} that the model expects: "
            "evaluate the model on the features of the run that trained it"
        )
    X = frame[feature_names].to_numpy(dtype=np.float32)
    y = frame[LABEL_COLUMN].to_numpy(dtype=np.float64)
    return X, y


def _split_groups(frame: pd.DataFrame, split: str) -> np.ndarray:
    if GROUP_COLUMN not in frame.columns:
        raise DataError(
            f"the {split} split has no {GROUP_COLUMN!r} column (the query id ranking needs): rerun preprocess with task ranking"
        )
    return frame[GROUP_COLUMN].to_numpy(dtype=np.int64)
