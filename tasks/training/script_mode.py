"""Bring your own script, local side: a user's training script run as SageMaker's training toolkit runs it.

On ``aws`` a script named by ``train.entry_point`` runs in a SageMaker framework image
(PyTorch, scikit-learn, XGBoost), whose training toolkit copies ``source_dir`` to
``/opt/ml/code``, sets the ``SM_*`` environment and starts ``python <entry_point>
--name value ...``. The local runner (:mod:`tasks.training.local_job`) does the same
with the helpers here, so a script that works on a laptop works in the managed job:

- :func:`stage_code` copies the code to ``<base>/code`` (cwd of the script);
- :func:`user_args` turns hyperparameters into the toolkit's command-line arguments;
- :func:`script_environment` builds the toolkit's ``SM_*`` variables;
- :func:`finalize_model_dir` completes the model folder after a successful run, so a
  script's artifact carries the same ``transform.json`` and ``metadata.json`` as the
  built-in algorithm's.

Toolkit behaviour kept on purpose (so nothing changes between laptop and SageMaker):
hyperparameter values are JSON-decoded before they become arguments, so ``"true"``
reaches the script as ``True`` and ``"0.010"`` as ``0.01``; arguments are sorted by
name; one-letter names get a single dash. ``requirements.txt`` is *not* installed
locally (the toolkit pip-installs it in the image): the runner warns instead.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path, PurePosixPath
from typing import Any

from tasks.errors import ConfigError, StageError
from tasks.training import container

logger = logging.getLogger("updraft.train")

#: Where the toolkit puts the user's code, relative to the base folder.
CODE_DIR = "code"
#: The ``algorithm`` recorded in metadata.json for a user's script.
SCRIPT_ALGORITHM = "script"
#: Environment variables of the job copied into metadata.json (the caller supplies them).
UPDRAFT_ENV_PREFIX = "UPDRAFT_"
#: Hyperparameters the framework image itself reads (``sagemaker_program``...); never the script's arguments.
FRAMEWORK_HP_PREFIX = "sagemaker_"
#: Libraries whose versions a script's metadata records when installed: name -> distributions that provide it.
VERSIONED_PACKAGES: dict[str, tuple[str, ...]] = {
    "torch": ("torch",),
    "numpy": ("numpy",),
    "pandas": ("pandas",),
    "pyarrow": ("pyarrow",),
    "scikit-learn": ("scikit-learn",),
    "xgboost": ("xgboost", "xgboost-cpu"),
}

# Toolkit variable names (aws/sagemaker-training-toolkit, ENVIRONMENT_VARIABLES.md) that the
# built-in entry point does not read, so they live here rather than in ``container``.
SM_USER_ARGS = "SM_USER_ARGS"
SM_TRAINING_ENV = "SM_TRAINING_ENV"
SM_MODULE_DIR = "SM_MODULE_DIR"
SM_MODULE_NAME = "SM_MODULE_NAME"
SM_USER_ENTRY_POINT = "SM_USER_ENTRY_POINT"
SM_INPUT_DIR = "SM_INPUT_DIR"
SM_INPUT_CONFIG_DIR = "SM_INPUT_CONFIG_DIR"
SM_OUTPUT_DIR = "SM_OUTPUT_DIR"
SM_NETWORK_INTERFACE_NAME = "SM_NETWORK_INTERFACE_NAME"
SM_RESOURCE_CONFIG = "SM_RESOURCE_CONFIG"
SM_LOG_LEVEL = "SM_LOG_LEVEL"
SM_HP_PREFIX = "SM_HP_"

_IGNORED_CODE = shutil.ignore_patterns("__pycache__", "*.pyc", ".git", ".ipynb_checkpoints")


@dataclass(frozen=True)
class ScriptSpec:
    """The user's script: ``entry_point`` (relative to ``source_dir`` when that is set) and its framework.

    ``source_dir`` may be a local folder, an fsspec URI of a folder, or a ``.tar.gz`` of
    the code (local or remote), as SageMaker accepts it.
    """

    entry_point: str
    source_dir: str | None = None
    framework: str | None = None
    framework_version: str | None = None

    @classmethod
    def from_train_config(cls, train: Any) -> ScriptSpec | None:
        """The script a :class:`tasks.config.TrainConfig` names, or None for the built-in algorithm."""
        if not getattr(train, "entry_point", None):
            return None
        return cls(
            entry_point=train.entry_point,
            source_dir=train.source_dir,
            framework=train.framework,
            framework_version=train.framework_version,
        )


def stage_code(spec: ScriptSpec, code_dir: Path, fs: Any = None) -> Path:
    """Copy the user's code into ``code_dir`` (emptied first); returns the entry point's path there.

    Without ``source_dir`` only the entry point file is copied, as the SageMaker SDK
    uploads it alone. ``fs`` reads a remote ``source_dir`` (an fsspec filesystem).
    """
    code_dir = Path(code_dir)
    if code_dir.exists():
        shutil.rmtree(code_dir)
    if spec.source_dir is None:
        source = Path(spec.entry_point).expanduser()
        if not source.is_file():
            raise ConfigError(f"train.entry_point {spec.entry_point} is not a file: give the path of your training script")
        code_dir.mkdir(parents=True)
        shutil.copy2(source, code_dir / source.name)
        return code_dir / source.name

    _copy_source_dir(spec.source_dir, code_dir, fs)
    relative = PurePosixPath(spec.entry_point.replace(os.sep, "/"))
    if relative.is_absolute() or ".." in relative.parts:
        raise ConfigError(
            f"train.entry_point {spec.entry_point!r} must be a path inside train.source_dir ({spec.source_dir})"
        )
    entry = code_dir.joinpath(*relative.parts)
    if not entry.is_file():
        found = sorted(p.relative_to(code_dir).as_posix() for p in code_dir.rglob("*.py"))[:10]
        raise ConfigError(
            f"train.entry_point {spec.entry_point!r} is not in train.source_dir {spec.source_dir} "
            f"(Python files there: {', '.join(found) or 'none'})"
        )
    if (code_dir / "requirements.txt").is_file():
        logger.warning(
            "%s/requirements.txt is installed by SageMaker's framework image but not by the local runner: "
            "install those packages into this environment yourself",
            spec.source_dir,
        )
    return entry


def _copy_source_dir(source_dir: str, code_dir: Path, fs: Any) -> None:
    remote = "://" in source_dir
    if source_dir.endswith((".tar.gz", ".tgz")):
        with tempfile.TemporaryDirectory() as tmp:
            local_tar = Path(tmp) / "sourcedir.tar.gz"
            if remote:
                _remote_fs(fs, source_dir).get_file(_strip(source_dir), str(local_tar))
            else:
                local_tar = Path(source_dir).expanduser()
                if not local_tar.is_file():
                    raise ConfigError(f"train.source_dir {source_dir} does not exist")
            code_dir.mkdir(parents=True)
            try:
                with tarfile.open(local_tar, "r:*") as archive:
                    archive.extractall(code_dir, filter="data")
            except (tarfile.TarError, OSError) as exc:
                raise ConfigError(f"train.source_dir {source_dir} is not a readable tar.gz of your code ({exc})") from None
        return
    if remote:
        filesystem = _remote_fs(fs, source_dir)
        root = _strip(source_dir).rstrip("/")
        files = [f for f in filesystem.find(root) if f.startswith(root + "/")]
        if not files:
            raise ConfigError(f"train.source_dir {source_dir} holds no files")
        for remote_file in files:
            local = code_dir.joinpath(*remote_file[len(root) + 1 :].split("/"))
            local.parent.mkdir(parents=True, exist_ok=True)
            filesystem.get_file(remote_file, str(local))
        return
    source = Path(source_dir).expanduser()
    if not source.is_dir():
        raise ConfigError(f"train.source_dir {source_dir} is not a folder (or a .tar.gz) of your training code")
    shutil.copytree(source, code_dir, ignore=_IGNORED_CODE)


def _remote_fs(fs: Any, uri: str) -> Any:
    """``fs`` when it serves the URI's protocol (the target's S3), else fsspec's filesystem for it."""
    protocol = uri.split("://", 1)[0]
    if fs is not None:
        served = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
        if protocol in served:
            return fs
    import fsspec

    return fsspec.filesystem(protocol)


def _strip(uri: str) -> str:
    from fsspec.core import strip_protocol

    return strip_protocol(uri)


def decode_hyperparameters(hyperparameters: Mapping[str, str], *, framework: bool = False) -> dict[str, Any]:
    """The toolkit's reading of ``hyperparameters.json``: each string JSON-decoded where it parses, else kept.

    The script's own hyperparameters by default; with ``framework=True`` only the
    ``sagemaker_*`` ones its image reads (the toolkit splits them the same way).
    """
    decoded: dict[str, Any] = {}
    for name, value in hyperparameters.items():
        if name.startswith(FRAMEWORK_HP_PREFIX) != framework:
            continue
        try:
            decoded[name] = json.loads(value)
        except (ValueError, TypeError):
            decoded[name] = value
    return decoded


def user_args(hyperparameters: Mapping[str, str]) -> list[str]:
    """``--name value`` pairs as the toolkit builds them: names sorted, decoded values as ``str()``.

    So ``{"lr": "0.01", "batch-size": "64", "shuffle": "true"}`` gives
    ``["--batch-size", "64", "--lr", "0.01", "--shuffle", "True"]``; a script's argparse
    should accept ``True``/``False`` for flags, as it must on SageMaker.
    """
    args: list[str] = []
    for name, value in sorted(decode_hyperparameters(hyperparameters).items()):
        if not name:
            continue
        args.append(f"--{name}" if len(name) > 1 else f"-{name}")
        if isinstance(value, Mapping):
            args.append(",".join(f"{k}={v}" for k, v in sorted(value.items())))
        else:
            args.append("" if value is None else str(value))
    return args


def script_command(entry: Path, code_dir: Path, hyperparameters: Mapping[str, str]) -> list[str]:
    """The process the toolkit starts in ``code_dir``: this Python (``/bin/sh`` for a ``.sh``), the script, its arguments."""
    program = ["/bin/sh"] if entry.suffix == ".sh" else [sys.executable]
    return [*program, entry.relative_to(code_dir).as_posix(), *user_args(hyperparameters)]


def count_gpus() -> int:
    """GPUs the script can use, as the toolkit counts them (``nvidia-smi --list-gpus``); 0 without the tool."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return 0
    tool = shutil.which("nvidia-smi")
    if tool is None:
        return 0
    try:
        out = subprocess.run([tool, "--list-gpus"], capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    gpus = sum(1 for line in out.splitlines() if line.startswith("GPU "))
    if visible:
        gpus = min(gpus, len([d for d in visible.split(",") if d.strip()]))
    return gpus


def script_environment(
    *,
    opt_ml: Path,
    code_dir: Path,
    entry: Path,
    job_name: str,
    channels: Sequence[str],
    hyperparameters: Mapping[str, str],
    input_data_config: Mapping[str, Any],
    resource_config: Mapping[str, Any],
    num_cpus: int,
    num_gpus: int,
) -> dict[str, str]:
    """The toolkit's ``SM_*`` variables for one host, ``SM_TRAINING_ENV`` (the whole picture as JSON) included."""
    hps = decode_hyperparameters(hyperparameters)
    args = user_args(hyperparameters)
    channel_dirs = {name: str(opt_ml / container.INPUT_DATA_DIR / name) for name in channels}
    module_name = entry.stem
    training_env = {
        "additional_framework_parameters": decode_hyperparameters(hyperparameters, framework=True),
        "channel_input_dirs": channel_dirs,
        "current_host": resource_config["current_host"],
        "framework_module": None,
        "hosts": list(resource_config["hosts"]),
        "hyperparameters": hps,
        "input_config_dir": str(opt_ml / container.INPUT_CONFIG_DIR),
        "input_data_config": dict(input_data_config),
        "input_dir": str(opt_ml / container.INPUT_DIR),
        "is_master": resource_config["current_host"] == resource_config["hosts"][0],
        "job_name": job_name,
        "log_level": logging.INFO,
        "master_hostname": resource_config["hosts"][0],
        "model_dir": str(opt_ml / container.MODEL_DIR),
        "module_dir": str(code_dir),
        "module_name": module_name,
        "network_interface_name": resource_config.get("network_interface_name", "lo"),
        "num_cpus": num_cpus,
        "num_gpus": num_gpus,
        "output_data_dir": str(opt_ml / container.OUTPUT_DATA_DIR),
        "output_dir": str(opt_ml / container.OUTPUT_DIR),
        "resource_config": dict(resource_config),
        "user_entry_point": entry.relative_to(code_dir).as_posix(),
    }
    env = {
        container.SM_MODEL_DIR: training_env["model_dir"],
        container.SM_OUTPUT_DATA_DIR: training_env["output_data_dir"],
        container.SM_CHANNELS: json.dumps(sorted(channels)),
        container.SM_HPS: json.dumps(hps, sort_keys=True),
        container.SM_CURRENT_HOST: training_env["current_host"],
        container.SM_HOSTS: json.dumps(training_env["hosts"]),
        container.SM_NUM_CPUS: str(num_cpus),
        container.SM_NUM_GPUS: str(num_gpus),
        SM_USER_ARGS: json.dumps(args),
        SM_TRAINING_ENV: json.dumps(training_env, sort_keys=True),
        SM_MODULE_DIR: str(code_dir),
        SM_MODULE_NAME: module_name,
        SM_USER_ENTRY_POINT: training_env["user_entry_point"],
        SM_INPUT_DIR: training_env["input_dir"],
        SM_INPUT_CONFIG_DIR: training_env["input_config_dir"],
        SM_OUTPUT_DIR: training_env["output_dir"],
        SM_NETWORK_INTERFACE_NAME: training_env["network_interface_name"],
        SM_RESOURCE_CONFIG: json.dumps(training_env["resource_config"], sort_keys=True),
        container.SM_INPUT_DATA_CONFIG: json.dumps(training_env["input_data_config"], sort_keys=True),
        SM_LOG_LEVEL: str(logging.INFO),
    }
    for name, path in channel_dirs.items():
        env[container.channel_env_var(name)] = path
    for name, value in hps.items():
        env[SM_HP_PREFIX + name.upper().replace("-", "_")] = value if isinstance(value, str) else json.dumps(value)
    return env


def library_versions() -> dict[str, str]:
    """Versions of Python and of the ML libraries installed where the script ran (read without importing them)."""
    versions = {"python": platform.python_version()}
    for name, distributions in VERSIONED_PACKAGES.items():
        for distribution in distributions:
            try:
                versions[name] = importlib_metadata.version(distribution)
                break
            except importlib_metadata.PackageNotFoundError:
                continue
    return versions


def finalize_model_dir(
    model_dir: Path,
    *,
    spec: ScriptSpec,
    transform_dir: Path | None,
    metrics: Mapping[str, float],
    environment: Mapping[str, str],
    hyperparameters: Mapping[str, str],
    job_name: str,
) -> dict[str, Any]:
    """Give a script's model folder what every updraft artifact has; returns the metadata (written or found).

    ``transform.json`` is copied from the transform channel when the script did not write
    one; ``metadata.json`` is written unless the script wrote its own (which is kept as is:
    the script knows best what it trained).
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir() or not any(model_dir.iterdir()):
        raise StageError(
            f"training script {spec.entry_point} exited 0 but wrote nothing to the model folder: "
            f"save your model under the folder in {container.SM_MODEL_DIR}"
        )
    transform_target = model_dir / container.TRANSFORM_FILE
    source = transform_dir / container.TRANSFORM_FILE if transform_dir is not None else None
    if not transform_target.exists() and source is not None and source.is_file():
        shutil.copyfile(source, transform_target)
    transform: dict[str, Any] = {}
    if transform_target.is_file():
        try:
            transform = json.loads(transform_target.read_text())
        except json.JSONDecodeError as exc:
            raise StageError(f"{transform_target} written by the training script is not valid JSON ({exc})") from None

    metadata_path = model_dir / container.METADATA_FILE
    if metadata_path.exists():
        try:
            return json.loads(metadata_path.read_text())
        except json.JSONDecodeError as exc:
            raise StageError(f"{metadata_path} written by the training script is not valid JSON ({exc})") from None
    updraft_env = {k: v for k, v in environment.items() if k.startswith(UPDRAFT_ENV_PREFIX)}
    metadata = {
        "task": transform.get("task"),
        "label": transform.get("label"),
        "label_classes": transform.get("label_classes"),
        "feature_names": transform.get("feature_names"),
        "input_columns": transform.get("input_columns"),
        "metrics": dict(metrics),
        "algorithm": SCRIPT_ALGORITHM,
        "entry_point": spec.entry_point,
        "framework": spec.framework,
        "framework_version": spec.framework_version,
        "versions": library_versions(),
        "run_id": updraft_env.get(container.UPDRAFT_RUN_ID),
        "data_manifest_hash": updraft_env.get(container.UPDRAFT_DATA_MANIFEST_HASH),
        "git_revision": updraft_env.get(container.UPDRAFT_GIT_REVISION),
        "environment": updraft_env,
        "training_job_name": job_name,
        "hyperparameters": dict(hyperparameters),
    }
    metadata_path.write_text(json.dumps(metadata, indent=2))
    return metadata
