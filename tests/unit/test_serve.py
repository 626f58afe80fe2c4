"""The inference server as a client sees it: status codes, messages, one prediction per row."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests
from starlette.testclient import TestClient

from images.inference import serve
from tasks.features.transform import FORMAT, apply_transform

REPO = Path(__file__).resolve().parents[2]

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
CSV_HEADERS = {"Content-Type": "text/csv"}


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


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_model(tmp_path_factory.mktemp("serve") / "model")


@pytest.fixture(scope="module")
def expected(model_dir: Path) -> list[float]:
    from tasks.modelbundle import load_model_bundle

    return load_model_bundle(model_dir).predict_frame(ROWS)


@pytest.fixture()
def client(model_dir: Path) -> Iterator[TestClient]:
    with TestClient(serve.create_app(model_dir), raise_server_exceptions=False) as test_client:
        yield test_client


def test_the_model_is_loaded_once_at_start(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loaded: list[Path] = []
    real = serve.load_bundle

    def counting(folder: str | Path) -> Any:
        loaded.append(Path(folder))
        return real(folder)

    monkeypatch.setattr(serve, "load_bundle", counting)
    app = serve.create_app(model_dir)
    assert loaded == [model_dir]
    with TestClient(app) as test_client:
        for _ in range(3):
            assert test_client.post("/invocations", content=CSV_BODY, headers=CSV_HEADERS).status_code == 200
    assert loaded == [model_dir]


def test_ping_answers_200(client: TestClient) -> None:
    assert client.get("/ping").status_code == 200
    assert client.head("/ping").status_code == 200


def test_csv_rows_give_one_prediction_each_equal_to_the_bundle(client: TestClient, expected: list[float]) -> None:
    response = client.post("/invocations", content=CSV_BODY, headers=CSV_HEADERS)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json()["predictions"] == expected
    assert len(set(expected)) == 3 and all(0.0 < p < 1.0 for p in expected)


def test_json_instances_lists_and_parquet_give_the_same_predictions(client: TestClient, expected: list[float]) -> None:
    as_lists = json.dumps([[35, 120, "hospital"], [None, 80, "clinic"], [61.5, None, None]]).encode()
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(ROWS, preserve_index=False), sink)
    for body, content_type in (
        (JSON_BODY, "application/json; charset=utf-8"),
        (as_lists, "application/json"),
        (json.dumps({"instances": json.loads(as_lists)}).encode(), "application/json"),
        (sink.getvalue(), "application/x-parquet"),
    ):
        response = client.post("/invocations", content=body, headers={"Content-Type": content_type})
        assert response.status_code == 200, response.text
        assert response.json()["predictions"] == expected, content_type


def test_accept_text_csv_answers_one_line_per_row(client: TestClient, expected: list[float]) -> None:
    response = client.post("/invocations", content=CSV_BODY, headers={**CSV_HEADERS, "Accept": "text/csv"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/csv"
    assert [float(line) for line in response.text.splitlines()] == expected


def test_an_accept_the_server_cannot_write_is_a_406(client: TestClient) -> None:
    response = client.post("/invocations", content=CSV_BODY, headers={**CSV_HEADERS, "Accept": "application/xml"})
    assert response.status_code == 406
    assert "application/json, text/csv" in response.json()["error"]


def test_csv_with_charset_and_crlf_line_endings_is_accepted(client: TestClient, expected: list[float]) -> None:
    body = CSV_BODY.replace(b"\n", b"\r\n")
    response = client.post("/invocations", content=body, headers={"Content-Type": "text/csv; charset=utf-8"})
    assert response.status_code == 200
    assert response.json()["predictions"] == expected


def test_csv_row_with_wrong_field_count_names_the_row_and_the_expected_count(client: TestClient) -> None:
    response = client.post("/invocations", content=b"35,120,hospital\n35,120\n", headers=CSV_HEADERS)
    assert response.status_code == 400
    message = response.json()["error"]
    assert "row 2 has 2 fields" in message
    assert "expected 3 (claimant_age, claim_amount, provider_type)" in message


def test_csv_with_text_in_a_numeric_column_is_a_400_naming_the_column(client: TestClient) -> None:
    response = client.post("/invocations", content=b"35,lots,clinic\n", headers=CSV_HEADERS)
    assert response.status_code == 400
    assert "column 'claim_amount' has the non-numeric value 'lots'" in response.json()["error"]


def test_malformed_json_is_a_400(client: TestClient) -> None:
    response = client.post("/invocations", content=b'{"instances": [', headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["error"]


def test_json_scalars_are_a_400_that_shows_the_accepted_shapes(client: TestClient) -> None:
    response = client.post("/invocations", content=b"[1, 2]", headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert "wrap it: [[...]]" in response.json()["error"]


def test_json_unknown_keys_are_named(client: TestClient) -> None:
    body = json.dumps({"instances": [{"claimant_age": 30, "is_fraud": 1, "colour": "red"}]}).encode()
    response = client.post("/invocations", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    message = response.json()["error"]
    assert "'colour'" in message and "'is_fraud'" in message


def test_unparseable_parquet_is_a_400(client: TestClient) -> None:
    response = client.post("/invocations", content=b"PAR1garbage", headers={"Content-Type": "application/x-parquet"})
    assert response.status_code == 400
    assert "not a readable Parquet file" in response.json()["error"]


@pytest.mark.parametrize("headers", [{"Content-Type": "application/xml"}, {}])
def test_a_wrong_or_missing_content_type_is_a_415_listing_the_supported_ones(client: TestClient, headers: dict) -> None:
    response = client.post("/invocations", content=b"<x/>", headers=headers)
    assert response.status_code == 415
    assert "text/csv, application/json, application/x-parquet" in response.json()["error"]


def test_body_over_six_megabytes_is_a_413_with_the_limit(client: TestClient) -> None:
    body = b"35,120,hospital\n" * (7 * 1024 * 1024 // 16 + 1)
    response = client.post("/invocations", content=body, headers=CSV_HEADERS)
    assert response.status_code == 413
    assert "over the 6 MB limit" in response.json()["error"]


def test_a_chunked_body_over_six_megabytes_is_a_413_too(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: the server counts as it reads
        for _ in range(7):
            yield b"35,120,hospital\n" * (1024 * 1024 // 16)

    response = client.post("/invocations", content=chunks(), headers=CSV_HEADERS)
    assert response.status_code == 413


def test_empty_body_is_a_400(client: TestClient) -> None:
    response = client.post("/invocations", content=b"", headers=CSV_HEADERS)
    assert response.status_code == 400
    assert "empty" in response.json()["error"]


def test_bad_input_never_gives_a_5xx(client: TestClient) -> None:
    bodies = [
        (b"\xff\xfe\x00", "text/csv"),
        (b'"unterminated,1,2\n', "text/csv"),
        (b"true,1,x\n", "text/csv"),
        (b"1,2,3,4\n", "text/csv"),
        (b"\x00,1,x\n", "text/csv"),
        (b"1,2\n", "text/csv"),
        (b'{"instances": [1, 2]}', "application/json"),
        (b'{"instances": [{"claimant_age": [1]}]}', "application/json"),
        (b'{"instances": [{"claimant_age": true}]}', "application/json"),
        (b'{"instances": [{"claimant_age": {"a": 1}}]}', "application/json"),
        (b'{"instances": []}', "application/json"),
        (b'{"instances": [{}], "extra": 1}', "application/json"),
        (b"[[1, 2, 3, 4]]", "application/json"),
        (b"\xff", "application/json"),
        (b"null", "application/json"),
        (b"PAR1", "application/x-parquet"),
        (b"\x00" * 64, "application/x-parquet"),
    ]
    for body, content_type in bodies:
        response = client.post("/invocations", content=body, headers={"Content-Type": content_type})
        assert 400 <= response.status_code < 500, (body, response.status_code, response.text)
        assert response.json()["error"]


def test_unknown_paths_and_methods_are_a_404_and_a_405(client: TestClient) -> None:
    assert client.get("/predict").status_code == 404
    response = client.get("/invocations")
    assert response.status_code == 405 and response.headers["allow"] == "POST"


def test_each_request_is_logged_without_its_payload(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="updraft.serve.access"):
        client.post("/invocations", content=CSV_BODY, headers=CSV_HEADERS)
        client.post("/invocations", content=b"35,lots,hospital\n", headers=CSV_HEADERS)
    lines = [r.getMessage() for r in caplog.records if r.name == "updraft.serve.access"]
    assert len(lines) == 2
    assert re.fullmatch(rf"POST /invocations 200 in={len(CSV_BODY)}B out=\d+B \d+\.\d\dms", lines[0])
    assert re.fullmatch(r"POST /invocations 400 in=17B out=\d+B \d+\.\d\dms", lines[1])
    assert not any(word in line for line in lines for word in ("hospital", "lots", "35"))


def test_large_bodies_are_predicted_off_the_event_loop_and_ping_still_answers(model_dir: Path) -> None:
    app = serve.create_app(model_dir)
    real = app.predictor.respond
    entered, release = threading.Event(), threading.Event()

    def slow(body: bytes, content_type: str, accept: str) -> tuple[bytes, int]:
        if len(body) > serve.INLINE_MAX_BYTES:
            entered.set()
            assert release.wait(10)
        return real(body, content_type, accept)

    app.predictor.respond = slow  # type: ignore[method-assign]
    big = CSV_BODY * (serve.INLINE_MAX_BYTES // len(CSV_BODY) + 1)
    results: dict[str, Any] = {}
    with TestClient(app) as test_client:
        worker = threading.Thread(
            target=lambda: results.update(big=test_client.post("/invocations", content=big, headers=CSV_HEADERS))
        )
        worker.start()
        assert entered.wait(10)
        assert test_client.get("/ping").status_code == 200  # answered while the big request predicts
        release.set()
        worker.join(10)
    assert results["big"].status_code == 200
    assert len(results["big"].json()["predictions"]) == 3 * (serve.INLINE_MAX_BYTES // len(CSV_BODY) + 1)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(model_dir: Path, port: int, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "images.inference.serve"],
        cwd=REPO,
        env={**os.environ, "SM_MODEL_DIR": str(model_dir), "SAGEMAKER_BIND_TO_PORT": str(port),
             "UPDRAFT_SERVE_HOST": "127.0.0.1", **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def test_the_server_process_serves_with_several_workers_and_stops_on_sigterm(model_dir: Path, expected: list[float]) -> None:
    port = _free_port()
    proc = _start(model_dir, port, SAGEMAKER_MODEL_SERVER_WORKERS="2")
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            try:
                if requests.get(f"http://127.0.0.1:{port}/ping", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "the server did not answer /ping within 60 s"
            time.sleep(0.1)
        url = f"http://127.0.0.1:{port}/invocations"
        with requests.Session() as session:  # one keep-alive connection throughout
            assert session.post(url, data=CSV_BODY, headers=CSV_HEADERS, timeout=10).json()["predictions"] == expected
            too_big = session.post(url, data=b"1,2,x\n" * (7 * 1024 * 1024 // 6), headers=CSV_HEADERS, timeout=30)
            assert too_big.status_code == 413
            assert session.post(url, data=CSV_BODY, headers=CSV_HEADERS, timeout=10).status_code == 200
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        code = proc.wait(timeout=30)
    log = proc.stdout.read().decode()
    assert code == 0, log
    assert "with 2 worker processes" in log
    assert "POST /invocations 413" in log and "hospital" not in log


def test_a_model_that_cannot_load_stops_the_server_with_one_line(tmp_path: Path) -> None:
    proc = _start(tmp_path / "missing", _free_port())
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "cannot serve the model in" in out.decode() and "Traceback" not in out.decode()


#: Installed here for other stages, absent from the inference image (scipy comes with xgboost-cpu).
NOT_IN_IMAGE = ("sklearn", "boto3", "botocore", "s3fs", "fsspec", "prefect", "dask", "distributed",
                "pandera", "starlette", "matplotlib", "optuna", "torch")


def test_the_server_runs_on_what_the_image_installs(model_dir: Path) -> None:
    """With every package the image lacks made unimportable, the server still loads and predicts."""
    probe = (
        "import importlib.abc, sys\n"
        f"blocked = {NOT_IN_IMAGE!r}\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in blocked:\n"
        "            raise ImportError(f'{name} is not in the image')\n"
        "sys.meta_path.insert(0, Block())\n"
        "from images.inference import serve\n"
        "import uvicorn\n"
        f"app = serve.create_app({str(model_dir)!r})\n"
        f"print(app.predictor.predict({CSV_BODY!r}, 'text/csv'))\n"
        "print(len(app.predictor.predict(open(sys.argv[1], 'rb').read(), 'application/x-parquet')))\n"
    )
    parquet = model_dir.parent / "rows.parquet"
    pq.write_table(pa.Table.from_pandas(ROWS, preserve_index=False), parquet)
    done = subprocess.run([sys.executable, "-c", probe, str(parquet)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "3"
    dockerfile = re.sub(r"\\\n\s*", " ", (REPO / "images/inference/Dockerfile").read_text())
    install = next(line for line in dockerfile.splitlines() if "pip install -c" in line)
    for package in ("numpy", "pandas", "pyarrow", "xgboost-cpu", "uvicorn"):
        assert f" {package} " in f" {install} ", f"the inference image does not install {package}"
