"""CloudFormation stacks as the rest of updraft sees them: does one exist, and what are its outputs.

The infra stack (``infra/updraft.yaml``) publishes what a config and the Prefect work pool
need (bucket, roles, images, cluster) as outputs; anything that wants those reads them
here, by stack name, from the target's CloudFormation.
"""

from __future__ import annotations

from typing import Any, Mapping

import botocore.exceptions

from tasks.aws.errors import error_code, error_message
from tasks.aws.target import Target
from tasks.errors import TargetError


def describe_stack_or_none(cfn_client: Any, stack_name: str) -> dict[str, Any] | None:
    """The stack's description, or None when no stack of that name (or id) exists."""
    try:
        stacks = cfn_client.describe_stacks(StackName=stack_name)["Stacks"]
    except botocore.exceptions.ClientError as exc:
        if error_code(exc) == "ValidationError" and "does not exist" in error_message(exc):
            return None
        raise
    return stacks[0] if stacks else None


def outputs_of(stack: Mapping[str, Any]) -> dict[str, str]:
    """``{OutputKey: OutputValue}`` of a ``describe_stacks`` entry."""
    return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs") or []}


def stack_outputs(target: Target, stack_name: str) -> dict[str, str]:
    """The outputs of ``stack_name`` on ``target``; a TargetError names the stack when it does not exist."""
    cfn = target.client("cloudformation")
    try:
        stack = describe_stack_or_none(cfn, stack_name)
    except botocore.exceptions.NoCredentialsError:
        raise TargetError("no AWS credentials found: set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY") from None
    except botocore.exceptions.EndpointConnectionError:
        raise TargetError(f"cannot reach the AWS endpoint {target.endpoint_url or '(default)'}: is it running?") from None
    if stack is None:
        where = f" at {target.endpoint_url}" if target.endpoint_url else f" in {target.region}"
        raise TargetError(
            f"CloudFormation stack {stack_name!r} does not exist{where}: deploy it with "
            f"'updraft infra deploy --stack {stack_name} --project NAME ...' or check the name and region"
        )
    return outputs_of(stack)
