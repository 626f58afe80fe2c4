"""SageMaker hyperparameter tuning: the request (checked against the service's API model, and kept by
moto), and the wait for the best trial through statuses moto cannot produce (botocore's Stubber).

moto 5.2 implements CreateHyperParameterTuningJob and DescribeHyperParameterTuningJob, but its tuning
jobs are Completed at once with a fixed fake best trial ("FakeTrainingJobName") that is no training job
of its own; so moto checks the request round trip and Stubber the runner.
"""

from __future__ import annotations

import datetime as dt
import logging

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from tasks.config import HyperparameterRange, TuneConfig
from tasks.errors import ConfigError, StageError
from tasks.training.tuning_jobs import (
    build_parameter_ranges,
    build_tuning_job_request,
    build_tuning_job_request_from_config,
    run_sagemaker_tuning_job,
    tuning_job_name,
)
from tests.aws.test_training_jobs import full_request, service_problems

REGION = "us-east-1"
NAME = "claims-20261126-153000-a1b2c3"
T0 = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)
RANGES = (
    HyperparameterRange(name="eta", type="continuous", min=0.01, max=0.3, scaling="log"),
    HyperparameterRange(name="max_depth", type="integer", min=3, max=10),
    HyperparameterRange(name="subsample", type="continuous", min=0.5, max=0.99, scaling="reverse_log"),
    HyperparameterRange(name="tree_method", type="categorical", values=("hist", "approx")),
)


def _tuning_request(**overrides) -> dict:
    args = dict(tuning_job_name=NAME, training_request=full_request(), ranges=RANGES, objective="validation:auc",
                max_trials=12, max_parallel=3)
    args.update(overrides)
    return build_tuning_job_request(**args)


def test_the_request_fits_the_service_model_and_runs_trials_like_the_single_job():
    training = full_request()
    request = _tuning_request(training_request=training)

    assert service_problems("CreateHyperParameterTuningJob", request) == []
    config = request["HyperParameterTuningJobConfig"]
    assert config["Strategy"] == "Bayesian"
    assert config["HyperParameterTuningJobObjective"] == {"Type": "Maximize", "MetricName": "validation:auc"}
    assert config["ResourceLimits"] == {"MaxNumberOfTrainingJobs": 12, "MaxParallelTrainingJobs": 3}
    assert config["ParameterRanges"] == {
        "ContinuousParameterRanges": [
            {"Name": "eta", "MinValue": "0.01", "MaxValue": "0.3", "ScalingType": "Logarithmic"},
            {"Name": "subsample", "MinValue": "0.5", "MaxValue": "0.99", "ScalingType": "ReverseLogarithmic"},
        ],
        "IntegerParameterRanges": [{"Name": "max_depth", "MinValue": "3", "MaxValue": "10", "ScalingType": "Auto"}],
        "CategoricalParameterRanges": [{"Name": "tree_method", "Values": ["hist", "approx"]}],
    }
    definition = request["TrainingJobDefinition"]
    # the searched hyperparameters are not also static: eta and max_depth were static in the training request
    assert training["HyperParameters"] == {"max_depth": "4", "eta": "0.2"}
    assert definition["StaticHyperParameters"] == {}
    for key in ("RoleArn", "InputDataConfig", "OutputDataConfig", "ResourceConfig", "StoppingCondition", "VpcConfig",
                "CheckpointConfig", "EnableManagedSpotTraining", "EnableNetworkIsolation",
                "EnableInterContainerTrafficEncryption", "Environment"):
        assert definition[key] == training[key], key
    assert definition["AlgorithmSpecification"] == {
        "TrainingImage": training["AlgorithmSpecification"]["TrainingImage"], "TrainingInputMode": "File",
        "MetricDefinitions": training["AlgorithmSpecification"]["MetricDefinitions"]}
    assert request["Tags"] == training["Tags"]


def test_losses_are_minimised_and_parallel_trials_never_exceed_the_total():
    request = _tuning_request(objective="validation:rmse", max_trials=2, max_parallel=5, strategy="random",
                              ranges=RANGES[:1], tags={"team": "risk"})
    config = request["HyperParameterTuningJobConfig"]
    assert config["HyperParameterTuningJobObjective"] == {"Type": "Minimize", "MetricName": "validation:rmse"}
    assert config["Strategy"] == "Random"
    assert config["ResourceLimits"] == {"MaxNumberOfTrainingJobs": 2, "MaxParallelTrainingJobs": 2}
    assert request["TrainingJobDefinition"]["StaticHyperParameters"] == {"max_depth": "4"}
    assert request["Tags"] == [{"Key": "team", "Value": "risk"}]
    assert service_problems("CreateHyperParameterTuningJob", request) == []


def test_tuning_job_names_fit_32_characters_and_keep_the_run_id():
    run_id = "20261126-153000-a1b2c3"
    assert tuning_job_name("claims", run_id) == "claims-20261126-153000-a1b2c3"
    long = tuning_job_name("insurance-claims-fraud", run_id)
    assert len(long) <= 32 and long.endswith(run_id)
    with pytest.raises(ConfigError, match="1-32 letters"):
        _tuning_request(tuning_job_name="x" * 33)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"objective": "validation:ndcg"}, "is not a metric the training job reports; choose one of train:auc"),
        ({"ranges": ()}, "at least one range"),
        ({"ranges": (HyperparameterRange(name="n", type="integer", min=0, max=1, scaling="reverse_log"),)},
         "reverse_log scaling is for continuous ranges"),
        ({"ranges": (RANGES[0], RANGES[0])}, "names 'eta' twice"),
        ({"strategy": "grid"}, "tune.strategy 'grid'"),
    ],
)
def test_a_search_sagemaker_would_refuse_is_a_config_error(overrides, message):
    with pytest.raises(ConfigError, match=message):
        _tuning_request(**overrides)


def test_ranges_are_strings_as_sagemaker_takes_them():
    ranges = build_parameter_ranges((
        HyperparameterRange(name="lambda", type="continuous", min=1e-5, max=10.0),
        HyperparameterRange(name="num_round", type="integer", min=50.0, max=500.0, scaling="linear"),
    ))
    assert ranges["ContinuousParameterRanges"][0] == {"Name": "lambda", "MinValue": "1e-05", "MaxValue": "10.0", "ScalingType": "Auto"}
    assert ranges["IntegerParameterRanges"][0] == {"Name": "num_round", "MinValue": "50", "MaxValue": "500", "ScalingType": "Linear"}
    assert float(ranges["ContinuousParameterRanges"][0]["MinValue"]) == 1e-5


def test_the_config_adapter_falls_back_to_the_tasks_main_metric():
    tune = TuneConfig(ranges=RANGES[:2], max_trials=4, max_parallel=2, strategy="random")
    request = build_tuning_job_request_from_config(
        tune, tuning_job_name=NAME, training_request=full_request(), default_objective="validation:logloss")
    assert request["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"] == {
        "Type": "Minimize", "MetricName": "validation:logloss"}
    named = build_tuning_job_request_from_config(
        TuneConfig(ranges=RANGES[:2], objective="validation:aucpr"), tuning_job_name=NAME,
        training_request=full_request(), default_objective="validation:logloss")
    assert named["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"]["MetricName"] == "validation:aucpr"


def test_moto_keeps_the_request_as_sent(monkeypatch):
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": REGION}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    request = _tuning_request()
    with mock_aws():
        sm = boto3.client("sagemaker", region_name=REGION)
        sm.create_hyper_parameter_tuning_job(**request)
        desc = sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=NAME)
    assert desc["HyperParameterTuningJobConfig"] == request["HyperParameterTuningJobConfig"]
    assert desc["TrainingJobDefinition"] == request["TrainingJobDefinition"]


# --- the runner, with statuses from Stubber ---------------------------------------------------


def _describe(status: str, completed: int = 0, running: int = 0, failed: int = 0, best: tuple | None = None, **extra) -> dict:
    desc = {
        "HyperParameterTuningJobName": NAME,
        "HyperParameterTuningJobArn": f"arn:aws:sagemaker:{REGION}:123456789012:hyper-parameter-tuning-job/{NAME}",
        "HyperParameterTuningJobConfig": _tuning_request()["HyperParameterTuningJobConfig"],
        "HyperParameterTuningJobStatus": status,
        "CreationTime": T0,
        "TrainingJobStatusCounters": {"Completed": completed, "InProgress": running, "RetryableError": 0,
                                      "NonRetryableError": failed, "Stopped": 0},
        "ObjectiveStatusCounters": {"Succeeded": completed, "Pending": running, "Failed": failed},
    }
    if best:
        job, value = best
        desc["BestTrainingJob"] = {
            "TrainingJobName": job, "TrainingJobArn": f"arn:aws:sagemaker:{REGION}:123456789012:training-job/{job}",
            "CreationTime": T0, "TrainingJobStatus": "Completed",
            "TunedHyperParameters": {"eta": "0.12", "max_depth": "6", "subsample": "0.8", "tree_method": "hist"},
            "FinalHyperParameterTuningJobObjectiveMetric": {"Type": "Maximize", "MetricName": "validation:auc", "Value": value},
            "ObjectiveStatus": "Succeeded",
        }
    desc.update(extra)
    return desc


def _run(describes: list[dict], caplog, *, best_job: str | None = None):
    sm = boto3.client("sagemaker", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")
    request = _tuning_request()
    sleeps: list[float] = []
    with Stubber(sm) as stub:
        stub.add_response("create_hyper_parameter_tuning_job",
                          {"HyperParameterTuningJobArn": describes[0]["HyperParameterTuningJobArn"]}, request)
        for desc in describes:
            stub.add_response("describe_hyper_parameter_tuning_job", desc, {"HyperParameterTuningJobName": NAME})
        if best_job:
            stub.add_response("describe_training_job", {
                "TrainingJobName": best_job, "TrainingJobArn": f"arn:aws:sagemaker:{REGION}:123456789012:training-job/{best_job}",
                "ModelArtifacts": {"S3ModelArtifacts": f"s3://bkt/models/run-1/{best_job}/output/model.tar.gz"},
                "TrainingJobStatus": "Completed", "SecondaryStatus": "Completed",
                "AlgorithmSpecification": {"TrainingImage": "img", "TrainingInputMode": "File"},
                "ResourceConfig": {"InstanceType": "ml.g5.2xlarge", "InstanceCount": 3, "VolumeSizeInGB": 50},
                "StoppingCondition": {"MaxRuntimeInSeconds": 7200}, "CreationTime": T0,
            }, {"TrainingJobName": best_job})
        with caplog.at_level(logging.INFO, logger="updraft.train"):
            try:
                return run_sagemaker_tuning_job(sm, request, poll_s=11, sleep=sleeps.append), sleeps
            finally:
                stub.assert_no_pending_responses()


def test_the_best_trial_and_its_model_come_back_with_progress_on_the_way(caplog):
    best = f"{NAME[:22]}-007-0a1b2c3d"
    describes = [
        _describe("InProgress", running=3),
        _describe("InProgress", running=3),  # nothing new: not logged again
        _describe("InProgress", completed=2, running=3, best=(f"{NAME[:22]}-002-9f8e7d6c", 0.84)),
        _describe("InProgress", completed=9, running=2, failed=1, best=(best, 0.91)),
        _describe("Completed", completed=11, failed=1, best=(best, 0.91)),
    ]

    result, sleeps = _run(describes, caplog, best_job=best)

    assert result.best_training_job == best
    assert result.objective_metric == "validation:auc" and result.objective_value == pytest.approx(0.91)
    assert result.model_uri == f"s3://bkt/models/run-1/{best}/output/model.tar.gz"
    assert result.tuned_hyperparameters["max_depth"] == "6"
    assert result.status_counters["Completed"] == 11
    assert sleeps == [11, 11, 11, 11]
    progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"tuning job {NAME}: ")]
    assert progress[0] == f"tuning job {NAME}: InProgress; trials 0 completed, 3 inprogress"
    assert len(progress) == 5  # four distinct states and the best trial
    assert f"best so far {NAME[:22]}-002-9f8e7d6c validation:auc=0.84" in progress[1]
    assert "1 NonRetryableError" in progress[2] and "validation:auc=0.91" in progress[2]
    assert "created: up to 12 trials, 3 at a time" in caplog.text


def test_a_failed_tuning_job_raises_with_the_reason(caplog):
    reason = "ClientError: The objective metric validation:auc was not emitted by any training job"
    with pytest.raises(StageError, match=f"tuning job {NAME} failed: {reason}"):
        _run([_describe("InProgress", running=1), _describe("Failed", failed=3, FailureReason=reason)], caplog)


def test_a_stopped_tuning_job_raises_saying_so(caplog):
    with pytest.raises(StageError, match="was stopped before it completed .*StopHyperParameterTuningJob"):
        _run([_describe("Stopping", running=2), _describe("Stopped", completed=1)], caplog)


def test_a_tuning_job_without_a_successful_trial_is_an_error(caplog):
    with pytest.raises(StageError, match=r"completed without a successful trial \(trials: 0 completed, 0 inprogress, 12 NonRetryableError\)"):
        _run([_describe("Completed", failed=12)], caplog)


def test_a_taken_tuning_job_name_that_cannot_be_waited_for_is_a_clear_error():
    sm = boto3.client("sagemaker", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")
    with Stubber(sm) as stub:
        stub.add_client_error("create_hyper_parameter_tuning_job", service_error_code="ResourceInUse",
                              service_message="Hyper Parameter Tuning Job already exists", http_status_code=400)
        stub.add_response("describe_hyper_parameter_tuning_job", _describe("Failed", FailureReason="quota"),
                          {"HyperParameterTuningJobName": NAME})
        with pytest.raises(StageError, match="tuning job .* is Failed and SageMaker does not reuse job names: start a new run"):
            run_sagemaker_tuning_job(sm, _tuning_request(), poll_s=0, sleep=lambda s: None)


def test_a_resumed_run_waits_for_its_tuning_job_and_a_cut_short_wait_stops_it(caplog):
    """The run's tuning job runs already (an earlier attempt): wait for it; a Prefect timeout
    during that wait stops the tuning job and goes on."""
    sm = boto3.client("sagemaker", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")

    def timed_out(seconds: float) -> None:
        raise TimeoutError("stage timed out")

    with Stubber(sm) as stub:
        stub.add_client_error("create_hyper_parameter_tuning_job", service_error_code="ResourceInUse",
                              service_message="Hyper Parameter Tuning Job already exists", http_status_code=400)
        stub.add_response("describe_hyper_parameter_tuning_job", _describe("InProgress", running=3),
                          {"HyperParameterTuningJobName": NAME})
        stub.add_response("describe_hyper_parameter_tuning_job", _describe("InProgress", running=3),
                          {"HyperParameterTuningJobName": NAME})
        stub.add_response("stop_hyper_parameter_tuning_job", {}, {"HyperParameterTuningJobName": NAME})
        with caplog.at_level(logging.INFO, logger="updraft.train"), pytest.raises(TimeoutError):
            run_sagemaker_tuning_job(sm, _tuning_request(), poll_s=5, sleep=timed_out)
        stub.assert_no_pending_responses()
    assert f"tuning job {NAME} was started by an earlier attempt of this run (InProgress): waiting for it" in caplog.text
    assert f"stopped tuning job {NAME}: the wait for it ended (TimeoutError)" in caplog.text
