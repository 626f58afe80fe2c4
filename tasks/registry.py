"""The SageMaker Model Registry: one model package group per project, one version per run.

Every run that trains a model registers it, whether or not it passed the gate: a
rejected version with the reason is part of the project's history (and what a person
looks at when asking "why did Tuesday's model not ship?"). Only approved versions are
meant to be deployed. The gate's numbers travel in the package's customer metadata so
``updraft models list`` can show them without reading S3.
"""

from __future__ import annotations

import logging
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Mapping, Sequence

import botocore.exceptions
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.aws.errors import is_service_missing
from tasks.aws.target import Target
from tasks.config import PipelineConfig
from tasks.evaluate import EvaluationResult, metric_label
from tasks.layout import Layout

log = logging.getLogger("updraft.registry")

#: What the inference container (images/inference) accepts and answers.
CONTENT_TYPES = ("text/csv", "application/json")
RESPONSE_TYPES = ("application/json",)
DEFAULT_INSTANCE_TYPES = ("ml.m5.large", "ml.m5.xlarge")
LOCAL_INFERENCE_IMAGE = "updraft-inference:local"

# CreateModelPackage's limits (botocore's service model): metadata keys and values allow
# letters, digits, spaces and ``_.:/=+-@``; descriptions at most 1024 printable characters.
_METADATA_PUNCTUATION = set("_.:/=+-@ ")
_MAX_METADATA_KEY, _MAX_METADATA_VALUE, _MAX_DESCRIPTION = 128, 256, 1024


@dataclass(frozen=True)
class RegisterResult:
    model_package_group: str
    model_package_arn: str | None
    version: int | None
    approval_status: str | None
    #: Why nothing was registered (an endpoint without SageMaker); None when registered.
    skipped: str | None = None


def _clean_metadata_text(text: str, limit: int) -> str:
    cleaned = "".join(c if c.isalnum() or c in _METADATA_PUNCTUATION else "_" for c in str(text))
    return cleaned[:limit]


def _clean_description(text: str) -> str:
    # Control characters (newlines included) are the only thing the pattern refuses.
    cleaned = "".join(" " if unicodedata.category(c).startswith("C") else c for c in text)
    return cleaned[:_MAX_DESCRIPTION]


def _is_missing_group(exc: botocore.exceptions.ClientError) -> bool:
    error = exc.response.get("Error", {})
    return error.get("Code") in ("ValidationException", "ResourceNotFound") and "does not exist" in str(
        error.get("Message", "")
    )


def ensure_model_package_group(sm_client: Any, group_name: str, description: str) -> str:
    """The group's ARN, creating the group on first use (creating it again would reset it on moto)."""
    try:
        return sm_client.describe_model_package_group(ModelPackageGroupName=group_name)["ModelPackageGroupArn"]
    except botocore.exceptions.ClientError as exc:
        if not _is_missing_group(exc):
            raise
    try:
        return sm_client.create_model_package_group(
            ModelPackageGroupName=group_name, ModelPackageGroupDescription=_clean_description(description)
        )["ModelPackageGroupArn"]
    except botocore.exceptions.ClientError as exc:  # another run created it meanwhile
        if "already exists" not in str(exc.response.get("Error", {}).get("Message", "")):
            raise
        return sm_client.describe_model_package_group(ModelPackageGroupName=group_name)["ModelPackageGroupArn"]


def build_model_package_request(
    *,
    group_name: str,
    model_data_url: str,
    image_uri: str,
    approval_status: str,
    description: str,
    customer_metadata: Mapping[str, str],
    evaluation_uri: str | None,
    instance_types: Sequence[str] = DEFAULT_INSTANCE_TYPES,
) -> dict[str, Any]:
    """CreateModelPackage's request: a versioned package that SageMaker can deploy as it stands."""
    request: dict[str, Any] = {
        "ModelPackageGroupName": group_name,
        "ModelPackageDescription": _clean_description(description),
        "InferenceSpecification": {
            "Containers": [{"Image": image_uri, "ModelDataUrl": model_data_url}],
            "SupportedContentTypes": list(CONTENT_TYPES),
            "SupportedResponseMIMETypes": list(RESPONSE_TYPES),
            "SupportedRealtimeInferenceInstanceTypes": list(instance_types),
            "SupportedTransformInstanceTypes": list(instance_types),
        },
        "ModelApprovalStatus": approval_status,
        "CustomerMetadataProperties": {
            _clean_metadata_text(k, _MAX_METADATA_KEY): _clean_metadata_text(v, _MAX_METADATA_VALUE)
            for k, v in customer_metadata.items()
        },
    }
    if evaluation_uri:
        request["ModelMetrics"] = {
            "ModelQuality": {"Statistics": {"ContentType": "application/json", "S3Uri": evaluation_uri}}
        }
    return request


def register_model(
    sm_client: Any,
    *,
    group_name: str,
    model_data_url: str,
    image_uri: str,
    approved: bool,
    description: str,
    customer_metadata: dict[str, str],
    evaluation_uri: str | None,
    instance_types: Sequence[str] = DEFAULT_INSTANCE_TYPES,
) -> RegisterResult:
    """Add the model as the next version of ``group_name``, Approved or Rejected by the gate.

    An endpoint without SageMaker (LocalStack's free edition) is not a reason to fail a
    run whose model is already trained and judged: that is logged and reported as skipped.
    """
    status = "Approved" if approved else "Rejected"
    try:
        ensure_model_package_group(sm_client, group_name, f"updraft models of the {group_name} project")
        request = build_model_package_request(
            group_name=group_name,
            model_data_url=model_data_url,
            image_uri=image_uri,
            approval_status=status,
            description=description,
            customer_metadata=customer_metadata,
            evaluation_uri=evaluation_uri,
            instance_types=instance_types,
        )
        arn = sm_client.create_model_package(**request)["ModelPackageArn"]
        # CreateModelPackage has no ApprovalDescription; the registry shows it beside the status.
        # Status and metadata are repeated because moto's update replaces them (AWS merges).
        verdict = "the evaluation gate passed" if approved else "the evaluation gate failed"
        sm_client.update_model_package(
            ModelPackageArn=arn,
            ModelApprovalStatus=status,
            ApprovalDescription=_clean_description(f"{verdict}: {description}"),
            CustomerMetadataProperties=request["CustomerMetadataProperties"],
        )
        described = sm_client.describe_model_package(ModelPackageName=arn)
    except botocore.exceptions.ClientError as exc:
        if not is_service_missing(exc):
            raise
        reason = f"the AWS endpoint has no SageMaker model registry ({exc.response.get('Error', {}).get('Message', '')})"
        log.warning("model not registered: %s", reason)
        return RegisterResult(group_name, None, None, None, skipped=reason)
    return RegisterResult(
        model_package_group=group_name,
        model_package_arn=arn,
        version=described.get("ModelPackageVersion"),
        approval_status=described.get("ModelApprovalStatus", status),
    )


def _as_float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def list_model_versions(sm_client: Any, group_name: str) -> list[dict[str, Any]]:
    """Every version in the group, oldest first, with the gate's numbers from its metadata.

    Each entry: ``version``, ``arn``, ``approval_status``, ``created`` (ISO 8601),
    ``description``, ``run_id``, ``metric``, ``value``, ``best_baseline``,
    ``baseline_value``, ``passed`` (None where a package was registered by something else).
    """
    try:
        sm_client.describe_model_package_group(ModelPackageGroupName=group_name)
    except botocore.exceptions.ClientError as exc:
        if _is_missing_group(exc):
            return []
        raise
    summaries: list[dict[str, Any]] = []
    for page in sm_client.get_paginator("list_model_packages").paginate(
        ModelPackageGroupName=group_name, SortBy="CreationTime", SortOrder="Ascending"
    ):
        summaries.extend(page.get("ModelPackageSummaryList", []))
    versions = []
    for summary in summaries:
        described = sm_client.describe_model_package(ModelPackageName=summary["ModelPackageArn"])
        meta = described.get("CustomerMetadataProperties") or {}
        created = summary.get("CreationTime")
        passed = meta.get("passed")
        versions.append(
            {
                "version": summary.get("ModelPackageVersion"),
                "arn": summary["ModelPackageArn"],
                "approval_status": summary.get("ModelApprovalStatus"),
                "created": created.isoformat() if isinstance(created, datetime) else created,
                "description": described.get("ModelPackageDescription"),
                "run_id": meta.get("run_id"),
                "metric": meta.get("metric"),
                "value": _as_float(meta.get("metric_value")),
                "best_baseline": meta.get("best_baseline"),
                "baseline_value": _as_float(meta.get("baseline_value")),
                "passed": None if passed is None else passed == "true",
            }
        )
    versions.sort(key=lambda v: (v["version"] is None, v["version"] or 0))
    return versions


def gate_metadata(run_id: str, evaluation: EvaluationResult) -> dict[str, str]:
    """The customer metadata a version carries: which run, and what the gate saw."""
    return {
        "run_id": run_id,
        "metric": evaluation.metric,
        "metric_value": f"{evaluation.model:.6g}",
        "best_baseline": evaluation.best_baseline,
        "baseline_value": f"{evaluation.baselines[evaluation.best_baseline]:.6g}",
        "lift": f"{evaluation.lift:.6g}",
        "min_lift": f"{evaluation.min_lift:.6g}",
        "passed": "true" if evaluation.passed else "false",
    }


# --------------------------------------------------------------------------------------
# Prefect task: the only place that touches a Target.


@task(name="register", cache_policy=NO_CACHE)
def register_stage(
    config: PipelineConfig,
    target: Target,
    run_id: str,
    model_uri: str,
    evaluation: EvaluationResult | dict[str, Any],
) -> RegisterResult:
    """Register the run's model in the project's group; approved only when the gate passed."""
    if isinstance(evaluation, dict):
        evaluation = EvaluationResult.from_dict(evaluation)
    layout = Layout(config.bucket, config.name)
    description = (
        f"updraft run {run_id} ({metric_label(evaluation.metric)} {evaluation.model:.4f}): {evaluation.reason}"
    )
    instance_types = tuple(dict.fromkeys([config.deploy.instance_type, *DEFAULT_INSTANCE_TYPES]))
    return register_model(
        target.client("sagemaker"),
        group_name=config.name,
        model_data_url=model_uri,
        image_uri=config.aws.inference_image or LOCAL_INFERENCE_IMAGE,
        approved=evaluation.passed,
        description=description,
        customer_metadata=gate_metadata(run_id, evaluation),
        evaluation_uri=layout.evaluation(run_id),
        instance_types=instance_types,
    )
