"""The inference server as a client sees it: status codes, messages, one prediction per row."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from starlette.testclient import TestClient

from images.inference import serve
from tasks.features.transform import FORMAT, apply_transform

SPEC: dict[str, Any] = {
    "format": FORMAT,
    "task": "binary_classification",
    "label": "is_fraud",
    "label_classes": ["0", "1"],
    "input_columns": ["claimant_age", "claim_amount", "provider_type"],
    "numeric": [
        {"name": "claimant_age", "count": 10, "null_count": 0, "mean": 40.0, "std": 10.0, "min": 20.0, "max": 60.0, "fill": 40.0},
        {"name": "claim_amount", "count": 10, "null_count": 1, "mean": 100.0, "std": 50.0, "min": 0.0, "max": 300.0, "fill": 100.0},
    ],
    "categorical": [{"name": "provider_type", "vocabulary": ["clinic", "hospital"], "oov_code": 0}],
    "feature_names": ["claimant_age", "claim_amount", "provider_type"],
    "split": {"validation": 0.15, "test": 0.15, "hash": "x"},
}

ROWS = pd.DataFrame(
    {
        "claimant_age": [35.0, np.nan, 61.5],
        "claim_amount": [120.0, 80.0, np.nan],
        "provider_type": ["hospital", "clinic", None],
    }
)
CSV_BODY = b"35,120,hospital\n,80,clinic\n61.5,,\n"
JSON_BODY = json.dumps(
    {
        "instances": [
            {"claimant_age": 35, "claim_amount": 120.0, "provider_type": "hospital"},
            {"claim_amount": 80, "provider_type": "clinic"},
            {"claimant_age": 61.5, "claim_amount": None},
        ]
    }
).encode()


def write_model(folder: Path, *, flip: bool = False, rounds: int = 8) -> Path:
    """A real model folder in the documented layout: a tiny XGBoost model fitted on SPEC's features."""
    import platform

    import xgboost as xgb

    rng = np.random.default_rng(7)
    n = 300
    frame = pd.DataFrame(
        {
            "claimant_age": rng.normal(40, 10, n),
            "claim_amount": rng.gamma(2.0, 50.0, n),
            "provider_type": rng.choice(["clinic", "hospital", "pharmacy"], n),
        }
    )
    X = apply_transform(frame, SPEC)
    y = ((X[:, 1] + (X[:, 2] == 2) + rng.normal(0, 0.3, n)) > 0.5).astype(np.float32)
    if flip:
        y = 1.0 - y
    params = {"objective": "binary:logistic", "max_depth": 3, "nthread": 1, "seed": 1}
    booster = xgb.train(params, xgb.DMatrix(X, label=y), num_boost_round=rounds)
    folder.mkdir(parents=True, exist_ok=True)
    booster.save_model(str(folder / "xgboost-model.json"))
    (folder / "transform.json").write_text(json.dumps(SPEC))
    metadata = {
        "task": SPEC["task"],
        "label": SPEC["label"],
        "label_classes": SPEC["label_classes"],
        "feature_names": SPEC["feature_names"],
        "input_columns": SPEC["input_columns"],
        "metrics": {"train_logloss": 0.5},
        "versions": {"python": platform.python_version(), "xgboost": xgb.__version__},
        "run_id": "20261126-000000-abcdef",
    }
    (folder / "metadata.json").write_text(json.dumps(metadata))
    return folder


def write_model_tar(path: Path, **kwargs: Any) -> Path:
    """``model.tar.gz`` with the bundle files at its root, as training writes it."""
    import tarfile

    folder = write_model(path.parent / (path.name + ".d"), **kwargs)
    with tarfile.open(path, "w:gz") as archive:
        for name in ("xgboost-model.json", "transform.json", "metadata.json"):
            archive.add(folder / name, arcname=name)
    return path


class FakeBundle:
    """A bundle with the real transform and a fixed logistic model: exact, and distinct per row."""

    spec = SPEC
    metadata: dict[str, Any] = {"task": "binary_classification"}

    def predict_frame(self, df: pd.DataFrame) -> list:
        X = apply_transform(df, self.spec)
        logits = X @ np.array([0.7, -1.3, 0.9], dtype=np.float32)
        return (1.0 / (1.0 + np.exp(-logits.astype(np.float64)))).tolist()


@pytest.fixture()
def client(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> TestClient:
    loaded: list[Path] = []

    def fake_load(model_dir: str | Path) -> FakeBundle:
        loaded.append(Path(model_dir))
        return FakeBundle()

    monkeypatch.setattr(serve, "load_bundle", fake_load)
    app = serve.create_app(tmp_path)
    assert loaded == [tmp_path]  # loaded once, at start
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def test_ping_answers_200_once_loaded(client: TestClient) -> None:
    assert client.get("/ping").status_code == 200


def test_csv_rows_give_one_prediction_each_equal_to_the_bundle(client: TestClient) -> None:
    response = client.post("/invocations", content=CSV_BODY, headers={"Content-Type": "text/csv"})
    assert response.status_code == 200
    predictions = response.json()["predictions"]
    assert predictions == pytest.approx(FakeBundle().predict_frame(ROWS), abs=1e-12)
    assert len(set(predictions)) == 3


def test_json_instances_give_the_same_predictions_as_csv(client: TestClient) -> None:
    response = client.post("/invocations", content=JSON_BODY, headers={"Content-Type": "application/json; charset=utf-8"})
    assert response.status_code == 200
    assert response.json()["predictions"] == pytest.approx(FakeBundle().predict_frame(ROWS), abs=1e-12)


def test_csv_with_charset_and_crlf_line_endings_is_accepted(client: TestClient) -> None:
    body = CSV_BODY.replace(b"\n", b"\r\n")
    response = client.post("/invocations", content=body, headers={"Content-Type": "text/csv; charset=utf-8"})
    assert response.status_code == 200
    assert len(response.json()["predictions"]) == 3


def test_csv_row_with_wrong_field_count_names_the_row_and_the_expected_count(client: TestClient) -> None:
    response = client.post("/invocations", content=b"35,120,hospital\n35,120\n", headers={"Content-Type": "text/csv"})
    assert response.status_code == 400
    message = response.json()["error"]
    assert "row 2 has 2 fields" in message
    assert "expected 3" in message


def test_csv_with_text_in_a_numeric_column_is_a_400_naming_the_column(client: TestClient) -> None:
    response = client.post("/invocations", content=b"35,lots,clinic\n", headers={"Content-Type": "text/csv"})
    assert response.status_code == 400
    assert "claim_amount" in response.json()["error"]


def test_malformed_json_is_a_400(client: TestClient) -> None:
    response = client.post("/invocations", content=b'{"instances": [', headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["error"]


def test_json_without_instances_is_a_400(client: TestClient) -> None:
    response = client.post("/invocations", content=b"[1, 2]", headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert "instances" in response.json()["error"]


def test_json_unknown_keys_are_named(client: TestClient) -> None:
    body = json.dumps({"instances": [{"claimant_age": 30, "is_fraud": 1, "colour": "red"}]}).encode()
    response = client.post("/invocations", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    message = response.json()["error"]
    assert "'colour'" in message and "'is_fraud'" in message


def test_unsupported_content_type_is_a_415_listing_the_supported_ones(client: TestClient) -> None:
    response = client.post("/invocations", content=b"<x/>", headers={"Content-Type": "application/xml"})
    assert response.status_code == 415
    message = response.json()["error"]
    assert "text/csv" in message and "application/json" in message


def test_body_over_six_megabytes_is_a_413(client: TestClient) -> None:
    body = b"35,120,hospital\n" * (7 * 1024 * 1024 // 16 + 1)
    assert len(body) > 7 * 1024 * 1024 - 16
    response = client.post("/invocations", content=body, headers={"Content-Type": "text/csv"})
    assert response.status_code == 413


def test_empty_body_is_a_400(client: TestClient) -> None:
    response = client.post("/invocations", content=b"", headers={"Content-Type": "text/csv"})
    assert response.status_code == 400
    assert "empty" in response.json()["error"]


def test_bad_input_never_gives_a_5xx(client: TestClient) -> None:
    bodies = [
        (b"\xff\xfe\x00", "text/csv"),
        (b'"unterminated,1,2\n', "text/csv"),
        (b"true,1,x\n", "text/csv"),
        (b'{"instances": [1, 2]}', "application/json"),
        (b'{"instances": [{"claimant_age": [1]}]}', "application/json"),
        (b'{"instances": [{"claimant_age": true}]}', "application/json"),
        (b'{"instances": []}', "application/json"),
        (b'{"instances": [{}], "extra": 1}', "application/json"),
        (b"\xff", "application/json"),
    ]
    for body, content_type in bodies:
        response = client.post("/invocations", content=body, headers={"Content-Type": content_type})
        assert 400 <= response.status_code < 500, (body, response.status_code, response.text)
        assert response.json()["error"]


def test_a_real_model_answers_csv_and_json_like_its_bundle(tmp_path: Path) -> None:
    from tasks.modelbundle import load_model_bundle

    model_dir = write_model(tmp_path / "model")
    expected = load_model_bundle(model_dir).predict_frame(ROWS)
    with TestClient(serve.create_app(model_dir)) as real:
        assert real.get("/ping").status_code == 200
        from_csv = real.post("/invocations", content=CSV_BODY, headers={"Content-Type": "text/csv"})
        from_json = real.post("/invocations", content=JSON_BODY, headers={"Content-Type": "application/json"})
    assert from_csv.status_code == 200 and from_json.status_code == 200
    assert from_csv.json()["predictions"] == pytest.approx(expected, abs=1e-7)
    assert from_json.json()["predictions"] == pytest.approx(expected, abs=1e-7)
    assert all(0.0 < p < 1.0 for p in expected)
