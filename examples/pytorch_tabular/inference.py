"""Serving side of the PyTorch tabular example, in SageMaker's PyTorch serving convention.

SageMaker's PyTorch inference toolkit imports ``code/inference.py`` from the model
archive and calls ``model_fn(model_dir)`` once, then ``predict_fn(data, model)`` per
request (its default ``input_fn`` turns CSV, JSON or NPY bodies into a NumPy array).
The training script copies this file to ``<model_dir>/code/inference.py`` and imports
:class:`TabularMLP` from it, so training and serving share one definition of the network.

Rows are updraft's transformed features (the float32 columns of transform.json's
``feature_names``, in that order); ``predict_fn`` returns P(positive class) per row.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import torch
from torch import nn

WEIGHTS_FILE = "model.pt"
ARCHITECTURE_FILE = "model.json"


class TabularMLP(nn.Module):
    """Standardize, then two hidden ReLU layers, then one logit (binary classification).

    The standardization's mean and scale are buffers, so they travel in the state_dict
    with the weights and serving cannot apply different statistics than training did.
    """

    def __init__(self, n_features: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("scale", torch.ones(n_features))
        self.net = nn.Sequential(
            nn.Linear(n_features, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.scale).squeeze(-1)


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def model_fn(model_dir: str) -> TabularMLP:
    """Load the network saved by train.py (architecture JSON + state_dict) in eval mode."""
    with open(os.path.join(model_dir, ARCHITECTURE_FILE), encoding="utf-8") as f:
        arch = json.load(f)
    model = TabularMLP(int(arch["n_features"]), int(arch["hidden"]), float(arch.get("dropout", 0.0)))
    state = torch.load(os.path.join(model_dir, WEIGHTS_FILE), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.feature_names = list(arch.get("feature_names") or [])
    return model.to(_device()).eval()


def _as_array(data: Any, feature_names: list[str]) -> np.ndarray:
    if hasattr(data, "columns"):  # a DataFrame: take the features by name, in training order
        missing = [name for name in feature_names if name not in data.columns]
        if missing:
            raise ValueError(f"input is missing feature columns {missing}")
        data = data[feature_names].to_numpy()
    elif isinstance(data, torch.Tensor):
        data = data.detach().cpu().numpy()
    array = np.asarray(data, dtype=np.float32)
    if array.ndim == 1:
        array = array.reshape(1, -1)
    if array.ndim != 2 or (feature_names and array.shape[1] != len(feature_names)):
        raise ValueError(f"expected rows of {len(feature_names)} features, got shape {array.shape}")
    return np.nan_to_num(array, nan=0.0)


def predict_fn(data: Any, model: TabularMLP) -> np.ndarray:
    """P(positive class) for each row of ``data`` (a 2-D array, tensor or DataFrame of features)."""
    rows = _as_array(data, getattr(model, "feature_names", []))
    device = next(model.parameters()).device
    with torch.no_grad():
        logits = model(torch.from_numpy(rows).to(device))
    return torch.sigmoid(logits).cpu().numpy().astype(np.float64)
