"""infra/: the templates validate clean, say what a customer's account needs, and deploy the way users expect.

``updraft infra validate`` runs cfn-lint and checkov for real (checkov from ``make checkov``):
over the shipped template it must report nothing but its justified skips, and over a
broken copy it must fail with the file, line and rule of each problem.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from typer.testing import CliRunner

from flows.cli import app
from tasks.config import _NAME_RE
from tasks.errors import ConfigError, StageError
from tasks.infra.deploy import build_parameters, deploy_stack, parse_parameter_pairs
from tasks.infra.lint import Finding, parse_checkov_output
from tasks.infra.templates import TEMPLATE_BODY_LIMIT, Template, find_templates, infra_dir, resolve_template

AGREED_OUTPUTS = {
    "DataBucketName", "KmsKeyArn", "SageMakerExecutionRoleArn", "PrefectWorkerTaskRoleArn",
    "PrefectWorkerExecutionRoleArn", "EcsClusterName", "EcsClusterArn", "PrefectWorkerTaskDefinitionArn",
    "TrainingRepositoryUri", "InferenceRepositoryUri", "FlowsRepositoryUri", "LogGroupName", "AlarmTopicArn",
}
#: The checks the template skips, each with its reason in the resource's Metadata (and in infra/README.md).
JUSTIFIED_SKIPS = {("CKV_AWS_18", "AWS::S3::Bucket.AccessLogsBucket")}


@pytest.fixture(scope="module")
def template() -> Template:
    return Template.read(resolve_template())


def _resources(template: Template, kind: str) -> dict[str, dict]:
    return {n: r["Properties"] for n, r in template.document["Resources"].items() if r["Type"] == kind}


def test_validate_passes_the_shipped_templates_and_pins_down_a_broken_one(tmp_path: Path) -> None:
    shipped = find_templates()
    text = resolve_template().read_text()
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        text.replace("EnableKeyRotation: true", "EnableKeyRotation: false")
        .replace("ScanOnPush: true}", "ScanOnPush: maybe}", 1)
        .replace("            comment: This bucket receives the data bucket's access logs; logging it to itself would loop.\n", "")
    )
    result = CliRunner().invoke(app, ["infra", "validate", *map(str, shipped), str(broken), "--json"])
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert report["ok"] is False and report["tools"]["checkov"].startswith("3.")

    by_file: dict[str, list[dict]] = {}
    for finding in report["findings"]:
        by_file.setdefault(Path(finding["path"]).name, []).append(finding)
    assert set(by_file) == {"broken.yaml"}, by_file  # nothing at all in the shipped templates
    assert {(s["rule"], s["resource"]) for s in report["skipped"]} == JUSTIFIED_SKIPS
    assert all(len(s["reason"]) > 20 for s in report["skipped"])

    rules = {(f["tool"], f["rule"], f["severity"]) for f in by_file["broken.yaml"]}
    assert ("checkov", "CKV_AWS_7", "failed") in rules  # key rotation off
    assert ("cfn-lint", "E3012", "error") in rules  # 'maybe' is not a boolean
    unjustified = [f for f in by_file["broken.yaml"] if f["rule"] == "CKV_AWS_18"]
    assert unjustified and "without a reason" in unjustified[0]["message"]
    rotation = next(f for f in by_file["broken.yaml"] if f["rule"] == "CKV_AWS_7")
    assert broken.read_text().splitlines()[rotation["line"] - 1].strip() == "Key:"


def test_findings_print_with_file_line_rule_and_message() -> None:
    finding = Finding("checkov", "infra/updraft.yaml", 118, "CKV_AWS_7", "failed", "Ensure rotation is enabled", "AWS::KMS::Key.Key")
    assert finding.describe() == "infra/updraft.yaml:118: checkov CKV_AWS_7 (failed) AWS::KMS::Key.Key: Ensure rotation is enabled"
    assert finding.blocking and not Finding("cfn-lint", "t.yaml", 3, "W1020", "warning", "m").blocking


def test_checkov_report_parsing() -> None:
    report = {
        "check_type": "cloudformation",
        "results": {
            "failed_checks": [{"check_id": "CKV_AWS_19", "check_name": "Ensure encryption", "file_abs_path": "/x/t.yaml", "file_line_range": [12, 20], "resource": "AWS::S3::Bucket.B"}],
            "skipped_checks": [
                {"check_id": "CKV_AWS_18", "file_abs_path": "/x/t.yaml", "file_line_range": [30, 40], "resource": "AWS::S3::Bucket.L", "check_result": {"suppress_comment": "log bucket"}},
                {"check_id": "CKV_AWS_21", "file_abs_path": "/x/t.yaml", "file_line_range": [50, 60], "resource": "AWS::S3::Bucket.M", "check_result": {"suppress_comment": "No comment provided"}},
            ],
            "parsing_errors": ["/x/bad.yaml"],
        },
        "summary": {"passed": 7, "checkov_version": "3.3.30"},
    }
    findings, skipped, passed, version = parse_checkov_output(json.dumps(report), root=Path("/x"))
    assert (passed, version) == (7, "3.3.30")
    assert [(f.rule, f.path, f.line) for f in findings] == [("CKV_AWS_19", "t.yaml", 12), ("CKV_AWS_21", "t.yaml", 50), ("parsing", "bad.yaml", 0)]
    assert [(s.rule, s.reason) for s in skipped] == [("CKV_AWS_18", "log bucket")]
    # A run over files without resources answers a bare summary.
    assert parse_checkov_output(json.dumps({"passed": 0, "failed": 0, "checkov_version": "3.3.30"})) == ([], [], 0, "3.3.30")


def test_the_template_exposes_the_agreed_interface(template: Template) -> None:
    assert AGREED_OUTPUTS <= set(template.outputs)
    params = template.parameters
    assert {"ProjectName", "SubnetIds", "SecurityGroupIds"} <= {n for n, p in params.items() if p.required}
    assert all(not p.required for n, p in params.items() if n not in {"ProjectName", "SubnetIds", "SecurityGroupIds"})
    assert template.capabilities() == ["CAPABILITY_IAM"]  # no named IAM resources
    assert len(template.body.encode()) <= TEMPLATE_BODY_LIMIT and template.deploy_body() == template.body
    # ProjectName accepts exactly the names a config accepts (it names the same resources).
    pattern = re.compile(template.document["Parameters"]["ProjectName"]["AllowedPattern"])
    for name in ("claims-fraud", "a", "x" * 40, "x" * 41, "-a", "a-", "Claims", "a_b", "9lives"):
        assert bool(pattern.match(name)) == bool(_NAME_RE.match(name)), name


def test_the_data_bucket_key_and_repositories_are_locked_down(template: Template) -> None:
    buckets = _resources(template, "AWS::S3::Bucket")
    data = buckets["DataBucket"]
    sse = data["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]
    assert sse["ServerSideEncryptionByDefault"] == {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": {"Fn::GetAtt": ["Key", "Arn"]}}
    assert sse["BucketKeyEnabled"] is True
    for bucket in buckets.values():
        assert bucket["VersioningConfiguration"] == {"Status": "Enabled"}
        assert set(bucket["PublicAccessBlockConfiguration"].values()) == {True} and len(bucket["PublicAccessBlockConfiguration"]) == 4
    rules = {r["Id"]: r for r in data["LifecycleConfiguration"]["Rules"]}
    assert rules["expire-quarantine"]["Prefix"] == "quarantine/"
    assert "NoncurrentVersionExpiration" in rules["expire-old-versions"]
    assert rules["abort-incomplete-uploads"]["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"] == 7
    assert data["LoggingConfiguration"]["DestinationBucketName"] == {"Ref": "AccessLogsBucket"}

    policies = _resources(template, "AWS::S3::BucketPolicy")
    for policy in policies.values():
        tls = next(s for s in policy["PolicyDocument"]["Statement"] if s["Sid"] == "DenyInsecureTransport")
        assert tls["Effect"] == "Deny" and tls["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}

    key = _resources(template, "AWS::KMS::Key")["Key"]
    assert key["EnableKeyRotation"] is True
    for statement in key["KeyPolicy"]["Statement"]:
        assert statement["Principal"] != "*" and statement["Principal"].get("AWS") != "*"
        usage = {"kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey*", "kms:Decrypt*"} & set(statement["Action"])
        if "AWS" in statement["Principal"]:  # the account's principals use the key only through its services
            assert not usage or statement.get("Condition"), statement["Sid"]
        else:  # AWS services: logs for its log group only; alarms and rules decrypt to publish (AWS's documented form)
            assert statement.get("Condition") or set(statement["Action"]) == {"kms:Decrypt", "kms:GenerateDataKey*"}

    repos = _resources(template, "AWS::ECR::Repository")
    assert {r["RepositoryName"]["Fn::Sub"] for r in repos.values()} == {"${ProjectName}-training", "${ProjectName}-inference", "${ProjectName}-flows"}
    for repo in repos.values():
        assert repo["ImageScanningConfiguration"] == {"ScanOnPush": True}
        assert repo["ImageTagMutability"] == {"Ref": "ImageTagMutability"}
        assert repo["EncryptionConfiguration"] == {"EncryptionType": "KMS", "KmsKey": {"Fn::GetAtt": ["Key", "Arn"]}}
        lifecycle = json.loads(repo["LifecyclePolicy"]["LifecyclePolicyText"]["Fn::Sub"].replace("${ImagesToKeep}", "100"))
        assert [r["selection"]["tagStatus"] for r in lifecycle["rules"]] == ["untagged", "any"]
    assert template.parameters["ImageTagMutability"].default == "IMMUTABLE"


def test_the_worker_task_definition(template: Template) -> None:
    task = _resources(template, "AWS::ECS::TaskDefinition")["WorkerTaskDefinition"]
    assert task["TaskRoleArn"] == {"Fn::GetAtt": ["PrefectWorkerTaskRole", "Arn"]}
    assert task["ExecutionRoleArn"] == {"Fn::GetAtt": ["PrefectWorkerExecutionRole", "Arn"]}
    assert task["RequiresCompatibilities"] == ["FARGATE"]
    container = task["ContainerDefinitions"][0]
    assert container["Image"] == {"Fn::Sub": "${FlowsRepository.RepositoryUri}:${WorkerImageTag}"}
    pool = {"Fn::If": ["DefaultPool", {"Fn::Sub": "${ProjectName}-ecs"}, {"Ref": "PrefectWorkPool"}]}
    assert container["Command"][:7] == ["prefect", "worker", "start", "--pool", pool, "--type", "ecs"]
    assert template.document["Outputs"]["PrefectWorkPoolName"]["Value"] == pool
    env = {e["Name"]: e["Value"] for e in container["Environment"]}
    assert env["PREFECT_API_URL"] == {"Ref": "PrefectApiUrl"} and "PREFECT_API_KEY" not in env
    assert container["Secrets"] == {"Fn::If": ["HasApiKey", [{"Name": "PREFECT_API_KEY", "ValueFrom": {"Ref": "PrefectApiKeySecretArn"}}], {"Ref": "AWS::NoValue"}]}
    assert template.parameters["PrefectApiKeySecretArn"].type == "String"  # an ARN, never the key itself
    service = _resources(template, "AWS::ECS::Service")["WorkerService"]
    assert service["NetworkConfiguration"]["AwsvpcConfiguration"] == {
        "AssignPublicIp": "DISABLED", "Subnets": {"Ref": "SubnetIds"}, "SecurityGroups": {"Ref": "SecurityGroupIds"},
    }
    cluster = _resources(template, "AWS::ECS::Cluster")["Cluster"]
    assert cluster["ClusterSettings"] == [{"Name": "containerInsights", "Value": "enabled"}]


def test_a_template_over_the_inline_limit_goes_as_compact_json(tmp_path: Path) -> None:
    text = resolve_template().read_text()
    padded = tmp_path / "padded.yaml"
    padded.write_text(text + "\n" + "\n".join("# " + "x" * 98 for _ in range(TEMPLATE_BODY_LIMIT // 100 + 1)))
    body = Template.read(padded).deploy_body()
    assert len(body.encode()) <= TEMPLATE_BODY_LIMIT and json.loads(body) == Template.read(resolve_template()).document
    huge = tmp_path / "huge.yaml"
    huge.write_text(text.replace("Description: >-", "Description: >-\n  " + "y" * TEMPLATE_BODY_LIMIT + "\n ", 1))
    with pytest.raises(ConfigError, match="nested stacks"):
        Template.read(huge).deploy_body()


def test_find_templates_skips_other_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert [p.name for p in find_templates()] == ["updraft.yaml"] and infra_dir().name == "infra"
    (tmp_path / "pins.yaml").write_text("checkov: 3\n")
    (tmp_path / "t.yaml").write_text("AWSTemplateFormatVersion: '2010-09-09'\nResources: {}\n")
    monkeypatch.setenv("UPDRAFT_INFRA_DIR", str(tmp_path))
    assert find_templates() == [tmp_path / "t.yaml"]
    (tmp_path / "t.yaml").unlink()
    with pytest.raises(ConfigError, match="holds no CloudFormation template"):
        find_templates()


# ------------------------------------------------------------------------------------------------
# Deploying: parameters, and what the user sees when CloudFormation says no.


def test_parameters_for_create_and_update(template: Template) -> None:
    assert parse_parameter_pairs(["WorkerDesiredCount=1", "PrefectApiUrl=https://x/api?a=b"]) == {
        "WorkerDesiredCount": "1", "PrefectApiUrl": "https://x/api?a=b",
    }
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_parameter_pairs(["WorkerDesiredCount"])
    with pytest.raises(ConfigError, match="needs SubnetIds, SecurityGroupIds: give --subnets .* and --security-groups"):
        build_parameters(template, {"ProjectName": "claims"})
    with pytest.raises(ConfigError, match="no parameter 'Subnets'.*SubnetIds"):
        build_parameters(template, {"Subnets": "subnet-1"})
    created = {p["ParameterKey"]: p["ParameterValue"] for p in build_parameters(template, {"ProjectName": "claims", "SubnetIds": "subnet-1,subnet-2", "SecurityGroupIds": "sg-1"})}
    assert created["SubnetIds"] == "subnet-1,subnet-2" and created["WorkerDesiredCount"] == "0"  # defaults too
    updated = build_parameters(template, {"WorkerDesiredCount": "1"}, previous=["ProjectName", "SubnetIds", "WorkerDesiredCount", "Gone"])
    assert {"ParameterKey": "WorkerDesiredCount", "ParameterValue": "1"} in updated
    assert {"ParameterKey": "ProjectName", "UsePreviousValue": True} in updated
    assert all(p["ParameterKey"] != "Gone" for p in updated)  # a parameter the new template dropped


class FakeCloudFormation:
    """Just enough of CloudFormation to play back a create that rolls back, or an update with nothing to do."""

    def __init__(self, *, exists: str | None = None, statuses: tuple[str, ...] = (), events: list[dict] | None = None) -> None:
        self.status = exists
        self.statuses = list(statuses)
        self.events = events or []
        self.calls: list[str] = []

    def _stack(self) -> dict:
        return {"StackName": "s", "StackId": "arn:aws:cloudformation:us-east-1:1:stack/s/1", "StackStatus": self.status, "Parameters": [{"ParameterKey": "ProjectName"}]}

    def describe_stacks(self, StackName: str) -> dict:
        if self.status is None:
            raise ClientError({"Error": {"Code": "ValidationError", "Message": f"Stack with id {StackName} does not exist"}}, "DescribeStacks")
        if self.statuses:
            self.status = self.statuses.pop(0)
        return {"Stacks": [self._stack()]}

    def create_stack(self, **request: Any) -> dict:
        self.calls.append("create")
        self.status = "CREATE_IN_PROGRESS"
        return {"StackId": self._stack()["StackId"]}

    def update_stack(self, **request: Any) -> dict:
        self.calls.append("update")
        raise ClientError({"Error": {"Code": "ValidationError", "Message": "No updates are to be performed."}}, "UpdateStack")

    def describe_stack_events(self, StackName: str) -> dict:
        return {"StackEvents": self.events}

    def get_paginator(self, name: str) -> Any:
        events = self.events

        class Pages:
            def paginate(self, **_: Any) -> list[dict]:
                return [{"StackEvents": events}]

        return Pages()


def _event(n: int, logical: str, kind: str, status: str, reason: str = "") -> dict:
    at = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc) + timedelta(seconds=n)
    return {"EventId": str(n), "Timestamp": at, "LogicalResourceId": logical, "ResourceType": kind, "ResourceStatus": status, "ResourceStatusReason": reason}


def test_a_failed_create_names_each_failed_resource_and_why(template: Template) -> None:
    events = [  # newest first, as CloudFormation answers
        _event(5, "s", "AWS::CloudFormation::Stack", "ROLLBACK_COMPLETE"),
        _event(4, "Cluster", "AWS::ECS::Cluster", "CREATE_FAILED", "Resource creation cancelled"),
        _event(3, "DataBucket", "AWS::S3::Bucket", "CREATE_FAILED", "API: s3:CreateBucket Access Denied"),
        _event(2, "TrainingRepository", "AWS::ECR::Repository", "CREATE_FAILED", "Resource handler returned message: \"KMS key is pending deletion\""),
        _event(1, "s", "AWS::CloudFormation::Stack", "CREATE_IN_PROGRESS", "User Initiated"),
    ]
    cfn = FakeCloudFormation(statuses=("CREATE_IN_PROGRESS", "ROLLBACK_IN_PROGRESS", "ROLLBACK_COMPLETE"), events=events)
    slept: list[float] = []
    with pytest.raises(StageError) as failure:
        deploy_stack(cfn, stack_name="s", template=template, parameters={"ProjectName": "p", "SubnetIds": "s-1", "SecurityGroupIds": "sg-1"}, sleep=slept.append, poll_s=7)
    message = str(failure.value)
    assert message.startswith("stack s ended ROLLBACK_COMPLETE: TrainingRepository (AWS::ECR::Repository): ")
    assert "KMS key is pending deletion" in message and "DataBucket (AWS::S3::Bucket): API: s3:CreateBucket Access Denied" in message
    assert "cancelled" not in message and slept == [7, 7]


def test_an_update_with_nothing_to_change_succeeds_and_a_dead_stack_is_explained(template: Template) -> None:
    cfn = FakeCloudFormation(exists="UPDATE_COMPLETE")
    result = deploy_stack(cfn, stack_name="s", template=template, parameters={"WorkerDesiredCount": "1"})
    assert (result.action, result.status, cfn.calls) == ("unchanged", "UPDATE_COMPLETE", ["update"])
    with pytest.raises(ConfigError, match="ROLLBACK_COMPLETE, which cannot be updated: delete it"):
        deploy_stack(FakeCloudFormation(exists="ROLLBACK_COMPLETE"), stack_name="s", template=template, parameters={})
    with pytest.raises(ConfigError, match="is busy"):
        deploy_stack(FakeCloudFormation(exists="UPDATE_IN_PROGRESS"), stack_name="s", template=template, parameters={})
