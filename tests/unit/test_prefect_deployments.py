"""prefect.yaml and ``updraft deploy-flows``, checked without a Prefect server.

The registration itself, against a real server with a real worker, is tests/e2e/test_prefect_server.py.
"""

from __future__ import annotations

import types
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from flows.deployments import (
    ECS_VARIABLES,
    FAILURE_EVENTS,
    PREFECT_FILE,
    POOLS,
    PrefectSetupError,
    check_config_path,
    deploy_command,
    deployment_config_path,
    deployment_names,
    ecs_variables_from_stack,
    failure_automation,
    notification_block_id,
    prefect_api_url,
)
from tasks.errors import ConfigError

PROJECT = PREFECT_FILE.parent
STAGE_FLOWS = ("ingest", "preprocess", "train", "evaluate", "register", "deploy")


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return yaml.safe_load(PREFECT_FILE.read_text())


def by_pool(spec: dict[str, Any], pool: str) -> dict[str, dict[str, Any]]:
    return {d["entrypoint"]: d for d in spec["deployments"] if d["work_pool"]["name"] == pool}


def test_every_flow_is_deployed_on_both_pools_with_the_config_as_parameter(spec: dict[str, Any]) -> None:
    from prefect.flows import load_flow_from_entrypoint

    expected = {"flows/pipeline.py:pipeline_flow", *(f"flows/stages.py:{stage}_flow" for stage in STAGE_FLOWS)}
    for kind, pool in POOLS.items():
        deployments = by_pool(spec, pool.name)
        assert set(deployments) == expected, kind
        assert {d["name"] for d in deployments.values()} == {pool.deployment_name}
        assert deployment_names(PREFECT_FILE, pool) == [d["entrypoint"] for d in spec["deployments"] if d["work_pool"]["name"] == pool.name]
        for entrypoint, deployment in deployments.items():
            assert deployment["parameters"]["config_path"] == "{{ $UPDRAFT_CONFIG }}"
            assert "updraft" in deployment["tags"]
            flow = load_flow_from_entrypoint(str(PROJECT / entrypoint))
            assert set(deployment["parameters"]) <= set(flow.parameters.properties), entrypoint  # no unknown parameter
            assert deployment["description"]


def test_the_pipeline_runs_nightly_stages_can_be_scheduled_and_run_id_stages_are_not(spec: dict[str, Any]) -> None:
    for deployment in spec["deployments"]:
        schedules = deployment.get("schedules") or []
        flow = deployment["entrypoint"].rsplit(":", 1)[1]
        if flow == "pipeline_flow":
            assert [(s["cron"], s["active"]) for s in schedules] == [("0 2 * * *", True)]
            assert deployment["concurrency_limit"]["limit"] == 1
        elif flow in ("ingest_flow", "preprocess_flow"):
            assert len(schedules) == 1 and schedules[0]["active"] is False
        else:  # train, evaluate, register, deploy continue a named run: a fixed schedule cannot name it
            assert schedules == [] and "run_id" not in deployment["parameters"]


def test_ecs_deployments_run_the_flows_image_with_the_stacks_settings(spec: dict[str, Any]) -> None:
    from prefect_aws.workers.ecs_worker import ECSWorker

    template_variables = set(ECSWorker.get_default_base_job_template()["variables"]["properties"])
    for deployment in by_pool(spec, POOLS["ecs"].name).values():
        variables = deployment["work_pool"]["job_variables"]
        assert set(variables) <= template_variables  # a misspelt job variable would be ignored by the worker
        assert deployment["pull"] == [{"prefect.deployments.steps.set_working_directory": {"directory": "/opt/updraft"}}]
        templated = [deployment["work_pool"]["name"], *variables.values(), *variables["env"].values()]
        placeholders = {v.split("prefect.variables.")[1].rstrip(" }") for v in templated if isinstance(v, str) and "prefect.variables." in v}
        assert placeholders == set(ECS_VARIABLES)  # each one deploy-flows --stack writes, and no other
        assert variables["launch_type"] == "FARGATE" and variables["configure_cloudwatch_logs"] is True
    for deployment in by_pool(spec, "updraft-process").values():
        assert "pull" not in deployment  # prefect deploy records the checkout it runs in


def test_deploy_command_is_the_documented_prefect_deploy_call() -> None:
    command = deploy_command(PREFECT_FILE, POOLS["ecs"])
    assert command[1:] == ["-m", "prefect", "--no-prompt", "deploy", "--prefect-file", str(PREFECT_FILE), "--name", "ecs"]


def test_config_path_as_each_pool_sees_it(tmp_path: Path) -> None:
    inside = PROJECT / "examples" / "my-project.yaml"
    assert deployment_config_path(inside, POOLS["process"]) == str(inside)
    assert deployment_config_path(inside, POOLS["ecs"]) == "examples/my-project.yaml"
    with pytest.raises(ConfigError, match="outside the checkout .* will not hold it"):
        deployment_config_path(tmp_path / "c.yaml", POOLS["ecs"])
    assert check_config_path("configs/a.yaml") == "configs/a.yaml"
    with pytest.raises(ConfigError, match="UPDRAFT_CONFIG was not set when it was registered"):
        check_config_path("{{ $UPDRAFT_CONFIG }}")


OUTPUTS = {
    "FlowsRepositoryUri": "123.dkr.ecr.eu-west-1.amazonaws.com/claims-flows",
    "EcsClusterArn": "arn:aws:ecs:eu-west-1:123:cluster/claims",
    "PrefectWorkerTaskRoleArn": "arn:aws:iam::123:role/claims-worker-task",
    "PrefectWorkerExecutionRoleArn": "arn:aws:iam::123:role/claims-worker-exec",
    "LogGroupName": "/updraft/claims",
}


class FakeAws:
    """A target whose CloudFormation knows one stack and whose EC2 knows its subnets' VPC."""

    region = "eu-west-1"
    endpoint_url = None

    def __init__(self, outputs: dict[str, str], parameters: dict[str, str]) -> None:
        self.outputs, self.parameters = outputs, parameters

    def client(self, service: str) -> Any:
        if service == "cloudformation":
            stack = {
                "Parameters": [{"ParameterKey": k, "ParameterValue": v} for k, v in self.parameters.items()],
                "Outputs": [{"OutputKey": k, "OutputValue": v} for k, v in self.outputs.items()],
            }
            return types.SimpleNamespace(describe_stacks=lambda StackName: {"Stacks": [stack]})
        if service == "ec2":
            return types.SimpleNamespace(
                describe_subnets=lambda SubnetIds: {"Subnets": [{"SubnetId": s, "VpcId": "vpc-1"} for s in SubnetIds]}
            )
        raise AssertionError(service)


def test_ecs_settings_come_from_the_stack_outputs_and_parameters() -> None:
    parameters = {"ProjectName": "claims", "SubnetIds": "subnet-a,subnet-b", "SecurityGroupIds": "sg-1", "WorkerImageTag": "0.2.0"}
    values = ecs_variables_from_stack(FakeAws(OUTPUTS, parameters), "claims")  # type: ignore[arg-type]
    assert set(values) == set(ECS_VARIABLES)
    assert values["updraft_ecs_pool"] == "claims-ecs"  # the pool the stack's worker polls
    assert values["updraft_flows_image"] == OUTPUTS["FlowsRepositoryUri"] + ":0.2.0"  # the image the worker runs
    assert values["updraft_ecs_cluster"] == OUTPUTS["EcsClusterArn"]
    assert values["updraft_ecs_task_role_arn"] == OUTPUTS["PrefectWorkerTaskRoleArn"]
    assert values["updraft_ecs_execution_role_arn"] == OUTPUTS["PrefectWorkerExecutionRoleArn"]
    assert values["updraft_ecs_vpc_id"] == "vpc-1"
    assert values["updraft_ecs_network"] == {"subnets": ["subnet-a", "subnet-b"], "securityGroups": ["sg-1"], "assignPublicIp": "DISABLED"}
    assert values["updraft_ecs_logs"]["awslogs-group"] == "/updraft/claims" and values["updraft_aws_region"] == "eu-west-1"
    named = FakeAws(OUTPUTS, dict(parameters, PrefectWorkPool="shared-ecs"))
    values = ecs_variables_from_stack(named, "claims", image_tag="v3", public_ip=True)  # type: ignore[arg-type]
    assert values["updraft_ecs_pool"] == "shared-ecs" and values["updraft_flows_image"].endswith(":v3")
    assert values["updraft_ecs_network"]["assignPublicIp"] == "ENABLED"


def test_a_stack_without_the_outputs_says_what_to_deploy() -> None:
    old = FakeAws({k: v for k, v in OUTPUTS.items() if k != "EcsClusterArn"}, {"ProjectName": "p", "SubnetIds": "s", "SecurityGroupIds": "g"})
    with pytest.raises(PrefectSetupError, match="has no output EcsClusterArn: deploy infra/"):
        ecs_variables_from_stack(old, "old")  # type: ignore[arg-type]


def test_failures_of_updraft_runs_trigger_the_notification() -> None:
    block = uuid.uuid4()
    automation = failure_automation(block)
    assert automation.trigger.expect == set(FAILURE_EVENTS) >= {"prefect.flow-run.Failed", "prefect.flow-run.Crashed"}
    assert automation.trigger.match_related.model_dump() == {"prefect.resource.role": "tag", "prefect.resource.id": "prefect.tag.updraft"}
    (action,) = automation.actions
    assert action.block_document_id == block and "{{ flow_run.state.name }}" in action.subject
    assert "{{ flow_run|ui_url }}" in action.body


@pytest.mark.parametrize(
    ("block", "webhook", "message"),
    [
        ("slack-webhook/ops", "https://example.com/hook", "not both"),
        (None, "ftp://example.com/hook", "must be an http"),
        ("ops", None, "must be TYPE/NAME"),
    ],
)
def test_notification_options_are_checked_before_the_server_is_asked(block: str | None, webhook: str | None, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        notification_block_id(None, block=block, webhook=webhook)  # type: ignore[arg-type]
    assert notification_block_id(None, block=None, webhook=None) is None  # type: ignore[arg-type]


def test_without_prefect_api_url_deploy_flows_says_how_to_get_a_server(tmp_path: Path) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.cli import app

    config = tmp_path / "c.yaml"
    (tmp_path / "contract.yaml").write_text("schema_type: dataframe\ncolumns: {}\n")
    config.write_text(yaml.safe_dump({"name": "c", "bucket": "b", "source": "raw/", "contract": "contract.yaml",
                                      "label": "y", "task": "regression"}))
    with temporary_settings(updates={PREFECT_API_URL: None}):
        with pytest.raises(PrefectSetupError, match="PREFECT_API_URL is not set: .*prefect server start"):
            prefect_api_url()
        result = CliRunner().invoke(app, ["deploy-flows", "--config", str(config)])
    assert result.exit_code == 2
    assert result.output.strip().startswith("updraft: error: PREFECT_API_URL is not set")
    assert "Traceback" not in result.output
    result = CliRunner().invoke(app, ["deploy-flows", "--config", str(config), "--stack", "s"])
    assert result.exit_code == 2 and "--stack fills the ECS pool's settings: use it with --pool ecs" in result.output
