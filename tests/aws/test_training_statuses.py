"""Waiting for a managed training job through the statuses moto cannot produce.

moto's jobs are Completed the moment they exist; a real job goes through Starting,
Downloading and Training, and may fail, be stopped, run out of time, or lose its spot
capacity and come back. botocore's Stubber answers a real boto3 client with those
``describe_training_job`` responses (checked against the service's output shapes), and
the poll's sleep is injected so the tests take milliseconds.
"""

from __future__ import annotations

import datetime as dt
import logging

import boto3
import pytest
from botocore.stub import Stubber

from tasks.errors import StageError
from tasks.training.jobs import (
    build_training_job_request,
    run_sagemaker_training_job,
    wait_for_training_job,
)

NAME = "claims-run-1"
ARN = f"arn:aws:sagemaker:us-east-1:123456789012:training-job/{NAME}"
T0 = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)
CHECKPOINTS = "s3://bkt/models/run-1/claims-run-1/checkpoints/"


def _client(service: str):
    return boto3.client(service, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")


def _request(**overrides) -> dict:
    args = dict(job_name=NAME, image_uri="123456789012.dkr.ecr.us-east-1.amazonaws.com/updraft-training:1",
                role_arn="arn:aws:iam::123456789012:role/updraft-training",
                channels={"train": "s3://bkt/features/run-1/train/"}, output_uri="s3://bkt/models/run-1/")
    args.update(overrides)
    return build_training_job_request(**args)


class Timeline:
    """``describe_training_job`` answers of one job, each adding its secondary status transitions as SageMaker does."""

    def __init__(self, *, spot: bool = False, max_runtime: int = 3600) -> None:
        self.transitions: list[dict] = []
        self.spot = spot
        self.max_runtime = max_runtime

    def step(self, status: str, secondary: str, message: str = "", **extra) -> dict:
        now = T0 + dt.timedelta(minutes=len(self.transitions))
        if self.transitions:
            self.transitions[-1]["EndTime"] = now
        self.transitions.append({"Status": secondary, "StartTime": now, "StatusMessage": message})
        stopping = {"MaxRuntimeInSeconds": self.max_runtime}
        desc = {
            "TrainingJobName": NAME,
            "TrainingJobArn": ARN,
            "ModelArtifacts": {"S3ModelArtifacts": f"s3://bkt/models/run-1/{NAME}/output/model.tar.gz"},
            "TrainingJobStatus": status,
            "SecondaryStatus": secondary,
            "AlgorithmSpecification": {"TrainingImage": "img", "TrainingInputMode": "File"},
            "ResourceConfig": {"InstanceType": "ml.g5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 30},
            "StoppingCondition": stopping,
            "CreationTime": T0,
            "SecondaryStatusTransitions": [dict(t) for t in self.transitions],
        }
        if self.spot:
            stopping["MaxWaitTimeInSeconds"] = 2 * self.max_runtime
            desc["EnableManagedSpotTraining"] = True
            desc["CheckpointConfig"] = {"S3Uri": CHECKPOINTS, "LocalPath": "/opt/ml/checkpoints"}
        desc.update(extra)
        return desc


def _wait(responses: list[dict], caplog, *, logs_client=None) -> tuple[dict | None, list[float], BaseException | None]:
    """Run the wait against stubbed answers; returns (result, sleeps, error) with every answer consumed."""
    sm = _client("sagemaker")
    sleeps: list[float] = []
    result = error = None
    with Stubber(sm) as stub:
        for desc in responses:
            stub.add_response("describe_training_job", desc, {"TrainingJobName": NAME})
        with caplog.at_level(logging.INFO, logger="updraft.train"):
            try:
                result = wait_for_training_job(sm, NAME, logs_client, poll_s=7, sleep=sleeps.append)
            except StageError as exc:
                error = exc
        stub.assert_no_pending_responses()
    return result, sleeps, error


def test_each_transition_is_logged_with_sagemakers_message(caplog):
    t = Timeline()
    responses = [
        t.step("InProgress", "Starting", "Launching requested ML instances"),
        t.step("InProgress", "Downloading", "Downloading input data"),
        t.step("InProgress", "Training", "Training image download completed. Training in progress."),
        t.step("InProgress", "Uploading", "Uploading generated training model"),
        t.step("Completed", "Completed", "Training job completed"),
    ]

    desc, sleeps, error = _wait(responses, caplog)

    assert error is None and desc["TrainingJobStatus"] == "Completed"
    assert sleeps == [7, 7, 7, 7]
    lines = [r.getMessage() for r in caplog.records if r.name == "updraft.train"]
    assert lines == [
        f"training job {NAME}: InProgress / Starting: Launching requested ML instances",
        f"training job {NAME}: InProgress / Downloading: Downloading input data",
        f"training job {NAME}: InProgress / Training: Training image download completed. Training in progress.",
        f"training job {NAME}: InProgress / Uploading: Uploading generated training model",
        f"training job {NAME}: Completed / Completed: Training job completed",
    ]


def test_transitions_between_two_polls_are_all_logged(caplog):
    t = Timeline()
    t.step("InProgress", "Starting", "Preparing the instances for training")
    t.step("InProgress", "Downloading", "Downloading input data")
    last = t.step("InProgress", "Training", "Training in progress")
    done = t.step("Completed", "Completed", "Training job completed")

    _wait([last, done], caplog)

    assert f"training job {NAME}: Starting: Preparing the instances for training" in caplog.text
    assert f"training job {NAME}: Downloading: Downloading input data" in caplog.text
    assert f"training job {NAME}: InProgress / Training: Training in progress" in caplog.text


def test_a_failed_job_raises_with_the_failure_reason(caplog):
    t = Timeline()
    reason = "AlgorithmError: ExecuteUserScriptError: ValueError: label column 'target' has 3 classes"
    responses = [
        t.step("InProgress", "Training", "Training in progress"),
        t.step("Failed", "Failed", "Training job failed", FailureReason=reason),
    ]

    _, _, error = _wait(responses, caplog)

    assert isinstance(error, StageError)
    assert str(error) == f"training job {NAME} failed: {reason}"


def test_a_job_stopped_by_someone_says_so(caplog):
    t = Timeline()
    responses = [
        t.step("InProgress", "Training", "Training in progress"),
        t.step("Stopping", "Stopping", "Stopping the training job"),
        t.step("Stopped", "Stopped", "Training job stopped"),
    ]

    _, _, error = _wait(responses, caplog)

    assert "was stopped before it completed (Stopped): someone stopped it" in str(error)
    assert "Stopping / Stopping: Stopping the training job" in caplog.text


@pytest.mark.parametrize(
    ("secondary", "spot", "expected"),
    [
        ("MaxRuntimeExceeded", False, "it ran past train.max_runtime_s (900 s); raise it"),
        ("MaxWaitTimeExceeded", True, "took longer than train.max_wait_s (1800 s); raise it, or train on demand"),
    ],
)
def test_running_out_of_time_names_the_setting_to_raise(caplog, secondary, spot, expected):
    t = Timeline(spot=spot, max_runtime=900)
    responses = [
        t.step("InProgress", "Training", "Training in progress"),
        t.step("Stopped", secondary, "Training job stopped: it exceeded its time limit"),
    ]

    _, _, error = _wait(responses, caplog)

    assert isinstance(error, StageError)
    assert f"({secondary})" in str(error) and expected in str(error)


def test_a_spot_interruption_is_waited_out_and_the_job_resumes_from_its_checkpoints(caplog):
    t = Timeline(spot=True)
    responses = [
        t.step("InProgress", "Starting", "Launching requested ML instances"),
        t.step("InProgress", "Training", "Training in progress"),
        t.step("InProgress", "Interrupted", "Spot capacity reclaimed: the job will restart when capacity is available"),
        t.step("InProgress", "Interrupted", "Waiting for spot capacity"),
        t.step("InProgress", "Restarting", "Restarting the training job"),
        t.step("InProgress", "Training", "Training in progress"),
        t.step("Completed", "Completed", "Training job completed", TrainingTimeInSeconds=1800, BillableTimeInSeconds=540),
    ]

    desc, sleeps, error = _wait(responses, caplog)

    assert error is None and desc["TrainingJobStatus"] == "Completed"
    assert len(sleeps) == 6
    text = caplog.text
    assert text.count("spot capacity was reclaimed") == 1  # said once, however long the wait
    assert f"training job {NAME} resumed after the spot interruption, from the checkpoints in {CHECKPOINTS}" in text
    assert text.count("resumed after the spot interruption") == 1
    assert f"training job {NAME}: 1800 s of training billed as 540 s on spot capacity (70% saved)" in text
    assert text.index("reclaimed") < text.index("resumed") < text.index("saved")


def test_a_managed_job_is_created_and_its_logs_follow_the_status(caplog):
    """create, then describe and the CloudWatch stream of each host, restarts included, until the end."""
    sm, logs = _client("sagemaker"), _client("logs")
    request = _request(spot=True)
    t = Timeline(spot=True)
    group = "/aws/sagemaker/TrainingJobs"
    streams = {"logGroupName": group, "logStreamNamePrefix": f"{NAME}/"}
    with Stubber(sm) as sm_stub, Stubber(logs) as logs_stub:
        sm_stub.add_response("create_training_job", {"TrainingJobArn": ARN}, request)
        sm_stub.add_response("describe_training_job", t.step("InProgress", "Training", "Training in progress"),
                             {"TrainingJobName": NAME})
        logs_stub.add_response("describe_log_streams", {"logStreams": [{"logStreamName": f"{NAME}/algo-1-1700000000"}]}, streams)
        logs_stub.add_response("get_log_events", {
            "events": [{"timestamp": 1, "message": "validation:auc=0.81\n"}], "nextForwardToken": "f/1"},
            {"logGroupName": group, "logStreamName": f"{NAME}/algo-1-1700000000", "startFromHead": True})
        logs_stub.add_response("get_log_events", {"events": [], "nextForwardToken": "f/1"},
                               {"logGroupName": group, "logStreamName": f"{NAME}/algo-1-1700000000",
                                "startFromHead": True, "nextToken": "f/1"})
        sm_stub.add_response("describe_training_job", t.step(
            "Completed", "Completed", "Training job completed", TrainingTimeInSeconds=100, BillableTimeInSeconds=30),
            {"TrainingJobName": NAME})
        logs_stub.add_response("describe_log_streams", {"logStreams": [
            {"logStreamName": f"{NAME}/algo-1-1700000000"}, {"logStreamName": f"{NAME}/algo-1-1700000900"}]}, streams)
        logs_stub.add_response("get_log_events", {"events": [], "nextForwardToken": "f/1"},
                               {"logGroupName": group, "logStreamName": f"{NAME}/algo-1-1700000000",
                                "startFromHead": True, "nextToken": "f/1"})
        logs_stub.add_response("get_log_events", {
            "events": [{"timestamp": 2, "message": "resumed from checkpoint round 40"}], "nextForwardToken": "g/1"},
            {"logGroupName": group, "logStreamName": f"{NAME}/algo-1-1700000900", "startFromHead": True})
        logs_stub.add_response("get_log_events", {"events": [], "nextForwardToken": "g/1"},
                               {"logGroupName": group, "logStreamName": f"{NAME}/algo-1-1700000900",
                                "startFromHead": True, "nextToken": "g/1"})
        with caplog.at_level(logging.INFO, logger="updraft.train"):
            desc = run_sagemaker_training_job(sm, request, logs, poll_s=0, sleep=lambda s: None)
        sm_stub.assert_no_pending_responses()
        logs_stub.assert_no_pending_responses()

    assert desc["TrainingJobStatus"] == "Completed"
    assert f"[{NAME}] validation:auc=0.81" in caplog.text
    assert f"[{NAME}] resumed from checkpoint round 40" in caplog.text
    assert f"training job {NAME} created: 1 x ml.m5.xlarge, managed spot" in caplog.text


def test_a_resumed_run_waits_for_the_job_its_earlier_attempt_started(caplog):
    """The name is taken by this run's own job, still training: wait for it, do not fail on the name."""
    sm = _client("sagemaker")
    request = _request()
    t = Timeline()
    in_use = {"Code": "ResourceInUse", "Message": f"Training job {NAME} already exists"}
    with Stubber(sm) as stub:
        stub.add_client_error("create_training_job", service_error_code="ResourceInUse",
                              service_message=in_use["Message"], http_status_code=400, expected_params=request)
        stub.add_response("describe_training_job", t.step("InProgress", "Training"), {"TrainingJobName": NAME})
        stub.add_response("describe_training_job", t.step("InProgress", "Training"), {"TrainingJobName": NAME})
        stub.add_response("describe_training_job", t.step("Completed", "Completed"), {"TrainingJobName": NAME})
        with caplog.at_level(logging.INFO, logger="updraft.train"):
            desc = run_sagemaker_training_job(sm, request, poll_s=0, sleep=lambda s: None)
        stub.assert_no_pending_responses()
    assert desc["TrainingJobStatus"] == "Completed"
    assert f"training job {NAME} was started by an earlier attempt of this run (InProgress): waiting for it" in caplog.text


def test_a_failed_job_of_an_earlier_attempt_says_to_start_a_new_run():
    sm = _client("sagemaker")
    request = _request()
    with Stubber(sm) as stub:
        stub.add_client_error("create_training_job", service_error_code="ResourceInUse",
                              service_message="exists", http_status_code=400, expected_params=request)
        stub.add_response("describe_training_job", Timeline().step("Failed", "Failed", FailureReason="OOM"),
                          {"TrainingJobName": NAME})
        with pytest.raises(StageError, match=r"is Failed and SageMaker does not reuse job names: start a new run"):
            run_sagemaker_training_job(sm, request, poll_s=0, sleep=lambda s: None)


@pytest.mark.parametrize("interruption", [TimeoutError("stage timed out"), KeyboardInterrupt()])
def test_a_wait_cut_short_stops_the_job_and_passes_the_interruption_on(caplog, interruption):
    """A Prefect timeout or Ctrl-C ends the wait: the job is stopped, not left billing unseen."""
    sm = _client("sagemaker")
    request = _request()
    t = Timeline()

    def interrupted_sleep(seconds: float) -> None:
        raise interruption

    with Stubber(sm) as stub:
        stub.add_response("create_training_job", {"TrainingJobArn": ARN}, request)
        stub.add_response("describe_training_job", t.step("InProgress", "Training"), {"TrainingJobName": NAME})
        stub.add_response("stop_training_job", {}, {"TrainingJobName": NAME})
        with caplog.at_level(logging.INFO, logger="updraft.train"), pytest.raises(type(interruption)):
            run_sagemaker_training_job(sm, request, poll_s=5, sleep=interrupted_sleep)
        stub.assert_no_pending_responses()
    assert f"stopped training job {NAME}: the wait for it ended ({type(interruption).__name__})" in caplog.text
