"""SageMaker training jobs against moto: the request (checked against the service's API model), image
lookup, script mode, a local run recorded, a managed run waited on. Statuses moto cannot produce are
in test_training_statuses.py."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import sys
import tarfile
from pathlib import Path
from typing import Any

import boto3
import botocore.session
import pytest
from botocore.stub import Stubber
from botocore.validate import ParamValidator
from moto import mock_aws

from tasks.config import AwsConfig, PipelineConfig, TrainConfig
from tasks.errors import ConfigError, StageError
from tasks.layout import Layout
from tasks.training import container, images, train_stage, training_channels
from tasks.training.jobs import (
    CHECKPOINT_LOCAL_PATH,
    DEFAULT_METRIC_DEFINITIONS,
    build_training_job_request,
    model_artifact_uri,
    pack_source_dir,
    package_script,
    record_local_training_job,
    recorded_job_fields,
    run_sagemaker_training_job,
    script_mode_hyperparameters,
    training_job_name,
    training_job_options,
    upload_script_package,
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


KMS = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"


def full_request(name: str = "demo-run-1", **overrides) -> dict:
    """Every option at once: spot with checkpoints, KMS, VPC, isolation, encryption, tags, environment, 3 instances."""
    args = dict(
        hyperparameters={"max_depth": 4, "eta": 0.2}, instance_type="ml.g5.2xlarge", instance_count=3,
        max_runtime_s=7200, volume_size_gb=50, spot=True, max_wait_s=10800, kms_key_id=KMS,
        subnets=("subnet-0a1b2c3d", "subnet-4e5f6a7b"), security_group_ids=("sg-0123456789abcdef0",),
        network_isolation=True, inter_container_encryption=True,
        tags={"updraft:run-id": "run-1", "team": "risk"}, environment={"UPDRAFT_RUN_ID": "run-1"},
    )
    args.update(overrides)
    return _request(name, **args)


def service_problems(operation: str, params: dict) -> list[str]:
    """What SageMaker's API model says is wrong with ``params``: botocore's own validator (required members,
    types, minimums), plus what it leaves to the service: enums, maximum lengths and patterns."""
    model = botocore.session.get_session().get_service_model("sagemaker")
    shape = model.operation_model(operation).input_shape
    report = ParamValidator().validate(params, shape)
    problems = [report.generate_report()] if report.has_errors() else []

    def walk(value: Any, shape: Any, path: str) -> None:
        meta = shape.metadata
        if shape.type_name == "structure":
            for key, member in value.items():
                if key in shape.members:
                    walk(member, shape.members[key], f"{path}.{key}")
        elif shape.type_name == "list":
            if "max" in meta and len(value) > meta["max"]:
                problems.append(f"{path}: {len(value)} items, at most {meta['max']}")
            for i, item in enumerate(value):
                walk(item, shape.member, f"{path}[{i}]")
        elif shape.type_name == "map":
            for key, item in value.items():
                walk(key, shape.key, f"{path} key {key!r}")
                walk(item, shape.value, f"{path}.{key}")
        elif shape.type_name == "string":
            if shape.enum and value not in shape.enum:
                problems.append(f"{path}: {value!r} is not one of {shape.enum[:8]}...")
            if "max" in meta and len(value) > meta["max"]:
                problems.append(f"{path}: longer than {meta['max']}")
            if "pattern" in meta:
                try:
                    ok = re.fullmatch(meta["pattern"].lstrip("^").rstrip("$"), value, re.DOTALL)
                except re.error:  # a Java-only construct (\p{L}): nothing to check it with here
                    ok = True
                if not ok:
                    problems.append(f"{path}: {value!r} does not match {meta['pattern']}")

    walk(params, shape, operation)
    return problems


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


def test_a_full_option_request_fits_the_service_model_and_moto_keeps_it(sagemaker):
    request = full_request()

    assert service_problems("CreateTrainingJob", request) == []
    assert request["EnableManagedSpotTraining"] is True
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 7200, "MaxWaitTimeInSeconds": 10800}
    assert request["CheckpointConfig"] == {
        "S3Uri": "s3://bkt/models/run-1/demo-run-1/checkpoints/", "LocalPath": CHECKPOINT_LOCAL_PATH}
    assert CHECKPOINT_LOCAL_PATH == "/opt/ml/checkpoints"
    assert request["OutputDataConfig"] == {"S3OutputPath": "s3://bkt/models/run-1/", "KmsKeyId": KMS}
    assert request["ResourceConfig"] == {"InstanceType": "ml.g5.2xlarge", "InstanceCount": 3,
                                         "VolumeSizeInGB": 50, "VolumeKmsKeyId": KMS}
    assert request["VpcConfig"] == {"Subnets": ["subnet-0a1b2c3d", "subnet-4e5f6a7b"],
                                    "SecurityGroupIds": ["sg-0123456789abcdef0"]}
    distribution = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3DataDistributionType"]
                    for c in request["InputDataConfig"]}
    assert distribution == {"train": "ShardedByS3Key", "validation": "FullyReplicated", "transform": "FullyReplicated"}

    sagemaker.create_training_job(**request)
    desc = sagemaker.describe_training_job(TrainingJobName="demo-run-1")
    for key in ("ResourceConfig", "VpcConfig", "StoppingCondition", "CheckpointConfig", "OutputDataConfig",
                "InputDataConfig", "HyperParameters"):
        assert desc[key] == request[key], key
    assert desc["EnableManagedSpotTraining"] and desc["EnableNetworkIsolation"]
    assert desc["EnableInterContainerTrafficEncryption"]
    tags = sagemaker.list_tags(ResourceArn=desc["TrainingJobArn"])["Tags"]
    assert {t["Key"]: t["Value"] for t in tags} == {"updraft:run-id": "run-1", "team": "risk"}


def test_the_validator_catches_what_sagemaker_would_reject():
    """The check above can fail: a wrong enum, a missing member and a bad pattern are each reported."""
    request = full_request()
    request["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3DataDistributionType"] = "Sharded"
    del request["RoleArn"]
    request["CheckpointConfig"]["S3Uri"] = "/local/checkpoints"
    problems = "\n".join(service_problems("CreateTrainingJob", request))
    assert "'Sharded' is not one of" in problems
    assert "RoleArn" in problems
    assert "/local/checkpoints" in problems


def test_one_instance_on_demand_stays_minimal_and_checkpoints_are_optional():
    request = _request()
    assert {c["DataSource"]["S3DataSource"]["S3DataDistributionType"] for c in request["InputDataConfig"]} == {"FullyReplicated"}
    for key in ("EnableManagedSpotTraining", "CheckpointConfig", "VpcConfig", "EnableNetworkIsolation",
                "EnableInterContainerTrafficEncryption"):
        assert key not in request
    with_checkpoints = _request(checkpoint_uri="s3://bkt/ckpt/")
    assert with_checkpoints["CheckpointConfig"] == {"S3Uri": "s3://bkt/ckpt/", "LocalPath": "/opt/ml/checkpoints"}
    assert "EnableManagedSpotTraining" not in with_checkpoints
    spot = _request(spot=True, max_runtime_s=1000)
    assert spot["StoppingCondition"]["MaxWaitTimeInSeconds"] == 2000  # twice the runtime unless told
    assert service_problems("CreateTrainingJob", spot) == []


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"spot": True, "max_runtime_s": 3600, "max_wait_s": 600}, "must be at least train.max_runtime_s"),
        ({"max_wait_s": 7200}, "only applies to managed spot training"),
        ({"subnets": ("subnet-1",)}, "go together"),
        ({"checkpoint_uri": "/tmp/ckpt"}, "checkpoint location '/tmp/ckpt' must be an s3:// URI"),
        ({"tags": {f"k{i}": i for i in range(51)}}, "at most 50 tags"),
    ],
)
def test_inconsistent_options_are_refused_with_what_to_fix(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        _request(**overrides)


def test_options_come_from_the_config_train_and_aws_sections():
    config = PipelineConfig(
        name="claims", bucket="bkt", source="raw/", contract="/dev/null", label="y", task="regression",
        train=TrainConfig(instance_type="ml.c5.2xlarge", instance_count=2, max_runtime_s=900, volume_size_gb=40,
                          spot=True, network_isolation=True, tags={"cost-centre": 42}),
        aws=AwsConfig(kms_key_id=KMS, subnets=("subnet-1",), security_group_ids=("sg-1",)),
    )
    request = _request(**training_job_options(config))
    assert request["ResourceConfig"] == {"InstanceType": "ml.c5.2xlarge", "InstanceCount": 2, "VolumeSizeInGB": 40,
                                         "VolumeKmsKeyId": KMS}
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 900, "MaxWaitTimeInSeconds": 1800}
    assert request["VpcConfig"] == {"Subnets": ["subnet-1"], "SecurityGroupIds": ["sg-1"]}
    assert request["EnableNetworkIsolation"] is True
    assert request["Tags"] == [{"Key": "cost-centre", "Value": "42"}]
    assert service_problems("CreateTrainingJob", request) == []


# --- image URIs -------------------------------------------------------------------------------


def test_our_own_image_is_used_as_given_without_the_sdk(monkeypatch):
    monkeypatch.setitem(sys.modules, images.SDK_MODULE, None)  # as if the SDK were not installed
    assert images.training_image_uri(region=REGION, instance_type="ml.m5.xlarge", own_image=IMAGE) == IMAGE
    with pytest.raises(ConfigError, match="needs the SageMaker Python SDK.*set aws.training_image"):
        images.training_image_uri(region=REGION, instance_type="ml.m5.xlarge")


def test_gpu_instances_are_the_g_and_p_families():
    assert images.is_gpu_instance("ml.g5.xlarge") and images.is_gpu_instance("ml.p4d.24xlarge")
    assert not images.is_gpu_instance("ml.m5.xlarge") and not images.is_gpu_instance("ml.c7i.large")


def test_aws_images_come_from_the_sagemaker_sdk():
    pytest.importorskip(images.SDK_MODULE, reason="the SageMaker Python SDK (sagemaker-core) is not installed")
    xgboost = images.training_image_uri(region="us-east-1", instance_type="ml.m5.xlarge")
    assert xgboost == "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:1.7-1"
    assert images.training_image_uri(region="eu-west-1", instance_type="ml.m5.xlarge").startswith(
        "141502667606.dkr.ecr.eu-west-1.amazonaws.com/sagemaker-xgboost:")

    default_torch = images.default_framework_version("pytorch")
    assert default_torch.startswith("2.") and default_torch.count(".") == 2
    gpu = images.training_image_uri(region="us-east-1", instance_type="ml.g5.xlarge", entry_point="train.py")
    cpu = images.training_image_uri(region="us-east-1", instance_type="ml.m5.xlarge", entry_point="train.py",
                                    framework="pytorch", framework_version=default_torch)
    assert re.fullmatch(rf"\d{{12}}\.dkr\.ecr\.us-east-1\.amazonaws\.com/pytorch-training:{re.escape(default_torch)}-gpu-py3\d+", gpu)
    assert cpu == gpu.replace("-gpu-", "-cpu-")
    sklearn = images.training_image_uri(region="us-east-1", instance_type="ml.m5.xlarge", entry_point="t.py",
                                        framework="sklearn", framework_version="1.2-1")
    assert sklearn.endswith("/sagemaker-scikit-learn:1.2-1-cpu-py3")


def test_a_version_the_sdk_does_not_know_lists_the_ones_it_does():
    pytest.importorskip(images.SDK_MODULE, reason="the SageMaker Python SDK (sagemaker-core) is not installed")
    with pytest.raises(ConfigError, match=r"framework_version '9\.9' is not a pytorch training image.*known versions: .*2\.\d+\.\d+"):
        images.training_image_uri(region="us-east-1", instance_type="ml.m5.xlarge", entry_point="t.py",
                                  framework="pytorch", framework_version="9.9")
    with pytest.raises(ConfigError, match="CPU only"):
        images.training_image_uri(region="us-east-1", instance_type="ml.g5.xlarge", entry_point="t.py",
                                  framework="sklearn", framework_version="1.2-1")


# --- script mode ----------------------------------------------------------------------------


def _user_source(root: Path) -> Path:
    (root / "model").mkdir(parents=True)
    (root / "train.py").write_text("from model.net import build\nbuild()\n")
    (root / "model" / "__init__.py").write_text("")
    (root / "model" / "net.py").write_text("def build():\n    return 1\n")
    (root / "requirements.txt").write_text("torch==2.13.0\n")
    (root / "__pycache__").mkdir()
    (root / "__pycache__" / "train.cpython-311.pyc").write_bytes(b"\0")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    return root


def test_the_source_folder_is_packed_with_the_script_at_the_archive_root(tmp_path):
    source = _user_source(tmp_path / "src")
    tar_path, program = pack_source_dir("train.py", source, tmp_path / "out" / "sourcedir.tar.gz")

    assert program == "train.py"
    with tarfile.open(tar_path) as tar:
        assert sorted(tar.getnames()) == ["model/__init__.py", "model/net.py", "requirements.txt", "train.py"]
        assert tar.extractfile("model/net.py").read() == b"def build():\n    return 1\n"
    os.utime(source / "train.py", (1_000_000_000, 1_000_000_000))  # touched, not changed
    again, _ = pack_source_dir("train.py", source, tmp_path / "again.tar.gz")
    assert again.read_bytes() == tar_path.read_bytes()  # the same source gives the same bytes
    # without source_dir: the entry point's own folder; a script in a subfolder keeps its path
    _, nested = pack_source_dir(source / "model" / "net.py", None, tmp_path / "n.tar.gz")
    assert nested == "net.py"
    _, sub = pack_source_dir("model/net.py", source, tmp_path / "s.tar.gz")
    assert sub == "model/net.py"
    with pytest.raises(ConfigError, match="does not exist"):
        pack_source_dir("missing.py", source, tmp_path / "x.tar.gz")
    elsewhere = tmp_path / "elsewhere.py"
    elsewhere.write_text("print(1)\n")
    with pytest.raises(ConfigError, match="must be inside train.source_dir"):
        pack_source_dir(elsewhere, source, tmp_path / "x.tar.gz")


def test_toolkit_hyperparameters_are_json_encoded_and_merged_with_the_users():
    hps = script_mode_hyperparameters(program="train.py", submit_directory="s3://bkt/code/sourcedir.tar.gz",
                                      region="eu-west-1", hyperparameters={"lr": 0.01, "optimizer": "adam", "epochs": 5})
    assert hps == {
        "lr": "0.01", "optimizer": '"adam"', "epochs": "5",
        "sagemaker_program": '"train.py"',
        "sagemaker_submit_directory": '"s3://bkt/code/sourcedir.tar.gz"',
        "sagemaker_region": '"eu-west-1"',
        "sagemaker_container_log_level": "20",
    }
    assert {k: json.loads(v) for k, v in hps.items()}["optimizer"] == "adam"  # as the toolkit reads them
    with pytest.raises(ConfigError, match="reserved by the SageMaker training toolkit"):
        script_mode_hyperparameters(program="t.py", submit_directory="s3://b/k", region=REGION,
                                    hyperparameters={"sagemaker_program": "other.py"})


def test_a_packaged_script_is_uploaded_and_its_request_fits_the_service_model(embedded_target, moto_s3_bucket, tmp_path):
    source = _user_source(tmp_path / "src")
    package = package_script(entry_point="train.py", source_dir=source, job_name="claims-run-1",
                             code_prefix=f"s3://{moto_s3_bucket}/models/run-1/", region=REGION,
                             work_dir=tmp_path / "work", hyperparameters={"epochs": 3})
    fs = embedded_target.filesystem()

    uri = upload_script_package(fs, package)

    assert uri == f"s3://{moto_s3_bucket}/models/run-1/claims-run-1/source/sourcedir.tar.gz"
    assert fs.cat(uri) == package.tarball.read_bytes()
    assert package.channels == {}
    request = _request("claims-run-1", hyperparameters=package.hyperparameters, stringify=False)
    assert request["HyperParameters"]["sagemaker_submit_directory"] == json.dumps(uri)
    assert request["HyperParameters"]["epochs"] == "3"
    assert service_problems("CreateTrainingJob", request) == []


def test_network_isolation_brings_the_source_in_as_the_code_channel(tmp_path):
    package = package_script(entry_point="train.py", source_dir=_user_source(tmp_path / "src"), job_name="j-1",
                             code_prefix="s3://bkt/code", region=REGION, work_dir=tmp_path, network_isolation=True)
    assert package.channels == {"code": "s3://bkt/code/j-1/source/sourcedir.tar.gz"}
    assert json.loads(package.hyperparameters["sagemaker_submit_directory"]) == "/opt/ml/input/data/code/sourcedir.tar.gz"
    request = _request("j-1", channels={**CHANNELS, **package.channels}, hyperparameters=package.hyperparameters,
                       stringify=False, network_isolation=True)
    assert "code" in [c["ChannelName"] for c in request["InputDataConfig"]]
    assert service_problems("CreateTrainingJob", request) == []


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


def amend_moto_training_job(name: str, fields: dict) -> bool:
    """The hook an in-process moto endpoint can offer: write the run's own fields into the recorded job.

    (moto renders every attribute of its job object in CamelCase, so ``training_time_in_seconds``
    answers as ``TrainingTimeInSeconds``.)"""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.sagemaker.models import sagemaker_backends

    job = sagemaker_backends[DEFAULT_ACCOUNT_ID][REGION].training_jobs.get(name)
    if job is None:
        return False
    for key, value in fields.items():
        setattr(job, re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower(), value)
    return True


def test_an_amended_record_tells_the_runs_own_timings_and_metrics(sagemaker):
    request = _request(environment={"UPDRAFT_RUN_ID": "run-1"})
    result = TrainResult(job_name="demo-run-1", model_uri="s3://bkt/models/run-1/model.tar.gz",
                         metrics={"validation:auc": 0.91, "train:auc": 0.97}, duration_s=42.5)

    record_local_training_job(sagemaker, request, result, amend=amend_moto_training_job)

    desc = sagemaker.describe_training_job(TrainingJobName="demo-run-1")
    assert (desc["TrainingEndTime"] - desc["TrainingStartTime"]).total_seconds() == pytest.approx(42.5, abs=1)
    assert desc["TrainingTimeInSeconds"] == 42
    assert {m["MetricName"]: m["Value"] for m in desc["FinalMetricDataList"]} == {"validation:auc": 0.91, "train:auc": 0.97}
    assert desc["AlgorithmSpecification"]["MetricDefinitions"] == request["AlgorithmSpecification"]["MetricDefinitions"]
    assert desc["Environment"] == {"UPDRAFT_RUN_ID": "run-1"}
    assert desc["ModelArtifacts"]["S3ModelArtifacts"] == model_artifact_uri(request)
    # without the hook moto answers its own placeholders; the fields say what they would have been
    fields = recorded_job_fields(request, result)
    assert fields["TrainingJobStatus"] == "Completed" and fields["BillableTimeInSeconds"] == 0


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
    now = dt.datetime(2026, 11, 26, tzinfo=dt.UTC)
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


def test_a_taken_job_name_that_cannot_be_waited_for_is_a_clear_error(sagemaker):
    """The run's job name is taken by a job that was stopped: SageMaker never reuses a name."""
    with Stubber(sagemaker) as stub:
        stub.add_client_error("create_training_job", service_error_code="ResourceInUse",
                              service_message="Training job names must be unique", http_status_code=400)
        stub.add_response("describe_training_job", {
            "TrainingJobName": "demo-run-1",
            "TrainingJobArn": "arn:aws:sagemaker:us-east-1:123456789012:training-job/demo-run-1",
            "ModelArtifacts": {"S3ModelArtifacts": ""},
            "AlgorithmSpecification": {"TrainingInputMode": "File"},
            "ResourceConfig": {"InstanceType": "ml.m5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 30},
            "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
            "CreationTime": dt.datetime(2026, 11, 26, tzinfo=dt.UTC),
            "TrainingJobStatus": "Stopped", "SecondaryStatus": "Stopped",
        }, {"TrainingJobName": "demo-run-1"})
        with pytest.raises(StageError, match="is Stopped and SageMaker does not reuse job names: start a new run"):
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
