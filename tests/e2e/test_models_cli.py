"""``updraft models list``, ``updraft approve`` and ``updraft reject`` as a team uses them against a running endpoint.

The registry lives on the embedded endpoint of the test process; the CLI reaches it
through ``AWS_ENDPOINT_URL``, as it reaches ``updraft up`` or LocalStack.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tasks.aws.embedded import EmbeddedAWS
from tasks.aws.target import resolve_target
from tasks.registry import ENDPOINT_PACKAGE_TAG, register_model
from tests.e2e.conftest import run_cli

pytestmark = pytest.mark.e2e

GROUP = "fraud-claims"


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "updraft.yaml"
    path.write_text(
        f"name: {GROUP}\nbucket: claims\nsource: raw/\ncontract: contract.yaml\nlabel: is_fraud\n"
        "task: binary_classification\ndeploy:\n  endpoint_name: fraud-api\n"
    )
    return path


def _register(sm: Any, run_id: str, *, approved: bool, auc: float) -> str:
    return register_model(
        sm,
        group_name=GROUP,
        model_data_url=f"s3://claims/models/{run_id}/model.tar.gz",
        image_uri="updraft-inference:local",
        approved=approved,
        description=f"updraft run {run_id}",
        customer_metadata={"run_id": run_id, "metric": "roc_auc", "metric_value": f"{auc:.6g}",
                           "passed": "true" if approved else "false"},
        evaluation_uri=f"s3://claims/models/{run_id}/evaluation.json",
    ).model_package_arn


def _serve(sm: Any, package_arn: str) -> None:
    """The endpoint record deploy leaves, tagged with the package it serves."""
    sm.create_model(ModelName="fraud-api-m", PrimaryContainer={"Image": "updraft-inference:local"},
                    ExecutionRoleArn="arn:aws:iam::000000000000:role/updraft-local")
    sm.create_endpoint_config(EndpointConfigName="fraud-api-c", ProductionVariants=[
        {"VariantName": "AllTraffic", "ModelName": "fraud-api-m", "InitialInstanceCount": 1, "InstanceType": "ml.m5.large"}])
    sm.create_endpoint(EndpointName="fraud-api", EndpointConfigName="fraud-api-c",
                       Tags=[{"Key": ENDPOINT_PACKAGE_TAG, "Value": package_arn}])


def _ok(*args: str) -> Any:
    result = run_cli(*args, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_a_team_lists_versions_then_approves_and_rejects_by_hand(embedded_aws: EmbeddedAWS, tmp_path: Path) -> None:
    config = _config(tmp_path)
    sm = resolve_target("embedded").client("sagemaker")

    empty = _ok("models", "list", "--config", str(config), "--json")
    assert json.loads(empty.stdout) == {"model_package_group": GROUP, "endpoint_name": "fraud-api", "versions": []}

    _register(sm, "run-a", approved=False, auc=0.71)
    second = _register(sm, "run-b", approved=True, auc=0.912)
    _serve(sm, second)

    listed = json.loads(_ok("models", "list", "--config", str(config), "--json").stdout)
    assert [(v["version"], v["approval_status"], v["run_id"], v["value"], v["current"]) for v in listed["versions"]] == [
        (1, "Rejected", "run-a", 0.71, False),
        (2, "Approved", "run-b", 0.912, True),
    ]

    table = _ok("models", "list", "--config", str(config))
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["VERSION", "CREATED", "(UTC)", "STATUS", "METRIC", "VALUE", "RUN", "SERVING"]
    assert lines[1].split()[0] == "1" and "Rejected" in lines[1] and "ROC-AUC" in lines[1] and "0.7100" in lines[1]
    assert lines[2].split()[-1] == "*" and "run-b" in lines[2] and not lines[1].endswith("*")

    # A person overrides the gate on version 1, with a reason the registry keeps.
    approved = _ok("approve", f"{GROUP}/1", "--reason", "min_lift was set too high for this quarter")
    assert approved.stdout == ""
    assert f"version 1 of {GROUP} is Approved (was Rejected)" in approved.stderr
    package = sm.describe_model_package(ModelPackageName=f"arn:aws:sagemaker:us-east-1:123456789012:model-package/{GROUP}/1")
    assert package["ModelApprovalStatus"] == "Approved"
    assert package["ApprovalDescription"].endswith(": min_lift was set too high for this quarter")
    assert package["CustomerMetadataProperties"]["run_id"] == "run-a"

    # And rejects the serving version by its ARN.
    rejected = json.loads(_ok("reject", second, "--json").stdout)
    assert (rejected["version"], rejected["previous_status"], rejected["approval_status"]) == (2, "Approved", "Rejected")
    assert sm.describe_model_package(ModelPackageName=second)["ApprovalDescription"].startswith("rejected by hand by ")

    listed = json.loads(_ok("models", "list", "--config", str(config), "--json").stdout)
    assert [v["approval_status"] for v in listed["versions"]] == ["Approved", "Rejected"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("approve", f"{GROUP}/9"), f"model package group '{GROUP}' has no version 9 (versions: 1)"),
        (("reject", "not-a-package"), "is not a model package: give its ARN or GROUP/VERSION"),
        (("approve", f"{GROUP}/1", "--embedded"), "--embedded starts an empty AWS endpoint"),
    ],
)
def test_a_package_that_is_not_there_is_one_line_on_stderr(
    embedded_aws: EmbeddedAWS, args: tuple[str, ...], message: str
) -> None:
    _register(resolve_target("embedded").client("sagemaker"), "run-a", approved=False, auc=0.71)
    result = run_cli(*args, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("updraft: error: ")
    assert message in result.stderr and "Traceback" not in result.stderr


def test_an_endpoint_that_is_not_running_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    for key, value in {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x",
                       "AWS_MAX_ATTEMPTS": "1"}.items():
        monkeypatch.setenv(key, value)
    result = run_cli("models", "list", "--config", str(_config(tmp_path)), timeout=120)
    assert result.returncode == 2
    assert f"updraft: error: cannot reach {url}: is it running?" in result.stderr
