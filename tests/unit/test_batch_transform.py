"""Batch transform: one ``<input>.out`` per object, predicting exactly as the endpoint does."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any

import fsspec
import pandas as pd
import pytest

from images.inference.batch import batch_transform
from tasks.errors import ConfigError, DataError
from tasks.modelbundle import load_model_bundle
from tests.unit.test_serve_payloads import raw_rows, to_csv, to_json_objects, to_parquet, write_bundle


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_bundle(tmp_path_factory.mktemp("batch") / "model", "binary_classification")


@pytest.fixture(scope="module")
def labels_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_bundle(tmp_path_factory.mktemp("batch") / "model", "multiclass_classification")


def _expected(model: Path, rows: pd.DataFrame) -> list[Any]:
    return load_model_bundle(model).predict_frame(rows)


def _csv_floats(path: Path) -> list[float]:
    return [float(line) for line in path.read_text().splitlines()]


@pytest.fixture()
def local() -> Any:
    return fsspec.filesystem("file")


def test_each_object_under_the_prefix_gets_its_out_file_at_the_same_relative_path(model: Path, local: Any, tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    (inputs / "2026" / "11").mkdir(parents=True)
    first, second = raw_rows(40, seed=1), raw_rows(7, seed=2)
    (inputs / "a.csv").write_bytes(to_csv(first))
    (inputs / "2026" / "11" / "b.csv").write_bytes(to_csv(second))

    result = batch_transform(local, str(inputs), str(tmp_path / "out"), model, "text/csv", "text/csv")

    assert _csv_floats(tmp_path / "out" / "a.csv.out") == _expected(model, first)
    assert _csv_floats(tmp_path / "out" / "2026" / "11" / "b.csv.out") == _expected(model, second)
    assert (result.objects, result.records, result.requests) == (2, 47, 2)
    assert result.outputs == [str(tmp_path / "out" / "2026" / "11" / "b.csv.out"), str(tmp_path / "out" / "a.csv.out")]
    assert json.loads(json.dumps(result.to_dict()))["records"] == 47


def test_lines_go_in_mini_batches_under_the_payload_limit_and_stay_in_order(labels_model: Path, local: Any, tmp_path: Path) -> None:
    rows = raw_rows(20_000, seed=3)
    body = to_csv(rows)
    assert len(body) > 2**20
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "big.csv").write_bytes(body)

    result = batch_transform(local, str(tmp_path / "in"), str(tmp_path / "out"), labels_model, "text/csv", "text/csv", max_payload_mb=1)

    assert result.requests == 2
    lines = (tmp_path / "out" / "big.csv.out").read_text().splitlines()
    assert lines == _expected(labels_model, rows)
    assert set(lines) <= {"a", "b", "c"}


def test_json_answers_are_one_document_per_mini_batch_as_sagemaker_assembles_them(model: Path, local: Any, tmp_path: Path) -> None:
    rows = raw_rows(3000, seed=4)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "rows.csv").write_bytes(to_csv(rows))

    result = batch_transform(local, str(tmp_path / "in"), str(tmp_path / "out"), model, "text/csv", "application/json", max_payload_mb=1)

    documents = [json.loads(line) for line in (tmp_path / "out" / "rows.csv.out").read_text().splitlines()]
    assert len(documents) == result.requests
    assert [p for doc in documents for p in doc["predictions"]] == _expected(model, rows)


def test_json_lines_are_one_instance_each(model: Path, local: Any, tmp_path: Path) -> None:
    rows = raw_rows(30, seed=5)
    instances = json.loads(to_json_objects(rows))["instances"]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "rows.jsonl").write_text("".join(json.dumps(i) + "\n" for i in instances))

    batch_transform(local, str(tmp_path / "in"), str(tmp_path / "out"), model, "application/json", "text/csv")

    assert _csv_floats(tmp_path / "out" / "rows.jsonl.out") == _expected(model, rows)


def test_parquet_files_are_one_request_each(model: Path, local: Any, tmp_path: Path) -> None:
    rows = raw_rows(50, seed=6)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "part-0.parquet").write_bytes(to_parquet(rows))

    result = batch_transform(local, str(tmp_path / "in"), str(tmp_path / "out"), model, "application/x-parquet", "application/json", "None")

    assert json.loads((tmp_path / "out" / "part-0.parquet.out").read_text()) == {"predictions": _expected(model, rows)}
    assert result.records == 50
    with pytest.raises(ConfigError, match="split_type='None'"):
        batch_transform(local, str(tmp_path / "in"), str(tmp_path / "out2"), model, "application/x-parquet", "text/csv")


def test_a_bad_record_stops_the_job_naming_the_object_and_lines_and_leaves_no_partial_output(model: Path, local: Any, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.csv").write_bytes(to_csv(raw_rows(5, seed=7)))
    (tmp_path / "in" / "b.csv").write_bytes(to_csv(raw_rows(5, seed=8)) + b"1,lots,0.5,lab,a,CA,x,1\n")

    with pytest.raises(DataError) as caught:
        batch_transform(local, str(tmp_path / "in"), str(tmp_path / "out"), model, "text/csv", "text/csv")

    message = str(caught.value)
    assert f"{tmp_path / 'in' / 'b.csv'}, lines 1-6" in message
    assert "row 6: column 'age' has the non-numeric value 'lots'" in message
    assert (tmp_path / "out" / "a.csv.out").is_file()
    assert not (tmp_path / "out" / "b.csv.out").exists()


def test_a_key_prefix_selects_objects_as_sagemaker_s3prefix_does(model: Path, local: Any, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    for name in ("part-1.csv", "part-2.csv", "other.csv"):
        (tmp_path / "in" / name).write_bytes(to_csv(raw_rows(2)))

    result = batch_transform(local, str(tmp_path / "in" / "part-"), str(tmp_path / "out"), model, "text/csv", "text/csv")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["part-1.csv.out", "part-2.csv.out"]

    one = batch_transform(local, str(tmp_path / "in" / "other.csv"), str(tmp_path / "one"), model, "text/csv", "text/csv")
    assert (one.objects, [p.name for p in (tmp_path / "one").iterdir()]) == (1, ["other.csv.out"])
    assert result.objects == 2


def test_a_model_tar_can_be_given_instead_of_a_folder(model: Path, local: Any, tmp_path: Path) -> None:
    tar = tmp_path / "model.tar.gz"
    with tarfile.open(tar, "w:gz") as archive:
        for path in model.iterdir():
            archive.add(path, arcname=path.name)
    rows = raw_rows(4)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.csv").write_bytes(to_csv(rows))

    batch_transform(local, str(tmp_path / "in"), str(tmp_path / "out"), tar, "text/csv", "text/csv")
    assert _csv_floats(tmp_path / "out" / "a.csv.out") == _expected(model, rows)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"content_type": "application/xml"}, ConfigError, "unsupported content type 'application/xml'"),
        ({"accept": "application/xml"}, ConfigError, "accept one of"),
        ({"split_type": "RecordIO"}, ConfigError, "split_type 'RecordIO' is not supported"),
        ({"output": "in/out"}, ConfigError, "lies inside the input"),
        ({"input": "nothing-here/"}, DataError, "no objects under"),
    ],
)
def test_arguments_that_cannot_work_are_refused_before_any_output(
    kwargs: dict[str, str], error: type, message: str, model: Path, local: Any, tmp_path: Path
) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.csv").write_bytes(to_csv(raw_rows(2)))
    (tmp_path / "nothing-here").mkdir()
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        batch_transform(
            local,
            str(tmp_path / kwargs.get("input", "in")),
            str(tmp_path / kwargs.get("output", "out")),
            model,
            kwargs.get("content_type", "text/csv"),
            kwargs.get("accept", "text/csv"),
            kwargs.get("split_type", "Line"),
        )
    assert not (tmp_path / "out").exists()


def test_batch_transform_over_s3(model: Path, embedded_target: Any, moto_s3_bucket: str) -> None:
    s3 = embedded_target.client("s3")
    rows = {"in/day=1/a.csv": raw_rows(20, seed=9), "in/day=2/b.csv": raw_rows(9, seed=10)}
    for key, frame in rows.items():
        s3.put_object(Bucket=moto_s3_bucket, Key=key, Body=to_csv(frame))

    result = batch_transform(
        embedded_target.filesystem(), f"s3://{moto_s3_bucket}/in/", f"s3://{moto_s3_bucket}/out", model, "text/csv", "text/csv"
    )

    assert result.outputs == [f"s3://{moto_s3_bucket}/out/day=1/a.csv.out", f"s3://{moto_s3_bucket}/out/day=2/b.csv.out"]
    for key, frame in rows.items():
        body = s3.get_object(Bucket=moto_s3_bucket, Key=key.replace("in/", "out/", 1) + ".out")["Body"].read()
        assert [float(line) for line in body.decode().splitlines()] == _expected(model, frame)
