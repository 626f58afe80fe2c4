"""The bundled demo dataset: benefit claims with a fraud label, its contract and its config.

The fraud signal is deliberately non-linear (large claims right after a policy starts,
amounts just under the manual-review threshold, night-time claims through some
provider types), so gradient-boosted trees clearly beat a logistic regression, which is
the point the demo's evaluation makes. A small share of rows is deliberately invalid so
the demo shows the quarantine at work.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa
import yaml

PROVIDER_TYPES = ("hospital", "clinic", "pharmacy", "lab", "telehealth")
REGIONS = ("north", "south", "east", "west", "central", "islands")
CHANNELS = ("online", "phone", "agent", "mail")
COLUMNS = (
    "claim_id",
    "claimant_age",
    "claim_amount",
    "num_prior_claims",
    "days_since_policy_start",
    "provider_type",
    "region",
    "claim_channel",
    "submitted_hour",
    "is_fraud",
)
NUMERIC_FEATURES = ("claimant_age", "claim_amount", "num_prior_claims", "days_since_policy_start", "submitted_hour")
CATEGORICAL_FEATURES = ("provider_type", "region", "claim_channel")
#: Claims at or above this amount get a manual review; fraudsters stay just under it.
REVIEW_THRESHOLD = 5000.0
#: The first rows are always valid, so a demo that shows the head of a file shows clean claims.
_CLEAN_HEAD = 50
#: The kinds of deliberately broken value, one per invalid row, in turn.
_DEFECTS = ("negative_amount", "impossible_age", "unknown_channel", "label_out_of_range", "text_in_number")


@dataclass(frozen=True)
class SampleFiles:
    """What :func:`write_sample` wrote; ``data_files`` belong under the config's ``source`` prefix."""

    root: Path
    data_files: list[Path]
    contract: Path
    config: Path


def generate_claims(n_rows: int = 30000, seed: int = 7, invalid_fraction: float = 0.02) -> pd.DataFrame:
    """Claims as raw text, the way they land in the CSV files (the contract types them).

    ``frame.attrs["invalid_claim_ids"]`` lists the claims given a deliberately invalid value,
    which is what the contract must quarantine, no more and no less.
    """
    if n_rows < 1:
        raise ValueError("n_rows must be at least 1")
    if not 0 <= invalid_fraction < 1:
        raise ValueError("invalid_fraction must be in [0, 1)")
    rng = np.random.default_rng(seed)

    age = np.clip(rng.normal(46, 15, n_rows), 18, 95).round()
    provider = rng.choice(PROVIDER_TYPES, n_rows, p=[0.22, 0.33, 0.25, 0.1, 0.1])
    region = rng.choice(REGIONS, n_rows, p=[0.2, 0.2, 0.18, 0.18, 0.16, 0.08])
    channel = rng.choice(CHANNELS, n_rows, p=[0.45, 0.25, 0.2, 0.1])
    prior = rng.poisson(1.2, n_rows)
    days = np.minimum(rng.exponential(500, n_rows), 3650).astype(int)
    new_policy = rng.random(n_rows) < 0.12
    days[new_policy] = rng.integers(0, 30, new_policy.sum())
    hour_weights = np.array([2, 2, 2, 2, 2, 2, 4, 7, 10, 11, 11, 10, 9, 10, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1], float)
    hour = rng.choice(24, n_rows, p=hour_weights / hour_weights.sum())
    base = {"hospital": 7.6, "clinic": 5.6, "pharmacy": 4.4, "lab": 5.9, "telehealth": 5.0}
    amount = np.exp(np.array([base[p] for p in provider]) + rng.normal(0, 0.9, n_rows))
    under_threshold = rng.random(n_rows) < 0.04
    amount[under_threshold] = rng.uniform(0.9 * REVIEW_THRESHOLD, REVIEW_THRESHOLD - 0.01, under_threshold.sum())
    amount = np.clip(amount, 5, 250_000).round(2)

    early = days < 30
    night = (hour <= 4) | (hour >= 23)
    logit = (
        -4.6
        + 5.0 * (early & (amount > 1500) & (provider != "hospital"))
        + 4.5 * ((amount >= 0.9 * REVIEW_THRESHOLD) & (amount < REVIEW_THRESHOLD))
        + 5.0 * (night & np.isin(provider, ["telehealth", "lab"]))
        + 1.5 * (prior >= 4)
        + 3.0 * ((channel == "online") & (days < 90) & (age < 30))
        # smooth effects a linear model cannot bend to: the very young and the very old
        + 1.4 * ((age - 50) / 18) ** 2
        + 1.2 * np.isin(region, ["east", "islands"]) * (amount > 800)
    )
    is_fraud = (rng.random(n_rows) < 1 / (1 + np.exp(-logit))).astype(int)

    frame = pd.DataFrame(
        {
            "claim_id": [f"CLM-{seed:03d}-{i:07d}" for i in range(n_rows)],
            "claimant_age": _text(age, rng.random(n_rows) < 0.02, "{:.0f}"),
            "claim_amount": _text(amount, rng.random(n_rows) < 0.01, "{:.2f}"),
            "num_prior_claims": _text(prior, None, "{:d}"),
            "days_since_policy_start": _text(days, None, "{:d}"),
            "provider_type": _text(provider, rng.random(n_rows) < 0.02, "{}"),
            "region": _text(region, rng.random(n_rows) < 0.03, "{}"),
            "claim_channel": _text(channel, None, "{}"),
            "submitted_hour": _text(hour, None, "{:d}"),
            "is_fraud": _text(is_fraud, None, "{:d}"),
        },
        columns=list(COLUMNS),
    )
    invalid = _inject_defects(frame, rng, round(n_rows * invalid_fraction))
    frame.attrs["invalid_claim_ids"] = sorted(frame.loc[invalid, "claim_id"])
    return frame


def _text(values: np.ndarray, missing: np.ndarray | None, fmt: str) -> pd.Series:
    texts = [fmt.format(v.item() if hasattr(v, "item") else v) for v in values]
    series = pd.Series(texts, dtype="str")
    if missing is not None:
        series[missing] = np.nan
    return series


def _inject_defects(frame: pd.DataFrame, rng: np.random.Generator, count: int) -> np.ndarray:
    """Break one value in each of ``count`` rows, cycling through the kinds of defect."""
    start = min(_CLEAN_HEAD, len(frame) // 10)
    count = min(count, len(frame) - start)
    rows = np.sort(rng.choice(np.arange(start, len(frame)), count, replace=False))
    for i, row in enumerate(rows):
        defect = _DEFECTS[i % len(_DEFECTS)]
        if defect == "negative_amount":
            frame.at[row, "claim_amount"] = f"{-rng.uniform(1, 900):.2f}"
        elif defect == "impossible_age":
            frame.at[row, "claimant_age"] = "230"
        elif defect == "unknown_channel":
            frame.at[row, "claim_channel"] = "carrier-pigeon"
        elif defect == "label_out_of_range":
            frame.at[row, "is_fraud"] = "2"
        else:
            frame.at[row, "num_prior_claims"] = "several"
    return rows


def claims_contract() -> pa.DataFrameSchema:
    """The contract of the sample claims: what a clean claim row is."""
    return pa.DataFrameSchema(
        {
            "claim_id": pa.Column(str, pa.Check.str_length(min_value=1), nullable=False),
            "claimant_age": pa.Column(float, pa.Check.in_range(16, 120), nullable=True),
            "claim_amount": pa.Column(float, [pa.Check.gt(0), pa.Check.le(1_000_000)], nullable=True),
            "num_prior_claims": pa.Column("int64", pa.Check.in_range(0, 100), nullable=False),
            "days_since_policy_start": pa.Column("int64", pa.Check.in_range(0, 36_500), nullable=False),
            "provider_type": pa.Column(str, pa.Check.isin(list(PROVIDER_TYPES)), nullable=True),
            "region": pa.Column(str, pa.Check.isin(list(REGIONS)), nullable=True),
            "claim_channel": pa.Column(str, pa.Check.isin(list(CHANNELS)), nullable=False),
            "submitted_hour": pa.Column("int64", pa.Check.in_range(0, 23), nullable=False),
            "is_fraud": pa.Column("int64", pa.Check.isin([0, 1]), nullable=False),
        },
        name="claims",
        coerce=True,
    )


def claims_config() -> dict[str, Any]:
    """The pipeline config of the demo, as the mapping written to ``config.yaml``."""
    return {
        "name": "claims-fraud",
        "bucket": "updraft-demo",
        "source": "raw/claims/",
        "contract": "contract.yaml",
        "label": "is_fraud",
        "task": "binary_classification",
        "features": {"numeric": list(NUMERIC_FEATURES), "categorical": list(CATEGORICAL_FEATURES)},
    }


def write_sample(
    dest_dir: Path, n_rows: int = 30000, n_files: int = 3, seed: int = 7, invalid_fraction: float = 0.02
) -> SampleFiles:
    """Write the raw CSV files (``raw/claims/claims-NNN.csv``), ``contract.yaml`` and ``config.yaml``."""
    if n_files < 1:
        raise ValueError("n_files must be at least 1")
    dest_dir = Path(dest_dir)
    raw_dir = dest_dir / "raw" / "claims"
    raw_dir.mkdir(parents=True, exist_ok=True)
    frame = generate_claims(n_rows, seed=seed, invalid_fraction=invalid_fraction)
    data_files = []
    for index, chunk in enumerate(np.array_split(np.arange(len(frame)), min(n_files, len(frame))), start=1):
        path = raw_dir / f"claims-{index:03d}.csv"
        frame.iloc[chunk].to_csv(path, index=False)
        data_files.append(path)
    contract = dest_dir / "contract.yaml"
    contract.write_text(claims_contract().to_yaml())
    config = dest_dir / "config.yaml"
    config.write_text(yaml.safe_dump(claims_config(), sort_keys=False))
    return SampleFiles(root=dest_dir, data_files=data_files, contract=contract, config=config)
