"""infra/updraft.yaml deployed on the embedded endpoint: its outputs, its resources, and what its roles may do.

The role policies are read back from moto's IAM after the stack is created, so every
``!Sub`` and ``!GetAtt`` is resolved as CloudFormation resolved it, and judged by
:mod:`tasks.infra.iam_policy` (moto has no IAM policy simulator).
"""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from flows.cli import app
from tasks.aws.stacks import stack_outputs
from tasks.aws.target import Target
from tasks.errors import TargetError
from tasks.infra.deploy import deploy_stack
from tasks.infra.iam_policy import EXPLICIT_DENY, evaluate
from tasks.infra.roles import role_policy_documents
from tasks.infra.templates import Template, resolve_template

#: moto warns about each resource type its CloudFormation skips; MOTO_SKIPS below pins them down.
pytestmark = pytest.mark.filterwarnings("ignore:Tried to parse .* not supported by moto")

PROJECT = "claims-fraud"
OTHER = "fraud-claims"  # another project in the same account
#: Names are all SageMaker ARNs can be scoped by: a project whose name is this one's plus
#: '-...' would match (infra/README.md says not to name projects so); plus anything else must not.
STACK = "updraft-claims"
#: The outputs other parts of updraft and its users rely on (agreed names).
AGREED_OUTPUTS = {
    "DataBucketName", "KmsKeyArn", "SageMakerExecutionRoleArn", "PrefectWorkerTaskRoleArn",
    "PrefectWorkerExecutionRoleArn", "EcsClusterName", "EcsClusterArn", "PrefectWorkerTaskDefinitionArn",
    "TrainingRepositoryUri", "InferenceRepositoryUri", "FlowsRepositoryUri", "LogGroupName", "AlarmTopicArn",
}
#: Resource types moto's CloudFormation does not implement: it skips them with a warning
#: (documented in infra/README.md). Everything else in the template must really exist.
MOTO_SKIPS = {"AWS::S3::BucketPolicy", "AWS::SQS::QueuePolicy", "AWS::SNS::TopicPolicy", "AWS::CloudWatch::Alarm"}


@pytest.fixture()
def stack(embedded_target: Target) -> dict:
    ec2 = embedded_target.client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.30.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.30.1.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName="worker", Description="worker", VpcId=vpc)["GroupId"]
    result = deploy_stack(
        embedded_target.client("cloudformation"),
        stack_name=STACK,
        template=Template.read(resolve_template()),
        parameters={"ProjectName": PROJECT, "SubnetIds": subnet, "SecurityGroupIds": group},
        tags={"updraft:project": PROJECT},
        poll_s=0.01,
    )
    assert result.action == "created" and result.status == "CREATE_COMPLETE"
    return {"outputs": result.outputs, "subnet": subnet, "group": group, "target": embedded_target}


def _arns(outputs: dict) -> dict[str, str]:
    region, account = outputs["KmsKeyArn"].split(":")[3:5]
    bucket = outputs["DataBucketName"]
    return {
        "bucket": f"arn:aws:s3:::{bucket}",
        "objects": f"arn:aws:s3:::{bucket}/",
        "sm": f"arn:aws:sagemaker:{region}:{account}:",
        "ecr": f"arn:aws:ecr:{region}:{account}:repository/",
        "iam": f"arn:aws:iam::{account}:role/",
    }


def test_outputs_resources_and_settings(stack: dict) -> None:
    outputs, target = stack["outputs"], stack["target"]
    assert AGREED_OUTPUTS <= set(outputs)
    assert stack_outputs(target, STACK) == outputs
    assert outputs["TrainingRepositoryUri"].endswith(f"/{PROJECT}-training")
    assert outputs["InferenceRepositoryUri"].endswith(f"/{PROJECT}-inference")
    assert outputs["FlowsRepositoryUri"].endswith(f"/{PROJECT}-flows")

    template = Template.read(resolve_template())
    created = {r["LogicalResourceId"] for r in target.client("cloudformation").list_stack_resources(StackName=STACK)["StackResourceSummaries"] if r.get("ResourceType")}
    conditional = {"PrefectApiKeyPolicy", "AlarmEmailSubscription", "WorkerNotRunningAlarm"}  # off with the defaults
    missing = {name: kind for name, kind in template.resource_types.items() if name not in created and name not in conditional}
    assert set(missing.values()) == MOTO_SKIPS, missing

    # What moto records of the security settings matches the template's intent.
    key_id = outputs["KmsKeyArn"]
    assert target.client("kms").get_key_rotation_status(KeyId=key_id)["KeyRotationEnabled"] is True
    rule = target.client("s3").get_bucket_encryption(Bucket=outputs["DataBucketName"])["ServerSideEncryptionConfiguration"]["Rules"][0]
    assert rule["ApplyServerSideEncryptionByDefault"] == {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": key_id}
    # (moto drops ECR's scanning and encryption settings from CloudFormation; checkov checks the template's.)
    repos = target.client("ecr").describe_repositories(repositoryNames=[f"{PROJECT}-training", f"{PROJECT}-inference", f"{PROJECT}-flows"])
    assert [r["imageTagMutability"] for r in repos["repositories"]] == ["IMMUTABLE"] * 3
    group = target.client("logs").describe_log_groups(logGroupNamePrefix=outputs["LogGroupName"])["logGroups"][0]
    assert group["retentionInDays"] == 365  # (moto drops the log group's KmsKeyId from CloudFormation)

    # The worker: the flows image at the tag parameter, polling the project's pool, no secret in its
    # environment. (moto keeps only the container definitions of a task definition from CloudFormation.)
    task = target.client("ecs").describe_task_definition(taskDefinition=outputs["PrefectWorkerTaskDefinitionArn"])["taskDefinition"]
    container = task["containerDefinitions"][0]
    assert container["image"] == outputs["FlowsRepositoryUri"] + ":0.1.0"
    assert container["command"][:7] == ["prefect", "worker", "start", "--pool", f"{PROJECT}-ecs", "--type", "ecs"]
    assert container["readonlyRootFilesystem"] is True
    env = {e["name"]: e["value"] for e in container["environment"]}
    assert "PREFECT_API_URL" in env and "PREFECT_API_KEY" not in env


def test_sagemaker_role_reads_features_writes_models_and_nothing_else(stack: dict) -> None:
    outputs, target = stack["outputs"], stack["target"]
    policies = role_policy_documents(target.client("iam"), outputs["SageMakerExecutionRoleArn"])
    a = _arns(outputs)

    def allowed(action: str, resource: str, **context: object) -> bool:
        return evaluate(policies, action, resource, context).allowed

    assert allowed("s3:GetObject", a["objects"] + "features/20261127-120000-abcdef/train/part-0.parquet")
    assert allowed("s3:PutObject", a["objects"] + "models/20261127-120000-abcdef/claims-fraud-x/output/model.tar.gz")
    assert allowed("s3:ListBucket", a["bucket"], **{"s3:prefix": "features/20261127-120000-abcdef/train/"})
    assert allowed("s3:PutObject", a["objects"] + f"data-capture/{PROJECT}/AllTraffic/2026/11/27/capture.jsonl")
    assert allowed("ecr:BatchGetImage", a["ecr"] + f"{PROJECT}-training")
    assert allowed("kms:Decrypt", outputs["KmsKeyArn"], **{"kms:ViaService": "s3.us-east-1.amazonaws.com"})

    # Another project's data, raw data, the bucket itself, other buckets: denied.
    assert not allowed("s3:GetObject", a["objects"] + f"curated/{OTHER}/part-0.parquet")
    assert not allowed("s3:GetObject", a["objects"] + f"curated/{PROJECT}/part-0.parquet")  # jobs read features only
    assert not allowed("s3:GetObject", a["objects"] + "raw/claims/claims-001.csv")
    assert not allowed("s3:ListBucket", a["bucket"], **{"s3:prefix": f"curated/{OTHER}/"})
    assert not allowed("s3:ListBucket", a["bucket"])  # no prefix: the whole bucket's keys
    assert not allowed("s3:PutObject", a["objects"] + f"data-capture/{OTHER}/capture.jsonl")
    assert not allowed("s3:PutObject", a["objects"] + f"data-capture/{PROJECT}x/capture.jsonl")
    assert not allowed("s3:DeleteBucket", a["bucket"])
    assert not allowed("s3:PutBucketPolicy", a["bucket"])
    assert not allowed("s3:DeleteObject", a["objects"] + "models/20261127-120000-abcdef/model.tar.gz")
    assert not allowed("s3:GetObject", "arn:aws:s3:::someone-elses-bucket/features/x.parquet")
    assert not allowed("kms:Decrypt", outputs["KmsKeyArn"])  # only through S3 and SageMaker
    assert not allowed("kms:ScheduleKeyDeletion", outputs["KmsKeyArn"])
    assert not allowed("ecr:BatchGetImage", a["ecr"] + "other-training")
    assert not allowed("ecr:PutImage", a["ecr"] + f"{PROJECT}-training")
    # It passes no role and touches no SageMaker resource of its own accord.
    assert not allowed("iam:PassRole", outputs["SageMakerExecutionRoleArn"], **{"iam:PassedToService": "sagemaker.amazonaws.com"})
    assert not allowed("iam:PassRole", a["iam"] + "Admin", **{"iam:PassedToService": "sagemaker.amazonaws.com"})
    assert not allowed("sagemaker:CreateTrainingJob", a["sm"] + f"training-job/{PROJECT}-run")
    assert not allowed("sagemaker:DeleteEndpoint", a["sm"] + f"endpoint/{OTHER}")
    assert not allowed("iam:CreateRole", a["iam"] + "x")


def test_worker_role_runs_the_project_pipeline_and_nothing_else(stack: dict) -> None:
    outputs, target = stack["outputs"], stack["target"]
    policies = role_policy_documents(target.client("iam"), outputs["PrefectWorkerTaskRoleArn"])
    a, run = _arns(outputs), "20261127-120000-abcdef"

    def decide(action: str, resource: str, **context: object) -> str:
        return evaluate(policies, action, resource, context).decision

    def allowed(action: str, resource: str, **context: object) -> bool:
        return decide(action, resource, **context) == "allowed"

    # The pipeline's own prefixes (tasks/layout.py) and the stage results.
    for key in (
        f"curated/{PROJECT}/part-0.parquet", f"staging/{PROJECT}/{run}/part-0.parquet", f"manifests/{PROJECT}/manifest.json",
        f"quarantine/{run}/part-0.parquet", f"features/{run}/transform.json", f"models/{run}/model.tar.gz",
        f"reports/{run}/report.html", f"prefect/results/{PROJECT}/{run}/ingest-0123",
    ):
        assert allowed("s3:PutObject", a["objects"] + key), key
        assert allowed("s3:GetObject", a["objects"] + key), key
    assert allowed("s3:GetObject", a["objects"] + "raw/claims/claims-001.csv")
    assert allowed("s3:ListBucket", a["bucket"], **{"s3:prefix": f"curated/{PROJECT}/"})
    assert allowed("s3:ListBucket", a["bucket"])  # HeadBucket
    # ...and not another project's, nor the raw data's integrity, nor the bucket.
    for key in (f"curated/{OTHER}/part-0.parquet", f"manifests/{OTHER}/manifest.json", f"prefect/results/{OTHER}/{run}/x"):
        assert not allowed("s3:GetObject", a["objects"] + key), key
        assert not allowed("s3:PutObject", a["objects"] + key), key
    assert not allowed("s3:ListBucket", a["bucket"], **{"s3:prefix": f"curated/{OTHER}/"})
    assert not allowed("s3:PutObject", a["objects"] + "raw/claims/claims-001.csv")
    assert not allowed("s3:DeleteObject", a["objects"] + "raw/claims/claims-001.csv")
    assert not allowed("s3:DeleteBucket", a["bucket"])
    assert not allowed("s3:DeleteObjectVersion", a["objects"] + f"curated/{PROJECT}/part-0.parquet")
    assert not allowed("s3:PutBucketPolicy", a["bucket"])

    # SageMaker: the project's jobs, models, endpoints and registry group, by name.
    assert allowed("sagemaker:CreateTrainingJob", a["sm"] + f"training-job/{PROJECT}-{run}")
    assert allowed("sagemaker:CreateEndpoint", a["sm"] + f"endpoint/{PROJECT}")
    assert allowed("sagemaker:CreateModel", a["sm"] + f"model/{PROJECT}-{run}")
    assert allowed("sagemaker:UpdateModelPackage", a["sm"] + f"model-package/{PROJECT}/3")
    assert allowed("sagemaker:CreateHyperParameterTuningJob", a["sm"] + f"hyper-parameter-tuning-job/claims-fr-{run}",
                   **{"aws:RequestTag/updraft:pipeline": PROJECT})
    assert not allowed("sagemaker:CreateHyperParameterTuningJob", a["sm"] + f"hyper-parameter-tuning-job/claims-fr-{run}",
                       **{"aws:RequestTag/updraft:pipeline": "other"})
    assert not allowed("sagemaker:CreateTrainingJob", a["sm"] + f"training-job/other-{run}")
    assert not allowed("sagemaker:DeleteEndpoint", a["sm"] + "endpoint/other")
    assert not allowed("sagemaker:DeleteEndpoint", a["sm"] + f"endpoint/{PROJECT}x")
    assert not allowed("sagemaker:UpdateModelPackage", a["sm"] + "model-package/other/1")
    assert not allowed("sagemaker:DeleteModelPackageGroup", a["sm"] + f"model-package-group/{PROJECT}")
    assert not allowed("sagemaker:CreateNotebookInstance", a["sm"] + f"notebook-instance/{PROJECT}")
    # PassRole: the SageMaker role to SageMaker, its own roles to ECS tasks; nothing else.
    assert allowed("iam:PassRole", outputs["SageMakerExecutionRoleArn"], **{"iam:PassedToService": "sagemaker.amazonaws.com"})
    assert not allowed("iam:PassRole", outputs["SageMakerExecutionRoleArn"], **{"iam:PassedToService": "ec2.amazonaws.com"})
    assert not allowed("iam:PassRole", a["iam"] + "OrganizationAccountAccessRole", **{"iam:PassedToService": "sagemaker.amazonaws.com"})
    assert allowed("iam:PassRole", outputs["PrefectWorkerExecutionRoleArn"], **{"iam:PassedToService": "ecs-tasks.amazonaws.com"})
    assert not allowed("iam:PassRole", outputs["PrefectWorkerExecutionRoleArn"], **{"iam:PassedToService": "lambda.amazonaws.com"})
    assert not allowed("iam:AttachRolePolicy", outputs["PrefectWorkerTaskRoleArn"])
    # ECS: flow runs in the project's cluster only.
    region, account = outputs["KmsKeyArn"].split(":")[3:5]
    family = f"arn:aws:ecs:{region}:{account}:task-definition/prefect_{PROJECT}-ecs_0f1e2d:3"
    assert allowed("ecs:RunTask", family, **{"ecs:cluster": outputs["EcsClusterArn"]})
    assert not allowed("ecs:RunTask", family, **{"ecs:cluster": f"arn:aws:ecs:{region}:{account}:cluster/default"})
    assert not allowed("ecs:RunTask", f"arn:aws:ecs:{region}:{account}:task-definition/other:1", **{"ecs:cluster": outputs["EcsClusterArn"]})
    assert decide("ecs:DeleteCluster", outputs["EcsClusterArn"]) != "allowed"


def test_execution_role_pulls_the_flows_image_and_reads_only_the_named_secret(stack: dict) -> None:
    outputs, target = stack["outputs"], stack["target"]
    a = _arns(outputs)
    iam = target.client("iam")
    before = role_policy_documents(iam, outputs["PrefectWorkerExecutionRoleArn"])
    assert evaluate(before, "ecr:BatchGetImage", a["ecr"] + f"{PROJECT}-flows").allowed
    assert not evaluate(before, "ecr:BatchGetImage", a["ecr"] + f"{PROJECT}-training").allowed
    secret = "arn:aws:secretsmanager:us-east-1:123456789012:secret:prefect-api-key-AbCdEf"
    assert not evaluate(before, "secretsmanager:GetSecretValue", secret).allowed

    # An update names only what changes; the rest keeps its previous values.
    updated = deploy_stack(
        target.client("cloudformation"), stack_name=STACK, template=Template.read(resolve_template()),
        parameters={"PrefectApiKeySecretArn": secret, "PrefectApiUrl": "https://api.prefect.cloud/api/accounts/a/workspaces/w"},
        poll_s=0.01,
    )
    assert updated.action == "updated" and updated.outputs["EcsClusterName"] == outputs["EcsClusterName"]
    after = role_policy_documents(iam, outputs["PrefectWorkerExecutionRoleArn"])
    assert evaluate(after, "secretsmanager:GetSecretValue", secret).allowed
    assert not evaluate(after, "secretsmanager:GetSecretValue", secret.replace("prefect-api-key", "database-password")).allowed


def test_the_api_key_reaches_the_worker_only_as_a_secret_and_a_named_pool_is_honoured(embedded_target: Target) -> None:
    secret = "arn:aws:secretsmanager:us-east-1:123456789012:secret:prefect-api-key-AbCdEf"
    ec2 = embedded_target.client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.31.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.31.1.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName="worker", Description="worker", VpcId=vpc)["GroupId"]
    result = deploy_stack(
        embedded_target.client("cloudformation"), stack_name=STACK, template=Template.read(resolve_template()),
        parameters={
            "ProjectName": PROJECT, "SubnetIds": subnet, "SecurityGroupIds": group,
            "PrefectApiKeySecretArn": secret, "PrefectWorkPool": "updraft-ecs",
        },
        poll_s=0.01,
    )
    ecs = embedded_target.client("ecs")
    container = ecs.describe_task_definition(taskDefinition=result.outputs["PrefectWorkerTaskDefinitionArn"])["taskDefinition"]["containerDefinitions"][0]
    assert container["secrets"] == [{"name": "PREFECT_API_KEY", "valueFrom": secret}]
    assert all(e["name"] != "PREFECT_API_KEY" for e in container["environment"])
    # The pool named instead of <project>-ecs: the worker polls it and may run its task families.
    assert container["command"][3:5] == ["--pool", "updraft-ecs"] and result.outputs["PrefectWorkPoolName"] == "updraft-ecs"
    worker = role_policy_documents(embedded_target.client("iam"), result.outputs["PrefectWorkerTaskRoleArn"])
    family = result.outputs["PrefectWorkerTaskDefinitionArn"].split(":task-definition/")[0] + ":task-definition/prefect_{}_0f1e2d:1"
    cluster = {"ecs:cluster": result.outputs["EcsClusterArn"]}
    assert evaluate(worker, "ecs:RunTask", family.format("updraft-ecs"), cluster).allowed
    assert not evaluate(worker, "ecs:RunTask", family.format(f"{PROJECT}-ecs"), cluster).allowed


def test_stack_outputs_of_a_missing_stack_names_it(embedded_target: Target) -> None:
    with pytest.raises(TargetError, match="stack 'nowhere' does not exist"):
        stack_outputs(embedded_target, "nowhere")


def _resolve(value: object, names: dict[str, str]) -> object:
    """Ref, Fn::GetAtt and Fn::Sub of a template fragment, from ``names`` ("DataBucket.Arn": ...)."""
    if isinstance(value, list):
        return [_resolve(v, names) for v in value]
    if isinstance(value, dict):
        if set(value) == {"Ref"}:
            return names[value["Ref"]]
        if set(value) == {"Fn::GetAtt"}:
            return names[".".join(value["Fn::GetAtt"])]
        if set(value) == {"Fn::Sub"}:
            return re.sub(r"\$\{([^}]+)\}", lambda m: names[m.group(1)], value["Fn::Sub"])
        return {k: _resolve(v, names) for k, v in value.items()}
    return value


def test_the_template_bucket_policy_denies_plain_http_over_any_role_allow(stack: dict) -> None:
    """moto does not create AWS::S3::BucketPolicy: the template's own document, resolved with the
    stack's names, is judged together with the deployed role's policies."""
    outputs, target = stack["outputs"], stack["target"]
    roles = role_policy_documents(target.client("iam"), outputs["PrefectWorkerTaskRoleArn"])
    a = _arns(outputs)
    template = Template.read(resolve_template()).document
    names = {"DataBucket.Arn": a["bucket"], "Key.Arn": outputs["KmsKeyArn"], "DataBucket": outputs["DataBucketName"]}
    bucket_policy = _resolve(template["Resources"]["DataBucketPolicy"]["Properties"]["PolicyDocument"], names)
    policies = [*roles, bucket_policy]
    key = a["objects"] + f"curated/{PROJECT}/part-0.parquet"
    over_tls = {"aws:SecureTransport": True}
    assert evaluate(policies, "s3:GetObject", key, over_tls).allowed
    plain = evaluate(policies, "s3:GetObject", key, {"aws:SecureTransport": False})
    assert plain.decision == EXPLICIT_DENY and plain.statements == ("DenyInsecureTransport",)
    # Writes may not ask for weaker encryption or another key than the project's.
    assert evaluate(policies, "s3:PutObject", key, {**over_tls, "s3:x-amz-server-side-encryption": "aws:kms"}).allowed
    assert not evaluate(policies, "s3:PutObject", key, {**over_tls, "s3:x-amz-server-side-encryption": "AES256"}).allowed
    other_key = outputs["KmsKeyArn"].rsplit("/", 1)[0] + "/00000000-0000-0000-0000-000000000000"
    assert not evaluate(policies, "s3:PutObject", key, {**over_tls, "s3:x-amz-server-side-encryption-aws-kms-key-id": other_key}).allowed
    assert evaluate(policies, "s3:PutObject", key, {**over_tls, "s3:x-amz-server-side-encryption-aws-kms-key-id": outputs["KmsKeyArn"]}).allowed


def test_cli_user_errors_are_one_line_and_name_the_fix(embedded_target: Target) -> None:
    runner = CliRunner()
    missing = runner.invoke(app, ["infra", "deploy", "--stack", STACK, "--project", PROJECT])
    assert missing.exit_code == 2
    assert missing.stderr.strip() == (
        "updraft: error: creating the stack needs SubnetIds, SecurityGroupIds: give --subnets subnet-a,subnet-b "
        "and --security-groups sg-x"
    )
    unknown = runner.invoke(app, ["infra", "deploy", "--stack", STACK, "--parameter", "Subnets=subnet-1"])
    assert unknown.exit_code == 2 and "has no parameter 'Subnets'" in unknown.stderr and "SubnetIds" in unknown.stderr
    twice = runner.invoke(app, ["infra", "deploy", "--stack", STACK, "--project", PROJECT, "--parameter", "ProjectName=x"])
    assert twice.exit_code == 2 and "name the same parameter" in twice.stderr
    absent = runner.invoke(app, ["infra", "outputs", "--stack", "nowhere"])
    assert absent.exit_code == 2 and len(absent.stderr.strip().splitlines()) == 1
    assert "stack 'nowhere' does not exist" in absent.stderr
