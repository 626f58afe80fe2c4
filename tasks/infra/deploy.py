"""``updraft infra deploy``: create or update a stack from a template, wait, and say what failed.

Create and update are CloudFormation's own ``CreateStack`` and ``UpdateStack`` (what ``aws
cloudformation deploy`` does, without its S3 upload); an update that changes nothing is
success. While it waits, every new stack event is logged; when the stack fails, the error
lists each failed resource with CloudFormation's reason, because "UPDATE_ROLLBACK_COMPLETE"
alone tells nobody what to fix.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterator, Mapping, Sequence

import botocore.exceptions

from tasks.aws.errors import error_code, error_message
from tasks.aws.stacks import describe_stack_or_none, outputs_of
from tasks.errors import ConfigError, StageError, TargetError
from tasks.infra.templates import Template

log = logging.getLogger("updraft.infra")

DEFAULT_POLL_S = 10.0
DEFAULT_TIMEOUT_S = 3 * 3600
#: Statuses a stack rests in after a successful create or update.
SUCCESS_STATUSES = {"CREATE_COMPLETE", "UPDATE_COMPLETE", "IMPORT_COMPLETE"}
#: The parameter the template's project-wide names come from, and the stack tag that records it.
PROJECT_PARAMETER = "ProjectName"
PROJECT_TAG = "updraft:project"
_NO_UPDATES = "No updates are to be performed"


@dataclass
class StackResult:
    """What ``deploy_stack`` did: ``action`` is ``created``, ``updated`` or ``unchanged``."""

    stack_name: str
    stack_id: str
    action: str
    status: str
    outputs: dict[str, str] = field(default_factory=dict)
    duration_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "stack_name": self.stack_name,
            "stack_id": self.stack_id,
            "action": self.action,
            "status": self.status,
            "duration_s": round(self.duration_s, 3),
            "outputs": self.outputs,
        }


def parse_parameter_pairs(pairs: Sequence[str]) -> dict[str, str]:
    """``["K=V", ...]`` as a mapping; a pair without '=' is a ConfigError that shows the form."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--parameter {pair!r} must look like KEY=VALUE (e.g. --parameter WorkerDesiredCount=1)")
        out[key.strip()] = value
    return out


def build_parameters(template: Template, given: Mapping[str, str], *, previous: Sequence[str] = ()) -> list[dict[str, Any]]:
    """CloudFormation's ``Parameters`` for a create (``previous`` empty) or an update.

    Names the template does not declare are an error that lists the ones it does. On a create
    every parameter without a default must be given; on an update, parameters the stack
    already has and the command does not name keep their previous values.
    """
    declared = template.parameters
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise ConfigError(
            f"template {template.path.name} has no parameter {unknown[0]!r}; its parameters are {', '.join(sorted(declared))}"
        )
    if not previous:
        missing = [name for name, spec in declared.items() if spec.required and name not in given]
        if missing:
            raise ConfigError(
                f"creating the stack needs {', '.join(missing)}: give {' and '.join(_FLAGS.get(n, f'--parameter {n}=VALUE') for n in missing)}"
            )
        # Every parameter explicitly, defaults included: the values are the same, and the stack
        # then records each one, so a later update's UsePreviousValue works for all of them
        # (moto's CloudFormation keeps only the parameters a create named).
        values = {name: spec.default for name, spec in declared.items() if spec.default is not None}
        values.update(given)
        return [{"ParameterKey": key, "ParameterValue": value} for key, value in sorted(values.items())]
    parameters = [{"ParameterKey": key, "ParameterValue": value} for key, value in sorted(given.items())]
    parameters += [{"ParameterKey": key, "UsePreviousValue": True} for key in sorted(set(previous) & set(declared) - set(given))]
    return parameters


_FLAGS = {"ProjectName": "--project NAME", "SubnetIds": "--subnets subnet-a,subnet-b", "SecurityGroupIds": "--security-groups sg-x"}


@contextlib.contextmanager
def cloudformation_errors(stack_name: str, endpoint: str | None = None) -> Iterator[None]:
    """AWS's answers about credentials, reachability and rejected requests, as one-line user errors."""
    try:
        yield
    except botocore.exceptions.NoCredentialsError:
        raise TargetError("no AWS credentials found: set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY") from None
    except botocore.exceptions.EndpointConnectionError:
        raise TargetError(f"cannot reach the AWS endpoint {endpoint or '(default)'}: is it running?") from None
    except botocore.exceptions.ClientError as exc:
        code = error_code(exc)
        if code in ("AccessDenied", "AccessDeniedException", "InsufficientCapabilitiesException"):
            raise TargetError(f"stack {stack_name}: {error_message(exc)}") from None
        if code in ("ValidationError", "AlreadyExistsException", "LimitExceededException"):
            raise ConfigError(f"stack {stack_name}: CloudFormation rejected the request: {error_message(exc)}") from None
        raise


def stack_events_after(cfn_client: Any, stack_id: str, after: datetime | None) -> Iterator[dict[str, Any]]:
    """The stack's events newer than ``after`` (all when None), newest first.

    ``after`` is a timestamp CloudFormation itself gave (the newest event before this
    deploy), so a local clock that runs ahead or behind AWS's cannot hide events.
    """
    for page in cfn_client.get_paginator("describe_stack_events").paginate(StackName=stack_id):
        for event in page["StackEvents"]:
            if after is not None and _aware(event["Timestamp"]) <= after:
                return
            yield event


def latest_event_time(cfn_client: Any, stack_id: str) -> datetime | None:
    events = cfn_client.describe_stack_events(StackName=stack_id)["StackEvents"]
    return _aware(events[0]["Timestamp"]) if events else None


def failed_resource_reasons(cfn_client: Any, stack_id: str, after: datetime | None) -> list[str]:
    """``LogicalId (Type): reason`` for each resource that failed after ``after``, oldest first.

    Resources CloudFormation cancelled because another one failed are left out: the first
    failure is the news.
    """
    reasons = []
    for event in stack_events_after(cfn_client, stack_id, after):
        status = event.get("ResourceStatus", "")
        reason = event.get("ResourceStatusReason") or ""
        if not status.endswith("_FAILED") or "cancelled" in reason.lower():
            continue
        if event.get("ResourceType") == "AWS::CloudFormation::Stack":
            continue  # the stack's own status; its resources carry the reasons
        reasons.append(f"{event.get('LogicalResourceId')} ({event.get('ResourceType')}): {reason or status}")
    return list(reversed(reasons))


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def wait_for_stack(
    cfn_client: Any,
    stack_id: str,
    *,
    after: datetime | None,
    poll_s: float = DEFAULT_POLL_S,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """Poll until the stack rests (no ``*_IN_PROGRESS`` status); log new events; return its description."""
    seen: set[str] = set()
    deadline = clock() + timeout_s
    while True:
        stack = cfn_client.describe_stacks(StackName=stack_id)["Stacks"][0]
        _log_new_events(cfn_client, stack_id, after, seen)
        status = stack["StackStatus"]
        if not status.endswith("_IN_PROGRESS"):
            return stack
        if clock() > deadline:
            raise StageError(f"stack {stack['StackName']} is still {status} after {timeout_s:.0f} s; see the CloudFormation console")
        sleep(poll_s)


def _log_new_events(cfn_client: Any, stack_id: str, after: datetime | None, seen: set[str]) -> None:
    for event in reversed(list(stack_events_after(cfn_client, stack_id, after))):
        if event["EventId"] in seen:
            continue
        seen.add(event["EventId"])
        reason = f": {event['ResourceStatusReason']}" if event.get("ResourceStatusReason") else ""
        log.info("%s %s %s%s", event.get("LogicalResourceId"), event.get("ResourceType"), event.get("ResourceStatus"), reason)


def deploy_stack(
    cfn_client: Any,
    *,
    stack_name: str,
    template: Template,
    parameters: Mapping[str, str],
    tags: Mapping[str, str] | None = None,
    poll_s: float = DEFAULT_POLL_S,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    sleep: Callable[[float], None] = time.sleep,
    endpoint: str | None = None,
) -> StackResult:
    """Create ``stack_name`` from ``template``, or update it; wait until it rests; return its outputs.

    A StageError lists the failed resources and CloudFormation's reasons when the stack
    does not reach CREATE_COMPLETE or UPDATE_COMPLETE.
    """
    started = time.monotonic()
    tag_list = [{"Key": k, "Value": v} for k, v in sorted((tags or {}).items())]
    with cloudformation_errors(stack_name, endpoint):
        existing = describe_stack_or_none(cfn_client, stack_name)
        if existing is not None and existing["StackStatus"] == "ROLLBACK_COMPLETE":
            raise ConfigError(
                f"stack {stack_name} failed to create earlier and is ROLLBACK_COMPLETE, which cannot be updated: delete it "
                f"(aws cloudformation delete-stack --stack-name {stack_name}) and deploy again"
            )
        if existing is not None and existing["StackStatus"].endswith("_IN_PROGRESS"):
            raise ConfigError(f"stack {stack_name} is busy ({existing['StackStatus']}); wait for it to finish and deploy again")
        request: dict[str, Any] = {
            "StackName": stack_name,
            "TemplateBody": template.deploy_body(),
            "Capabilities": template.capabilities(),
            "Tags": tag_list,
        }
        if existing is None:
            request["Parameters"] = build_parameters(template, parameters)
            log.info("creating stack %s from %s", stack_name, template.path.name)
            stack_id = cfn_client.create_stack(**request)["StackId"]
            action, after = "created", None
        else:
            previous = [p["ParameterKey"] for p in existing.get("Parameters") or []]
            request["Parameters"] = build_parameters(template, parameters, previous=previous)
            stack_id = existing["StackId"]
            after = latest_event_time(cfn_client, stack_id)
            log.info("updating stack %s from %s", stack_name, template.path.name)
            try:
                cfn_client.update_stack(**request)
            except botocore.exceptions.ClientError as exc:
                if _NO_UPDATES not in error_message(exc):
                    raise
                log.info("stack %s is already up to date", stack_name)
                return StackResult(
                    stack_name, stack_id, "unchanged", existing["StackStatus"], outputs_of(existing), time.monotonic() - started
                )
            action = "updated"
        stack = wait_for_stack(cfn_client, stack_id, after=after, poll_s=poll_s, timeout_s=timeout_s, sleep=sleep)
        status = stack["StackStatus"]
        if status not in SUCCESS_STATUSES:
            reasons = failed_resource_reasons(cfn_client, stack_id, after)
            why = "; ".join(reasons) or stack.get("StackStatusReason") or "CloudFormation gave no reason"
            raise StageError(f"stack {stack_name} ended {status}: {why}")
    return StackResult(stack_name, stack_id, action, status, outputs_of(stack), time.monotonic() - started)
