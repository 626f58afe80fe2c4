"""How a new model reaches a SageMaker endpoint's traffic: blue/green shifting, and the alarms that undo it.

SageMaker updates an endpoint blue/green: it provisions a new (green) fleet, shifts
traffic to it (all at once, a canary first, or in linear steps, each step *baked* for a
while) and terminates the old (blue) fleet only at the end. If any alarm named in the
``AutoRollbackConfiguration`` fires during a baking period, all traffic returns to the old
fleet. Without alarms there is nothing to roll back on, so deploy creates two per endpoint
on its ``AWS/SageMaker`` metrics:

- ``<endpoint>-updraft-5xx-rate``: ``Invocation5XXErrors / Invocations`` above
  ``max_error_rate`` in one minute (one bad minute is enough: a model that errors is
  never acceptable);
- ``<endpoint>-updraft-p99-latency``: p99 ``ModelLatency`` (reported in microseconds)
  above ``max_latency_ms`` for two minutes running (one slow minute can be a cold cache).

Minutes without traffic count as fine (``notBreaching``): a quiet canary must not roll back.
Request builders here are pure; the one function that calls AWS takes the client.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

from tasks.errors import ConfigError

NAMESPACE = "AWS/SageMaker"
VARIANT_NAME = "AllTraffic"
ERROR_ALARM_SUFFIX = "-updraft-5xx-rate"
LATENCY_ALARM_SUFFIX = "-updraft-p99-latency"
ALARM_PERIOD_S = 60
#: BlueGreenUpdatePolicy's limits (botocore's service model and its documentation).
MAX_WAIT_S = 3600
MAX_CANARY_PERCENT = 50
LINEAR_PERCENT_RANGE = (10, 50)
MIN_EXECUTION_S, MAX_EXECUTION_S = 600, 28800
#: Time allowed for SageMaker to provision the new fleet and pass its health checks.
PROVISIONING_ALLOWANCE_S = 1800
_TRAFFIC_TYPES = {"all_at_once": "ALL_AT_ONCE", "canary": "CANARY", "linear": "LINEAR"}


def alarm_names(endpoint_name: str) -> list[str]:
    """The rollback alarms deploy creates for ``endpoint_name``: 5xx rate, then p99 latency."""
    return [endpoint_name + ERROR_ALARM_SUFFIX, endpoint_name + LATENCY_ALARM_SUFFIX]


def _dimensions(endpoint_name: str) -> list[dict[str, str]]:
    return [{"Name": "EndpointName", "Value": endpoint_name}, {"Name": "VariantName", "Value": VARIANT_NAME}]


def build_alarm_requests(
    endpoint_name: str, *, max_error_rate: float, max_latency_ms: int, tags: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """``PutMetricAlarm`` requests for the two rollback alarms of ``endpoint_name``."""

    def stat(metric_id: str, metric: str) -> dict[str, Any]:
        return {
            "Id": metric_id,
            "MetricStat": {
                "Metric": {"Namespace": NAMESPACE, "MetricName": metric, "Dimensions": _dimensions(endpoint_name)},
                "Period": ALARM_PERIOD_S,
                "Stat": "Sum",
            },
            "ReturnData": False,
        }

    tag_list = [{"Key": k, "Value": v} for k, v in {"updraft:endpoint": endpoint_name, **(tags or {})}.items()]
    errors_name, latency_name = alarm_names(endpoint_name)
    errors = {
        "AlarmName": errors_name,
        "AlarmDescription": (
            f"updraft: more than {max_error_rate:.2%} of requests to endpoint {endpoint_name} answered 5xx in a minute; "
            "during a deployment this rolls the endpoint back to its previous model"
        ),
        "Metrics": [
            stat("errors", "Invocation5XXErrors"),
            stat("invocations", "Invocations"),
            {"Id": "rate", "Expression": "IF(invocations > 0, errors / invocations, 0)", "Label": "5xx rate", "ReturnData": True},
        ],
        "ComparisonOperator": "GreaterThanThreshold",
        "Threshold": float(max_error_rate),
        "EvaluationPeriods": 1,
        "DatapointsToAlarm": 1,
        "TreatMissingData": "notBreaching",
        "Tags": tag_list,
    }
    latency = {
        "AlarmName": latency_name,
        "AlarmDescription": (
            f"updraft: p99 model latency of endpoint {endpoint_name} above {max_latency_ms} ms for two minutes; "
            "during a deployment this rolls the endpoint back to its previous model"
        ),
        "Namespace": NAMESPACE,
        "MetricName": "ModelLatency",
        "Dimensions": _dimensions(endpoint_name),
        "ExtendedStatistic": "p99",
        "Period": ALARM_PERIOD_S,
        "Unit": "Microseconds",
        "ComparisonOperator": "GreaterThanThreshold",
        "Threshold": float(max_latency_ms) * 1000.0,  # ModelLatency is reported in microseconds
        "EvaluationPeriods": 2,
        "DatapointsToAlarm": 2,
        "TreatMissingData": "notBreaching",
        "Tags": tag_list,
    }
    return [errors, latency]


def ensure_alarms(cloudwatch: Any, requests: Iterable[dict[str, Any]]) -> list[str]:
    """Create or update the alarms (``PutMetricAlarm`` replaces one of the same name); their names."""
    names = []
    for request in requests:
        cloudwatch.put_metric_alarm(**request)
        names.append(request["AlarmName"])
    return names


def alarms_in_alarm(cloudwatch: Any, names: list[str]) -> list[str]:
    """``name: reason`` for each of ``names`` now in ALARM: what a rollback message quotes."""
    answer = cloudwatch.describe_alarms(AlarmNames=names, StateValue="ALARM")
    return [
        f"{a['AlarmName']}: {a.get('StateReason', 'in ALARM')}"
        for a in answer.get("MetricAlarms", [])
        if a.get("StateValue") == "ALARM"  # not every CloudWatch look-alike honours the filter
    ]


def check_traffic_settings(strategy: str, *, canary_percent: int, linear_step_percent: int, wait_s: int) -> None:
    """Refuse settings SageMaker would refuse only after minutes of provisioning, with the fix."""
    if strategy not in _TRAFFIC_TYPES:
        raise ConfigError(f"deploy.strategy {strategy!r} must be one of {', '.join(_TRAFFIC_TYPES)}")
    if not 0 <= wait_s <= MAX_WAIT_S:
        raise ConfigError(f"deploy.wait_s is {wait_s}; SageMaker bakes each traffic step for 0 to {MAX_WAIT_S} s")
    if strategy == "canary" and not 1 <= canary_percent <= MAX_CANARY_PERCENT:
        raise ConfigError(
            f"deploy.canary_percent is {canary_percent}; SageMaker's canary is at most {MAX_CANARY_PERCENT}% of the new fleet"
        )
    low, high = LINEAR_PERCENT_RANGE
    if strategy == "linear" and not low <= linear_step_percent <= high:
        raise ConfigError(
            f"deploy.linear_step_percent is {linear_step_percent}; SageMaker's linear steps are {low}-{high}% of the new fleet"
        )


def traffic_steps(strategy: str, *, linear_step_percent: int) -> int:
    """How many times traffic moves (each followed by a baking period)."""
    if strategy == "canary":
        return 2
    if strategy == "linear":
        return math.ceil(100 / linear_step_percent)
    return 1


def build_deployment_config(
    strategy: str,
    *,
    canary_percent: int,
    linear_step_percent: int,
    wait_s: int,
    alarm_names: list[str],
) -> dict[str, Any]:
    """The ``DeploymentConfig`` of ``CreateEndpoint``/``UpdateEndpoint``: blue/green with auto-rollback.

    ``wait_s`` bakes every traffic step and, as ``TerminationWaitInSeconds``, the final
    one too: the old fleet stays ready to take traffic back until the alarms have watched
    the new fleet carry all of it for ``wait_s``.
    """
    check_traffic_settings(strategy, canary_percent=canary_percent, linear_step_percent=linear_step_percent, wait_s=wait_s)
    routing: dict[str, Any] = {"Type": _TRAFFIC_TYPES[strategy], "WaitIntervalInSeconds": wait_s}
    if strategy == "canary":
        routing["CanarySize"] = {"Type": "CAPACITY_PERCENT", "Value": canary_percent}
    elif strategy == "linear":
        routing["LinearStepSize"] = {"Type": "CAPACITY_PERCENT", "Value": linear_step_percent}
    baking = traffic_steps(strategy, linear_step_percent=linear_step_percent) * wait_s + wait_s
    timeout = min(MAX_EXECUTION_S, max(MIN_EXECUTION_S, baking + PROVISIONING_ALLOWANCE_S))
    config: dict[str, Any] = {
        "BlueGreenUpdatePolicy": {
            "TrafficRoutingConfiguration": routing,
            "TerminationWaitInSeconds": wait_s,
            "MaximumExecutionTimeoutInSeconds": timeout,
        }
    }
    if alarm_names:
        config["AutoRollbackConfiguration"] = {"Alarms": [{"AlarmName": name} for name in alarm_names]}
    return config


def expected_duration_s(deployment_config: dict[str, Any]) -> int:
    """The longest a deployment with this config may take (SageMaker's own execution timeout)."""
    return int(deployment_config["BlueGreenUpdatePolicy"]["MaximumExecutionTimeoutInSeconds"])
