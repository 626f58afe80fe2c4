"""The evaluate stage's verdict as a value, and its strict JSON form (``evaluation.json``).

The registry, the report and the CLI read this file long after the stage ran, so the
contract (which fields, how undefined numbers are written and read back) lives in one
place apart from the code that computes it.
"""

from __future__ import annotations

import json
import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

import numpy as np

from tasks.errors import DataError


@dataclass
class EvaluationResult:
    """The gate's verdict and everything the report shows about it; JSON-ready via :meth:`to_dict`.

    The first fields are the original contract (registry, CLI and report read them); the
    later ones only add: ``metrics`` (every metric of the model: ``value``, ``ci``,
    ``greater_is_better``), ``baseline_ci``, ``lift_ci`` (paired, against the best
    baseline), ``threshold`` and ``calibration`` (binary), ``champion`` (the comparison with
    the endpoint's current model), ``slices`` (per segment value) and ``gate`` (each check
    with its numbers and words). Undefined numbers in those are None in memory and in JSON.
    """

    task: str
    metric: str
    greater_is_better: bool
    model: float
    model_ci: list[float]
    baselines: dict[str, float]
    best_baseline: str
    lift: float
    min_lift: float
    passed: bool
    reason: str
    secondary: dict[str, float]
    n_test: int
    plots: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    baseline_ci: dict[str, list[float | None]] = field(default_factory=dict)
    lift_ci: list[float | None] = field(default_factory=list)
    threshold: dict[str, Any] | None = None
    calibration: dict[str, Any] | None = None
    champion: dict[str, Any] | None = None
    slices: dict[str, Any] | None = None
    gate: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain values only; a metric that is undefined (NaN) becomes None, so the JSON is strict."""
        return _finite_or_none(asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvaluationResult:
        """Rebuild a result from ``evaluation.json`` (or a run summary's ``evaluate`` entry).

        A metric stored as null (undefined: an anomaly detector judged without labels) reads
        back as NaN in the original fields, so code that formats those numbers never meets
        None; the added fields keep None. A file written before a field existed reads with
        that field's default."""
        values = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        for key in ("model", "lift", "min_lift"):
            if key in values and values[key] is None:
                values[key] = math.nan
        if isinstance(values.get("model_ci"), list):
            values["model_ci"] = [math.nan if v is None else v for v in values["model_ci"]]
        for key in ("baselines", "secondary"):
            if isinstance(values.get(key), dict):
                values[key] = {k: math.nan if v is None else v for k, v in values[key].items()}
        return cls(**values)


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    if isinstance(value, np.generic):
        return _finite_or_none(value.item())
    return value


def _none_for_nan(value: Any) -> Any:
    """The added fields hold None where a number is undefined (and plain Python numbers), so
    they compare equal after a JSON round trip."""
    return _finite_or_none(value)


def evaluation_json(result: EvaluationResult) -> str:
    """``evaluation.json``: the file the registry's ModelMetrics points at."""
    return json.dumps(result.to_dict(), indent=2, allow_nan=False)


def load_evaluation(fs: Any, evaluation_uri: str, *, run_id: str, then: str = "run the evaluate stage first") -> EvaluationResult:
    """The gate's verdict on a run, read back from its ``evaluation.json``.

    Register and deploy may be scheduled apart from evaluate; they act on the verdict
    stored beside the model, never on one recomputed. ``then`` ends the message when the
    file is missing or unusable: what the user runs to (re)make it.
    """
    try:
        data = json.loads(fs.cat_file(evaluation_uri))
    except FileNotFoundError:
        raise DataError(f"no evaluation for run {run_id} at {evaluation_uri}: {then}") from None
    except ValueError as exc:  # not JSON, or not UTF-8
        raise DataError(f"{evaluation_uri} is not valid JSON ({exc}): {then}") from None
    required = [f.name for f in fields(EvaluationResult) if f.default is MISSING and f.default_factory is MISSING]
    absent = [name for name in required if name not in data] if isinstance(data, dict) else required
    if absent:
        raise DataError(f"{evaluation_uri} is not an updraft evaluation (no {absent[0]!r}): {then}")
    return EvaluationResult.from_dict(data)
