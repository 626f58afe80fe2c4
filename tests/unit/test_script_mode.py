"""Bring your own script, local side: a user's script runs as SageMaker's training toolkit runs it.

The stand-in scripts here check what they are given (arguments, cwd, ``SM_*``) and fail
loudly otherwise; the PyTorch example is trained for real when torch is installed.
"""

from __future__ import annotations

import importlib.util
import json
import tarfile
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pytest

from tasks.errors import ConfigError, StageError
from tasks.training import training_channels
from tasks.training.local_job import run_local_training_job
from tasks.training.script_mode import ScriptSpec, stage_code, user_args
from tests.unit.test_train_entrypoint import write_feature_splits

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "pytorch_tabular"


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture
def features(tmp_path):
    folder = tmp_path / "bucket" / "features" / "run-1"
    write_feature_splits(folder, "binary_classification", n_train=400, n_valid=200)
    return folder


CHECKING_SCRIPT = r'''
import json, os, sys
from pathlib import Path

import helper  # a module next to the script: source_dir is the cwd and on sys.path

args = sys.argv[1:]
env = json.loads(os.environ["SM_TRAINING_ENV"])
checks = {
    "args": args == ["--batch-size", "64", "-k", "3", "--lr", "0.01", "--shuffle", "True"],
    "user_args": json.loads(os.environ["SM_USER_ARGS"]) == args,
    "hps": json.loads(os.environ["SM_HPS"]) == {"batch-size": 64, "lr": 0.01, "shuffle": True, "k": 3},
    "hp_var": os.environ.get("SM_HP_BATCH_SIZE") == "64",
    "cwd": Path.cwd() == Path(os.environ["SM_MODULE_DIR"]) == Path(env["module_dir"]),
    "channels": json.loads(os.environ["SM_CHANNELS"]) == ["train", "transform", "validation"],
    "train_dir": Path(os.environ["SM_CHANNEL_TRAIN"]) == Path(env["channel_input_dirs"]["train"]),
    "train_files": sorted(p.name for p in Path(os.environ["SM_CHANNEL_TRAIN"]).iterdir()) == ["part.0.parquet", "part.1.parquet"],
    "hosts": json.loads(os.environ["SM_HOSTS"]) == ["algo-1"] and os.environ["SM_CURRENT_HOST"] == "algo-1",
    "cpus": int(os.environ["SM_NUM_CPUS"]) >= 1 and int(os.environ["SM_NUM_GPUS"]) >= 0,
    "entry": env["user_entry_point"] == "train_script.py" and env["job_name"] == "byo-1",
    "no_framework_hp": "sagemaker_program" not in os.environ["SM_HPS"],
    "model_dir": os.environ["SM_MODEL_DIR"].endswith("opt_ml/model"),
}
failed = [name for name, ok in checks.items() if not ok]
if failed:
    Path(os.environ["SM_OUTPUT_DIR"], "failure").write_text("checks failed: " + ", ".join(failed) + " " + json.dumps(args))
    sys.exit(2)
model = Path(os.environ["SM_MODEL_DIR"])
(model / "weights.bin").write_bytes(b"\x00" * 8)
if os.environ.get("WRITE_OWN_METADATA"):
    (model / "metadata.json").write_text(json.dumps({"task": "binary_classification", "mine": True}))
print("[0]\tvalidation:auc=0.6", flush=True)
print(f"validation:auc={helper.VALUE}", flush=True)
print("train:auc=0.9", flush=True)
'''


@pytest.fixture
def source_dir(tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "train_script.py").write_text(CHECKING_SCRIPT)
    (folder / "helper.py").write_text("VALUE = 0.75\n")
    return folder


def _run(features, tmp_path, script, hyperparameters, **kwargs):
    return run_local_training_job(
        job_name="byo-1",
        work_dir=tmp_path / "work",
        channels=training_channels(str(features)),
        hyperparameters=hyperparameters,
        fs=fsspec.filesystem("file"),
        output_model_uri=str(tmp_path / "out" / "model.tar.gz"),
        script=script,
        **kwargs,
    )


HPS = {"lr": 0.01, "batch-size": 64, "shuffle": True, "k": 3, "sagemaker_program": "train_script.py"}


def test_user_args_follow_the_training_toolkit():
    hps = {"lr": "0.010", "batch-size": "64", "shuffle": "true", "k": "3", "name": "resnet", "sagemaker_region": "x"}
    assert user_args(hps) == ["--batch-size", "64", "-k", "3", "--lr", "0.01", "--name", "resnet", "--shuffle", "True"]


def test_a_script_runs_toolkit_style_and_its_model_gets_updraft_metadata(features, tmp_path, source_dir):
    spec = ScriptSpec(entry_point="train_script.py", source_dir=str(source_dir), framework="pytorch", framework_version="2.5")
    result = _run(features, tmp_path, spec, HPS, environment={
        "UPDRAFT_RUN_ID": "run-1", "UPDRAFT_DATA_MANIFEST_HASH": "sha256:abc", "UPDRAFT_GIT_REVISION": "0123abc",
    })

    assert result.metrics == {"validation:auc": 0.75, "train:auc": 0.9}
    with tarfile.open(result.model_uri) as archive:
        assert sorted(archive.getnames()) == ["metadata.json", "transform.json", "weights.bin"]
    model = Path(result.model_dir)
    transform = json.loads((features / "transform.json").read_text())
    assert json.loads((model / "transform.json").read_text()) == transform  # copied from the transform channel
    metadata = json.loads((model / "metadata.json").read_text())
    assert metadata["algorithm"] == "script"
    assert (metadata["entry_point"], metadata["framework"], metadata["framework_version"]) == ("train_script.py", "pytorch", "2.5")
    assert metadata["task"] == "binary_classification"
    assert metadata["feature_names"] == transform["feature_names"]
    assert metadata["label_classes"] == ["no", "yes"]
    assert metadata["metrics"] == result.metrics
    assert (metadata["run_id"], metadata["data_manifest_hash"], metadata["git_revision"]) == ("run-1", "sha256:abc", "0123abc")
    assert metadata["versions"]["python"] and metadata["versions"]["numpy"] == np.__version__
    assert metadata["training_job_name"] == "byo-1"
    # the code was copied to <base>/code, where the script ran
    assert (tmp_path / "work" / "opt_ml" / "code" / "helper.py").is_file()


def test_a_metadata_file_the_script_wrote_is_kept(features, tmp_path, source_dir):
    spec = ScriptSpec(entry_point="train_script.py", source_dir=str(source_dir))
    result = _run(features, tmp_path, spec, HPS, environment={"WRITE_OWN_METADATA": "1"})
    assert json.loads((Path(result.model_dir) / "metadata.json").read_text()) == {"task": "binary_classification", "mine": True}


def test_a_script_given_alone_is_copied_alone(features, tmp_path):
    script = tmp_path / "solo.py"
    script.write_text(
        "import os, sys\nfrom pathlib import Path\n"
        "assert sys.argv[1:] == ['--epochs', '2'], sys.argv\n"
        "assert sorted(os.listdir('.')) == ['solo.py'], os.listdir('.')\n"
        "Path(os.environ['SM_MODEL_DIR'], 'm.txt').write_text('x')\n"
        "print('validation:auc=0.5')\n"
    )
    result = _run(features, tmp_path, ScriptSpec(entry_point=str(script)), {"epochs": 2})
    assert result.metrics == {"validation:auc": 0.5}


def test_a_failing_script_surfaces_its_failure_text(features, tmp_path, source_dir):
    spec = ScriptSpec(entry_point="train_script.py", source_dir=str(source_dir))
    with pytest.raises(StageError, match=r"training job byo-1 failed: checks failed: args"):
        _run(features, tmp_path, spec, {"lr": 0.5})


def test_a_crashing_script_fails_with_the_end_of_its_log(features, tmp_path):
    script = tmp_path / "boom.py"
    script.write_text("print('loading')\nraise RuntimeError('CUDA out of memory')\n")
    with pytest.raises(StageError, match=r"exit status 1 without a failure file(.|\n)*RuntimeError: CUDA out of memory"):
        _run(features, tmp_path, ScriptSpec(entry_point=str(script)), {})


def test_a_script_that_saves_no_model_is_an_error(features, tmp_path):
    script = tmp_path / "lazy.py"
    script.write_text("print('validation:auc=0.9')\n")
    with pytest.raises(StageError, match=r"wrote nothing to the model folder: save your model .*SM_MODEL_DIR"):
        _run(features, tmp_path, ScriptSpec(entry_point=str(script)), {})


def test_an_entry_point_missing_from_source_dir_names_what_is_there(tmp_path, source_dir):
    with pytest.raises(ConfigError, match=r"'train.py' is not in train.source_dir .*helper.py, train_script.py"):
        stage_code(ScriptSpec(entry_point="train.py", source_dir=str(source_dir)), tmp_path / "code")
    with pytest.raises(ConfigError, match="must be a path inside train.source_dir"):
        stage_code(ScriptSpec(entry_point="../escape.py", source_dir=str(source_dir)), tmp_path / "code")


def test_source_dir_may_be_a_tar_gz_on_the_filesystem(tmp_path, source_dir):
    archive = tmp_path / "bucket" / "code" / "sourcedir.tar.gz"
    archive.parent.mkdir(parents=True)
    with tarfile.open(archive, "w:gz") as tar:
        for path in source_dir.iterdir():
            tar.add(path, arcname=path.name)
    entry = stage_code(ScriptSpec(entry_point="train_script.py", source_dir=f"file://{archive}"), tmp_path / "code",
                       fsspec.filesystem("file"))
    assert entry == tmp_path / "code" / "train_script.py" and (tmp_path / "code" / "helper.py").is_file()


def test_a_script_on_two_hosts_runs_on_each_and_the_first_hosts_model_is_kept(features, tmp_path):
    script = tmp_path / "dist.py"
    script.write_text(
        "import json, os\nfrom pathlib import Path\n"
        "env = json.loads(os.environ['SM_TRAINING_ENV'])\n"
        "assert env['hosts'] == ['algo-1', 'algo-2'], env['hosts']\n"
        "shard = sorted(p.name for p in Path(os.environ['SM_CHANNEL_TRAIN']).iterdir())\n"
        "print('shard', env['current_host'], shard, flush=True)\n"
        "if env['is_master']:\n"
        "    Path(os.environ['SM_MODEL_DIR'], 'model.bin').write_text(env['current_host'])\n"
        "    print('validation:auc=0.8')\n"
    )
    result = _run(features, tmp_path, ScriptSpec(entry_point=str(script)), {}, instance_count=2)

    assert result.metrics == {"validation:auc": 0.8}
    assert (Path(result.model_dir) / "model.bin").read_text() == "algo-1"
    log = (tmp_path / "work" / "train.log").read_text()
    assert "[algo-1] shard algo-1 ['part.0.parquet']" in log and "[algo-2] shard algo-2 ['part.1.parquet']" in log


# --- the PyTorch tabular example, trained for real ---


def _load_inference(model_dir: Path):
    spec = importlib.util.spec_from_file_location("example_inference", model_dir / "code" / "inference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_pytorch_example_trains_and_its_inference_code_reproduces_the_metric(features, tmp_path):
    pytest.importorskip("torch", reason="the PyTorch example needs torch (pip install -e '.[torch]')")
    from sklearn.metrics import roc_auc_score

    spec = ScriptSpec(entry_point="train.py", source_dir=str(EXAMPLE), framework="pytorch", framework_version="2.5")
    result = _run(features, tmp_path, spec, {"epochs": 15, "lr": 0.01, "hidden": 16, "batch-size": 64},
                  environment={"UPDRAFT_RUN_ID": "run-1"})

    auc = result.metrics["validation:auc"]
    assert auc > 0.8, result.metrics  # the label depends on age and city: a constant scores 0.5
    with tarfile.open(result.model_uri) as archive:
        assert sorted(archive.getnames()) == ["code/inference.py", "metadata.json", "model.json", "model.pt", "transform.json"]
    model_dir = Path(result.model_dir)
    metadata = json.loads((model_dir / "metadata.json").read_text())
    assert metadata["algorithm"] == "script" and metadata["framework"] == "pytorch"
    assert metadata["metrics"]["validation:auc"] == auc and "torch" in metadata["versions"]

    inference = _load_inference(model_dir)  # SageMaker's PyTorch serving calls exactly these
    model = inference.model_fn(str(model_dir))
    valid = pd.concat([pd.read_parquet(p) for p in sorted((features / "validation").glob("*.parquet"))])
    names = json.loads((model_dir / "transform.json").read_text())["feature_names"]
    proba = inference.predict_fn(valid[names].to_numpy(dtype=np.float32), model)
    assert proba.shape == (len(valid),) and ((proba >= 0) & (proba <= 1)).all()
    assert roc_auc_score(valid["_label"], proba) == pytest.approx(auc, abs=1e-6)
    # a DataFrame with its columns in another order gives the same answer (features are taken by name)
    assert np.allclose(inference.predict_fn(valid[names[::-1]], model), proba)
