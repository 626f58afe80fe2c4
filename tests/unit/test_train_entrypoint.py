"""The training container's entry point, run on a temporary SAGEMAKER_BASE_DIR as SageMaker would run it.

``write_feature_splits`` (used by the other training tests too) writes what preprocess
hands to training: Parquet splits of float32 features plus ``_label`` and transform.json,
encoded with the real ``apply_transform`` from raw rows.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

from images.training import train as entry
from tasks.features.transform import apply_transform, encode_labels
from tasks.training import container

REPO = Path(__file__).resolve().parents[2]
CLASSES = {
    "binary_classification": ["no", "yes"],
    "multiclass_classification": ["high", "low", "mid"],
    "regression": None,
}
METRIC = {"binary_classification": "auc", "multiclass_classification": "mlogloss", "regression": "rmse"}


def raw_rows(task: str, n: int, seed: int) -> pd.DataFrame:
    """Raw rows with a learnable label and some noise, as a curated dataset would hold them."""
    rng = np.random.default_rng(seed)
    age = rng.normal(45, 12, n)
    income = rng.lognormal(10, 0.5, n)
    city = rng.choice(["lyon", "nice", "oslo"], n)
    score = (age - 45) / 12 + np.where(city == "oslo", 1.0, 0.0) + rng.normal(0, 0.7, n)
    if task == "binary_classification":
        label = np.where(score > 0.3, "yes", "no")
    elif task == "multiclass_classification":
        label = np.where(score > 0.8, "high", np.where(score > -0.5, "mid", "low"))
    else:
        label = 3.0 * score + 10.0
    frame = pd.DataFrame({"age": age, "city": city, "income": income, "target": label})
    frame.loc[rng.random(n) < 0.05, "age"] = np.nan
    return frame


def make_spec(task: str, train: pd.DataFrame) -> dict:
    numeric = []
    for name in ("age", "income"):
        values = train[name]
        numeric.append({
            "name": name, "count": int(values.notna().sum()), "null_count": int(values.isna().sum()),
            "mean": float(values.mean()), "std": float(values.std(ddof=0)), "min": float(values.min()),
            "max": float(values.max()), "fill": float(values.mean()),
        })
    return {
        "format": "updraft.transform/1",
        "task": task,
        "label": "target",
        "label_classes": CLASSES[task],
        "input_columns": ["age", "city", "income"],
        "numeric": numeric,
        "categorical": [{"name": "city", "vocabulary": ["oslo", "lyon", "nice"], "oov_code": 0}],
        "feature_names": ["age", "city", "income"],
        "split": {"validation": 0.2, "test": 0.2, "hash": "test"},
    }


def feature_frame(raw: pd.DataFrame, spec: dict) -> pd.DataFrame:
    X = apply_transform(raw, spec)
    frame = pd.DataFrame(X, columns=spec["feature_names"])
    frame["_label"] = encode_labels(raw["target"], spec)
    return frame


def write_feature_splits(folder: Path, task: str = "binary_classification", n_train: int = 800,
                         n_valid: int = 300, seed: int = 0) -> dict:
    """``folder/{train,validation,test}/part-*.parquet`` and ``folder/transform.json``; returns the spec."""
    raw = raw_rows(task, n_train + 2 * n_valid, seed)
    train_raw, valid_raw, test_raw = raw[:n_train], raw[n_train:n_train + n_valid], raw[n_train + n_valid:]
    spec = make_spec(task, train_raw)
    for split, rows in (("train", train_raw), ("validation", valid_raw), ("test", test_raw)):
        out = folder / split
        out.mkdir(parents=True, exist_ok=True)
        frame = feature_frame(rows, spec)
        half = len(frame) // 2  # two files, as a Dask writer leaves them
        frame[:half].to_parquet(out / "part.0.parquet", index=False)
        frame[half:].to_parquet(out / "part.1.parquet", index=False)
    (folder / "transform.json").write_text(json.dumps(spec, indent=2))
    return spec


def layout_opt_ml(base: Path, features: Path, hyperparameters: dict | None = None) -> None:
    """What SageMaker leaves in /opt/ml before it starts the container."""
    data = base / "input" / "data"
    data.mkdir(parents=True)
    for split in ("train", "validation"):
        (data / split).symlink_to(features / split, target_is_directory=True)
    (data / "transform").mkdir()
    (data / "transform" / "transform.json").write_text((features / "transform.json").read_text())
    config = base / "input" / "config"
    config.mkdir(parents=True)
    (config / "hyperparameters.json").write_text(json.dumps(hyperparameters or {}))


@pytest.fixture
def sagemaker_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """A clean SageMaker environment rooted at tmp_path/opt_ml (no SM_* leaking in from outside)."""
    import os

    for name in list(os.environ):
        if name.startswith(("SM_", "UPDRAFT_")) or name == container.OMP_NUM_THREADS:
            monkeypatch.delenv(name)
    base = tmp_path / "opt_ml"
    monkeypatch.setenv(container.BASE_DIR_ENV, str(base))
    monkeypatch.setenv(container.OMP_NUM_THREADS, "1")  # a few hundred rows; the machine is shared
    return base


def run_main(capsys: pytest.CaptureFixture) -> tuple[int, str]:
    code = entry.main([])
    return code, capsys.readouterr().out


@pytest.mark.parametrize("task", ["binary_classification", "multiclass_classification", "regression"])
def test_trains_each_task_and_writes_the_model_folder(task, tmp_path, sagemaker_env, capsys):
    spec = write_feature_splits(tmp_path / "features", task)
    layout_opt_ml(sagemaker_env, tmp_path / "features", {"max_depth": "3", "eta": "0.3", "early_stopping_rounds": "5"})

    code, out = run_main(capsys)

    assert code == 0, out
    model = sagemaker_env / "model"
    assert sorted(p.name for p in model.iterdir()) == ["metadata.json", "transform.json", "xgboost-model.json"]
    assert json.loads((model / "transform.json").read_text()) == spec
    metadata = json.loads((model / "metadata.json").read_text())
    assert metadata["task"] == task
    assert metadata["feature_names"] == ["age", "city", "income"]
    assert metadata["input_columns"] == ["age", "city", "income"]
    assert metadata["label_classes"] == CLASSES[task]
    assert set(metadata["versions"]) >= {"python", "xgboost", "numpy", "pandas", "scikit-learn"}
    assert metadata["versions"]["xgboost"] == xgb.__version__
    assert metadata["algorithm"] == "xgboost" and metadata["device"] == "cpu" and metadata["hosts"] == 1
    metric = METRIC[task]
    # The final metrics stand alone on their lines, name=value, and equal what metadata.json records.
    final = dict(container.parse_metric_line(line) for line in out.splitlines() if container.parse_metric_line(line))
    assert set(final) == {f"train:{metric}", f"validation:{metric}"}
    assert final == pytest.approx(metadata["metrics"], rel=1e-6)
    # Every round printed its metrics; early stopping kept the best round, well before 300.
    rounds = [line for line in out.splitlines() if re.match(r"^\[\d+\]\t", line)]
    assert len(rounds) == metadata["rounds"] < 300
    assert f"validation:{metric}=" in rounds[0]
    booster = xgb.Booster(model_file=str(model / "xgboost-model.json"))
    assert booster.num_boosted_rounds() == metadata["best_iteration"] + 1
    assert metadata["rounds"] == metadata["best_iteration"] + 1 + 5
    # The model learned something.
    if task == "binary_classification":
        assert metadata["metrics"]["validation:auc"] > 0.8
    elif task == "multiclass_classification":
        assert metadata["metrics"]["validation:mlogloss"] < 0.9 * np.log(3)  # better than the uniform guess
    elif task == "regression":
        y_valid = pd.read_parquet(tmp_path / "features" / "validation")["_label"]
        assert metadata["metrics"]["validation:rmse"] < 0.7 * y_valid.std()
    assert not (sagemaker_env / "output" / "failure").exists()


def test_hyperparameter_strings_are_parsed_and_unknown_xgboost_ones_passed_on(tmp_path, sagemaker_env, capsys, monkeypatch):
    write_feature_splits(tmp_path / "features", n_train=300, n_valid=100)
    layout_opt_ml(sagemaker_env, tmp_path / "features", {
        "num_round": "7", "early_stopping_rounds": "0", "max_depth": "2", "subsample": "0.8",
        "eval_metric": "auc,logloss", "seed": "3", "tree_method": "approx",
    })
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv(container.UPDRAFT_RUN_ID, "20261126-153000-abcdef")
    monkeypatch.setenv(container.UPDRAFT_DATA_MANIFEST_HASH, "sha256:0123abcd")
    monkeypatch.setenv(container.UPDRAFT_GIT_REVISION, "6a0faef")

    code, out = run_main(capsys)

    assert code == 0, out
    metadata = json.loads((sagemaker_env / "model" / "metadata.json").read_text())
    hps = metadata["hyperparameters"]
    assert hps["max_depth"] == 2 and hps["subsample"] == 0.8 and hps["seed"] == 3 and hps["nthread"] == 1
    assert hps["eval_metric"] == ["auc", "logloss"] and hps["tree_method"] == "approx"
    assert metadata["rounds"] == 7 and metadata["best_iteration"] == 6
    assert set(metadata["metrics"]) == {"train:auc", "train:logloss", "validation:auc", "validation:logloss"}
    assert metadata["run_id"] == "20261126-153000-abcdef"
    assert metadata["data_manifest_hash"] == "sha256:0123abcd" and metadata["git_revision"] == "6a0faef"


def test_sm_variables_take_precedence_over_the_default_folders(tmp_path, sagemaker_env, capsys, monkeypatch):
    features = tmp_path / "features"
    write_feature_splits(features, n_train=300, n_valid=100)
    layout_opt_ml(sagemaker_env, features, {"num_round": "not used: SM_HPS wins"})
    elsewhere = tmp_path / "elsewhere-model"
    monkeypatch.setenv("SM_CHANNEL_TRAIN", str(features / "train"))
    monkeypatch.setenv("SM_MODEL_DIR", str(elsewhere))
    monkeypatch.setenv("SM_HPS", json.dumps({"num_round": 4, "early_stopping_rounds": 0}))
    (sagemaker_env / "input" / "data" / "train").unlink()  # only SM_CHANNEL_TRAIN knows where it is

    code, out = run_main(capsys)

    assert code == 0, out
    assert (elsewhere / "xgboost-model.json").is_file()
    assert json.loads((elsewhere / "metadata.json").read_text())["rounds"] == 4
    assert not (sagemaker_env / "model").exists()


@pytest.mark.parametrize(
    ("hyperparameters", "expected"),
    [
        ({"max_depth": "deep"}, "max_depth"),
        ({"max_dept": "3"}, "max_dept are not used by XGBoost"),
        ({"num_round": "-3"}, "'num_round' must be an integer >= 1"),
        ({"objective": "reg:squarederror"}, "'objective' is set by the task"),
        ({"eta": "-1"}, "invalid hyperparameter"),
    ],
)
def test_a_bad_hyperparameter_writes_the_failure_file_and_exits_non_zero(hyperparameters, expected, tmp_path, sagemaker_env, capsys):
    write_feature_splits(tmp_path / "features", n_train=200, n_valid=80)
    layout_opt_ml(sagemaker_env, tmp_path / "features", hyperparameters)

    code, _ = run_main(capsys)

    assert code != 0
    failure = (sagemaker_env / "output" / "failure").read_text()
    assert expected in failure
    assert "\n" not in failure.strip()  # one line: SageMaker shows it as FailureReason
    assert not (sagemaker_env / "model" / "xgboost-model.json").exists()


def test_a_missing_channel_is_named_in_the_failure(tmp_path, sagemaker_env, capsys):
    write_feature_splits(tmp_path / "features", n_train=200, n_valid=80)
    layout_opt_ml(sagemaker_env, tmp_path / "features")
    (sagemaker_env / "input" / "data" / "validation").unlink()

    code, _ = run_main(capsys)

    assert code != 0
    assert "training channel 'validation' is missing" in (sagemaker_env / "output" / "failure").read_text()


def test_a_model_folder_the_job_cannot_write_fails_before_training(tmp_path, sagemaker_env, capsys, monkeypatch):
    """A non-root image on a platform that mounts /opt/ml/model owned by root: one clear line at once.
    (A folder under a plain file stands in for the unwritable mount: the tests may run as root.)"""
    write_feature_splits(tmp_path / "features", n_train=200, n_valid=80)
    layout_opt_ml(sagemaker_env, tmp_path / "features")
    (tmp_path / "mount").write_text("")
    monkeypatch.setenv("SM_MODEL_DIR", str(tmp_path / "mount" / "model"))

    code, _ = run_main(capsys)

    assert code != 0
    failure = (sagemaker_env / "output" / "failure").read_text()
    assert f"{tmp_path / 'mount' / 'model'} is not writable" in failure and "without its USER line" in failure


def test_an_unsupported_task_in_transform_json_fails_clearly(tmp_path, sagemaker_env, capsys):
    write_feature_splits(tmp_path / "features", n_train=200, n_valid=80)
    layout_opt_ml(sagemaker_env, tmp_path / "features")
    path = sagemaker_env / "input" / "data" / "transform" / "transform.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "task": "survival_analysis"}))

    code, _ = run_main(capsys)

    assert code != 0
    failure = (sagemaker_env / "output" / "failure").read_text()
    assert "task 'survival_analysis' cannot be trained" in failure
    assert "ranking" in failure and "anomaly_detection" in failure  # the message lists what is supported


def test_as_a_process_the_failure_reaches_the_exit_status(tmp_path, sagemaker_env):
    """``python -m images.training.train train``, exactly as the image's ``train`` command runs it."""
    write_feature_splits(tmp_path / "features", n_train=200, n_valid=80)
    layout_opt_ml(sagemaker_env, tmp_path / "features")
    (sagemaker_env / "input" / "data" / "train").unlink()

    proc = subprocess.run(
        [sys.executable, "-m", "images.training.train", "train"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )

    assert proc.returncode != 0
    assert "training channel 'train' is missing" in (sagemaker_env / "output" / "failure").read_text()
    assert "training channel 'train' is missing" in proc.stderr


def test_container_paths_follow_sagemaker_base_dir(sagemaker_env, monkeypatch):
    assert container.model_dir() == sagemaker_env / "model"
    assert container.channel_dir("train") == sagemaker_env / "input" / "data" / "train"
    assert container.failure_file() == sagemaker_env / "output" / "failure"
    assert container.input_config_dir() / container.HYPERPARAMETERS_FILE == sagemaker_env / "input/config/hyperparameters.json"
    monkeypatch.delenv(container.BASE_DIR_ENV)
    assert container.model_dir() == Path("/opt/ml/model")
    assert container.output_data_dir() == Path("/opt/ml/output/data")


def test_hyperparameters_round_trip_through_sagemaker_strings():
    given = {"num_round": 50, "eta": 0.05, "verbose": True, "eval_metric": ["auc", "logloss"], "tree_method": "hist"}
    strings = container.stringify_hyperparameters(given)
    assert all(isinstance(v, str) for v in strings.values())
    assert {k: entry.parse_hyperparameter(v) for k, v in strings.items()} == given


def test_the_entry_point_needs_none_of_the_orchestration_packages(tmp_path, sagemaker_env):
    """The training image installs numpy, pandas, pyarrow and xgboost only (images/training/Dockerfile)."""
    write_feature_splits(tmp_path / "features", n_train=200, n_valid=80)
    layout_opt_ml(sagemaker_env, tmp_path / "features", {"num_round": "3"})
    script = (
        "import sys; from images.training import train\n"
        "code = train.main([])\n"
        "print('LOADED', sorted({m.split('.')[0] for m in sys.modules}))\n"
        "sys.exit(code)\n"
    )

    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)

    assert proc.returncode == 0, proc.stderr
    loaded = set(json.loads(proc.stdout.split("LOADED ", 1)[1].replace("'", '"')))
    assert loaded >= {"xgboost", "pyarrow", "numpy"}
    assert not loaded & {"prefect", "boto3", "botocore", "fsspec", "s3fs", "dask", "distributed", "moto", "yaml", "pandera"}


def test_threads_come_from_the_environment_or_default_to_two():
    assert entry.default_nthread({}) == 2
    assert entry.default_nthread({"OMP_NUM_THREADS": "3"}) == 3
    assert entry.default_nthread({"SM_NUM_CPUS": "8"}) == 8
    assert entry.default_nthread({"OMP_NUM_THREADS": "junk", "SM_NUM_CPUS": "4"}) == 4


# --- exactly as SageMaker runs it -------------------------------------------------------------


def _opt_ml_as_sagemaker_leaves_it(base: Path, features: Path, hyperparameters: dict[str, str]) -> None:
    """Real folders (no links), config files as SageMaker writes them, string hyperparameters."""
    import shutil

    for channel in ("train", "validation"):
        shutil.copytree(features / channel, base / "input" / "data" / channel)
    (base / "input" / "data" / "transform").mkdir(parents=True)
    shutil.copy(features / "transform.json", base / "input" / "data" / "transform" / "transform.json")
    config = base / "input" / "config"
    config.mkdir(parents=True)
    assert all(isinstance(v, str) for v in hyperparameters.values())
    (config / "hyperparameters.json").write_text(json.dumps(hyperparameters))
    (config / "inputdataconfig.json").write_text(json.dumps({
        name: {"ContentType": container.CHANNEL_CONTENT_TYPES[name], "TrainingInputMode": "File",
               "S3DistributionType": "FullyReplicated", "RecordWrapperType": "None"}
        for name in ("train", "validation", "transform")
    }))
    (config / "resourceconfig.json").write_text(
        json.dumps({"current_host": "algo-1", "hosts": ["algo-1"], "network_interface_name": "eth0"})
    )
    for folder in ("model", "output/data", "checkpoints"):
        (base / folder).mkdir(parents=True)


def _as_sagemaker(base: Path) -> subprocess.CompletedProcess:
    import os

    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SM_", "UPDRAFT_", "SAGEMAKER_")) and k != container.OMP_NUM_THREADS}
    env[container.BASE_DIR_ENV] = str(base)
    return subprocess.run(
        [sys.executable, "-m", "images.training.train", "train"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=180,
    )


def test_the_container_contract_end_to_end(tmp_path):
    """`train` with only SAGEMAKER_BASE_DIR set: config files, channels, model folder, metric lines, failure file."""
    write_feature_splits(tmp_path / "features", "binary_classification", n_train=300, n_valid=100)
    base = tmp_path / "opt_ml"
    _opt_ml_as_sagemaker_leaves_it(base, tmp_path / "features",
                                   {"num_round": "12", "max_depth": "3", "eta": "0.3", "early_stopping_rounds": "4"})

    proc = _as_sagemaker(base)

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(p.name for p in (base / "model").iterdir()) == ["metadata.json", "transform.json", "xgboost-model.json"]
    assert (base / "model" / "transform.json").read_bytes() == (tmp_path / "features" / "transform.json").read_bytes()
    metadata = json.loads((base / "model" / "metadata.json").read_text())
    assert metadata["hyperparameters"]["max_depth"] == 3 and metadata["hyperparameters"]["nthread"] == 2
    assert metadata["rows"] == {"train": 300, "validation": 100}
    assert [p.name for p in (base / "checkpoints").iterdir()] == [container.CHECKPOINT_FILE]
    assert not (base / "output" / "failure").exists()
    assert "device=cpu" in proc.stdout
    # The job's metric definitions find each final value (the last match of its regex).
    for name, value in metadata["metrics"].items():
        found = re.findall(container.metric_regex(name), proc.stdout)
        assert found and float(found[-1]) == pytest.approx(value)

    # Bad input: a train file that is not Parquet.
    bad = tmp_path / "bad_opt_ml"
    _opt_ml_as_sagemaker_leaves_it(bad, tmp_path / "features", {"num_round": "3"})
    (bad / "input" / "data" / "train" / "part.0.parquet").write_text("id,age\n1,30\n")

    proc = _as_sagemaker(bad)

    assert proc.returncode != 0
    failure = (bad / "output" / "failure").read_text()
    assert "training channel 'train': part.0.parquet is not a Parquet file" in failure
    assert len(failure.strip().splitlines()) == 1
    assert not any((bad / "model").iterdir())


# --- the device ---------------------------------------------------------------------------------


def test_a_gpu_instance_trains_on_cuda_unless_told_otherwise():
    from images.training.devices import choose_device

    def no_probe() -> int:
        raise AssertionError("SM_NUM_GPUS answers; nvidia-smi is not asked")

    cuda = lambda: True
    assert choose_device({}, {"SM_NUM_GPUS": "1"}, list_gpus=no_probe, has_cuda=cuda).device == "cuda"
    assert choose_device({}, {"SM_NUM_GPUS": "0"}, list_gpus=no_probe, has_cuda=cuda).device is None
    assert choose_device({}, {}, list_gpus=lambda: 4, has_cuda=cuda).device == "cuda"
    assert choose_device({}, {}, list_gpus=lambda: 0, has_cuda=cuda).name == "cpu"
    chosen = choose_device({"device": "cpu"}, {"SM_NUM_GPUS": "8"}, list_gpus=no_probe, has_cuda=cuda)
    assert (chosen.device, chosen.reason) == ("cpu", "set by the hyperparameters")
    cpu_build = choose_device({}, {"SM_NUM_GPUS": "1"}, list_gpus=no_probe, has_cuda=lambda: False)
    assert cpu_build.device is None and "Dockerfile.gpu" in cpu_build.reason


def test_nvidia_smi_is_asked_when_the_toolkit_says_nothing(tmp_path, monkeypatch):
    from images.training.devices import count_gpus, nvidia_smi_gpus

    fake = tmp_path / "nvidia-smi"
    fake.write_text(
        "#!/bin/sh\n[ \"$1\" = -L ] || exit 3\n"
        "echo 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-1)'\necho 'GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-2)'\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert nvidia_smi_gpus() == 2
    assert count_gpus({}) == (2, "nvidia-smi lists 2 GPUs")
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert nvidia_smi_gpus() == 0


def test_the_device_is_printed_and_a_cpu_build_stays_on_the_cpu(tmp_path, sagemaker_env, capsys, monkeypatch):
    write_feature_splits(tmp_path / "features", n_train=200, n_valid=80)
    layout_opt_ml(sagemaker_env, tmp_path / "features", {"num_round": "3"})
    monkeypatch.setenv(container.SM_NUM_GPUS, "1")
    from images.training import devices

    monkeypatch.setattr(devices, "xgboost_has_cuda", lambda: False)  # as xgboost-cpu, whatever is installed here

    code, out = run_main(capsys)

    assert code == 0, out
    assert "device=cpu (SM_NUM_GPUS=1, but this XGBoost has no CUDA support" in out
    assert "device" not in json.loads((sagemaker_env / "model" / "metadata.json").read_text())["hyperparameters"]
