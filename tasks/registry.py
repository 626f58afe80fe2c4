"""The SageMaker Model Registry: one model package group per project, one version per run.

Every run that trains a model registers it, whether or not it passed the gate: a
rejected version with the reason is part of the project's history (and what a person
looks at when asking "why did Tuesday's model not ship?"). Only approved versions are
meant to be deployed. Each version carries what a reviewer needs without opening the
run: the inference image and model data SageMaker deploys, the evaluation report as
its ``ModelMetrics`` (``evaluation.json`` beside the model, pinned by its SHA-256), and
customer metadata saying which run, data and code made it and what the gate decided.

Teams that approve by hand change a version's status with ``updraft approve`` and
``updraft reject`` (:func:`set_approval_status`). The model an endpoint serves is found
through the endpoint's ``updraft:model-package-arn`` tag, which deploy writes
(:func:`champion_model_data`): that is the champion a new model is judged against.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import logging
import math
import re
import tarfile
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import PurePosixPath
from typing import Any, Callable, Iterator, Mapping, Sequence

import botocore.exceptions
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.aws.errors import error_code, error_message, http_status, is_call_missing, is_service_missing
from tasks.aws.target import Target
from tasks.config import PipelineConfig
from tasks.errors import ConfigError, TargetError, UpdraftError
from tasks.evaluate import EvaluationResult, evaluation_json, metric_label
from tasks.layout import Layout
from tasks.modelbundle import METADATA_FILE, TRANSFORM_FILE

log = logging.getLogger("updraft.registry")

#: What the inference container (images/inference) accepts and answers.
CONTENT_TYPES = ("text/csv", "application/json")
RESPONSE_TYPES = ("application/json",)
DEFAULT_INSTANCE_TYPES = ("ml.m5.large", "ml.m5.xlarge")
#: The image a package names on local targets, where the model is served by a local process.
LOCAL_INFERENCE_IMAGE = "updraft-inference:local"

#: The endpoint tags deploy writes: the package an endpoint serves, and the run that made it.
ENDPOINT_PACKAGE_TAG = "updraft:model-package-arn"
ENDPOINT_RUN_TAG = "updraft:run-id"

APPROVED, REJECTED, PENDING = "Approved", "Rejected", "PendingManualApproval"
APPROVAL_STATUSES = (APPROVED, REJECTED, PENDING)

# CreateModelPackage's limits (botocore's service model): metadata keys and values allow
# letters, digits, spaces and ``_.:/=+-@``, 1 to 128/256 characters, at most 50 entries;
# descriptions at most 1024 printable characters.
_METADATA_PUNCTUATION = set("_.:/=+-@ ")
_MAX_METADATA_KEY, _MAX_METADATA_VALUE, _MAX_METADATA_ENTRIES, _MAX_DESCRIPTION = 128, 256, 50, 1024
#: metadata.json and transform.json are small; a member bigger than this is not an updraft bundle's.
_MAX_BUNDLE_JSON_BYTES = 64 * 1024 * 1024

#: ``<group>/<version>``, the short name ``updraft models list`` shows for a version.
_PACKAGE_REF = re.compile(r"^(?P<group>[a-zA-Z0-9](?:-*[a-zA-Z0-9]){0,62})/(?P<version>[0-9]{1,9})$")
_PACKAGE_ARN = re.compile(
    r"^arn:aws[a-z\-]*:sagemaker:(?P<region>[a-z0-9\-]+):[0-9]{12}:model-package/"
    r"(?P<group>[a-zA-Z0-9](?:-*[a-zA-Z0-9]){0,62})/(?P<version>[0-9]{1,9})$"
)


class PackageNotFoundError(UpdraftError):
    """The model package (or its group) a command names is not in the registry."""


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


def clean_customer_metadata(metadata: Mapping[str, Any]) -> dict[str, str]:
    """Metadata SageMaker accepts: forbidden characters become ``_``, empty values (None, "") are left out.

    An absent key reads better than the text "None", and SageMaker refuses empty values.
    """
    cleaned: dict[str, str] = {}
    for key, value in metadata.items():
        if value is None or str(value) == "":
            continue
        cleaned[_clean_metadata_text(key, _MAX_METADATA_KEY)] = _clean_metadata_text(value, _MAX_METADATA_VALUE)
    if len(cleaned) > _MAX_METADATA_ENTRIES:
        raise ValueError(f"a model package takes at most {_MAX_METADATA_ENTRIES} metadata entries, got {len(cleaned)}")
    return cleaned


def _clean_description(text: str) -> str:
    # Control characters (newlines included) are the only thing the pattern refuses.
    cleaned = "".join(" " if unicodedata.category(c).startswith("C") else c for c in text)
    return cleaned[:_MAX_DESCRIPTION]


def _is_not_found(exc: botocore.exceptions.ClientError) -> bool:
    """SageMaker's (and moto's) answer for a group, package or endpoint that does not exist."""
    message = error_message(exc).lower()
    return error_code(exc) in ("ValidationException", "ResourceNotFound") and (
        "does not exist" in message or "not found" in message or "could not find" in message
    )


def ensure_model_package_group(sm_client: Any, group_name: str, description: str) -> str:
    """The group's ARN, creating the group on first use (creating it again would reset it on moto)."""
    try:
        return sm_client.describe_model_package_group(ModelPackageGroupName=group_name)["ModelPackageGroupArn"]
    except botocore.exceptions.ClientError as exc:
        if not _is_not_found(exc):
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
    customer_metadata: Mapping[str, Any],
    evaluation_uri: str | None,
    evaluation_digest: str | None = None,
    instance_types: Sequence[str] = DEFAULT_INSTANCE_TYPES,
) -> dict[str, Any]:
    """CreateModelPackage's request: a versioned package that SageMaker can deploy as it stands.

    ``evaluation_digest`` (``sha256:<hex>`` of ``evaluation.json``) lets anyone check that
    the report behind ``evaluation_uri`` is the one the package was registered with.
    """
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
    }
    metadata = clean_customer_metadata(customer_metadata)
    if metadata:
        request["CustomerMetadataProperties"] = metadata
    if evaluation_uri:
        statistics = {"ContentType": "application/json", "S3Uri": evaluation_uri}
        if evaluation_digest:
            statistics["ContentDigest"] = evaluation_digest
        request["ModelMetrics"] = {"ModelQuality": {"Statistics": statistics}}
    return request


def build_approval_request(
    model_package_arn: str, approval_status: str, description: str, customer_metadata: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """UpdateModelPackage's request that sets a version's status and says why.

    The version's metadata is sent back unchanged: AWS merges it (a no-op), moto replaces
    the whole map with what the request carries (and would otherwise drop it).
    """
    if approval_status not in APPROVAL_STATUSES:
        raise ValueError(f"approval status must be one of {', '.join(APPROVAL_STATUSES)}, got {approval_status!r}")
    request: dict[str, Any] = {
        "ModelPackageArn": model_package_arn,
        "ModelApprovalStatus": approval_status,
        "ApprovalDescription": _clean_description(description),
    }
    if customer_metadata:
        request["CustomerMetadataProperties"] = dict(customer_metadata)
    return request


def register_model(
    sm_client: Any,
    *,
    group_name: str,
    model_data_url: str,
    image_uri: str,
    approved: bool,
    description: str,
    customer_metadata: Mapping[str, Any],
    evaluation_uri: str | None,
    evaluation_digest: str | None = None,
    instance_types: Sequence[str] = DEFAULT_INSTANCE_TYPES,
) -> RegisterResult:
    """Add the model as the next version of ``group_name``, Approved or Rejected by the gate.

    An endpoint without SageMaker (LocalStack's free edition) is not a reason to fail a
    run whose model is already trained and judged: that is logged and reported as skipped.
    """
    status = APPROVED if approved else REJECTED
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
            evaluation_digest=evaluation_digest,
            instance_types=instance_types,
        )
        arn = sm_client.create_model_package(**request)["ModelPackageArn"]
        # CreateModelPackage has no ApprovalDescription; the registry shows it beside the status.
        verdict = "the evaluation gate passed" if approved else "the evaluation gate failed"
        sm_client.update_model_package(
            **build_approval_request(
                arn, status, f"{verdict}: {description}", request.get("CustomerMetadataProperties")
            )
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


# --------------------------------------------------------------------------------------
# Reading the registry: versions, the endpoint's package, the champion.


def _as_float(value: str | None) -> float | None:
    """A metadata number; None where absent or undefined ("nan": a model that could not be judged)."""
    try:
        number = float(value) if value is not None else None
    except ValueError:
        return None
    return number if number is not None and math.isfinite(number) else None


def _iso(value: Any) -> Any:
    """ISO 8601 in UTC (botocore hands out times in the machine's zone)."""
    return value.astimezone(timezone.utc).isoformat() if isinstance(value, datetime) else value


def _package_summaries(sm_client: Any, group_name: str, **filters: Any) -> list[dict[str, Any]] | None:
    """The group's package summaries (all pages), or None when the group does not exist."""
    try:
        sm_client.describe_model_package_group(ModelPackageGroupName=group_name)
    except botocore.exceptions.ClientError as exc:
        if _is_not_found(exc):
            return None
        raise
    summaries: list[dict[str, Any]] = []
    for page in sm_client.get_paginator("list_model_packages").paginate(
        ModelPackageGroupName=group_name, SortBy="CreationTime", SortOrder="Ascending", **filters
    ):
        summaries.extend(page.get("ModelPackageSummaryList", []))
    return summaries


def _model_data_url(package: Mapping[str, Any]) -> str | None:
    containers = (package.get("InferenceSpecification") or {}).get("Containers") or []
    if not containers:
        return None
    container = containers[0]
    source = (container.get("ModelDataSource") or {}).get("S3DataSource") or {}
    return container.get("ModelDataUrl") or source.get("S3Uri")


def _version_entry(described: Mapping[str, Any], current_arn: str | None) -> dict[str, Any]:
    meta = described.get("CustomerMetadataProperties") or {}
    passed = meta.get("passed")
    statistics = ((described.get("ModelMetrics") or {}).get("ModelQuality") or {}).get("Statistics") or {}
    return {
        "version": described.get("ModelPackageVersion"),
        "arn": described["ModelPackageArn"],
        "model_package_group": described.get("ModelPackageGroupName"),
        "approval_status": described.get("ModelApprovalStatus"),
        "approval_description": described.get("ApprovalDescription"),
        "created": _iso(described.get("CreationTime")),
        "description": described.get("ModelPackageDescription"),
        "model_data_url": _model_data_url(described),
        "evaluation_uri": statistics.get("S3Uri"),
        "run_id": meta.get("run_id"),
        "metric": meta.get("metric"),
        "value": _as_float(meta.get("metric_value")),
        "best_baseline": meta.get("best_baseline"),
        "baseline_value": _as_float(meta.get("baseline_value")),
        "passed": None if passed is None else passed == "true",
        "data_manifest_hash": meta.get("data_manifest_hash"),
        "git_revision": meta.get("git_revision"),
        "transform_hash": meta.get("transform_hash"),
        "current": current_arn is not None and described["ModelPackageArn"] == current_arn,
    }


def list_model_versions(sm_client: Any, group_name: str, endpoint_name: str | None = None) -> list[dict[str, Any]]:
    """Every version in the group, oldest first, with the gate's numbers from its metadata.

    Each entry: ``version``, ``arn``, ``approval_status``, ``approval_description``,
    ``created`` (ISO 8601, UTC), ``description``, ``model_data_url``, ``evaluation_uri``,
    ``run_id``, ``metric``, ``value``, ``best_baseline``, ``baseline_value``, ``passed``
    (None where a package was registered by something else), the provenance keys, and
    ``current``: whether ``endpoint_name`` serves it (see :func:`serving_package_arn`).
    """
    summaries = _package_summaries(sm_client, group_name)
    if summaries is None:
        return []
    described = [sm_client.describe_model_package(ModelPackageName=s["ModelPackageArn"]) for s in summaries]
    current = None
    if endpoint_name:
        endpoint = _describe_endpoint(sm_client, endpoint_name)
        current = _serving_package(sm_client, endpoint, lambda: described) if endpoint else None
    versions = [_version_entry(package, current) for package in described]
    versions.sort(key=lambda v: (v["version"] is None, v["version"] or 0))
    return versions


def _describe_endpoint(sm_client: Any, endpoint_name: str) -> dict[str, Any] | None:
    """DescribeEndpoint, or None when there is no such endpoint."""
    try:
        return sm_client.describe_endpoint(EndpointName=endpoint_name)
    except botocore.exceptions.ClientError as exc:
        if _is_not_found(exc):
            return None
        raise


def _endpoint_tags(sm_client: Any, endpoint: Mapping[str, Any]) -> dict[str, str]:
    tags: dict[str, str] = {}
    for page in sm_client.get_paginator("list_tags").paginate(ResourceArn=endpoint["EndpointArn"]):
        tags.update({tag["Key"]: tag.get("Value", "") for tag in page.get("Tags", [])})
    return tags


def _endpoint_model_data(sm_client: Any, endpoint: Mapping[str, Any]) -> set[str]:
    """The model data URLs the endpoint's current config serves (one per variant's model)."""
    urls: set[str] = set()
    try:
        config = sm_client.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
        for variant in config.get("ProductionVariants", []):
            model = sm_client.describe_model(ModelName=variant["ModelName"])
            for container in [model.get("PrimaryContainer") or {}, *(model.get("Containers") or [])]:
                source = (container.get("ModelDataSource") or {}).get("S3DataSource") or {}
                url = container.get("ModelDataUrl") or source.get("S3Uri")
                if url:
                    urls.add(url)
    except botocore.exceptions.ClientError as exc:
        if not _is_not_found(exc):  # a config or model deleted under a live endpoint: nothing to match
            raise
    return urls


def _described_packages(sm_client: Any, group_name: str) -> list[dict[str, Any]]:
    return [
        sm_client.describe_model_package(ModelPackageName=s["ModelPackageArn"])
        for s in _package_summaries(sm_client, group_name) or []
    ]


def _serving_package(
    sm_client: Any, endpoint: Mapping[str, Any], packages: Callable[[], Sequence[Mapping[str, Any]]]
) -> str | None:
    """The package ARN the endpoint serves: its tag, else the newest of ``packages()`` whose model data it serves."""
    tagged = _endpoint_tags(sm_client, endpoint).get(ENDPOINT_PACKAGE_TAG)
    if tagged:
        return tagged
    candidates = packages()
    if not candidates:
        return None
    urls = _endpoint_model_data(sm_client, endpoint)
    matching = [p for p in candidates if _model_data_url(p) in urls]
    if not matching:
        return None
    return str(max(matching, key=lambda p: p.get("ModelPackageVersion") or 0)["ModelPackageArn"])


def serving_package_arn(sm_client: Any, endpoint_name: str, group_name: str | None = None) -> str | None:
    """The package ARN ``endpoint_name`` serves.

    The one deploy recorded as the endpoint's ``updraft:model-package-arn`` tag; for an
    endpoint without the tag (deployed by hand, or before deploy tagged endpoints), the
    newest version of ``group_name`` whose model data the endpoint's current model
    serves. None when the endpoint does not exist or serves none of them.
    """
    endpoint = _describe_endpoint(sm_client, endpoint_name)
    if endpoint is None:
        return None
    return _serving_package(sm_client, endpoint, lambda: _described_packages(sm_client, group_name) if group_name else [])


def latest_approved_package(sm_client: Any, group_name: str) -> dict[str, Any] | None:
    """DescribeModelPackage of the group's highest Approved version, or None (no group, none approved)."""
    summaries = _package_summaries(sm_client, group_name, ModelApprovalStatus=APPROVED)
    if not summaries:
        return None
    latest = max(summaries, key=lambda s: (s.get("ModelPackageVersion") or 0, _iso(s.get("CreationTime")) or ""))
    return sm_client.describe_model_package(ModelPackageName=latest["ModelPackageArn"])


def champion_model_data(sm_client: Any, group_name: str, endpoint_name: str) -> str | None:
    """The S3 model data URL of the package ``endpoint_name`` serves: the champion a new model must not fall behind.

    The package is found as :func:`serving_package_arn` finds it (deploy's
    ``updraft:model-package-arn`` tag, else the version whose model data the endpoint
    serves); an endpoint serving none of the group's versions is taken to serve the
    group's latest Approved one. None when there is nothing to compare against: no such
    endpoint (nothing serves, so nothing can regress), no group, no approved version, or
    an AWS endpoint without SageMaker at all.
    """
    try:
        endpoint = _describe_endpoint(sm_client, endpoint_name)
        if endpoint is None:
            return None
        arn = _serving_package(sm_client, endpoint, lambda: _described_packages(sm_client, group_name))
        if arn:
            try:
                url = _model_data_url(sm_client.describe_model_package(ModelPackageName=arn))
            except botocore.exceptions.ClientError as exc:
                if not _is_not_found(exc):
                    raise
                log.warning(
                    "endpoint %s names model package %s, which is not in the registry; "
                    "taking the latest approved version of %s as the champion",
                    endpoint_name, arn, group_name,
                )
            else:
                if url:
                    return url
        package = latest_approved_package(sm_client, group_name)
    except botocore.exceptions.ClientError as exc:
        if not is_service_missing(exc):
            raise
        log.warning("no champion: the AWS endpoint has no SageMaker (%s)", error_message(exc))
        return None
    return _model_data_url(package) if package else None


# --------------------------------------------------------------------------------------
# Approving and rejecting by hand.


def package_region(ref: str) -> str | None:
    """The region a package ARN names (None for ``<group>/<version>``): where its registry is."""
    match = _PACKAGE_ARN.match(ref.strip())
    return match.group("region") if match else None


def resolve_model_package(sm_client: Any, ref: str) -> dict[str, Any]:
    """DescribeModelPackage of ``ref``: a model package ARN, or ``<group>/<version>`` (as ``updraft models list`` shows).

    Raises :class:`PackageNotFoundError` naming what exists when it is not there.
    """
    ref = ref.strip()
    arn_match = _PACKAGE_ARN.match(ref)
    if arn_match:
        try:
            return sm_client.describe_model_package(ModelPackageName=ref)
        except botocore.exceptions.ClientError as exc:
            if _is_not_found(exc):
                raise PackageNotFoundError(
                    f"no model package {ref} in the registry; "
                    f"see 'updraft models list --config FILE' for the versions of {arn_match.group('group')}"
                ) from None
            raise
    ref_match = _PACKAGE_REF.match(ref)
    if not ref_match:
        raise PackageNotFoundError(
            f"{ref!r} is not a model package: give its ARN or GROUP/VERSION (e.g. fraud-claims/3), "
            "as 'updraft models list --config FILE' shows them"
        )
    group, version = ref_match.group("group"), int(ref_match.group("version"))
    summaries = _package_summaries(sm_client, group)
    if summaries is None:
        raise PackageNotFoundError(f"no model package group {group!r} in the registry (it is the config's name)")
    for summary in summaries:
        if summary.get("ModelPackageVersion") == version:
            return sm_client.describe_model_package(ModelPackageName=summary["ModelPackageArn"])
    known = ", ".join(str(s.get("ModelPackageVersion")) for s in summaries) or "none yet"
    raise PackageNotFoundError(f"model package group {group!r} has no version {version} (versions: {known})")


def set_approval_status(sm_client: Any, ref: str, status: str, reason: str | None = None) -> dict[str, Any]:
    """Approve or reject a version by hand; returns its entry as :func:`list_model_versions` shows it,
    plus ``previous_status``.

    ``reason`` becomes the ApprovalDescription, so the registry says why a person overrode
    (or confirmed) the gate.
    """
    if status not in APPROVAL_STATUSES:
        raise ValueError(f"approval status must be one of {', '.join(APPROVAL_STATUSES)}, got {status!r}")
    described = resolve_model_package(sm_client, ref)
    arn = described["ModelPackageArn"]
    verb = {APPROVED: "approved", REJECTED: "rejected", PENDING: "set to pending approval"}[status]
    description = f"{verb} by hand by {_user()}" + (f": {reason}" if reason else "")
    sm_client.update_model_package(
        **build_approval_request(arn, status, description, described.get("CustomerMetadataProperties"))
    )
    entry = _version_entry(sm_client.describe_model_package(ModelPackageName=arn), None)
    entry.pop("current")
    entry["previous_status"] = described.get("ModelApprovalStatus")
    return entry


def _user() -> str:
    """Who ran the command, for the ApprovalDescription (AWS's own record, CloudTrail, has the IAM identity)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name (some containers)
        return "an unnamed user"


@contextlib.contextmanager
def registry_errors(sm_client: Any) -> Iterator[None]:
    """AWS failures of the registry commands as one line that says what to do (:class:`TargetError`)."""
    where = getattr(getattr(sm_client, "meta", None), "endpoint_url", None) or "the AWS endpoint"
    try:
        yield
    except botocore.exceptions.NoCredentialsError:
        raise TargetError(
            "no AWS credentials found: set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
            "or point AWS_ENDPOINT_URL at 'updraft up'"
        ) from None
    except botocore.exceptions.EndpointConnectionError:
        raise TargetError(f"cannot reach {where}: is it running? (AWS_ENDPOINT_URL names it)") from None
    except botocore.exceptions.ClientError as exc:
        operation = getattr(exc, "operation_name", None) or "the call"
        if is_call_missing(exc):
            raise TargetError(
                f"{where} cannot do SageMaker {operation} (HTTP {http_status(exc)}: {error_message(exc)}); "
                "the model registry commands need an endpoint with SageMaker's registry: real AWS, or 'updraft up'"
            ) from None
        if error_code(exc) in ("AccessDenied", "AccessDeniedException", "UnrecognizedClientException"):
            raise TargetError(f"SageMaker {operation} was denied for the current credentials: {error_message(exc)}") from None
        raise


# --------------------------------------------------------------------------------------
# What a version carries: provenance and the gate.


def read_model_provenance(fs: Any, model_uri: str) -> dict[str, str | None]:
    """Where the model came from, read from its artifact without unpacking it to disk.

    ``run_id``, ``data_manifest_hash`` and ``git_revision`` from ``metadata.json``;
    ``transform_hash``: the SHA-256 of ``transform.json``, so two versions with the same
    hash apply the very same preprocessing to what they serve.
    """
    wanted = {METADATA_FILE, TRANSFORM_FILE}
    found: dict[str, bytes] = {}
    with fs.open(model_uri, "rb") as raw, tarfile.open(fileobj=raw, mode="r|*") as archive:
        for member in archive:
            name = "/".join(part for part in PurePosixPath(member.name).parts if part != ".")
            if name in wanted and member.isfile() and member.size <= _MAX_BUNDLE_JSON_BYTES:
                handle = archive.extractfile(member)
                if handle is not None:
                    found[name] = handle.read()
            if len(found) == len(wanted):
                break
    try:
        metadata = json.loads(found[METADATA_FILE]) if METADATA_FILE in found else {}
    except ValueError:
        metadata = {}
    if not isinstance(metadata, dict):
        metadata = {}
    transform = found.get(TRANSFORM_FILE)
    return {
        "run_id": metadata.get("run_id"),
        "data_manifest_hash": metadata.get("data_manifest_hash"),
        "git_revision": metadata.get("git_revision"),
        "algorithm": metadata.get("algorithm"),
        "transform_hash": hashlib.sha256(transform).hexdigest() if transform is not None else None,
    }


def gate_metadata(
    run_id: str, evaluation: EvaluationResult, provenance: Mapping[str, str | None] | None = None
) -> dict[str, str]:
    """The customer metadata a version carries: which run, data and code, and what the gate saw."""
    provenance = provenance or {}
    metadata = {
        "run_id": run_id,
        "metric": evaluation.metric,
        "metric_value": f"{evaluation.model:.6g}",
        "best_baseline": evaluation.best_baseline,
        "baseline_value": f"{evaluation.baselines[evaluation.best_baseline]:.6g}",
        "lift": f"{evaluation.lift:.6g}",
        "min_lift": f"{evaluation.min_lift:.6g}",
        "passed": "true" if evaluation.passed else "false",
    }
    for key in ("data_manifest_hash", "git_revision", "transform_hash", "algorithm"):
        value = provenance.get(key)
        if value:
            metadata[key] = str(value)
    return metadata


def publish_evaluation(fs: Any, evaluation_uri: str, evaluation: EvaluationResult) -> str:
    """Make sure ``evaluation.json`` holds this evaluation; returns its ``sha256:<hex>`` digest.

    The evaluate stage writes it; it is kept as written (it may hold more than this
    object carries) unless missing or about a different verdict, then written from
    ``evaluation``.
    """
    try:
        body: bytes | None = fs.cat_file(evaluation_uri)
    except FileNotFoundError:
        body = None
    if body is not None and not _same_verdict(body, evaluation):
        log.warning("%s holds a different evaluation than the one registered; rewriting it", evaluation_uri)
        body = None
    if body is None:
        body = evaluation_json(evaluation).encode("utf-8")
        fs.pipe_file(evaluation_uri, body, ContentType="application/json")
    return "sha256:" + hashlib.sha256(body).hexdigest()


def _same_verdict(body: bytes, evaluation: EvaluationResult) -> bool:
    try:
        stored = json.loads(body)
    except ValueError:
        return False
    if not isinstance(stored, dict):
        return False
    expected = json.loads(evaluation_json(evaluation))
    return all(stored.get(key) == expected.get(key) for key in ("metric", "model", "passed", "best_baseline"))


# --------------------------------------------------------------------------------------
# Prefect task: the only place that touches a Target.


def _filesystem_for(uri: str, target: Target) -> Any:
    if uri.startswith("s3://"):
        return target.filesystem()
    import fsspec

    return fsspec.filesystem("file")


def _inference_image(config: PipelineConfig, target: Target) -> str:
    if target.is_local:
        return LOCAL_INFERENCE_IMAGE
    if not config.aws.inference_image:
        raise ConfigError(
            "aws.inference_image is not set: a registered version names the image SageMaker serves it with; "
            "build images/inference, push it to ECR and put its URI in the config"
        )
    return config.aws.inference_image


def _provenance(target: Target, model_uri: str) -> dict[str, str | None]:
    """Best effort, as provenance is elsewhere: a registry entry without it beats no entry."""
    try:
        return read_model_provenance(_filesystem_for(model_uri, target), model_uri)
    except (OSError, tarfile.TarError, EOFError) as exc:
        log.warning("cannot read the model artifact %s (%s): the version carries no provenance", model_uri, exc)
        return {}


# No Prefect retries: a second attempt would add a second version (a rerun of the run resumes instead).
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
    image_uri = _inference_image(config, target)
    layout = Layout(config.bucket, config.name)
    evaluation_uri = layout.evaluation(run_id)
    digest = publish_evaluation(target.filesystem(), evaluation_uri, evaluation)
    provenance = _provenance(target, model_uri)
    if provenance.get("run_id") and provenance["run_id"] != run_id:
        log.warning("the model at %s was trained by run %s, registered for run %s", model_uri, provenance["run_id"], run_id)
    description = (
        f"updraft run {run_id} ({metric_label(evaluation.metric)} {evaluation.model:.4f}): {evaluation.reason}"
    )
    instance_types = tuple(dict.fromkeys([config.deploy.instance_type, *DEFAULT_INSTANCE_TYPES]))
    return register_model(
        target.client("sagemaker"),
        group_name=config.name,
        model_data_url=model_uri,
        image_uri=image_uri,
        approved=evaluation.passed,
        description=description,
        customer_metadata=gate_metadata(run_id, evaluation, provenance),
        evaluation_uri=evaluation_uri,
        evaluation_digest=digest,
        instance_types=instance_types,
    )
