"""An IAM policy evaluator small enough to read, for proving what the stack's roles may and may not do.

moto implements neither ``SimulatePrincipalPolicy`` nor ``SimulateCustomPolicy``, and real
IAM's simulator needs an account. This follows IAM's documented evaluation logic for
policies within one account:

- a request is allowed only if some statement allows it and no statement denies it
  (an explicit ``Deny`` always wins; nothing matching is an implicit deny);
- ``Action``/``NotAction`` match case-insensitively with ``*`` and ``?`` wildcards;
  ``Resource``/``NotResource`` match case-sensitively with the same wildcards;
- ``Principal`` (resource policies) matches ``"*"`` or the request's principal or service;
- every operator of a ``Condition`` must hold, every key of an operator must hold, and a
  key holds when the request's value matches any of the policy's values, or, for the
  negated operators (``StringNotEquals``...), matches none of them;
- a key missing from the request makes an operator false, a negated one true, an
  ``...IfExists`` one true, and ``Null`` tests exactly that;
- ``ForAnyValue:`` and ``ForAllValues:`` qualify operators over multi-valued keys.

It is not IAM: service control policies, permission boundaries, session policies and
cross-account trust are out of scope, as are policy variables (``${aws:username}``), which
raise rather than match silently. An operator it does not know raises too, so a policy
cannot pass a test by using one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterable, Mapping

ALLOWED = "allowed"
EXPLICIT_DENY = "explicitly_denied"
IMPLICIT_DENY = "implicitly_denied"

_STRING_OPERATORS = {
    "StringEquals": (False, False, False),  # (negated, wildcards, ignore case)
    "StringNotEquals": (True, False, False),
    "StringEqualsIgnoreCase": (False, False, True),
    "StringNotEqualsIgnoreCase": (True, False, True),
    "StringLike": (False, True, False),
    "StringNotLike": (True, True, False),
}
_ARN_OPERATORS = {"ArnEquals": False, "ArnLike": False, "ArnNotEquals": True, "ArnNotLike": True}
_NUMERIC_OPERATORS = {
    "NumericEquals": (False, lambda a, b: a == b),
    "NumericNotEquals": (True, lambda a, b: a == b),
    "NumericLessThan": (False, lambda a, b: a < b),
    "NumericLessThanEquals": (False, lambda a, b: a <= b),
    "NumericGreaterThan": (False, lambda a, b: a > b),
    "NumericGreaterThanEquals": (False, lambda a, b: a >= b),
}


class PolicyError(ValueError):
    """A policy uses something this evaluator does not implement (so it cannot vouch for it)."""


@dataclass(frozen=True)
class Decision:
    """The outcome for one request, with the ``Sid`` (or index) of each statement that decided it."""

    decision: str
    statements: tuple[str, ...] = ()

    @property
    def allowed(self) -> bool:
        return self.decision == ALLOWED


@lru_cache(maxsize=4096)
def _wildcard(pattern: str, ignore_case: bool) -> re.Pattern[str]:
    # Not fnmatch: it treats [...] as a character class, which IAM does not.
    parts = ["." if c == "?" else ".*" if c == "*" else re.escape(c) for c in pattern]
    flags = (re.IGNORECASE | re.DOTALL) if ignore_case else re.DOTALL
    return re.compile("^" + "".join(parts) + "$", flags)


def wildcard_match(pattern: str, value: str, *, ignore_case: bool = False) -> bool:
    """IAM's ``*`` (any run of characters) and ``?`` (one character), nothing else special."""
    if "${" in pattern:
        raise PolicyError(f"policy variables are not evaluated here: {pattern!r}")
    return bool(_wildcard(pattern, ignore_case).match(value))


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def arn_match(pattern: str, arn: str) -> bool:
    """``ArnLike``: the six colon-separated parts of an ARN matched part by part, each with wildcards."""
    pattern_parts = pattern.split(":", 5)
    arn_parts = arn.split(":", 5)
    if len(pattern_parts) != 6 or len(arn_parts) != 6:
        return pattern == arn if "*" not in pattern else wildcard_match(pattern, arn)
    return all(wildcard_match(p, a) for p, a in zip(pattern_parts, arn_parts))


def _matches_action(statement: Mapping[str, Any], action: str) -> bool:
    if "Action" in statement:
        return any(wildcard_match(str(p), action, ignore_case=True) for p in _as_list(statement["Action"]))
    if "NotAction" in statement:
        return not any(wildcard_match(str(p), action, ignore_case=True) for p in _as_list(statement["NotAction"]))
    raise PolicyError(f"statement {statement.get('Sid', '')!r} has neither Action nor NotAction")


def _matches_resource(statement: Mapping[str, Any], resource: str) -> bool:
    if "Resource" in statement:
        return any(wildcard_match(str(p), resource) for p in _as_list(statement["Resource"]))
    if "NotResource" in statement:
        return not any(wildcard_match(str(p), resource) for p in _as_list(statement["NotResource"]))
    raise PolicyError(f"statement {statement.get('Sid', '')!r} has neither Resource nor NotResource")


def _matches_principal(statement: Mapping[str, Any], principal: str | None, service: str | None) -> bool:
    if "NotPrincipal" in statement:
        raise PolicyError("NotPrincipal is not evaluated here")
    if "Principal" not in statement:
        return True  # an identity policy: it applies to whoever holds it
    spec = statement["Principal"]
    if spec == "*":
        return True
    if not isinstance(spec, Mapping):
        raise PolicyError(f"unsupported Principal {spec!r}")
    for kind, values in spec.items():
        for value in _as_list(values):
            if value == "*" and kind == "AWS":
                return True
            if kind == "AWS" and principal is not None and wildcard_match(str(value), principal):
                return True
            if kind == "Service" and service is not None and str(value) == service:
                return True
    return False


def _context_lookup(context: Mapping[str, Any], key: str) -> tuple[bool, Any]:
    """Condition keys are case-insensitive (their values are not)."""
    lowered = key.lower()
    for name, value in context.items():
        if name.lower() == lowered:
            return True, value
    return False, None


def _text(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _single_match(operator: str, policy_value: Any, request_value: Any) -> bool:
    """Whether one request value matches one policy value, before negation."""
    if operator in _STRING_OPERATORS:
        _, wildcards, ignore_case = _STRING_OPERATORS[operator]
        pattern, value = _text(policy_value), _text(request_value)
        if wildcards:
            return wildcard_match(pattern, value, ignore_case=ignore_case)
        return pattern.lower() == value.lower() if ignore_case else pattern == value
    if operator in _ARN_OPERATORS:
        return arn_match(_text(policy_value), _text(request_value))
    if operator == "Bool":
        return _text(policy_value).lower() == _text(request_value).lower()
    if operator in _NUMERIC_OPERATORS:
        return _NUMERIC_OPERATORS[operator][1](float(request_value), float(policy_value))
    raise PolicyError(f"condition operator {operator!r} is not implemented here")


def _negated(operator: str) -> bool:
    if operator in _STRING_OPERATORS:
        return _STRING_OPERATORS[operator][0]
    if operator in _ARN_OPERATORS:
        return _ARN_OPERATORS[operator]
    if operator in _NUMERIC_OPERATORS:
        return _NUMERIC_OPERATORS[operator][0]
    if operator == "Bool":
        return False
    raise PolicyError(f"condition operator {operator!r} is not implemented here")


def _key_holds(full_operator: str, policy_values: list[Any], present: bool, request_value: Any) -> bool:
    qualifier, _, operator = full_operator.rpartition(":")
    if_exists = operator.endswith("IfExists")
    if if_exists:
        operator = operator[: -len("IfExists")]
    if operator == "Null":
        if qualifier or if_exists:
            raise PolicyError(f"{full_operator} is not a valid operator")
        return all((_text(v).lower() == "true") == (not present) for v in policy_values)
    negated = _negated(operator)
    if not present:
        if qualifier == "ForAllValues":
            return True
        if qualifier == "ForAnyValue":
            return False
        return if_exists or negated

    def one(value: Any) -> bool:
        hit = any(_single_match(operator, p, value) for p in policy_values)
        return not hit if negated else hit

    if qualifier == "ForAnyValue":
        return any(one(v) for v in _as_list(request_value))
    if qualifier == "ForAllValues":
        return all(one(v) for v in _as_list(request_value))
    if qualifier:
        raise PolicyError(f"unknown set operator {qualifier!r} in {full_operator}")
    if isinstance(request_value, (list, tuple)):
        raise PolicyError(f"request key for {full_operator} is multi-valued: qualify it with ForAnyValue or ForAllValues")
    return one(request_value)


def conditions_hold(condition: Mapping[str, Mapping[str, Any]] | None, context: Mapping[str, Any]) -> bool:
    """Every operator, every key: IAM's AND across the block, OR across a key's values."""
    for operator, keys in (condition or {}).items():
        if not isinstance(keys, Mapping):
            raise PolicyError(f"condition operator {operator} must map keys to values")
        for key, values in keys.items():
            present, value = _context_lookup(context, key)
            if not _key_holds(operator, _as_list(values), present, value):
                return False
    return True


def statements_of(policies: Iterable[Mapping[str, Any]]) -> list[tuple[str, Mapping[str, Any]]]:
    """``(label, statement)`` for every statement of every policy document; the label is the Sid or a position."""
    out = []
    for p_index, policy in enumerate(policies):
        for s_index, statement in enumerate(_as_list(policy.get("Statement"))):
            if not isinstance(statement, Mapping):
                raise PolicyError(f"statement {s_index} of policy {p_index} is not an object: {statement!r}")
            out.append((str(statement.get("Sid") or f"policy{p_index}.statement{s_index}"), statement))
    return out


def evaluate(
    policies: Iterable[Mapping[str, Any]],
    action: str,
    resource: str,
    context: Mapping[str, Any] | None = None,
    *,
    principal: str | None = None,
    service: str | None = None,
) -> Decision:
    """Whether ``action`` on ``resource`` is allowed by ``policies`` for a request with ``context``.

    ``principal`` (an ARN) and ``service`` (e.g. ``logging.s3.amazonaws.com``) are who asks;
    they only matter for statements with a ``Principal`` (resource policies).
    """
    context = context or {}
    allows, denies = [], []
    for label, statement in statements_of(policies):
        effect = statement.get("Effect")
        if effect not in ("Allow", "Deny"):
            raise PolicyError(f"statement {label} has Effect {effect!r}")
        if not (_matches_principal(statement, principal, service) and _matches_action(statement, action)):
            continue
        if not _matches_resource(statement, resource) or not conditions_hold(statement.get("Condition"), context):
            continue
        (denies if effect == "Deny" else allows).append(label)
    if denies:
        return Decision(EXPLICIT_DENY, tuple(denies))
    if allows:
        return Decision(ALLOWED, tuple(allows))
    return Decision(IMPLICIT_DENY)


def is_allowed(policies: Iterable[Mapping[str, Any]], action: str, resource: str, context: Mapping[str, Any] | None = None, **who: Any) -> bool:
    return evaluate(list(policies), action, resource, context, **who).allowed


__all__ = [
    "ALLOWED",
    "EXPLICIT_DENY",
    "IMPLICIT_DENY",
    "Decision",
    "PolicyError",
    "arn_match",
    "conditions_hold",
    "evaluate",
    "is_allowed",
    "wildcard_match",
]
