"""A small PyTorch MLP for binary classification on updraft's feature Parquet: the bring-your-own-script example.

Runs under SageMaker's training toolkit (the PyTorch framework image) and under updraft's
local runner alike: channels from ``SM_CHANNEL_TRAIN``/``VALIDATION``/``TRANSFORM``, the
model to ``SM_MODEL_DIR``, hyperparameters as ``--name value`` arguments. It prints a
line per epoch and, at the end, the best epoch's metrics alone on their lines
(``validation:auc=0.91``): the job's metric definitions and the local runner read those.
The model folder gets ``model.pt`` (the state_dict), ``model.json`` (the architecture),
``transform.json`` and ``code/inference.py`` (SageMaker's PyTorch serving convention).

On failure the reason goes to ``<SM_OUTPUT_DIR>/failure`` and the exit status is 1.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from torch import nn

# next to this script in source_dir (SageMaker runs the script from that folder)
from inference import ARCHITECTURE_FILE, WEIGHTS_FILE, TabularMLP

LABEL = "_label"
TRANSFORM_FILE = "transform.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=64)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--weight-decay", "--weight_decay", dest="weight_decay", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda")
    parser.add_argument("--model-dir", default=env("SM_MODEL_DIR", "model"))
    parser.add_argument("--train", default=env("SM_CHANNEL_TRAIN"))
    parser.add_argument("--validation", default=env("SM_CHANNEL_VALIDATION"))
    parser.add_argument("--transform", default=env("SM_CHANNEL_TRANSFORM"))
    parser.add_argument("--output-dir", default=env("SM_OUTPUT_DIR", "output"))
    args = parser.parse_args(argv)
    for name in ("train", "validation"):
        if not getattr(args, name):
            parser.error(f"--{name} (or SM_CHANNEL_{name.upper()}) must name the {name} channel's folder")
    if args.epochs < 1 or args.batch_size < 1 or args.hidden < 1 or args.lr <= 0:
        parser.error("--epochs, --batch-size, --hidden and --lr must be positive")
    return args


def read_spec(folder: str | None) -> dict:
    """transform.json from the transform channel ({} without one)."""
    if not folder:
        return {}
    path = Path(folder) / TRANSFORM_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def read_split(folder: str, feature_names: list[str] | None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A channel's Parquet files (``_*``/``.*`` files are writers' markers) as float32 ``X``, ``y`` and the feature names."""
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file() and not p.name.startswith(("_", ".")))
    if not files:
        raise ValueError(f"no data files in {folder}")
    table = pq.ParquetDataset([str(f) for f in files]).read()
    columns = [c for c in table.column_names if c != LABEL]
    names = list(feature_names) if feature_names else columns
    missing = [n for n in names + [LABEL] if n not in table.column_names]
    if missing:
        raise ValueError(f"{folder}: columns {missing} are missing")
    X = np.column_stack([table[n].to_numpy(zero_copy_only=False) for n in names]).astype(np.float32)
    y = table[LABEL].to_numpy(zero_copy_only=False).astype(np.float32)
    if not set(np.unique(y)) <= {0.0, 1.0}:
        raise ValueError(f"{folder}: {LABEL} must be 0/1 for binary classification, found {np.unique(y)[:5]}")
    return np.nan_to_num(X, nan=0.0), y, names


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (ties get half credit), without scikit-learn."""
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score), dtype=np.float64)
    sorted_scores = score[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    positives = y == 1
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but PyTorch sees no GPU")
    return torch.device(name)


def train(args: argparse.Namespace) -> dict[str, float]:
    started = time.monotonic()
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    spec = read_spec(args.transform)
    task = spec.get("task", "binary_classification")
    if task != "binary_classification":
        raise ValueError(f"this example trains binary classification; transform.json says task {task!r}")
    X_train, y_train, names = read_split(args.train, spec.get("feature_names"))
    X_valid, y_valid, _ = read_split(args.validation, names)
    device = pick_device(args.device)
    print(
        f"rows train={len(y_train)} validation={len(y_valid)} features={len(names)} device={device} "
        f"epochs={args.epochs} lr={args.lr} hidden={args.hidden} batch_size={args.batch_size}",
        flush=True,
    )

    model = TabularMLP(len(names), args.hidden, args.dropout)
    model.mean.copy_(torch.from_numpy(X_train.mean(axis=0)))
    model.scale.copy_(torch.from_numpy(np.where(X_train.std(axis=0) > 0, X_train.std(axis=0), 1.0).astype(np.float32)))
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    loss_fn = nn.BCEWithLogitsLoss()
    Xt, yt = torch.from_numpy(X_train).to(device), torch.from_numpy(y_train).to(device)
    Xv = torch.from_numpy(X_valid).to(device)
    generator = torch.Generator(device="cpu").manual_seed(args.seed)

    best: dict[str, float] = {}
    best_state: dict[str, torch.Tensor] | None = None
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(yt), generator=generator).to(device)
        total = 0.0
        for start in range(0, len(order), args.batch_size):
            batch = order[start : start + args.batch_size]
            optimizer.zero_grad()
            loss = loss_fn(model(Xt[batch]), yt[batch])
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(batch)
        model.eval()
        with torch.no_grad():
            p_train = torch.sigmoid(model(Xt)).cpu().numpy()
            p_valid = torch.sigmoid(model(Xv)).cpu().numpy()
        metrics = {
            "train:auc": roc_auc(y_train, p_train),
            "train:logloss": total / len(yt),
            "validation:auc": roc_auc(y_valid, p_valid),
            "validation:logloss": log_loss(y_valid, p_valid),
        }
        print(f"[{epoch}]\t" + "\t".join(f"{k}={v:.6f}" for k, v in metrics.items()), flush=True)
        if not best or metrics["validation:auc"] > best["validation:auc"]:
            best = {**metrics, "epoch": epoch}
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}

    print(f"best_epoch={int(best.pop('epoch'))} of {args.epochs}", flush=True)
    # The final metrics, validation first (a tuner's default objective is the first validation metric).
    for name in ("validation:auc", "validation:logloss", "train:auc", "train:logloss"):
        print(f"{name}={best[name]:.8g}", flush=True)

    out = Path(args.model_dir)
    (out / "code").mkdir(parents=True, exist_ok=True)
    torch.save(best_state, out / WEIGHTS_FILE)
    arch = {"n_features": len(names), "hidden": args.hidden, "dropout": args.dropout, "feature_names": names,
            "torch": torch.__version__, "trained_on": str(device), "seconds": round(time.monotonic() - started, 3)}
    (out / ARCHITECTURE_FILE).write_text(json.dumps(arch, indent=2))
    shutil.copyfile(Path(__file__).with_name("inference.py"), out / "code" / "inference.py")
    if args.transform and (Path(args.transform) / TRANSFORM_FILE).is_file():
        shutil.copyfile(Path(args.transform) / TRANSFORM_FILE, out / TRANSFORM_FILE)
    return best


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        train(args)
    except Exception as exc:  # SageMaker shows output/failure as the job's FailureReason
        traceback.print_exc()
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(args.output_dir) / "failure").write_text(f"{type(exc).__name__}: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
