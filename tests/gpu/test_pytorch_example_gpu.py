"""The bring-your-own-script example (examples/pytorch_tabular) trains on the GPU under SageMaker's contract.

Self-contained (NumPy, pandas, pyarrow, PyTorch): the device machine has no Prefect,
Dask or boto3, so the channels are laid out here by hand, as the training toolkit would.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.gpu

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "pytorch_tabular"


def _channels(root: Path, n_train: int = 20000, n_valid: int = 5000, features: int = 8) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    names = [f"f{i}" for i in range(features)]
    weights = rng.normal(size=features)
    folders = {}
    for split, n in (("train", n_train), ("validation", n_valid)):
        X = rng.normal(size=(n, features)).astype("float32")
        y = (X @ weights + rng.normal(scale=0.5, size=n) > 0).astype("float64")
        frame = pd.DataFrame(X, columns=names)
        frame["_label"] = y
        folders[split] = root / split
        folders[split].mkdir(parents=True)
        frame.to_parquet(folders[split] / "part.0.parquet", index=False)
    folders["transform"] = root / "transform"
    folders["transform"].mkdir()
    spec = {"format": "updraft.transform/2", "task": "binary_classification", "label": "y",
            "label_classes": ["0", "1"], "feature_names": names, "input_columns": names}
    (folders["transform"] / "transform.json").write_text(json.dumps(spec))
    return folders


def test_the_pytorch_example_trains_on_cuda(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch sees no CUDA device")
    channels = _channels(tmp_path / "data")
    model_dir, output_dir = tmp_path / "model", tmp_path / "output"
    env = {
        **os.environ,
        "SM_CHANNEL_TRAIN": str(channels["train"]),
        "SM_CHANNEL_VALIDATION": str(channels["validation"]),
        "SM_CHANNEL_TRANSFORM": str(channels["transform"]),
        "SM_MODEL_DIR": str(model_dir),
        "SM_OUTPUT_DIR": str(output_dir),
    }
    done = subprocess.run(
        [sys.executable, "train.py", "--epochs", "10", "--device", "cuda"],
        cwd=EXAMPLE, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "device=cuda" in done.stdout
    auc = float(re.findall(r"^validation:auc=([0-9.]+)$", done.stdout, re.M)[-1])
    assert auc > 0.9
    assert (model_dir / "code" / "inference.py").is_file()
