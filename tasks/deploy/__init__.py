"""Deploy: the gated model becomes an endpoint answering ``POST /invocations``.

On ``aws`` that is a SageMaker endpoint running the inference image, updated blue/green
with CloudWatch alarms that roll it back (:mod:`tasks.deploy.sagemaker_endpoints`,
:mod:`tasks.deploy.rollout`, :mod:`tasks.deploy.autoscaling`); on the local targets it is
the same inference app as a managed local process (:mod:`tasks.deploy.local_endpoints`,
:mod:`tasks.deploy.endpoint_process`), recorded in the target's SageMaker API so both look
alike to whoever lists them. The Prefect task is :mod:`tasks.deploy.stage`.

Names are resolved lazily: the endpoint's own server process imports
``tasks.deploy.endpoint_process`` and must not pay for Prefect (about 1.3 s) on every start.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DeployResult": "tasks.deploy.stage",
    "deploy_stage": "tasks.deploy.stage",
    "fetch_model_tar": "tasks.deploy.stage",
    "find_model_package_arn": "tasks.deploy.stage",
    "EndpointInfo": "tasks.deploy.local_endpoints",
    "delete_local_endpoint": "tasks.deploy.local_endpoints",
    "deploy_local_endpoint": "tasks.deploy.local_endpoints",
    "list_local_endpoints": "tasks.deploy.local_endpoints",
    "delete_endpoint_record": "tasks.deploy.sagemaker_endpoints",
    "record_endpoint": "tasks.deploy.sagemaker_endpoints",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tasks.deploy' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
