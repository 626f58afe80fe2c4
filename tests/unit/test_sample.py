"""The bundled demo dataset: deterministic, learnable (non-linearly), and honestly dirty."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks.config import Features, load_config
from tasks.contracts import load_contract, resolve_features, validate_frame
from tasks.sample import (
    CATEGORICAL_FEATURES,
    CHANNELS,
    COLUMNS,
    NUMERIC_FEATURES,
    PROVIDER_TYPES,
    claims_contract,
    generate_claims,
    write_sample,
)


def test_same_seed_gives_the_same_claims_and_another_seed_others() -> None:
    a = generate_claims(2000, seed=3)
    pd.testing.assert_frame_equal(a, generate_claims(2000, seed=3))
    assert a.attrs["invalid_claim_ids"] == generate_claims(2000, seed=3).attrs["invalid_claim_ids"]
    assert not a["claim_amount"].equals(generate_claims(2000, seed=4)["claim_amount"])


def test_claims_look_like_claims() -> None:
    claims = generate_claims(5000)
    assert tuple(claims.columns) == COLUMNS and claims["claim_id"].is_unique
    valid, _ = validate_frame(claims, claims_contract(), source="generated")
    assert 0.05 <= valid["is_fraud"].mean() <= 0.15
    assert set(valid["provider_type"].dropna()) == set(PROVIDER_TYPES)
    assert set(valid["claim_channel"]) == set(CHANNELS)
    assert valid["submitted_hour"].between(0, 23).all()
    # missing values where the contract allows them
    for column in ("claimant_age", "claim_amount", "provider_type", "region"):
        assert 0 < valid[column].isna().mean() < 0.1, column


@pytest.mark.parametrize(("n_rows", "fraction"), [(5000, 0.02), (1200, 0.1), (300, 0.0)])
def test_contract_rejects_exactly_the_injected_rows(n_rows: int, fraction: float) -> None:
    claims = generate_claims(n_rows, seed=11, invalid_fraction=fraction)
    injected = claims.attrs["invalid_claim_ids"]
    assert len(injected) == round(n_rows * fraction)
    valid, quarantined = validate_frame(claims, claims_contract(), source="generated")
    assert sorted(quarantined["claim_id"]) == injected
    assert len(valid) == n_rows - len(injected)
    if fraction:
        reasons = " ".join(quarantined["_reason"])
        for fragment in ("claim_amount: greater_than(0)", "claimant_age: in_range", "claim_channel: isin",
                         "is_fraud: isin", "num_prior_claims: coerce_dtype"):
            assert fragment in reasons
    assert not set(injected) & set(claims["claim_id"].head(50))


def test_trees_beat_a_linear_model_by_a_clear_margin() -> None:
    import xgboost as xgb
    from sklearn.compose import make_column_transformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    valid, _ = validate_frame(generate_claims(10_000, seed=7), claims_contract(), source="generated")
    numeric, categorical = list(NUMERIC_FEATURES), list(CATEGORICAL_FEATURES)
    X = valid[numeric + categorical].copy()
    for column in categorical:
        X[column] = X[column].astype(object).where(X[column].notna(), "missing")
    y = valid["is_fraud"].to_numpy()
    train = np.arange(len(X)) % 10 < 7
    test = ~train

    linear = make_pipeline(
        make_column_transformer(
            (make_pipeline(SimpleImputer(), StandardScaler()), numeric),
            (OneHotEncoder(handle_unknown="ignore"), categorical),
        ),
        LogisticRegression(max_iter=2000),
    )
    linear.fit(X[train], y[train])
    linear_auc = roc_auc_score(y[test], linear.predict_proba(X[test])[:, 1])

    Xc = X.astype({c: "category" for c in categorical})
    trees = xgb.XGBClassifier(n_estimators=150, max_depth=4, learning_rate=0.1, n_jobs=1, enable_categorical=True)
    trees.fit(Xc[train], y[train])
    trees_auc = roc_auc_score(y[test], trees.predict_proba(Xc[test])[:, 1])

    assert trees_auc > 0.75
    assert trees_auc - linear_auc > 0.05, (trees_auc, linear_auc)


def test_write_sample_gives_files_a_pipeline_can_use(tmp_path: Path) -> None:
    sample = write_sample(tmp_path, n_rows=1000, n_files=3)
    assert [p.name for p in sample.data_files] == ["claims-001.csv", "claims-002.csv", "claims-003.csv"]
    frames = [pd.read_csv(p, dtype=str) for p in sample.data_files]
    assert sum(len(f) for f in frames) == 1000
    assert all(tuple(f.columns) == COLUMNS for f in frames)

    config = load_config(sample.config)
    assert (config.name, config.bucket, config.source, config.label, config.task) == (
        "claims-fraud", "updraft-demo", "raw/claims/", "is_fraud", "binary_classification"
    )
    assert Path(config.contract) == sample.contract
    schema = load_contract(config.contract)
    features = resolve_features(schema, config)
    assert features == Features(numeric=NUMERIC_FEATURES, categorical=CATEGORICAL_FEATURES)
    assert "claim_id" not in features.all

    valid, quarantined = validate_frame(pd.concat(frames, ignore_index=True), schema, source="sample")
    assert len(quarantined) == 20 and len(valid) == 980
    assert valid["is_fraud"].dtype == "int64" and valid["claim_amount"].dtype == "float64"
