"""updraft on a real Prefect server, as a platform team runs it.

``prefect server start`` on loopback with its SQLite database in a temp folder;
``updraft deploy-flows`` registers the deployments, the process pool and the failure
notification (a webhook on this machine); ``prefect worker start`` runs what is triggered.
The pipeline deployment, triggered through the API against the embedded endpoint, must
complete and serve; a run that fails must reach the webhook through the automation.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests
import yaml

from flows.deployments import PREFECT_FILE
from tasks.aws.embedded import EmbeddedAWS
from tests.e2e.conftest import UPDRAFT, run_cli
from tests.e2e.test_run_pipeline import upload_sample
from tests.prefect_server import prefect_server

pytestmark = pytest.mark.e2e

PREFECT = shutil.which("prefect", path=str(Path(sys.executable).parent)) or "prefect"


def _wait_for(check: Any, timeout: float, what: str, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@contextlib.contextmanager
def _process(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A background process whose output goes to ``log``; interrupted, then killed, on the way out."""
    with log.open("wb") as out:
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # Prefect's own clean shutdown
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=5)


@contextlib.contextmanager
def _webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A local URL that records the JSON bodies POSTed to it."""
    received: list[dict[str, Any]] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            received.append(json.loads(body or b"{}"))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/updraft", received
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def server_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server of these tests' own (not the session's): deployments, pools and automations stay here."""
    with prefect_server(tmp_path_factory.mktemp("prefect-server")) as api:
        yield api


def _env(api: str, tmp_path: Path) -> dict[str, str]:
    return dict(
        os.environ,  # AWS_ENDPOINT_URL (the embedded endpoint), UPDRAFT_HOME, UPDRAFT_RUNS_DIR
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        PREFECT_API_URL=api,
        PREFECT_WORKER_QUERY_SECONDS="1",
        PREFECT_LOGGING_COLORS="false",
        # the flow's return value (the run summary) kept where the test can read it
        PREFECT_RESULTS_PERSIST_BY_DEFAULT="true",
        PREFECT_LOCAL_STORAGE_PATH=str(tmp_path / "prefect-results"),
        PYTHONUNBUFFERED="1",
    )


def _tail(path: Path, lines: int = 60) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def test_pipeline_deployment_runs_on_a_process_worker_and_a_failed_run_notifies(
    server_api: str, embedded: EmbeddedAWS, tmp_path: Path
) -> None:
    config_path, config = upload_sample(tmp_path, rows=1500)
    broken = config_path.parent / "broken.yaml"
    broken.write_text(yaml.safe_dump(dict(config, bucket="no-such-bucket")))
    worker_log = tmp_path / "worker.log"
    api, env = server_api, _env(server_api, tmp_path)

    with _webhook() as (hook_url, notifications):
        # 1. register: pool, deployments, automation
        deployed = subprocess.run(
            [UPDRAFT, "deploy-flows", "--config", str(config_path), "--notify-webhook", hook_url, "--json"],
            env=env, capture_output=True, text=True, timeout=120,
        )
        assert deployed.returncode == 0, deployed.stderr[-3000:]
        report = json.loads(deployed.stdout)
        assert report["pool"] == "updraft-process" and report["pool_created"] is True
        assert "updraft-pipeline/local" in report["deployments"] and len(report["deployments"]) == 7
        assert report["automation_id"] and report["notification_block"] == "custom-webhook/updraft-failures"

        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client, _process(
            [PREFECT, "worker", "start", "--pool", "updraft-process"], env, worker_log
        ):
            pipeline = client.read_deployment_by_name("updraft-pipeline/local")
            assert pipeline.parameters["config_path"] == str(config_path.resolve())
            assert [s.active for s in pipeline.schedules] == [True]

            # 2. trigger the pipeline through the API and wait for it
            run = client.create_flow_run_from_deployment(pipeline.id)

            def finished(flow_run_id: Any) -> Any:
                state = client.read_flow_run(flow_run_id).state
                return state if state is not None and state.is_final() else None

            state = _wait_for(lambda: finished(run.id), 150, "the pipeline flow run")
            assert state.is_completed(), f"{state.name}: {state.message}\n{_tail(worker_log)}"
            summary = state.result()
            assert summary["target"] == "local" and summary["evaluate"]["passed"] is True
            assert summary["ingest"]["rows_in"] == 1500
            # the run id is the flow run's, so a retry of this flow run would resume it
            assert summary["run_id"].endswith(run.id.hex[:6])
            url = summary["deploy"]["url"]
            assert requests.get(url.replace("/invocations", "/ping"), timeout=10).status_code == 200
            # preprocessing's Dask work is in the UI: a table artifact of the run, per kind of Dask task
            from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

            artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))
            dask_work = {a.key: a for a in artifacts}[f"{config['name']}-preprocess-dask"]
            assert dask_work.type == "table" and "fit_partition" in str(dask_work.data)

            # 3. a run that fails notifies through the automation and the webhook block
            failing = client.create_flow_run_from_deployment(pipeline.id, parameters={"config_path": str(broken)})
            failed = _wait_for(lambda: finished(failing.id), 60, "the failing flow run")
            assert failed.is_failed(), failed.name
            _wait_for(lambda: notifications, 30, "the failure notification")
        assert "updraft-pipeline" in notifications[0]["subject"] and "Failed" in notifications[0]["subject"]
        assert "no-such-bucket" in notifications[0]["body"]

    listing = run_cli("endpoint", "list", "--json")
    assert [e["name"] for e in json.loads(listing.stdout)] == [config["name"]]  # deleted by the fixture


@pytest.mark.filterwarnings("ignore:Tried to parse .* not supported by moto")  # see tests/aws/test_infra_stack.py
def test_ecs_deployments_take_their_settings_from_the_stack(server_api: str, embedded: EmbeddedAWS, tmp_path: Path) -> None:
    """``deploy-flows --pool ecs --stack``: the pool the stack's worker polls, with prefect-aws's
    template, and job variables read from the outputs of infra/'s stack, deployed into moto's CloudFormation."""
    import boto3

    from tasks.infra.deploy import deploy_stack
    from tasks.infra.templates import Template, resolve_template

    ec2 = boto3.client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.30.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.30.1.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName="flows", Description="flow runs", VpcId=vpc)["GroupId"]
    outputs = deploy_stack(
        boto3.client("cloudformation"), stack_name="updraft-claims", template=Template.read(resolve_template()),
        parameters={"ProjectName": "claims-fraud", "SubnetIds": subnet, "SecurityGroupIds": group}, poll_s=0.2,
    ).outputs
    # A checkout whose config travels in the flows image (the image holds the checkout at /opt/updraft).
    project = tmp_path / "checkout"
    project.mkdir()
    for name in ("flows", "tasks", "images"):
        (project / name).symlink_to(PREFECT_FILE.parent / name)
    shutil.copy(PREFECT_FILE, project / "prefect.yaml")
    (project / "configs").mkdir()
    config_path, _ = upload_sample(project / "configs", rows=100)

    deployed = subprocess.run(
        [UPDRAFT, "deploy-flows", "--pool", "ecs", "--stack", "updraft-claims",
         "--config", str(config_path), "--prefect-file", str(project / "prefect.yaml"), "--json"],
        env=_env(server_api, tmp_path), capture_output=True, text=True, timeout=120,
    )
    assert deployed.returncode == 0, deployed.stderr[-3000:]
    assert json.loads(deployed.stdout)["pool"] == "claims-fraud-ecs"  # <ProjectName>-ecs, as the stack's worker polls

    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: server_api}), get_client(sync_client=True) as client:
        pool = client.read_work_pool("claims-fraud-ecs")
        pipeline = client.read_deployment_by_name("updraft-pipeline/ecs")
    assert pool.type == "ecs" and "task_role_arn" in pool.base_job_template["variables"]["properties"]
    assert pipeline.parameters["config_path"] == "configs/sample/config.yaml"
    assert pipeline.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": "/opt/updraft"}}]
    variables = pipeline.job_variables
    assert variables["image"] == outputs["FlowsRepositoryUri"] + ":0.1.0"  # the stack's WorkerImageTag
    assert variables["cluster"] == outputs["EcsClusterArn"]
    assert variables["task_role_arn"] == outputs["PrefectWorkerTaskRoleArn"]
    assert variables["execution_role_arn"] == outputs["PrefectWorkerExecutionRoleArn"]
    assert variables["vpc_id"] == vpc
    assert variables["network_configuration"] == {"subnets": [subnet], "securityGroups": [group], "assignPublicIp": "DISABLED"}
    assert variables["cloudwatch_logs_options"]["awslogs-group"] == outputs["LogGroupName"]
    assert variables["env"]["AWS_REGION"] == "us-east-1"
