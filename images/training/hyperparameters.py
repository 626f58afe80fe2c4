"""Hyperparameters as SageMaker hands them over (every value a string), turned back into values."""

from __future__ import annotations

import json
import re
from typing import Any, Mapping

from tasks.errors import ConfigError

_INT_RE = re.compile(r"^[-+]?\d+$")


def parse_hyperparameter(value: Any) -> Any:
    """A hyperparameter string as SageMaker passes it, turned back into a bool, int, float or list."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if _INT_RE.match(text):
        return int(text)
    try:
        return float(text)
    except ValueError:
        pass
    if text.startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            pass
    return text


def pop_int(params: dict[str, Any], raw: Mapping[str, Any], name: str, default: int, minimum: int) -> int:
    """Remove ``name`` from ``params`` and return it as an integer >= ``minimum`` (``default`` when absent)."""
    value = params.pop(name, default)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"hyperparameter {name!r} must be an integer >= {minimum}, got {raw.get(name)!r}")
    return value
