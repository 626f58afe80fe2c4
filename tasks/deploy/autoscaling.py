"""Target-tracking autoscaling of a SageMaker endpoint's variant, through Application Auto Scaling.

The variant's instance count is a scalable target (``min_instances`` .. ``max_instances``)
with one policy keeping ``SageMakerVariantInvocationsPerInstance`` (invocations per
instance per minute) near ``target_invocations``: scale out fast (60 s cooldown), scale
in slowly (300 s), as AWS's own examples do.

SageMaker refuses an endpoint update that changes the instance type of a variant that
is a scalable target, so :func:`remove_autoscaling` runs before such an update and
:func:`apply_autoscaling` after it; changing only the model is allowed as is.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

NAMESPACE = "sagemaker"
DIMENSION = "sagemaker:variant:DesiredInstanceCount"
METRIC = "SageMakerVariantInvocationsPerInstance"
SCALE_OUT_COOLDOWN_S = 60
SCALE_IN_COOLDOWN_S = 300
VARIANT_NAME = "AllTraffic"


def resource_id(endpoint_name: str, variant: str = VARIANT_NAME) -> str:
    return f"endpoint/{endpoint_name}/variant/{variant}"


def policy_name(endpoint_name: str) -> str:
    return f"{endpoint_name}-updraft-invocations"


def build_scalable_target_request(endpoint_name: str, *, min_instances: int, max_instances: int) -> dict[str, Any]:
    return {
        "ServiceNamespace": NAMESPACE,
        "ResourceId": resource_id(endpoint_name),
        "ScalableDimension": DIMENSION,
        "MinCapacity": min_instances,
        "MaxCapacity": max_instances,
    }


def build_scaling_policy_request(endpoint_name: str, *, target_invocations: int) -> dict[str, Any]:
    return {
        "PolicyName": policy_name(endpoint_name),
        "ServiceNamespace": NAMESPACE,
        "ResourceId": resource_id(endpoint_name),
        "ScalableDimension": DIMENSION,
        "PolicyType": "TargetTrackingScaling",
        "TargetTrackingScalingPolicyConfiguration": {
            "TargetValue": float(target_invocations),
            "PredefinedMetricSpecification": {"PredefinedMetricType": METRIC},
            "ScaleOutCooldown": SCALE_OUT_COOLDOWN_S,
            "ScaleInCooldown": SCALE_IN_COOLDOWN_S,
        },
    }


def scalable_target(autoscaling: Any, endpoint_name: str) -> dict[str, Any] | None:
    """The variant's scalable target, or None when it has none."""
    answer = autoscaling.describe_scalable_targets(
        ServiceNamespace=NAMESPACE, ResourceIds=[resource_id(endpoint_name)], ScalableDimension=DIMENSION
    )
    targets = answer.get("ScalableTargets", [])
    return targets[0] if targets else None


def apply_autoscaling(autoscaling: Any, endpoint_name: str, *, min_instances: int, max_instances: int, target_invocations: int) -> None:
    """Register the variant (or change its bounds) and put the target-tracking policy."""
    autoscaling.register_scalable_target(
        **build_scalable_target_request(endpoint_name, min_instances=min_instances, max_instances=max_instances)
    )
    autoscaling.put_scaling_policy(**build_scaling_policy_request(endpoint_name, target_invocations=target_invocations))


def remove_autoscaling(autoscaling: Any, endpoint_name: str) -> bool:
    """Delete the variant's scaling policies and deregister it; False when it was not registered."""
    if scalable_target(autoscaling, endpoint_name) is None:
        return False
    policies = autoscaling.describe_scaling_policies(
        ServiceNamespace=NAMESPACE, ResourceId=resource_id(endpoint_name), ScalableDimension=DIMENSION
    ).get("ScalingPolicies", [])
    for policy in policies:
        autoscaling.delete_scaling_policy(
            PolicyName=policy["PolicyName"], ServiceNamespace=NAMESPACE, ResourceId=resource_id(endpoint_name),
            ScalableDimension=DIMENSION,
        )
    try:
        autoscaling.deregister_scalable_target(
            ServiceNamespace=NAMESPACE, ResourceId=resource_id(endpoint_name), ScalableDimension=DIMENSION
        )
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ObjectNotFoundException":
            raise
    return True
