"""Registering updraft with a Prefect server: work pools, the deployments of prefect.yaml, the failure notification.

``updraft deploy-flows`` calls :func:`deploy_flows`, which does what a platform team would
do by hand, in order:

1. checks that ``PREFECT_API_URL`` names a server that answers;
2. for the ECS pool, writes the Prefect variables ``updraft_*`` that prefect.yaml's ECS
   deployments read (their pool, image, cluster, roles, network, logs), from the outputs
   and parameters of the customer's CloudFormation stack (infra/);
3. creates the work pool if it is missing (``updraft-process``, or the stack's
   ``<ProjectName>-ecs``, the pool its worker polls, with prefect-aws's ECS template);
4. registers the pool's deployments with ``prefect deploy --name local|ecs`` (the
   documented call, so prefect.yaml stays the one description of them);
5. creates or updates the automation that sends a notification when a flow run of an
   updraft deployment fails, crashes or times out.

Each step is idempotent: running it again updates what is there.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import botocore.exceptions

from tasks.errors import ConfigError, UpdraftError

if TYPE_CHECKING:
    from uuid import UUID

    from prefect.client.orchestration import SyncPrefectClient

    from tasks.aws.target import Target

log = logging.getLogger("updraft.deployments")

#: The checkout, and the prefect.yaml in it.
PROJECT_DIR = Path(__file__).resolve().parents[1]
PREFECT_FILE = PROJECT_DIR / "prefect.yaml"
#: The environment variable prefect.yaml reads the config path from.
CONFIG_ENV = "UPDRAFT_CONFIG"
#: Where the flows image holds the checkout (images/flows/Dockerfile).
IMAGE_PROJECT_DIR = "/opt/updraft"
#: The tag every updraft deployment carries; the failure automation matches it.
TAG = "updraft"
AUTOMATION_NAME = "updraft: flow run failed"
#: The notification block ``--notify-webhook`` creates (or updates).
WEBHOOK_BLOCK = "updraft-failures"
#: Flow-run events that mean a run ended badly (Prefect names events after state names).
FAILURE_EVENTS = ("prefect.flow-run.Failed", "prefect.flow-run.Crashed", "prefect.flow-run.TimedOut")

NOTIFICATION_SUBJECT = "updraft: {{ flow.name }} run {{ flow_run.name }} is {{ flow_run.state.name }}"
NOTIFICATION_BODY = """\
Flow run {{ flow.name }}/{{ flow_run.name }} of deployment {{ deployment.name }} entered state {{ flow_run.state.name }} at {{ flow_run.state.timestamp }}.
Message: {{ flow_run.state.message }}
Parameters: {{ flow_run.parameters }}
Flow run: {{ flow_run|ui_url }}
A retry of the flow run resumes it: the stages that completed are skipped.
"""


@dataclass(frozen=True)
class Pool:
    """A work pool and the prefect.yaml deployments (by name) that run on it."""

    name: str
    type: str
    deployment_name: str


#: The pools by ``--pool``. The ECS pool's name is the project's (``<ProjectName>-ecs``, or the
#: stack's ``PrefectWorkPool``): the one its stack's worker polls, held in ``updraft_ecs_pool``.
POOLS: dict[str, Pool] = {
    "process": Pool("updraft-process", "process", "local"),
    "ecs": Pool("{{ prefect.variables.updraft_ecs_pool }}", "ecs", "ecs"),
}
ECS_POOL_VARIABLE = "updraft_ecs_pool"

#: The Prefect variables prefect.yaml's ECS deployments read, and what each holds.
ECS_VARIABLES: dict[str, str] = {
    ECS_POOL_VARIABLE: "the work pool the stack's worker polls (<ProjectName>-ecs, or its PrefectWorkPool)",
    "updraft_flows_image": "the flows image (FlowsRepositoryUri:tag)",
    "updraft_ecs_cluster": "the ECS cluster (EcsClusterArn)",
    "updraft_ecs_task_role_arn": "the flow runs' task role (PrefectWorkerTaskRoleArn)",
    "updraft_ecs_execution_role_arn": "the task execution role (PrefectWorkerExecutionRoleArn)",
    "updraft_ecs_vpc_id": "the VPC of the subnets",
    "updraft_ecs_network": "subnets and security groups (the stack's SubnetIds, SecurityGroupIds)",
    "updraft_ecs_logs": "the CloudWatch log group (LogGroupName)",
    "updraft_aws_region": "the stack's region",
}


class PrefectSetupError(UpdraftError):
    """The Prefect server, or what updraft registers on it, is not as deploy-flows needs it."""


@dataclass
class DeployReport:
    """What deploy-flows did: printed as one JSON object with ``--json``."""

    api_url: str
    pool: str
    pool_created: bool
    deployments: list[str] = field(default_factory=list)
    variables: dict[str, Any] = field(default_factory=dict)
    notification_block: str | None = None
    automation_id: str | None = None


# --------------------------------------------------------------------------------------
# The config path a deployment passes to its flows


def check_config_path(path: str) -> str:
    """``path``, unless it is prefect.yaml's placeholder left unresolved by ``prefect deploy``."""
    if "{{" in str(path):
        raise ConfigError(
            f"the deployment's config_path is {path!r}: {CONFIG_ENV} was not set when it was registered; "
            f"register it again with 'updraft deploy-flows --config FILE' (or {CONFIG_ENV}=FILE prefect deploy), "
            "or pass config_path when starting the run"
        )
    return path


def deployment_config_path(config_path: Path, pool: Pool, project_dir: Path = PROJECT_DIR) -> str:
    """The config path as the pool's flow runs see it: absolute for local processes; for
    ECS, relative to the checkout, which the flows image holds at /opt/updraft."""
    path = config_path.expanduser().resolve()
    if pool.type != "ecs":
        return str(path)
    try:
        return path.relative_to(project_dir.resolve()).as_posix()
    except ValueError:
        raise ConfigError(
            f"{config_path} is outside the checkout {project_dir}, so the flows image (the checkout at "
            f"{IMAGE_PROJECT_DIR}) will not hold it: move the config into the checkout and rebuild the image"
        ) from None


# --------------------------------------------------------------------------------------
# The server


def prefect_api_url() -> str:
    """The Prefect API deployments are registered with (``PREFECT_API_URL``, or the active profile's)."""
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if not url:
        raise PrefectSetupError(
            "PREFECT_API_URL is not set: deployments live on a Prefect server. Start one with "
            "'prefect server start' and export PREFECT_API_URL=http://127.0.0.1:4200/api, or log in to "
            "Prefect Cloud with 'prefect cloud login'"
        )
    return str(url)


def check_server(client: SyncPrefectClient, url: str) -> None:
    """Fail with the reason when the server does not answer."""
    problem = client.api_healthcheck()
    if problem is not None:
        raise PrefectSetupError(f"the Prefect server at {url} does not answer ({problem}): is it running?")


# --------------------------------------------------------------------------------------
# Work pools and variables


def base_job_template(pool_type: str) -> dict[str, Any]:
    """The worker type's own default template: the process worker's, or prefect-aws's ECS worker's."""
    if pool_type == "process":
        from prefect.workers.process import ProcessWorker

        return ProcessWorker.get_default_base_job_template()
    if pool_type == "ecs":
        try:
            from prefect_aws.workers.ecs_worker import ECSWorker
        except ImportError:
            raise PrefectSetupError("the ECS work pool needs prefect-aws: pip install prefect-aws") from None
        return ECSWorker.get_default_base_job_template()
    raise ValueError(f"no work pool type {pool_type!r}")


def ensure_work_pool(client: SyncPrefectClient, pool: Pool) -> bool:
    """Create the pool if it is missing; True when it was created. A pool of that name and
    another type is an error: its workers could not run these deployments."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    try:
        existing = client.read_work_pool(pool.name)
    except ObjectNotFound:
        client.create_work_pool(
            WorkPoolCreate(
                name=pool.name,
                type=pool.type,
                base_job_template=base_job_template(pool.type),
                description=f"updraft's {pool.type} pool (see prefect.yaml)",
            )
        )
        return True
    if existing.type != pool.type:
        raise PrefectSetupError(
            f"work pool {pool.name!r} exists with type {existing.type!r}, not {pool.type!r}: "
            f"delete it ('prefect work-pool delete {pool.name}') and run deploy-flows again"
        )
    return False


def set_variables(client: SyncPrefectClient, values: dict[str, Any]) -> None:
    """Create or update Prefect variables (JSON values), tagged updraft."""
    from prefect.client.schemas.actions import VariableCreate, VariableUpdate

    for name, value in values.items():
        if client.read_variable_by_name(name) is None:
            client.create_variable(VariableCreate(name=name, value=value, tags=[TAG]))
        else:
            client.update_variable(VariableUpdate(name=name, value=value, tags=[TAG]))


def missing_variables(client: SyncPrefectClient, names: list[str]) -> list[str]:
    return [name for name in names if client.read_variable_by_name(name) is None]


def _stack_parameters(target: Target, stack_name: str) -> dict[str, str]:
    """The stack's parameter values (``SubnetIds`` and ``SecurityGroupIds`` are not outputs)."""
    stacks = target.client("cloudformation").describe_stacks(StackName=stack_name)["Stacks"]
    return {p["ParameterKey"]: p.get("ResolvedValue") or p.get("ParameterValue", "") for p in stacks[0].get("Parameters", [])}


def _ids(value: str | None) -> list[str]:
    """AWS ids in a list parameter's value: ``a,b`` as CloudFormation gives it (moto gives ``['a', 'b']``)."""
    return re.findall(r"[A-Za-z0-9][A-Za-z0-9-]*", value or "")


def ecs_variables_from_stack(
    target: Target, stack_name: str, *, image_tag: str | None = None, public_ip: bool = False
) -> dict[str, Any]:
    """The values of :data:`ECS_VARIABLES`, from the outputs and parameters of the customer's stack (infra/).

    ``image_tag``: the flows image's tag; by default the one the stack's worker runs (``WorkerImageTag``).
    """
    from tasks.aws.stacks import stack_outputs

    outputs = stack_outputs(target, stack_name)
    needed = (
        "FlowsRepositoryUri", "EcsClusterArn", "PrefectWorkerTaskRoleArn", "PrefectWorkerExecutionRoleArn", "LogGroupName",
    )
    missing = [key for key in needed if not outputs.get(key)]
    if missing:
        raise PrefectSetupError(
            f"stack {stack_name!r} has no output {', '.join(missing)}: deploy infra/ with "
            "'updraft infra deploy --stack NAME' (or update the stack) first"
        )
    parameters = _stack_parameters(target, stack_name)
    subnets, groups = _ids(parameters.get("SubnetIds")), _ids(parameters.get("SecurityGroupIds"))
    if not subnets or not groups:
        raise PrefectSetupError(f"stack {stack_name!r} names no SubnetIds or SecurityGroupIds for the flow runs' tasks")
    try:
        described = target.client("ec2").describe_subnets(SubnetIds=subnets[:1])["Subnets"]
    except botocore.exceptions.ClientError as exc:
        raise PrefectSetupError(
            f"cannot look up subnet {subnets[0]} of stack {stack_name!r} (for its VPC): {exc.response.get('Error', {}).get('Message', exc)}"
        ) from None
    if not described:
        raise PrefectSetupError(f"subnet {subnets[0]} of stack {stack_name!r} does not exist in {target.region}")
    project = parameters.get("ProjectName")
    if not project:
        raise PrefectSetupError(f"stack {stack_name!r} has no ProjectName parameter: is it a stack of infra/updraft.yaml?")
    return {
        ECS_POOL_VARIABLE: parameters.get("PrefectWorkPool") or f"{project}-ecs",
        "updraft_flows_image": f"{outputs['FlowsRepositoryUri']}:{image_tag or parameters.get('WorkerImageTag') or 'latest'}",
        "updraft_ecs_cluster": outputs["EcsClusterArn"],
        "updraft_ecs_task_role_arn": outputs["PrefectWorkerTaskRoleArn"],
        "updraft_ecs_execution_role_arn": outputs["PrefectWorkerExecutionRoleArn"],
        "updraft_ecs_vpc_id": described[0]["VpcId"],
        "updraft_ecs_network": {
            "subnets": subnets,
            "securityGroups": groups,
            "assignPublicIp": "ENABLED" if public_ip else "DISABLED",
        },
        "updraft_ecs_logs": {
            "awslogs-group": outputs["LogGroupName"],
            "awslogs-region": target.region,
            "awslogs-stream-prefix": "flows",
        },
        "updraft_aws_region": target.region,
    }


# --------------------------------------------------------------------------------------
# Deployments


def deploy_command(prefect_file: Path, pool: Pool) -> list[str]:
    """``prefect deploy`` for the pool's deployments of prefect.yaml (``--name local`` or ``--name ecs``)."""
    return [
        sys.executable, "-m", "prefect", "--no-prompt", "deploy",
        "--prefect-file", str(prefect_file), "--name", pool.deployment_name,
    ]


def deployment_names(prefect_file: Path, pool: Pool) -> list[str]:
    """The entrypoints of the deployments prefect.yaml puts on the pool."""
    import yaml

    data = yaml.safe_load(prefect_file.read_text())
    return [d["entrypoint"] for d in data.get("deployments") or [] if d.get("name") == pool.deployment_name]


def register_deployments(prefect_file: Path, pool: Pool, config_path: str, *, project_dir: Path) -> None:
    """Run ``prefect deploy`` in the checkout (the process pool's flow runs start there)."""
    env = {**os.environ, CONFIG_ENV: config_path, "PREFECT_CLI_COLORS": "false", "PREFECT_CLI_WRAP_LINES": "false"}
    done = subprocess.run(
        deploy_command(prefect_file, pool), cwd=project_dir, env=env, capture_output=True, text=True, timeout=600
    )
    output = (done.stdout + done.stderr).strip()
    if done.returncode != 0 or "could not be found" in output:
        tail = "\n".join(output.splitlines()[-15:])
        raise PrefectSetupError(f"'prefect deploy --name {pool.deployment_name}' failed:\n{tail}")
    log.debug("prefect deploy:\n%s", output)


# --------------------------------------------------------------------------------------
# Failure notifications


def check_notify_options(block: str | None, webhook: str | None) -> None:
    """The notification options, checked before anything is registered."""
    if block and webhook:
        raise ConfigError("give --notify-block or --notify-webhook, not both")
    if webhook and not webhook.startswith(("http://", "https://")):
        raise ConfigError(f"--notify-webhook {webhook!r} must be an http(s) URL")
    if block and block.count("/") != 1:
        raise ConfigError(f"--notify-block {block!r} must be TYPE/NAME as 'prefect block ls' shows it, e.g. slack-webhook/ops")


def notification_block_id(client: SyncPrefectClient, *, block: str | None, webhook: str | None) -> tuple[UUID, str] | None:
    """The notification block to send failures through: ``block`` (``TYPE/NAME``, e.g.
    ``slack-webhook/ops``) as saved, or a webhook block for ``webhook`` saved as
    :data:`WEBHOOK_BLOCK`. None when neither is given."""
    check_notify_options(block, webhook)
    if webhook:
        from prefect.blocks.notifications import CustomWebhookNotificationBlock

        hook = CustomWebhookNotificationBlock(
            name=WEBHOOK_BLOCK, url=webhook, method="POST", json_data={"subject": "{{subject}}", "body": "{{body}}"}
        )
        block_id = hook.save(WEBHOOK_BLOCK, overwrite=True)
        return block_id, f"custom-webhook/{WEBHOOK_BLOCK}"
    if block:
        from prefect.exceptions import ObjectNotFound

        kind, name = block.split("/")
        try:
            document = client.read_block_document_by_name(name=name, block_type_slug=kind)
        except ObjectNotFound:
            raise PrefectSetupError(
                f"no notification block {block!r} on the server: create it in the UI (Blocks) or with "
                "'prefect block create', or pass --notify-webhook URL"
            ) from None
        return document.id, block
    return None


def failure_automation(block_id: UUID) -> Any:
    """Flow runs tagged updraft (every updraft deployment's) that fail, crash or time out: notify through the block."""
    from datetime import timedelta

    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    return AutomationCore(
        name=AUTOMATION_NAME,
        description="Registered by 'updraft deploy-flows': tells the team when a flow run of an updraft deployment ends badly.",
        enabled=True,
        trigger=EventTrigger(
            expect=set(FAILURE_EVENTS),
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related={"prefect.resource.role": "tag", "prefect.resource.id": f"prefect.tag.{TAG}"},
            posture=Posture.Reactive,
            threshold=1,
            within=timedelta(0),
        ),
        actions=[SendNotification(block_document_id=block_id, subject=NOTIFICATION_SUBJECT, body=NOTIFICATION_BODY)],
    )


def ensure_failure_automation(client: SyncPrefectClient, block_id: UUID) -> UUID:
    """Create the automation, or update the one deploy-flows made before (found by name)."""
    automation = failure_automation(block_id)
    existing = client.read_automations_by_name(AUTOMATION_NAME)
    if existing:
        client.update_automation(existing[0].id, automation)
        for extra in existing[1:]:
            client.delete_automation(extra.id)
        return existing[0].id
    return client.create_automation(automation)


# --------------------------------------------------------------------------------------
# All of it


def deploy_flows(
    config_path: Path,
    *,
    pool_kind: str = "process",
    stack: str | None = None,
    image_tag: str | None = None,
    public_ip: bool = False,
    notify_block: str | None = None,
    notify_webhook: str | None = None,
    prefect_file: Path = PREFECT_FILE,
) -> DeployReport:
    """Work pool, ECS settings, deployments and failure notification on the server ``PREFECT_API_URL`` names."""
    from prefect.client.orchestration import get_client

    from tasks.config import load_config

    if pool_kind not in POOLS:
        raise ConfigError(f"--pool {pool_kind!r} must be one of {', '.join(POOLS)}")
    pool = POOLS[pool_kind]
    if stack and pool.type != "ecs":
        raise ConfigError("--stack fills the ECS pool's settings: use it with --pool ecs")
    check_notify_options(notify_block, notify_webhook)
    prefect_file = prefect_file.resolve()
    if not prefect_file.is_file():
        raise ConfigError(f"no prefect.yaml at {prefect_file}: run deploy-flows from an updraft checkout or pass --prefect-file")
    config = load_config(config_path)  # a broken config fails here, not at 2 am
    flow_config_path = deployment_config_path(config_path, pool, prefect_file.parent)
    url = prefect_api_url()
    with get_client(sync_client=True) as client:
        check_server(client, url)
        variables: dict[str, Any] = {}
        if pool.type == "ecs":
            if stack:
                from tasks.aws.target import resolve_target

                variables = ecs_variables_from_stack(
                    resolve_target(None, config.aws.region), stack, image_tag=image_tag, public_ip=public_ip
                )
                set_variables(client, variables)
            missing = missing_variables(client, list(ECS_VARIABLES))
            if missing:
                raise PrefectSetupError(
                    f"the ECS deployments read the Prefect variables {', '.join(missing)}, which are not set: pass "
                    "--stack NAME (the stack 'updraft infra deploy' made) or set them with 'prefect variable set'"
                )
            pool = Pool(client.read_variable_by_name(ECS_POOL_VARIABLE).value, pool.type, pool.deployment_name)
        report = DeployReport(api_url=url, pool=pool.name, pool_created=ensure_work_pool(client, pool), variables=variables)
        register_deployments(prefect_file, pool, flow_config_path, project_dir=prefect_file.parent)
        report.deployments = registered_deployments(client, pool)
        expected = deployment_names(prefect_file, pool)
        if len(report.deployments) < len(expected):
            raise PrefectSetupError(
                f"prefect.yaml describes {len(expected)} deployments on {pool.name} but the server holds "
                f"{len(report.deployments)} after 'prefect deploy': {', '.join(report.deployments) or 'none'}"
            )
        chosen = notification_block_id(client, block=notify_block, webhook=notify_webhook)
        if chosen is not None:
            block_id, report.notification_block = chosen
            report.automation_id = str(ensure_failure_automation(client, block_id))
    return report


def registered_deployments(client: SyncPrefectClient, pool: Pool) -> list[str]:
    """``<flow>/<deployment>`` of the deployments the server holds on the pool under the pool's deployment name."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName, WorkPoolFilter, WorkPoolFilterName

    deployments = client.read_deployments(
        deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[pool.deployment_name])),
        work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[pool.name])),
    )
    return sorted(f"{client.read_flow(d.flow_id).name}/{d.name}" for d in deployments)
