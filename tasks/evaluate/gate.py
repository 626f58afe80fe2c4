"""The gate: whether the model goes on, with sentences saying which comparison decided and
with what numbers, so the report and the registry can show it to a person.
"""

from __future__ import annotations

import math
from typing import Any

from tasks.evaluate.judge import _Judged
from tasks.evaluate.main_score import _Main

#: The gate does not conclude on fewer judged units (test rows; test queries for ranking;
#: labelled test rows for anomaly detection): its intervals are too wide to tell models apart.
MIN_GATE_UNITS = 30
#: ...nor, for binary classification and anomaly detection, with fewer test rows of either class.
MIN_CLASS_ROWS = 5


def _fmt(value: float) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    if value != 0 and (abs(value) >= 1000 or abs(value) < 0.001):
        return f"{value:.4g}"
    return f"{value:.3f}"


def _signed(value: float) -> str:
    return ("+" if value is not None and math.isfinite(value) and value >= 0 else "") + _fmt(value)


def _fmt_ci(ci: list[float]) -> str:
    return f"[{_fmt(ci[0])}, {_fmt(ci[1])}]"


def _gate(
    judged: _Judged, model: _Main, baselines: dict[str, float], *, lift_ci: list[float], min_lift: float,
    champion: dict[str, Any] | None, max_regression: float, confidence: float, model_ci: list[float],
) -> tuple[str, float, bool, str, dict[str, Any]]:
    """Best baseline, lift, verdict, the reason in words, and every check with its numbers.

    Checks, in order: the test set must be big enough to conclude (``MIN_GATE_UNITS`` units
    and ``MIN_CLASS_ROWS`` of each class); the model must beat the best baseline by more than
    ``min_lift`` (a tie with it fails: "more than"); and, with a champion, the one-sided
    ``confidence`` lower bound of (challenger − champion) must be at least ``−max_regression``
    (a tie with the champion, the same predictions, has a bound of exactly 0 and passes:
    "not worse by more than"). A champion that could not be read fails the gate (rerunning
    may compare); one that can never be scored on these rows leaves the decision to the baselines.
    """
    metric = judged.metric
    better = "higher" if metric.greater_is_better else "lower"
    finite = {name: v for name, v in baselines.items() if v is not None and math.isfinite(v)}
    pick = max if metric.greater_is_better else min
    best = pick(finite, key=lambda name: finite[name]) if finite else next(iter(baselines))
    checks: list[dict[str, Any]] = []

    # 1. can the test set say anything at all?
    size_problem = None
    if model.units < MIN_GATE_UNITS:
        size_problem = (
            f"only {model.units} {judged.unit} were judged: the gate needs at least {MIN_GATE_UNITS} to conclude"
            f" (the 95% interval of {metric.label} is {_fmt_ci(model_ci)})"
        )
    elif judged.class_counts is not None:
        if "present" in judged.class_counts:
            size_problem = "the test split holds one class only, so macro-F1 cannot tell the model from the baselines"
        else:
            fewest = min(judged.class_counts.values())
            if fewest < MIN_CLASS_ROWS:
                which = min(judged.class_counts, key=judged.class_counts.get)
                size_problem = (
                    f"the {judged.unit} hold {fewest} of class {which}: {metric.label} needs at least"
                    f" {MIN_CLASS_ROWS} of each class to conclude"
                    + (" (it is undefined with one class only)" if fewest == 0 else f" (95% interval {_fmt_ci(model_ci)})")
                )
    if size_problem is None and not math.isfinite(model.value):
        size_problem = f"{metric.label} of the model is undefined on the test split"
    if size_problem is None and not finite:
        size_problem = f"{metric.label} of every baseline is undefined on the test split"
    checks.append({
        "check": "test_size", "passed": size_problem is None,
        "detail": size_problem or f"{model.units} {judged.unit} judged (at least {MIN_GATE_UNITS} needed)",
    })

    # 2. the baselines
    value_best = finite.get(best, math.nan)
    lift = (model.value - value_best) if metric.greater_is_better else (value_best - model.value)
    head = f"model {metric.label} {_fmt(model.value)}"
    best_text = f"the best baseline ({best}, {_fmt(value_best)})"
    beats = math.isfinite(lift) and lift > min_lift
    if not math.isfinite(lift):
        baseline_text = f"{head} cannot be compared with {best_text}"
    elif beats:
        baseline_text = f"{head} beats {best_text} by {_fmt(lift)} > min_lift {_fmt(min_lift)}"
    elif lift == min_lift:
        baseline_text = (
            f"{head} ties {best_text} (lift {_fmt(lift)} = min_lift {_fmt(min_lift)}): the gate asks for a lift of more"
            " than min_lift, so a tie does not pass"
        )
    elif lift > 0:
        baseline_text = f"{head} beats {best_text} by only {_fmt(lift)}, not by more than min_lift {_fmt(min_lift)}"
    else:
        baseline_text = (
            f"{head} does not beat {best_text} ({better} is better; lift {_fmt(lift)}, min_lift {_fmt(min_lift)})"
        )
    if math.isfinite(lift) and all(v is not None and math.isfinite(v) for v in lift_ci):
        baseline_detail = baseline_text + f"; paired 95% interval of the lift {_fmt_ci(lift_ci)}"
    else:
        baseline_detail = baseline_text
    checks.append({"check": "baseline", "passed": bool(beats), "detail": baseline_detail, "best_baseline": best,
                   "lift": lift, "lift_ci": lift_ci, "min_lift": min_lift})

    # 3. the champion
    champion_ok, champion_text = True, None
    status = (champion or {}).get("status", "none")
    level = f"{100 * confidence:g}%"
    if status == "none":
        champion_text = "no champion to compare with (first deployment): the baselines decide"
    elif status == "unavailable":
        champion_ok = False
        champion_text = (
            f"the champion could not be read ({champion['reason']}), so the gate cannot tell whether this model"
            " regresses and fails safe: rerun the evaluate stage once the registry and the champion's artifact are reachable"
        )
    elif status == "incomparable":
        champion_text = f"{champion['reason']}; the champion comparison is skipped and the baselines decide"
    else:
        diff, lower = champion["difference"], champion["lower_bound"]
        who = f"the champion{' (run ' + str(champion['run_id']) + ')' if champion.get('run_id') else ''}"
        numbers = (
            f"{metric.label} {_fmt(champion['challenger'])} vs {who} {_fmt(champion['value'])}, difference"
            f" {_signed(diff)} ({better} is better), one-sided {level} lower bound {_signed(lower)}"
            f" (paired bootstrap over {champion['units']} {judged.unit})"
        )
        if not math.isfinite(lower):
            champion_ok = False
            champion_text = f"{numbers}: the difference is undefined, so the gate cannot conclude and fails safe"
        elif lower >= -max_regression:
            champion_text = f"{numbers} >= -max_regression {_fmt(max_regression)}: not a regression"
            if diff == 0 and lower == 0:
                champion_text += " (a tie: the two models score these rows identically)"
        else:
            champion_ok = False
            champion_text = (
                f"{numbers} < -max_regression {_fmt(max_regression)}: at {level} confidence this model may be worse"
                f" than the champion by more than max_regression"
            )
    checks.append({"check": "champion", "passed": champion_ok if status in ("compared", "unavailable") else None,
                   "status": status, "detail": champion_text})

    passed = size_problem is None and beats and champion_ok
    if size_problem is not None:
        decided_by = "test_size"
        reason = f"{baseline_text}, but {size_problem}, so the gate fails safe: add data or raise split.test"
    elif not beats:
        decided_by = "baseline"
        reason = baseline_text
    elif not champion_ok:
        decided_by = "champion"
        reason = f"{baseline_text}; but {champion_text}"
    else:
        decided_by = "champion" if status == "compared" else "baseline"
        reason = f"{baseline_text}; {champion_text}"
    if size_problem is None and not beats and champion_text and status != "none":
        reason += f" (champion: {champion_text})"
    gate = {
        "passed": bool(passed),
        "decided_by": decided_by,
        "checks": checks,
        "min_lift": float(min_lift),
        "max_regression": float(max_regression),
        "confidence": float(confidence),
        "min_units": MIN_GATE_UNITS,
    }
    return best, float(lift), bool(passed), reason, gate
