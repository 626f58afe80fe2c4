"""The human-readable run summary printed at the end of ``updraft run`` and ``updraft demo``."""

from __future__ import annotations

from typing import Any


def _metric_name(name: str) -> str:
    # tasks.evaluate imports scikit-learn; the summary only needs its labels when a run evaluated
    from tasks.evaluate import metric_label

    return metric_label(name)


def _number(value: Any) -> str:
    """A metric for a person: four decimals, or ``n/a`` where it could not be computed (no labels, one class)."""
    return f"{value:.4f}" if isinstance(value, (int, float)) and value == value else "n/a"


def format_summary(summary: dict[str, Any]) -> str:
    """A few aligned lines: what happened at each stage, the decision, and where to look next."""
    lines = [f"updraft run {summary.get('run_id')} on the {summary.get('target')} target"]

    def row(stage: str, text: str) -> None:
        lines.append(f"  {stage:<11} {text}")

    ingest = summary.get("ingest") or {}
    if ingest:
        rejected = len(ingest.get("files_rejected") or [])
        row(
            "ingest",
            f"{ingest.get('files')} files, {ingest.get('rows_in')} rows in: {ingest.get('rows_curated')} curated, "
            f"{ingest.get('rows_quarantined')} quarantined"
            + (f", {rejected} files rejected" if rejected else "")
            + (f", {ingest['files_skipped']} already ingested" if ingest.get("files_skipped") else "")
            + f"  ({ingest.get('quarantine_uri')})",
        )
    prep = summary.get("preprocess") or {}
    if prep:
        rows = prep.get("rows") or {}
        row("preprocess", " / ".join(f"{k} {v}" for k, v in rows.items()) + f" rows, {len(prep.get('feature_names') or [])} features")
    train = summary.get("train") or {}
    if train:
        metrics = ", ".join(f"{k}={v:.4f}" for k, v in (train.get("metrics") or {}).items() if isinstance(v, (int, float)))
        row("train", f"job {train.get('job_name')}" + (f"  ({metrics})" if metrics else ""))
    ev = summary.get("evaluate") or {}
    if ev:
        name = _metric_name(ev.get("metric", "metric"))
        best = ev.get("best_baseline")
        baselines = ev.get("baselines") or {}
        ci = ev.get("model_ci")
        ci_text = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci and None not in ci else ""
        row(
            "evaluate",
            f"{name} model {_number(ev.get('model'))}{ci_text} vs best baseline {best} {_number(baselines.get(best))}: "
            + ("PASSED" if ev.get("passed") else "FAILED"),
        )
        if ev.get("reason"):
            row("", str(ev["reason"]))
    reg = summary.get("register") or {}
    if reg:
        row("register", f"{reg.get('model_package_arn') or '(no registry on this target)'}  ({reg.get('approval_status')})")
    dep = summary.get("deploy") or {}
    if dep:
        if dep.get("skipped"):
            row("deploy", f"skipped: {dep['skipped']}")
        else:
            row("deploy", f"endpoint {dep.get('endpoint_name')} at {dep.get('url')}")
    demo = summary.get("demo") or {}
    if demo.get("predictions") is not None:
        preds = ", ".join(f"{p:.3f}" if isinstance(p, float) else str(p) for p in demo["predictions"])
        row("invoke", f"{len(demo['predictions'])} rows -> predictions [{preds}]")
        if demo.get("endpoint_deleted"):
            row("", "demo endpoint deleted (use --keep-endpoint to leave it running)")
    if summary.get("report"):
        row("report", str(summary["report"]))
    timings = summary.get("timings_s") or {}
    if timings:
        total = sum(timings.values())
        row("time", f"{total:.1f} s  (" + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()) + ")")
    return "\n".join(lines)
