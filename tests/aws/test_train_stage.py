"""The train stage end to end on the embedded endpoint: every backend a config can pick, wired as users run it.

The pieces have their own tests (the entry point, local jobs, tuning, SageMaker requests);
these check the stage joins them: tuning's best model becomes the run's model, several
instances train together, a user's own script runs under the same contract, the Dask
backend trains on the cluster, and the ``aws`` branch sends the config's spot, KMS and
VPC settings to SageMaker.
"""

from __future__ import annotations

import json
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest

from tasks.config import AwsConfig, HyperparameterRange, PipelineConfig, TrainConfig, TuneConfig
from tasks.errors import ConfigError
from tasks.layout import Layout
from tasks.modelbundle import load_model_bundle
from tasks.training import container, train_stage
from tasks.training.jobs import SM_PROGRAM
from tasks.training.local_job import pack_model_dir
from tests.unit.test_train_entrypoint import write_feature_splits

ROLE = "arn:aws:iam::123456789012:role/updraft-training"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/updraft-training:1"
FAST = {"max_depth": 3, "eta": 0.3, "num_round": 30, "early_stopping_rounds": 5}
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "pytorch_tabular"


def _config(bucket: str, **kwargs) -> PipelineConfig:
    return PipelineConfig(name="claims", bucket=bucket, source="raw/", contract="/dev/null", label="target",
                          task=kwargs.pop("task", "binary_classification"),
                          train=kwargs.pop("train", TrainConfig(hyperparameters=FAST)), **kwargs)


@pytest.fixture
def features(embedded_target, moto_s3_bucket, tmp_path, monkeypatch):
    """A run's feature splits in the embedded S3 (four train files, so two instances can share them)."""
    monkeypatch.setenv("UPDRAFT_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("UPDRAFT_GIT_REVISION", "0123abc")
    local = tmp_path / "features"
    write_feature_splits(local, n_train=800, n_valid=300)
    for name in ("part.0", "part.1"):  # split each train file in two
        import pandas as pd

        frame = pd.read_parquet(local / "train" / f"{name}.parquet")
        (local / "train" / f"{name}.parquet").unlink()
        half = len(frame) // 2
        frame[:half].to_parquet(local / "train" / f"{name}a.parquet", index=False)
        frame[half:].to_parquet(local / "train" / f"{name}b.parquet", index=False)
    run_id = "20261127-050000-abcdef"
    uri = Layout(moto_s3_bucket, "claims").features(run_id)
    embedded_target.filesystem().put(str(local) + "/", uri, recursive=True)
    return run_id, uri, local


def test_tuning_picks_the_best_trial_and_its_model_becomes_the_runs(embedded_target, moto_s3_bucket, features):
    run_id, uri, _ = features
    tune = TuneConfig(
        ranges=(HyperparameterRange(name="max_depth", type="integer", min=1, max=4),
                HyperparameterRange(name="eta", type="continuous", min=0.05, max=0.5, scaling="log")),
        max_trials=4, max_parallel=2,
    )
    result = train_stage.fn(_config(moto_s3_bucket, tune=tune), embedded_target, run_id, uri)

    assert result.tuning is not None and result.tuning["objective"] == "validation:auc"
    trials = result.tuning["trials"]
    assert len(trials) == 4 and all(t["state"] == "Completed" for t in trials)
    best = max(trials, key=lambda t: t["objective"])
    assert result.tuning["best_trial"] == best["job_name"] == result.job_name
    assert result.metrics["validation:auc"] == pytest.approx(best["objective"])
    fs = embedded_target.filesystem()
    layout = Layout(moto_s3_bucket, "claims")
    assert fs.cat(layout.model(run_id)) == fs.cat(best["model_uri"])
    assert load_model_bundle(result.model_dir).metadata["hyperparameters"]["max_depth"] == best["hyperparameters"]["max_depth"]
    # every trial is a training job in the endpoint's SageMaker API, with its own hyperparameters
    sm = embedded_target.client("sagemaker")
    names = {j["TrainingJobName"] for j in sm.list_training_jobs(MaxResults=100)["TrainingJobSummaries"]}
    assert {t["job_name"] for t in trials} <= names
    desc = sm.describe_training_job(TrainingJobName=best["job_name"])
    assert desc["HyperParameters"]["max_depth"] == str(best["hyperparameters"]["max_depth"])
    assert desc["ModelArtifacts"]["S3ModelArtifacts"] == best["model_uri"]


def test_two_instances_train_together_on_shards_of_the_train_files(embedded_target, moto_s3_bucket, features):
    run_id, uri, _ = features
    config = _config(moto_s3_bucket, train=TrainConfig(hyperparameters=FAST, instance_count=2))
    result = train_stage.fn(config, embedded_target, run_id, uri)

    metadata = load_model_bundle(result.model_dir).metadata
    assert metadata["hosts"] == 2
    assert metadata["rows"]["train"] == 800  # both shards together
    assert result.metrics["validation:auc"] > 0.8
    desc = embedded_target.client("sagemaker").describe_training_job(TrainingJobName=result.job_name)
    assert desc["ResourceConfig"]["InstanceCount"] == 2
    train_channel = next(c for c in desc["InputDataConfig"] if c["ChannelName"] == "train")
    assert train_channel["DataSource"]["S3DataSource"]["S3DataDistributionType"] == "ShardedByS3Key"


def test_the_model_records_its_data_and_code_and_the_job_its_real_run(embedded_target, moto_s3_bucket, features):
    run_id, uri, _ = features
    result = train_stage.fn(_config(moto_s3_bucket), embedded_target, run_id, uri)
    metadata = load_model_bundle(result.model_dir).metadata
    assert metadata["git_revision"] == "0123abc"
    assert metadata["run_id"] == run_id
    desc = embedded_target.client("sagemaker").describe_training_job(TrainingJobName=result.job_name)
    final = {m["MetricName"]: m["Value"] for m in desc["FinalMetricDataList"]}
    assert final["validation:auc"] == pytest.approx(result.metrics["validation:auc"], rel=1e-6)
    assert desc["TrainingTimeInSeconds"] == round(result.duration_s)


def test_the_dask_backend_trains_on_the_cluster(embedded_target, moto_s3_bucket, features):
    from distributed import Client, LocalCluster

    run_id, uri, _ = features
    config = _config(moto_s3_bucket, train=TrainConfig(hyperparameters=FAST, backend="dask"))
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0", processes=True) as cluster, Client(cluster) as client:
        result = train_stage.fn(config, embedded_target, run_id, uri, client)
    bundle = load_model_bundle(result.model_dir)
    assert bundle.metadata["backend"] == "dask"
    assert result.metrics["validation:auc"] > 0.8
    assert embedded_target.filesystem().exists(Layout(moto_s3_bucket, "claims").model(run_id))


def test_a_users_pytorch_script_trains_under_the_same_contract(embedded_target, moto_s3_bucket, features):
    pytest.importorskip("torch", reason="the PyTorch example needs the torch extra (make test installs it)")
    run_id, uri, _ = features
    train = TrainConfig(entry_point="train.py", source_dir=str(EXAMPLE), framework="pytorch",
                        hyperparameters={"epochs": 8, "lr": 0.01, "hidden": 16})
    result = train_stage.fn(_config(moto_s3_bucket, train=train), embedded_target, run_id, uri)

    assert result.metrics["validation:auc"] > 0.75
    model_dir = Path(result.model_dir)
    assert (model_dir / "code" / "inference.py").is_file() and (model_dir / "transform.json").is_file()
    metadata = json.loads((model_dir / "metadata.json").read_text())
    assert metadata["algorithm"] == "script" and metadata["task"] == "binary_classification"
    # evaluation and serving load it through its own inference hooks and get its validation AUC back
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    bundle = load_model_bundle(model_dir)
    valid = pd.concat(pd.read_parquet(p) for p in sorted((features[2] / "validation").glob("*.parquet")))
    scores = bundle.predict_features(valid[bundle.feature_names].to_numpy("float32"))
    assert roc_auc_score(valid["_label"], scores) == pytest.approx(result.metrics["validation:auc"], abs=1e-6)


def test_aws_sends_spot_kms_vpc_and_isolation_to_sagemaker(embedded_target, moto_s3_bucket, features, tmp_path):
    """moto completes jobs at once; the artifact is put where SageMaker would write it."""
    run_id, uri, _ = features
    config = _config(
        moto_s3_bucket,
        train=TrainConfig(hyperparameters=FAST, spot=True, max_runtime_s=600, network_isolation=True,
                          volume_size_gb=40, tags={"team": "fraud"}),
        aws=AwsConfig(training_image=IMAGE, role_arn=ROLE, kms_key_id="alias/updraft",
                      subnets=("subnet-1",), security_group_ids=("sg-1",)),
    )
    _place_artifact(embedded_target, moto_s3_bucket, run_id, tmp_path)
    aws = type(embedded_target)(kind="aws", region=embedded_target.region)

    result = train_stage.fn(config, aws, run_id, uri)

    desc = aws.client("sagemaker").describe_training_job(TrainingJobName=result.job_name)
    assert desc["EnableManagedSpotTraining"] is True
    assert desc["StoppingCondition"] == {"MaxRuntimeInSeconds": 600, "MaxWaitTimeInSeconds": 1200}
    assert desc["CheckpointConfig"]["S3Uri"].startswith(f"s3://{moto_s3_bucket}/")
    assert desc["OutputDataConfig"]["KmsKeyId"] == "alias/updraft"
    assert desc["ResourceConfig"]["VolumeKmsKeyId"] == "alias/updraft"
    assert desc["ResourceConfig"]["VolumeSizeInGB"] == 40
    assert desc["VpcConfig"] == {"SecurityGroupIds": ["sg-1"], "Subnets": ["subnet-1"]}
    assert desc["EnableNetworkIsolation"] is True
    tags = aws.client("sagemaker").list_tags(ResourceArn=desc["TrainingJobArn"])["Tags"]
    assert {"Key": "team", "Value": "fraud"} in tags and {"Key": "updraft:run-id", "Value": run_id} in tags


def test_aws_runs_a_users_script_from_its_uploaded_source(embedded_target, moto_s3_bucket, features, tmp_path):
    run_id, uri, _ = features
    config = _config(
        moto_s3_bucket,
        train=TrainConfig(entry_point="train.py", source_dir=str(EXAMPLE), framework="pytorch", hyperparameters={"epochs": 3}),
        aws=AwsConfig(training_image=IMAGE, role_arn=ROLE),
    )
    _place_artifact(embedded_target, moto_s3_bucket, run_id, tmp_path)
    aws = type(embedded_target)(kind="aws", region=embedded_target.region)

    result = train_stage.fn(config, aws, run_id, uri)

    desc = aws.client("sagemaker").describe_training_job(TrainingJobName=result.job_name)
    hps = desc["HyperParameters"]
    assert json.loads(hps[SM_PROGRAM]) == "train.py" and json.loads(hps["epochs"]) == 3
    source = json.loads(hps["sagemaker_submit_directory"])
    local = tmp_path / "sourcedir.tar.gz"
    embedded_target.filesystem().get_file(source, str(local))
    with tarfile.open(local) as archive:
        assert {"train.py", "inference.py"} <= set(archive.getnames())


def test_aws_without_a_role_names_what_is_missing(embedded_target, moto_s3_bucket):
    aws = type(embedded_target)(kind="aws", region=embedded_target.region)
    with pytest.raises(ConfigError, match="aws.training_image and aws.role_arn"):
        train_stage.fn(_config(moto_s3_bucket), aws, "run-1", "s3://x/features/run-1/")
    script = _config(moto_s3_bucket, train=TrainConfig(entry_point=str(EXAMPLE / "train.py")))
    with pytest.raises(ConfigError, match=r"needs aws\.role_arn in the config"):
        train_stage.fn(script, aws, "run-1", "s3://x/features/run-1/")


def _place_artifact(target, bucket: str, run_id: str, tmp_path: Path) -> None:
    """A real model archive where SageMaker would leave the job's output."""
    from tests.aws.test_training_jobs import _train_model_folder

    folder = tmp_path / "model"
    folder.mkdir()
    _train_model_folder(tmp_path, folder)
    artifact = f"{Layout(bucket, 'claims').model_prefix(run_id)}claims-{run_id}/output/model.tar.gz"
    target.filesystem().put_file(str(pack_model_dir(folder, tmp_path / "model.tar.gz")), artifact)
