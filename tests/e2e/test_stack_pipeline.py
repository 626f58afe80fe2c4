"""The customer path end to end: deploy infra/updraft.yaml, then run the pipeline on what the stack made.

``updraft infra deploy`` creates the stack on the embedded endpoint (moto's CloudFormation);
the run's config names nothing but the stack's outputs: its bucket, its SageMaker role,
its KMS key and its ECR repositories. Afterwards every object the run wrote is checked
against the deployed roles' policies: the least-privilege prefixes must cover what the
pipeline really does, or a customer's first run would fail with AccessDenied.

moto's CloudFormation skips resource types it does not implement (bucket, queue and topic
policies, CloudWatch alarms; see infra/README.md) and enforces no IAM, so this test shows
the stack's resources suffice and the policies allow the run's own traffic;
tests/aws/test_infra_stack.py shows what they deny.
"""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest
import yaml

from tasks.aws.embedded import EmbeddedAWS
from tasks.infra.iam_policy import evaluate
from tasks.infra.roles import role_policy_documents
from tasks.sample import write_sample
from tests.e2e.conftest import run_cli

pytestmark = [
    pytest.mark.e2e,
    # moto warns about each resource type its CloudFormation skips (tests/aws/test_infra_stack.py pins them down).
    pytest.mark.filterwarnings("ignore:Tried to parse .* not supported by moto"),
]

PROJECT = "claims-fraud"  # the sample config's name: the stack's ProjectName must match it


def _network() -> tuple[str, str]:
    ec2 = boto3.client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.20.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.20.1.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName="updraft-worker", Description="worker", VpcId=vpc)["GroupId"]
    return subnet, group


def test_pipeline_runs_on_the_resources_the_stack_created(embedded: EmbeddedAWS, tmp_path: Path) -> None:
    subnet, group = _network()
    deployed = run_cli(
        "infra", "deploy", "--stack", "updraft-claims", "--project", PROJECT,
        "--subnets", subnet, "--security-groups", group, "--json", timeout=120,
    )
    assert deployed.returncode == 0, deployed.stderr[-3000:]
    outputs = json.loads(deployed.stdout)["outputs"]

    # The config takes everything AWS-side from the outputs; nothing is created by hand.
    sample = write_sample(tmp_path / "sample", n_rows=2000)
    config = yaml.safe_load(sample.config.read_text())
    assert config["name"] == PROJECT
    config["bucket"] = outputs["DataBucketName"]
    config["aws"] = {
        "role_arn": outputs["SageMakerExecutionRoleArn"],
        "kms_key_id": outputs["KmsKeyArn"],
        "training_image": outputs["TrainingRepositoryUri"] + ":0.1.0",
        "inference_image": outputs["InferenceRepositoryUri"] + ":0.1.0",
    }
    config["train"] = {"hyperparameters": {"num_round": 30, "max_depth": 4}}
    config_path = sample.config.parent / "stack-config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    s3 = boto3.client("s3")
    for path in sample.data_files:
        s3.upload_file(str(path), config["bucket"], config["source"] + path.name)

    result = run_cli("run", "--config", str(config_path), "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["ingest"]["rows_in"] == 2000
    assert summary["evaluate"]["passed"] is True
    assert summary["deploy"]["endpoint_name"] == PROJECT

    # SageMaker's records name the stack's role.
    sm = boto3.client("sagemaker")
    job = sm.describe_training_job(TrainingJobName=summary["train"]["job_name"])
    assert job["RoleArn"] == outputs["SageMakerExecutionRoleArn"]
    assert job["AlgorithmSpecification"]["TrainingImage"].startswith(outputs["TrainingRepositoryUri"])

    # Every object the run wrote is one the worker role may write and read back, and the
    # training job's inputs and outputs are ones the SageMaker role may read and write.
    iam = boto3.client("iam")
    worker = role_policy_documents(iam, outputs["PrefectWorkerTaskRoleArn"])
    sagemaker_role = role_policy_documents(iam, outputs["SageMakerExecutionRoleArn"])
    bucket_arn = f"arn:aws:s3:::{config['bucket']}"
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=config["bucket"]) for o in page.get("Contents", [])]
    written = [k for k in keys if not k.startswith(config["source"])]
    prefixes = {k.split("/", 1)[0] for k in written}
    assert {"curated", "quarantine", "features", "models", "reports", "manifests"} <= prefixes, prefixes
    for key in written:
        for action in ("s3:PutObject", "s3:GetObject"):
            assert evaluate(worker, action, f"{bucket_arn}/{key}").allowed, (action, key)
    for key in keys:
        if key.startswith(config["source"]):
            assert evaluate(worker, "s3:GetObject", f"{bucket_arn}/{key}").allowed, key
            assert not evaluate(worker, "s3:PutObject", f"{bucket_arn}/{key}").allowed, key  # raw data is read-only
    for key in written:
        if key.startswith(f"features/{summary['run_id']}/"):
            assert evaluate(sagemaker_role, "s3:GetObject", f"{bucket_arn}/{key}").allowed, key
        if key.startswith(f"models/{summary['run_id']}/"):
            assert evaluate(sagemaker_role, "s3:PutObject", f"{bucket_arn}/{key}").allowed, key
        if key.startswith("curated/"):
            assert not evaluate(sagemaker_role, "s3:GetObject", f"{bucket_arn}/{key}").allowed, key
    # The SageMaker resources the run created are the project's by name.
    sm_arn = job["TrainingJobArn"].split(":training-job/")[0]
    for action, resource in (
        ("sagemaker:CreateTrainingJob", f"{sm_arn}:training-job/{summary['train']['job_name']}"),
        ("sagemaker:CreateModelPackage", summary["register"]["model_package_arn"]),
        ("sagemaker:CreateEndpoint", f"{sm_arn}:endpoint/{summary['deploy']['endpoint_name']}"),
    ):
        assert evaluate(worker, action, resource).allowed, (action, resource)
