"""The run report a person reads: what happened at each stage, the gate's verdict, a plot."""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from tasks.report import render_report, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _evaluation(**overrides: Any) -> dict[str, Any]:
    ev = {
        "task": "binary_classification",
        "metric": "roc_auc",
        "greater_is_better": True,
        "model": 0.9123,
        "model_ci": [0.8871, 0.9342],
        "baselines": {"constant": 0.5, "logistic_regression": 0.8011, "decision_tree": 0.7702},
        "best_baseline": "logistic_regression",
        "lift": 0.1112,
        "min_lift": 0.0,
        "passed": True,
        "reason": "model ROC-AUC 0.912 beats the best baseline (logistic_regression, 0.801) by 0.111 > min_lift 0.000",
        "secondary": {"pr_auc": 0.7345, "log_loss": 0.3121, "accuracy": 0.8765},
        "n_test": 1500,
        "plots": {
            "roc": {
                "model": {"fpr": [0.0, 0.1, 0.3, 1.0], "tpr": [0.0, 0.6, 0.9, 1.0], "auc": 0.9123},
                "constant": {"fpr": [0.0, 1.0], "tpr": [0.0, 1.0], "auc": 0.5},
                "logistic_regression": {"fpr": [0.0, 0.2, 1.0], "tpr": [0.0, 0.6, 1.0], "auc": 0.8011},
            }
        },
    }
    ev.update(overrides)
    return ev


def _summary(**overrides: Any) -> dict[str, Any]:
    summary = {
        "run_id": "20261126-153000-a1b2c3",
        "target": "embedded",
        "config": {"name": "fraud-claims", "bucket": "updraft-demo", "source": "s3://updraft-demo/raw/claims/",
                   "task": "binary_classification", "label": "is_fraud"},
        "ingest": {
            "files": 4, "rows_in": 10234, "rows_curated": 10111, "rows_quarantined": 123,
            "files_rejected": [{"uri": "s3://updraft-demo/raw/claims/broken.csv", "reason": "missing column 'claim_amount'",
                                "copy": "s3://updraft-demo/quarantine/20261126-153000-a1b2c3/files/broken.csv"}],
            "quarantine_uri": "s3://updraft-demo/quarantine/20261126-153000-a1b2c3/",
        },
        "preprocess": {"rows": {"train": 7077, "validation": 1517, "test": 1517}, "feature_names": ["age", "amount"]},
        "train": {"job_name": "fraud-claims-20261126-153000", "model_uri": "s3://updraft-demo/models/x/model.tar.gz",
                  "metrics": {"validation:auc": 0.9051}},
        "evaluate": _evaluation(),
        "register": {"model_package_group": "fraud-claims",
                     "model_package_arn": "arn:aws:sagemaker:us-east-1:123456789012:model-package/fraud-claims/3",
                     "version": 3, "approval_status": "Approved"},
        "deploy": {"endpoint_name": "fraud-claims", "url": "http://127.0.0.1:18080/invocations", "skipped": None},
        "timings_s": {"ingest": 3.21, "preprocess": 5.5, "train": 12.04, "evaluate": 1.2, "register": 0.1, "deploy": 2.7},
    }
    summary.update(overrides)
    return summary


def _text(page: str) -> str:
    """The page as a reader sees it: tags dropped, entities decoded, whitespace collapsed."""

    class Text(HTMLParser):
        def __init__(self) -> None:
            super().__init__(convert_charrefs=True)
            self.parts: list[str] = []
            self.skip = False

        def handle_starttag(self, tag: str, attrs: Any) -> None:
            self.skip = tag in ("style", "script")

        def handle_endtag(self, tag: str) -> None:
            self.skip = False

        def handle_data(self, data: str) -> None:
            if not self.skip:
                self.parts.append(data)

    parser = Text()
    parser.feed(page)
    return re.sub(r"\s+", " ", " ".join(parser.parts))


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)]


def test_the_report_shows_counts_metrics_the_gate_and_a_roc_plot() -> None:
    summary = _summary()
    page = render_report(summary, summary["evaluate"])
    text = _text(page)

    assert page.startswith("<!DOCTYPE html>")
    assert "updraft run 20261126-153000-a1b2c3" in text
    assert "source s3://updraft-demo/raw/claims/ " in text
    for count in ("10,234", "10,111", "123", "7,077", "1,517"):
        assert count in text
    assert "s3://updraft-demo/raw/claims/broken.csv" in text and "missing column 'claim_amount'" in text
    assert "s3://updraft-demo/quarantine/20261126-153000-a1b2c3/files/broken.csv" in text
    for value in ("0.9123", "0.8011", "0.7702", "0.5000", "0.1112", "[0.8871, 0.9342]", "0.7345"):
        assert value in text
    assert "Gate passed." in text
    assert summary["evaluate"]["reason"] in text
    assert "fraud-claims-20261126-153000" in text
    assert "arn:aws:sagemaker:us-east-1:123456789012:model-package/fraud-claims/3" in text and "Approved" in text
    assert "http://127.0.0.1:18080/invocations" in text
    assert "12.0 s" in text and "24.8 s" in text  # train and the total
    images = _images(page)
    assert len(images) == 1 and images[0].startswith(PNG_MAGIC)
    assert "<link" not in page and "<script" not in page  # self-contained


def test_a_failed_gate_is_said_in_words() -> None:
    reason = "model ROC-AUC 0.500 does not beat the best baseline (logistic_regression, 0.801) (higher is better; lift -0.301, min_lift 0.000)"
    ev = _evaluation(model=0.5, passed=False, lift=-0.301, reason=reason)
    text = _text(render_report(_summary(evaluate=ev), ev))
    assert "Gate failed." in text and reason in text
    assert "Gate passed" not in text


def test_user_provided_strings_are_escaped() -> None:
    evil = "<script>alert('x')</script>"
    summary = _summary(
        run_id=f"run-{evil}",
        config={"name": evil, "bucket": "b", "source": evil, "task": "binary_classification", "label": evil},
    )
    summary["ingest"]["files_rejected"] = [{"uri": f"s3://b/raw/{evil}.csv", "reason": f"bad header {evil}", "copy": None}]
    summary["deploy"] = {"endpoint_name": None, "url": None, "skipped": f"gate failed: {evil}"}
    ev = _evaluation(reason=f"model {evil} beats", baselines={evil: 0.4}, best_baseline=evil)
    page = render_report(summary, ev)

    assert "<script" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert f"bad header {evil}" in _text(page)  # still readable as text


def test_stages_that_did_not_run_are_shown_as_such() -> None:
    summary = {"run_id": "r1", "target": "embedded", "config": {"name": "ds"},
               "ingest": {"files": 0, "rows_in": 0, "rows_curated": 0, "rows_quarantined": 0, "files_rejected": []},
               "preprocess": None, "timings_s": {"ingest": 0.4}}
    text = _text(render_report(summary, None))
    assert "No gate decision" in text
    for stage in ("evaluate", "preprocess", "train", "register", "deploy"):
        assert f"The {stage} stage did not run." in text
    assert "No file was rejected." in text


def test_an_endpoint_skipped_or_a_registry_missing_says_why() -> None:
    summary = _summary(
        register={"model_package_group": "fraud-claims", "model_package_arn": None, "version": None,
                  "approval_status": None, "skipped": "the AWS endpoint has no SageMaker model registry"},
        deploy={"endpoint_name": "fraud-claims", "url": None, "skipped": "the gate failed and deploy.require_passed is true"},
    )
    text = _text(render_report(summary, summary["evaluate"]))
    assert "Not registered: the AWS endpoint has no SageMaker model registry." in text
    assert "Not deployed: the gate failed and deploy.require_passed is true." in text


@pytest.mark.parametrize(
    "plots, alt",
    [
        ({"scatter": {"actual": [1.0, 2.0, 3.5], "predicted": [1.1, 1.8, 3.0]}}, "predicted against actual"),
        ({"confusion": {"labels": ["$cheap", "<b>mid</b>", "dear"], "matrix": [[5, 1, 0], [2, 7, 1], [0, 1, 9]]}},
         "confusion matrix"),
    ],
)
def test_regression_and_multiclass_get_their_own_plot(plots: dict[str, Any], alt: str) -> None:
    ev = _evaluation(plots=plots)
    page = render_report(_summary(evaluate=ev), ev)
    images = _images(page)
    assert len(images) == 1 and images[0].startswith(PNG_MAGIC)
    assert f"alt='{alt}" in page


def test_write_report_creates_the_folder_and_the_file(tmp_path: Path) -> None:
    target = tmp_path / "runs" / "r1" / "report.html"
    page = render_report(_summary(), None)
    assert write_report(page, target) == target
    assert target.read_text(encoding="utf-8") == page
