"""The permission policies of a deployed role, read back from IAM as documents.

What the stack deployed, with every ``!Sub`` and ``!GetAtt`` resolved, is what
:mod:`tasks.infra.iam_policy` should judge: reading the template instead would test the
intent, not the result.
"""

from __future__ import annotations

import json
import urllib.parse
from typing import Any


def _document(raw: Any) -> dict[str, Any]:
    """IAM answers documents URL-encoded JSON (boto3 decodes some, not all)."""
    if isinstance(raw, dict):
        return raw
    return json.loads(urllib.parse.unquote(raw))


def role_name_of(role_arn: str) -> str:
    """``arn:aws:iam::123:role/path/name`` -> ``name``."""
    return role_arn.rsplit("/", 1)[-1]


def role_policy_documents(iam_client: Any, role: str) -> list[dict[str, Any]]:
    """Every permission policy of ``role`` (a name or an ARN): attached managed policies' default
    versions, then inline policies. The trust policy is not a permission policy and is left out."""
    name = role_name_of(role) if role.startswith("arn:") else role
    documents = []
    for page in iam_client.get_paginator("list_attached_role_policies").paginate(RoleName=name):
        for attached in page["AttachedPolicies"]:
            policy = iam_client.get_policy(PolicyArn=attached["PolicyArn"])["Policy"]
            version = iam_client.get_policy_version(PolicyArn=attached["PolicyArn"], VersionId=policy["DefaultVersionId"])
            documents.append(_document(version["PolicyVersion"]["Document"]))
    for page in iam_client.get_paginator("list_role_policies").paginate(RoleName=name):
        for policy_name in page["PolicyNames"]:
            documents.append(_document(iam_client.get_role_policy(RoleName=name, PolicyName=policy_name)["PolicyDocument"]))
    return documents
