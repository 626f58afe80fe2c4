"""SageMaker training jobs against moto: the request, a local run recorded, a managed run waited on."""

from __future__ import annotations

import datetime as dt
import logging
import re
from pathlib import Path

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from tasks.config import AwsConfig, PipelineConfig, TrainConfig
from tasks.errors import ConfigError, StageError
from tasks.layout import Layout
from tasks.training import container, train_stage, training_channels
from tasks.training.jobs import (
    DEFAULT_METRIC_DEFINITIONS,
    build_training_job_request,
    model_artifact_uri,
    record_local_training_job,
    run_sagemaker_training_job,
    training_job_name,
)
from tasks.training.local_job import TrainResult, pack_model_dir
from tests.unit.test_train_entrypoint import write_feature_splits

REGION = "us-east-1"
ROLE = "arn:aws:iam::123456789012:role/updraft-training"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/updraft-training:1"
CHANNELS = training_channels("s3://bkt/features/run-1/")


def _request(name: str = "demo-run-1", **overrides) -> dict:
    args = dict(job_name=name, image_uri=IMAGE, role_arn=ROLE, channels=CHANNELS, output_uri="s3://bkt/models/run-1/")
    args.update(overrides)
    return build_training_job_request(**args)


@pytest.fixture
def sagemaker(monkeypatch):
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": REGION}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with mock_aws():
        yield boto3.client("sagemaker", region_name=REGION)


# --- the request ----------------------------------------------------------------------


def test_request_defaults_state_a_complete_file_mode_job():
    request = _request(hyperparameters={"max_depth": 4, "eta": 0.2, "verbose": True})

    assert request["TrainingJobName"] == "demo-run-1"
    assert request["AlgorithmSpecification"]["TrainingImage"] == IMAGE
    assert request["AlgorithmSpecification"]["TrainingInputMode"] == "File"
    assert request["HyperParameters"] == {"max_depth": "4", "eta": "0.2", "verbose": "true"}
    channels = {c["ChannelName"]: c for c in request["InputDataConfig"]}
    assert set(channels) == {"train", "validation", "transform"}
    assert channels["train"]["DataSource"]["S3DataSource"]["S3Uri"] == "s3://bkt/features/run-1/train/"
    assert channels["transform"]["DataSource"]["S3DataSource"]["S3Uri"] == "s3://bkt/features/run-1/transform.json"
    assert channels["train"]["ContentType"] == "application/x-parquet"
    assert request["OutputDataConfig"] == {"S3OutputPath": "s3://bkt/models/run-1/"}
    assert request["ResourceConfig"] == {"InstanceType": "ml.m5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 30}
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600}
    assert "Tags" not in request and "Environment" not in request
    assert model_artifact_uri(request) == "s3://bkt/models/run-1/demo-run-1/output/model.tar.gz"


def test_metric_definitions_match_the_lines_the_entry_point_prints():
    definitions = {d["Name"]: re.compile(d["Regex"]) for d in DEFAULT_METRIC_DEFINITIONS}
    lines = {
        "validation:auc": container.format_metric("validation:auc", 0.88110234),
        "train:mlogloss": container.format_metric("train:mlogloss", 0.000012345),
        "validation:rmse": container.format_metric("validation:rmse", 12345.678),
    }
    for name, line in lines.items():
        match = definitions[name].search(line)
        assert match and float(match.group(1)) == pytest.approx(float(line.split("=")[1]))
        # and in a per-round line, next to the other metrics
        assert definitions[name].search(f"[12]\ttrain:logloss=0.1\t{line}").group(1) == line.split("=")[1]
    # train:auc must not read validation's value, nor auc read aucpr's
    assert definitions["train:auc"].search("validation:auc=0.5") is None
    assert definitions["validation:auc"].search("validation:aucpr=0.5") is None


def test_job_names_are_valid_for_sagemaker_and_keep_the_run_id():
    run_id = "20261126-153000-a1b2c3"
    assert training_job_name("fraud", run_id) == "fraud-20261126-153000-a1b2c3"
    long = training_job_name("a" * 40 + "_x", run_id)
    assert len(long) <= 63 and long.endswith(run_id)
    assert re.fullmatch(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}", long)
    with pytest.raises(ConfigError, match="training job name"):
        _request(name="bad_name!")
    with pytest.raises(ConfigError, match="must be an s3:// URI"):
        _request(channels={"train": "/tmp/local"})


# --- recording a local run --------------------------------------------------------------


def test_a_recorded_local_job_is_found_by_describe_and_list(sagemaker):
    request = _request(tags={"updraft:run-id": "run-1"}, environment={"UPDRAFT_RUN_ID": "run-1"})
    result = TrainResult(job_name="demo-run-1", model_uri="s3://bkt/models/run-1/model.tar.gz",
                         metrics={"validation:auc": 0.91}, model_dir="/tmp/m", duration_s=3.2)

    arn = record_local_training_job(sagemaker, request, result)

    desc = sagemaker.describe_training_job(TrainingJobName="demo-run-1")
    assert desc["TrainingJobArn"] == arn
    assert desc["TrainingJobStatus"] == "Completed"
    assert desc["AlgorithmSpecification"]["TrainingImage"] == IMAGE
    assert desc["HyperParameters"] == request["HyperParameters"]
    assert [j["TrainingJobName"] for j in sagemaker.list_training_jobs()["TrainingJobSummaries"]] == ["demo-run-1"]
    tags = {t["Key"]: t["Value"] for t in sagemaker.list_tags(ResourceArn=arn)["Tags"]}
    assert tags["updraft:run-id"] == "run-1"
    assert tags["updraft:executed-by"] == "local-process"
    assert tags["updraft:metric:validation:auc"] == "0.91"
    assert tags["updraft:model-uri"] == "s3://bkt/models/run-1/model.tar.gz"


def test_an_endpoint_without_sagemaker_only_warns(sagemaker, caplog):
    result = TrainResult(job_name="demo-run-1", model_uri="s3://bkt/m.tar.gz")
    with Stubber(sagemaker) as stub:
        stub.add_client_error("create_training_job", service_error_code="InternalFailure",
                              service_message="API for service 'sagemaker' not yet implemented or pro feature",
                              http_status_code=501)
        with caplog.at_level(logging.WARNING):
            assert record_local_training_job(sagemaker, _request(), result) is None
    assert "not recorded" in caplog.text and "pro feature" in caplog.text


# --- a managed job --------------------------------------------------------------------


def test_a_managed_job_is_created_and_waited_for(sagemaker, caplog):
    with caplog.at_level(logging.INFO, logger="updraft.train"):
        desc = run_sagemaker_training_job(sagemaker, _request(), poll_s=0)
    assert desc["TrainingJobStatus"] == "Completed"
    assert desc["ModelArtifacts"]["S3ModelArtifacts"] == "s3://bkt/models/run-1/demo-run-1/output/model.tar.gz"
    assert "demo-run-1: Completed / Completed" in caplog.text


def test_a_failed_job_raises_with_sagemakers_reason(sagemaker, caplog):
    request = _request()
    now = dt.datetime(2026, 11, 26, tzinfo=dt.timezone.utc)
    base = {
        "TrainingJobName": "demo-run-1",
        "TrainingJobArn": "arn:aws:sagemaker:us-east-1:123456789012:training-job/demo-run-1",
        "ModelArtifacts": {"S3ModelArtifacts": ""},
        "AlgorithmSpecification": {"TrainingInputMode": "File"},
        "ResourceConfig": {"InstanceType": "ml.m5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 30},
        "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
        "CreationTime": now,
    }
    with Stubber(sagemaker) as stub:
        stub.add_response("create_training_job", {"TrainingJobArn": base["TrainingJobArn"]}, request)
        stub.add_response("describe_training_job",
                          {**base, "TrainingJobStatus": "InProgress", "SecondaryStatus": "Downloading",
                           "SecondaryStatusTransitions": [{"Status": "Downloading", "StartTime": now,
                                                           "StatusMessage": "Downloading input data"}]},
                          {"TrainingJobName": "demo-run-1"})
        stub.add_response("describe_training_job",
                          {**base, "TrainingJobStatus": "Failed", "SecondaryStatus": "Failed",
                           "FailureReason": "AlgorithmError: hyperparameter(s) max_dept are not used by XGBoost"},
                          {"TrainingJobName": "demo-run-1"})
        with caplog.at_level(logging.INFO, logger="updraft.train"):
            with pytest.raises(StageError, match=r"training job demo-run-1 failed: AlgorithmError: hyperparameter\(s\) max_dept"):
                run_sagemaker_training_job(sagemaker, request, poll_s=0)
        stub.assert_no_pending_responses()
    assert "InProgress / Downloading: Downloading input data" in caplog.text


def test_a_taken_job_name_is_a_clear_error(sagemaker):
    with Stubber(sagemaker) as stub:
        stub.add_client_error("create_training_job", service_error_code="ResourceInUse",
                              service_message="Training job names must be unique", http_status_code=400)
        with pytest.raises(StageError, match="already exists"):
            run_sagemaker_training_job(sagemaker, _request(), poll_s=0)


# --- the stage on the embedded endpoint ---------------------------------------------------


def _config(bucket: str, **kwargs) -> PipelineConfig:
    return PipelineConfig(name="claims", bucket=bucket, source="raw/", contract="/dev/null", label="target",
                          task=kwargs.pop("task", "binary_classification"),
                          train=kwargs.pop("train", TrainConfig(
                              hyperparameters={"max_depth": 3, "eta": 0.3, "early_stopping_rounds": 5})),
                          **kwargs)


def _upload_features(target, bucket: str, run_id: str, local: Path) -> str:
    uri = Layout(bucket, "claims").features(run_id)
    target.filesystem().put(str(local) + "/", uri, recursive=True)
    return uri


def test_train_stage_runs_locally_and_records_the_job(embedded_target, moto_s3_bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("UPDRAFT_RUNS_DIR", str(tmp_path / "runs"))
    run_id = "20261126-153000-a1b2c3"
    write_feature_splits(tmp_path / "features", "binary_classification", n_train=400, n_valid=150)
    features_uri = _upload_features(embedded_target, moto_s3_bucket, run_id, tmp_path / "features")

    result = train_stage.fn(_config(moto_s3_bucket), embedded_target, run_id, features_uri)

    layout = Layout(moto_s3_bucket, "claims")
    assert result.job_name == f"claims-{run_id}"
    assert result.model_uri == layout.model(run_id)
    assert result.metrics["validation:auc"] > 0.75
    assert Path(result.model_dir) == tmp_path / "runs" / run_id / "train" / "model"
    assert (Path(result.model_dir) / "xgboost-model.json").is_file()
    fs = embedded_target.filesystem()
    assert fs.exists(layout.model(run_id))
    sm = embedded_target.client("sagemaker")
    desc = sm.describe_training_job(TrainingJobName=result.job_name)
    assert desc["TrainingJobStatus"] == "Completed"
    assert desc["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"] == features_uri + "train/"
    # where describe_training_job says the model is, it is
    assert fs.cat(desc["ModelArtifacts"]["S3ModelArtifacts"]) == fs.cat(layout.model(run_id))


def test_train_stage_on_aws_waits_for_the_job_and_fetches_its_model(embedded_target, moto_s3_bucket, tmp_path, monkeypatch):
    """The ``aws`` branch against moto, whose jobs complete at once: the artifact is put where SageMaker would."""
    monkeypatch.setenv("UPDRAFT_RUNS_DIR", str(tmp_path / "runs"))
    run_id = "20261126-160000-d4e5f6"
    config = _config(moto_s3_bucket, aws=AwsConfig(training_image=IMAGE, role_arn=ROLE))
    layout = Layout(moto_s3_bucket, "claims")
    model_folder = tmp_path / "model"
    model_folder.mkdir()
    _train_model_folder(tmp_path, model_folder)
    artifact = f"{layout.model_prefix(run_id)}claims-{run_id}/output/model.tar.gz"
    fs = embedded_target.filesystem()
    fs.put_file(str(pack_model_dir(model_folder, tmp_path / "model.tar.gz")), artifact)
    aws = type(embedded_target)(kind="aws", region=embedded_target.region)  # real-AWS code path, moto answering

    result = train_stage.fn(config, aws, run_id, layout.features(run_id))

    assert result.status == "Completed"
    assert result.model_uri == layout.model(run_id)
    assert fs.cat(layout.model(run_id)) == fs.cat(artifact)
    assert set(result.metrics) == {"train:auc", "validation:auc"}  # from the model's metadata.json
    assert (Path(result.model_dir) / "metadata.json").is_file()
    desc = aws.client("sagemaker").describe_training_job(TrainingJobName=result.job_name)
    assert desc["AlgorithmSpecification"]["TrainingImage"] == IMAGE
    assert desc["RoleArn"] == ROLE


def _train_model_folder(tmp_path: Path, model_folder: Path) -> None:
    from images.training import train as entry
    from tests.unit.test_train_entrypoint import layout_opt_ml

    write_feature_splits(tmp_path / "f", n_train=200, n_valid=80)
    base = tmp_path / "opt_ml"
    layout_opt_ml(base, tmp_path / "f", {"num_round": "5"})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(container.BASE_DIR_ENV, str(base))
        mp.setenv(container.SM_MODEL_DIR, str(model_folder))
        assert entry.main([]) == 0


def test_train_stage_on_aws_needs_an_image_and_a_role(embedded_target, moto_s3_bucket):
    aws = type(embedded_target)(kind="aws", region=embedded_target.region)
    with pytest.raises(ConfigError, match="aws.training_image and aws.role_arn"):
        train_stage.fn(_config(moto_s3_bucket), aws, "run-1", "s3://x/features/run-1/")


def test_train_stage_names_a_task_of_a_later_release(embedded_target, moto_s3_bucket):
    with pytest.raises(ConfigError, match="task 'ranking' cannot be trained yet: it arrives in a later release"):
        train_stage.fn(_config(moto_s3_bucket, task="ranking"), embedded_target, "run-1", "s3://x/features/run-1/")


def test_train_stage_refuses_several_instances_before_starting_a_job(embedded_target, moto_s3_bucket):
    config = _config(moto_s3_bucket, train=TrainConfig(instance_count=2))
    with pytest.raises(ConfigError, match="set it to 1"):
        train_stage.fn(config, embedded_target, "run-1", "s3://x/features/run-1/")
    jobs = embedded_target.client("sagemaker").list_training_jobs()["TrainingJobSummaries"]
    assert "claims-run-1" not in [j["TrainingJobName"] for j in jobs]
