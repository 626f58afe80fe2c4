"""The run report: one self-contained HTML page a person reads to decide whether to trust a model.

Self-contained (inline CSS, plots as inline PNG) so it can be mailed, attached to a
ticket or opened straight from S3 without a server. Everything that came from a user
(names, file keys, rejection reasons, class labels) is escaped; a stage that did not run
is shown as not run rather than breaking the page.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.aws.target import Target
from tasks.config import PipelineConfig
from tasks.evaluate import EvaluationResult, metric_label
from tasks.layout import Layout
from tasks.resume import SAFE_TO_RETRY
from tasks.runs import run_dir

_CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d232a;max-width:980px;margin:2em auto;padding:0 1em}
h1{font-size:1.6em;margin:.2em 0}h2{font-size:1.2em;margin:1.6em 0 .5em;border-bottom:1px solid #dde3ea;padding-bottom:.2em}
code{font:13px ui-monospace,SFMono-Regular,Menlo,monospace;background:#f3f5f8;padding:.05em .3em;border-radius:3px;word-break:break-all}
table{border-collapse:collapse;margin:.4em 0 1em}th,td{padding:.3em .8em;border-bottom:1px solid #e6eaef;text-align:left;vertical-align:top}
th{background:#f6f8fa;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.model td{font-weight:600}tr.best td{background:#fffbe6}
.meta{color:#56606b}.muted{color:#8a939d;font-style:italic}
.verdict{padding:.7em 1em;border-radius:6px;margin:1em 0;font-size:1.05em}
.verdict.pass{background:#e7f6ec;border:1px solid #8fd19e}.verdict.fail{background:#fdecea;border:1px solid #f1a9a0}
.verdict.none{background:#f3f5f8;border:1px solid #d0d7de}
.bar{background:#6f9fd8;height:.8em;border-radius:2px;display:inline-block;vertical-align:middle}
img.plot{max-width:100%;border:1px solid #e6eaef;border-radius:4px}
"""

_SECONDARY_NAMES = {
    "queries": "test queries judged", "queries_unjudged": "test queries not judged (one row, or none relevant)",
    "precision_at_k": "precision@k (k = true anomalies)", "anomaly_rate": "anomaly rate (precision@k of a random score)",
    "labelled": "labelled test rows", "anomalies": "anomalies among them",
}
#: The gate's checks, as the report names them.
_CHECK_NAMES = {"test_size": "enough test data", "baseline": "beats the best baseline", "champion": "no regression vs the champion"}
#: Secondary entries that count things: shown as whole numbers.
_SECONDARY_COUNTS = frozenset({"queries", "queries_unjudged", "labelled", "anomalies"})
_STAGE_ORDER = ("preflight", "ingest", "preprocess", "train", "evaluate", "register", "deploy", "report")


@dataclass(frozen=True)
class ReportResult:
    path: str
    uri: str


# --------------------------------------------------------------------------------------
# formatting helpers: every value passes through one of these, so nothing reaches the page unescaped


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "n/a"
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.{digits}g}"
        return f"{value:.{digits}f}"
    return _e(value)


def _code(value: Any) -> str:
    return "<span class='muted'>none</span>" if value in (None, "") else f"<code>{_e(value)}</code>"


def _table(
    header: Iterable[str],
    rows: Iterable[Iterable[str]],
    row_classes: Iterable[str] | None = None,
    numeric: Iterable[int] = (),
) -> str:
    """Cells are already-escaped HTML fragments; the ``numeric`` columns align right."""
    head = "".join(f"<th>{h}</th>" for h in header)
    right = set(numeric)
    classes = list(row_classes) if row_classes is not None else None
    body = []
    for i, row in enumerate(rows):
        cls = f" class='{classes[i]}'" if classes and classes[i] else ""
        cells = "".join(f"<td class='num'>{c}</td>" if j in right else f"<td>{c}</td>" for j, c in enumerate(row))
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _not_run(stage: str) -> str:
    return f"<p class='muted'>The {_e(stage)} stage did not run.</p>"


def _as_dict(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, dict):
        return value
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    return {}


# --------------------------------------------------------------------------------------
# plots (matplotlib's Agg canvas directly: no pyplot global state, safe in worker threads)


def _png(fig: Any, alt: str) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f"<img class='plot' alt='{_e(alt)}' src='data:image/png;base64,{data}'>"


def _plain_text(text: str) -> str:
    # Matplotlib reads $...$ as mathematics; a class called "$100" must print as itself.
    return str(text).replace("$", r"\$")


def _roc_plot(curves: dict[str, Any]) -> str:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.6, 4.4))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="#b0b7bf", linestyle=":", linewidth=1)
    names = ["model", *[n for n in curves if n != "model"]]
    for name in names:
        curve = curves.get(name)
        if not curve:
            continue
        auc = curve.get("auc")
        label = _plain_text(name) + (f" (AUC {auc:.3f})" if isinstance(auc, (int, float)) else "")
        ax.plot(curve["fpr"], curve["tpr"], label=label, linewidth=2.4 if name == "model" else 1.3)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("ROC curve on the test split")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.legend(loc="lower right", fontsize=8)
    return _png(fig, "ROC curves of the model and the baselines")


def _scatter_plot(points: dict[str, Any]) -> str:
    from matplotlib.figure import Figure

    actual, predicted = points.get("actual") or [], points.get("predicted") or []
    fig = Figure(figsize=(5.2, 4.6))
    ax = fig.add_subplot()
    ax.scatter(actual, predicted, s=8, alpha=0.5, color="#2f6db5", edgecolors="none")
    if actual:
        lo, hi = min(min(actual), min(predicted)), max(max(actual), max(predicted))
        ax.plot([lo, hi], [lo, hi], color="#b0b7bf", linestyle=":", linewidth=1)
    ax.set_xlabel("actual")
    ax.set_ylabel("predicted")
    ax.set_title(f"Predicted vs actual ({len(actual)} sampled test rows)")
    return _png(fig, "predicted against actual values on the test split")


def _confusion_plot(confusion: dict[str, Any]) -> str:
    import numpy as np
    from matplotlib.figure import Figure

    matrix = np.asarray(confusion.get("matrix") or [[0]])
    labels = [_plain_text(v) for v in confusion.get("labels") or range(matrix.shape[0])]
    size = min(2.5 + 0.45 * matrix.shape[0], 10)
    fig = Figure(figsize=(size + 1, size))
    ax = fig.add_subplot()
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046)
    ticks = range(matrix.shape[0])
    ax.set_xticks(list(ticks), labels=labels, rotation=45, ha="right")
    ax.set_yticks(list(ticks), labels=labels)
    if matrix.shape[0] <= 20:
        threshold = matrix.max() / 2 if matrix.size else 0
        for i in ticks:
            for j in ticks:
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if matrix[i, j] > threshold else "#1d232a")
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title("Confusion matrix on the test split")
    return _png(fig, "confusion matrix of the model on the test split")


def _ndcg_plot(curves: dict[str, Any]) -> str:
    from matplotlib.figure import Figure

    ks = curves.get("k") or []
    fig = Figure(figsize=(5.6, 4.4))
    ax = fig.add_subplot()
    names = ["model", *[n for n in curves if n not in ("model", "k")]]
    for name in names:
        values = curves.get(name)
        if values and len(values) == len(ks):
            ax.plot(ks, values, marker="o", markersize=3, label=_plain_text(name), linewidth=2.4 if name == "model" else 1.3)
    ax.set_xlabel("k (top rows of each query)")
    ax.set_ylabel("NDCG@k, mean over test queries")
    ax.set_title("Ranking quality by cut-off on the test split")
    ax.set_ylim(0, 1.01)
    ax.legend(loc="lower right", fontsize=8)
    return _png(fig, "NDCG at each cut-off of the model and the baselines")


def _plot(plots: dict[str, Any]) -> str:
    if plots.get("roc"):
        return _roc_plot(plots["roc"])
    if plots.get("ndcg_at_k"):
        return _ndcg_plot(plots["ndcg_at_k"])
    if plots.get("scatter"):
        return _scatter_plot(plots["scatter"])
    if plots.get("confusion"):
        return _confusion_plot(plots["confusion"])
    return "<p class='muted'>No plot data in the evaluation.</p>"


# --------------------------------------------------------------------------------------
# sections


def _header(summary: dict[str, Any], ev: dict[str, Any]) -> str:
    config = summary.get("config") or {}
    run_id = summary.get("run_id")
    facts = [
        ("dataset", config.get("name")),
        ("target", summary.get("target")),
        ("task", config.get("task")),
        ("label", config.get("label")),
    ]
    facts_html = " · ".join(f"{k} {_code(v)}" for k, v in facts if v not in (None, ""))
    source_uri = str(config.get("source") or "")
    if source_uri and not source_uri.startswith("s3://") and config.get("bucket"):
        source_uri = f"s3://{config['bucket']}/{source_uri}"  # a prefix inside the bucket
    source = f"<p class='meta'>source {_code(source_uri)}</p>" if source_uri else ""
    if ev:
        passed = bool(ev.get("passed"))
        verdict = (
            f"<div class='verdict {'pass' if passed else 'fail'}'><strong>Gate {'passed' if passed else 'failed'}.</strong> "
            f"{_e(ev.get('reason') or '')}</div>"
        )
    else:
        verdict = "<div class='verdict none'><strong>No gate decision:</strong> the evaluation did not run.</div>"
    return f"<header><h1>updraft run {_code(run_id)}</h1><p class='meta'>{facts_html}</p>{source}{verdict}</header>"


def _ci(ci: Any) -> str:
    return f"[{_num(ci[0])}, {_num(ci[1])}]" if isinstance(ci, (list, tuple)) and len(ci) == 2 else "—"


def _evaluation_section(ev: dict[str, Any]) -> str:
    if not ev:
        return "<section id='evaluation'><h2>Model vs baselines</h2>" + _not_run("evaluate") + "</section>"
    name = metric_label(str(ev.get("metric", "metric")))
    higher = bool(ev.get("greater_is_better", True))
    model = ev.get("model")
    ci_text = _ci(ev.get("model_ci") or [])
    baselines = ev.get("baselines") or {}
    baseline_ci = ev.get("baseline_ci") or {}
    best = ev.get("best_baseline")
    rows = [["<strong>model</strong>", _num(model), ci_text, ""]]
    classes = ["model"]
    for bname, value in baselines.items():
        diff = None
        if isinstance(model, (int, float)) and isinstance(value, (int, float)):
            diff = (model - value) if higher else (value - model)
        rows.append([_e(bname) + (" (best)" if bname == best else ""), _num(value),
                     _ci(baseline_ci[bname]) if bname in baseline_ci else "", _num(diff)])
        classes.append("best" if bname == best else "")
    direction = "higher is better" if higher else "lower is better"
    table = _table(
        ["predictor", f"{_e(name)} <span class='meta'>({direction})</span>", "95% CI (bootstrap)", "model's lead"],
        rows,
        classes,
        numeric=(1, 3),
    )
    lift_ci = ev.get("lift_ci") or []
    gate = _table(
        ["best baseline", "lift", "lift 95% CI (paired)", "min_lift", "decision"],
        [[_e(best), _num(ev.get("lift")), _ci(lift_ci), _num(ev.get("min_lift")),
          "passed" if ev.get("passed") else "<strong>failed</strong>"]],
        numeric=(1, 3),
    )
    n_test = ev.get("n_test")
    intro = f"<p class='meta'>Scored on {_num(n_test)} test rows; baselines fitted on the train split.</p>"
    return (
        "<section id='evaluation'><h2>Model vs baselines</h2>" + intro + table + gate
        + f"<p>{_e(ev.get('reason') or '')}</p>" + _gate_checks(ev.get("gate") or {}) + _metrics_table(ev)
        + _threshold_line(ev.get("threshold")) + _plot(ev.get("plots") or {}) + "</section>"
        + _calibration_section(ev.get("calibration")) + _champion_section(ev.get("champion"), name, higher)
        + _slices_section(ev.get("slices"))
    )


def _gate_checks(gate: dict[str, Any]) -> str:
    checks = gate.get("checks") or []
    if not checks:
        return ""
    rows = []
    for check in checks:
        passed = check.get("passed")
        result = "passed" if passed else ("not applied" if passed is None else "<strong>failed</strong>")
        rows.append([_e(_CHECK_NAMES.get(check.get("check"), check.get("check"))), result, _e(check.get("detail") or "")])
    decided = gate.get("decided_by")
    head = f"<h3>The gate's checks</h3><p class='meta'>decided by: {_e(decided)}</p>" if decided else "<h3>The gate's checks</h3>"
    return head + _table(["check", "result", "numbers"], rows)


def _metrics_table(ev: dict[str, Any]) -> str:
    """Every metric of the model with its interval; then what ``secondary`` holds beyond them (counts, rates)."""
    metrics = ev.get("metrics") or {}
    secondary = ev.get("secondary") or {}
    parts = []
    if metrics:
        rows = []
        for key, entry in metrics.items():
            entry = entry if isinstance(entry, dict) else {"value": entry}
            direction = "higher is better" if entry.get("greater_is_better", True) else "lower is better"
            rows.append([_e(metric_label(key)), _num(entry.get("value")), _ci(entry.get("ci")), direction])
        parts.append("<h3>Metrics of the model</h3>" + _table(["metric", "value", "95% CI (bootstrap)", ""], rows, numeric=(1,)))
    rest = {k: v for k, v in secondary.items() if k not in metrics}
    if rest:
        title = "Other figures" if metrics else "Other metrics of the model"
        parts.append(
            f"<h3>{title}</h3>"
            + _table(["metric", "value"], [[_e(_SECONDARY_NAMES.get(k, metric_label(k))), _num(_count(k, v))] for k, v in rest.items()], numeric=(1,))
        )
    return "".join(parts)


def _threshold_line(threshold: Any) -> str:
    if not isinstance(threshold, dict) or threshold.get("value") is None:
        return ""
    text = f"Decision threshold for F1, recall, precision and accuracy: {_num(threshold['value'])} ({_e(threshold.get('rule'))}, chosen on {_e(threshold.get('chosen_on'))}"
    if threshold.get("validation_f1") is not None:
        text += f"; F1 there {_num(threshold['validation_f1'])}"
    text += ")."
    if threshold.get("note"):
        text += f" {_e(threshold['note'])}."
    return f"<p class='meta'>{text}</p>"


def _calibration_section(calibration: Any) -> str:
    if not isinstance(calibration, dict) or not calibration.get("bins"):
        return ""
    rows = [
        [f"{_num(b.get('lower'), 1)}–{_num(b.get('upper'), 1)}", _num(b.get("count")), _num(b.get("mean_predicted")),
         _num(b.get("observed_rate"))]
        for b in calibration["bins"]
    ]
    return (
        "<section id='calibration'><h2>Calibration</h2>"
        f"<p>Expected calibration error {_num(calibration.get('ece'))}, Brier score {_num(calibration.get('brier'))}"
        " (lower is better for both). A calibrated model's observed rate matches its mean predicted probability in every bin.</p>"
        + _table(["predicted probability", "test rows", "mean predicted", "observed rate"], rows, numeric=(1, 2, 3))
        + "</section>"
    )


def _champion_section(champion: Any, name: str, higher: bool) -> str:
    head = "<section id='champion'><h2>Challenger vs champion</h2>"
    if not isinstance(champion, dict):
        return head + "<p>No champion: no model serves the endpoint yet (first deployment), so the baselines decide.</p></section>"
    facts = [f"model data {_code(champion['source'])}"] if champion.get("source") else []
    facts += [f"run {_code(champion['run_id'])}"] if champion.get("run_id") else []
    source = f"<p class='meta'>The champion (the model serving the endpoint): {', '.join(facts)}</p>" if facts else ""
    status = champion.get("status")
    if status != "compared":
        what = "could not be read" if status == "unavailable" else "was not compared"
        return head + source + f"<p>The champion {what}: {_e(champion.get('reason') or '')}.</p></section>"
    confidence = champion.get("confidence") or 0.95
    level = f"{100 * confidence:g}%"
    two_sided = f"{100 * (2 * confidence - 1):g}%"
    direction = "higher is better" if higher else "lower is better"
    table = _table(
        ["model", f"{_e(name)} <span class='meta'>({direction})</span>", "95% CI"],
        [["<strong>challenger (this run)</strong>", _num(champion.get("challenger")), ""],
         ["champion", _num(champion.get("value")), _ci(champion.get("ci"))]],
        ["model", ""],
        numeric=(1,),
    )
    diff = _table(
        ["difference (challenger better when positive)", f"{two_sided} CI (paired)", f"one-sided {level} lower bound",
         "allowed regression", "share of resamples regressing more"],
        [[_num(champion.get("difference")), _ci(champion.get("difference_ci")), _num(champion.get("lower_bound")),
          _num(champion.get("max_regression")), _num(champion.get("p_regression"))]],
        numeric=(0, 2, 3, 4),
    )
    where = f"<p class='meta'>Both scored on {_e(champion.get('scored_on'))}; {_num(champion.get('units'))} units resampled together.</p>"
    return head + source + where + table + diff + "</section>"


def _slices_section(slices: Any) -> str:
    if not isinstance(slices, dict):
        return ""
    column = slices.get("column")
    head = f"<section id='slices'><h2>By {_e(column)}</h2>"
    if slices.get("problem"):
        return head + f"<p>No slices: {_e(slices['problem'])}.</p></section>"
    name = metric_label(str(slices.get("metric") or ""))
    entries = slices.get("rows") or []
    unit = slices.get("unit") or "units"
    # Ranking counts queries and anomaly detection labelled rows: then both counts are shown.
    by_units = any(row.get("units") != row.get("rows") for row in entries)
    rows = []
    for row in entries:
        flag = f"small (under {_num(slices.get('min_units'))} {_e(unit)}): read with care" if row.get("small") else ""
        counts = [_num(row.get("rows"))] + ([_num(row.get("units"))] if by_units else [])
        rows.append([_e(row.get("value")), *counts, _num(row.get("model")), _ci(row.get("ci")),
                     _num(row.get("best_baseline")), flag])
    count_heads = ["test rows"] + ([_e(unit)] if by_units else [])
    first = 1 + len(count_heads)
    table = _table(
        ["value", *count_heads, f"model {_e(name)}", "95% CI", f"{_e(slices.get('best_baseline') or 'best baseline')}", ""],
        rows, numeric=(*range(1, first + 1), first + 2),
    )
    more = ""
    if slices.get("other_values"):
        more = f"<p class='meta'>{_num(slices['other_values'])} rarer values ({_num(slices.get('other_rows'))} rows) are not shown.</p>"
    return head + table + more + "</section>"


def _count(key: str, value: Any) -> Any:
    """A count stored as a float (secondary metrics are floats in the JSON) shown as an integer."""
    if key in _SECONDARY_COUNTS and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _rejected_file(item: Any) -> list[str]:
    """File, reason and where a copy was kept; ingest writes ``{"uri", "reason", "copy"}``."""
    if isinstance(item, dict):
        name = next((item[k] for k in ("uri", "file", "key", "path", "name") if item.get(k)), None)
        reason = item.get("reason") or item.get("error")
        if name is None and reason is None:
            return ["", _e(json.dumps(item, default=str)), ""]
        copy = item.get("copy")
        return [_code(name), _e(reason or ""), _code(copy) if copy else ""]
    if isinstance(item, (list, tuple)) and len(item) == 2:
        return [_code(item[0]), _e(item[1]), ""]
    return [_code(item), "", ""]


def _data_section(summary: dict[str, Any]) -> str:
    parts = ["<section id='data'><h2>Data</h2><h3>Ingest</h3>"]
    ingest = summary.get("ingest")
    if ingest:
        parts.append(
            _table(
                ["files read", "already ingested", "rows in", "curated", "quarantined"],
                [[_num(ingest.get("files")), _num(ingest.get("files_skipped", 0)), _num(ingest.get("rows_in")),
                  _num(ingest.get("rows_curated")), _num(ingest.get("rows_quarantined"))]],
                numeric=(0, 1, 2, 3, 4),
            )
        )
        for key, label in (("curated_uri", "curated"), ("quarantine_uri", "quarantine")):
            if ingest.get(key):
                parts.append(f"<p class='meta'>{label}: {_code(ingest[key])}</p>")
        rejected = ingest.get("files_rejected") or []
        if rejected:
            parts.append(f"<h3>Files rejected ({len(rejected)})</h3>")
            parts.append(_table(["file", "reason", "copy kept at"], [_rejected_file(item) for item in rejected]))
        else:
            parts.append("<p class='meta'>No file was rejected.</p>")
    else:
        parts.append(_not_run("ingest"))
    parts.append("<h3>Splits</h3>")
    prep = summary.get("preprocess")
    rows = (prep or {}).get("rows") or {}
    if rows:
        total = sum(v for v in rows.values() if isinstance(v, int)) or None
        parts.append(
            _table(
                ["split", "rows", "share"],
                [[_e(k), _num(v), f"{100 * v / total:.1f}%" if total and isinstance(v, int) else ""] for k, v in rows.items()],
                numeric=(1, 2),
            )
        )
        features = prep.get("feature_names") or []
        if features:
            parts.append(f"<p class='meta'>{len(features)} features: " + ", ".join(_code(f) for f in features) + "</p>")
    else:
        parts.append(_not_run("preprocess"))
    parts.append("</section>")
    return "".join(parts)


def _training_section(summary: dict[str, Any]) -> str:
    train = summary.get("train")
    body = _not_run("train")
    if train:
        body = _table(["training job", "model artifact"], [[_code(train.get("job_name")), _code(train.get("model_uri"))]])
        metrics = train.get("metrics") or {}
        if metrics:
            body += "<h3>Training metrics</h3>" + _table(
                ["metric", "value"], [[_e(k), _num(v)] for k, v in metrics.items()], numeric=(1,)
            )
        if train.get("tuning"):
            body += _tuning_table(train["tuning"])
    return f"<section id='training'><h2>Training</h2>{body}</section>"


def _tuning_table(tuning: dict[str, Any]) -> str:
    """The hyperparameter search: the best trial, then every trial (or a tuning job's status counts)."""
    best = tuning.get("best_trial")
    head = (
        f"<h3>Hyperparameter tuning</h3><p>Objective {_code(tuning.get('objective'))} "
        f"({'maximised' if tuning.get('maximize', True) else 'minimised'}"
        + (f", {_e(tuning['backend'])}" if tuning.get("backend") else "")
        + f"): best trial {_code(best)} with {_num(tuning.get('best_value'))}.</p>"
    )
    trials = tuning.get("trials")
    if isinstance(trials, dict):  # a SageMaker tuning job reports counts by status
        return head + _table(["trials", "count"], [[_e(k), _num(v)] for k, v in trials.items()], numeric=(1,))
    if not isinstance(trials, list) or not trials:
        return head
    names = sorted({k for t in trials if isinstance(t, dict) for k in (t.get("hyperparameters") or {})})
    rows, classes = [], []
    for t in trials:
        if not isinstance(t, dict):
            continue
        hp = t.get("hyperparameters") or {}
        rows.append([_num(t.get("trial")), _code(t.get("job_name")), _e(t.get("state") or ""), _num(t.get("objective")),
                     *[_num(hp.get(n)) for n in names], _num(t.get("duration_s"), 1), _e(t.get("error") or "")])
        classes.append("best" if t.get("job_name") == best else "")
    return head + _table(
        ["trial", "training job", "state", "objective", *[_e(n) for n in names], "seconds", "error"],
        rows, classes, numeric=(0, 3, *range(4, 4 + len(names) + 1)),
    )


def _registry_section(summary: dict[str, Any]) -> str:
    reg = summary.get("register")
    if not reg:
        body = _not_run("register")
    elif not reg.get("model_package_arn"):
        body = f"<p>Not registered: {_e(reg.get('skipped') or 'no model registry on this target')}.</p>"
    else:
        body = _table(
            ["model package", "group", "version", "approval"],
            [[_code(reg.get("model_package_arn")), _e(reg.get("model_package_group") or ""), _num(reg.get("version")),
              _e(reg.get("approval_status") or "")]],
        )
    return f"<section id='registry'><h2>Model registry</h2>{body}</section>"


def _endpoint_section(summary: dict[str, Any]) -> str:
    dep = summary.get("deploy")
    if not dep:
        body = _not_run("deploy")
    elif dep.get("skipped"):
        body = f"<p>Not deployed: {_e(dep['skipped'])}.</p>"
        if dep.get("endpoint_name"):
            body += f"<p class='meta'>endpoint {_code(dep['endpoint_name'])}</p>"
    else:
        url = dep.get("url")
        body = _table(["endpoint", "URL"], [[_code(dep.get("endpoint_name")), _code(url)]])
        if url:
            body += (
                "<p class='meta'>Try it: <code>curl -X POST -H 'Content-Type: text/csv' --data-binary @rows.csv "
                f"{_e(url)}</code></p>"
            )
    return f"<section id='endpoint'><h2>Endpoint</h2>{body}</section>"


def _timings_section(summary: dict[str, Any]) -> str:
    timings = {k: v for k, v in (summary.get("timings_s") or {}).items() if isinstance(v, (int, float))}
    if not timings:
        return "<section id='timings'><h2>Timings</h2><p class='muted'>No timings recorded.</p></section>"
    ordered = sorted(timings, key=lambda s: (_STAGE_ORDER.index(s) if s in _STAGE_ORDER else len(_STAGE_ORDER), s))
    longest = max(timings.values()) or 1.0
    rows = [
        [_e(stage), f"{timings[stage]:.1f} s", f"<span class='bar' style='width:{160 * timings[stage] / longest:.0f}px'></span>"]
        for stage in ordered
    ]
    rows.append(["<strong>total</strong>", f"{sum(timings.values()):.1f} s", ""])
    return f"<section id='timings'><h2>Timings</h2>{_table(['stage', 'seconds', ''], rows, numeric=(1,))}</section>"


def render_report(summary: dict[str, Any], evaluation: EvaluationResult | dict[str, Any] | None) -> str:
    """The whole report as one HTML string; renders whatever stages the summary holds."""
    summary = summary or {}
    ev = _as_dict(evaluation) or _as_dict(summary.get("evaluate"))
    run_id = summary.get("run_id") or "unknown"
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = "".join(
        [
            _header(summary, ev),
            _evaluation_section(ev),
            _data_section(summary),
            _training_section(summary),
            _registry_section(summary),
            _endpoint_section(summary),
            _timings_section(summary),
            f"<footer class='meta'><p>Generated by updraft on {generated}.</p></footer>",
        ]
    )
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>updraft run {_e(run_id)}</title><style>{_CSS}</style></head><body>{body}</body></html>\n"
    )


def write_report(html_text: str, path: Path) -> Path:
    """Write the report where the run keeps its local files; returns the path written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html_text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------
# Prefect task: the only place that touches a Target.


@task(
    name="report",
    cache_policy=NO_CACHE,
    **SAFE_TO_RETRY,
)
def report_stage(
    config: PipelineConfig,
    target: Target,
    run_id: str,
    summary: dict[str, Any],
    evaluation: EvaluationResult | dict[str, Any] | None,
) -> ReportResult:
    """Write the report beside the run's local files and upload it next to the run's models."""
    page = render_report(summary, evaluation)
    path = write_report(page, run_dir(run_id) / "report.html")
    uri = Layout(config.bucket, config.name).report(run_id)
    # The content type lets the S3 console and presigned URLs open it in a browser.
    target.filesystem().pipe_file(uri, page.encode("utf-8"), ContentType="text/html; charset=utf-8")
    return ReportResult(path=str(path), uri=uri)
