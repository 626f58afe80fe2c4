"""A SageMaker training job run as a local process: the same container entry point, the same contract.

The runner does what SageMaker does around the container: it lays out ``/opt/ml`` (here
``<work_dir>/opt_ml``), downloads each channel, writes the config files, starts the entry
point with the SageMaker environment, follows its log, and packs ``/opt/ml/model`` into
``model.tar.gz`` with the files at the archive root before uploading it. What differs
from a managed job is only where the process runs.

The child's output goes to this module's logger (stderr) and to ``<work_dir>/train.log``,
never to stdout, which belongs to the CLI's ``--json``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from fsspec.core import strip_protocol
from fsspec.implementations.local import LocalFileSystem

from tasks.errors import StageError
from tasks.modelbundle import extract_model_tar
from tasks.training import container

logger = logging.getLogger("updraft.train")

ENTRY_MODULE = "images.training.train"
#: SageMaker's grace between SIGTERM and SIGKILL when it stops a job.
STOP_GRACE_S = 120.0
_REPO_ROOT = Path(__file__).resolve().parents[2]
_ROUND_LINE = re.compile(r"^\[\d+\]\t")


@dataclass
class TrainResult:
    """What the train stage hands on: where the model is and how training went (JSON-ready)."""

    job_name: str
    model_uri: str
    metrics: dict[str, float] = field(default_factory=dict)
    model_dir: str = ""
    duration_s: float = 0.0
    status: str = "Completed"


def run_local_training_job(
    *,
    job_name: str,
    work_dir: Path,
    channels: Mapping[str, str],
    hyperparameters: Mapping[str, Any],
    fs: Any,
    output_model_uri: str,
    environment: Mapping[str, str] | None = None,
    max_runtime_s: float | None = None,
) -> TrainResult:
    """Run the training entry point as a process with SageMaker's layout and environment.

    ``channels`` maps channel names to URIs on ``fs`` (a folder, or a single file);
    ``environment`` adds variables as a job's ``Environment`` does. On a non-zero exit the
    entry point's ``output/failure`` text becomes the :class:`StageError`'s message.
    """
    started = time.monotonic()
    work_dir = Path(work_dir).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    opt_ml = work_dir / "opt_ml"
    if opt_ml.exists():  # a rerun starts clean: a stale model or failure file would mislead
        shutil.rmtree(opt_ml)
    env = _prepare_opt_ml(opt_ml, job_name, channels, hyperparameters, fs)
    env.update(environment or {})

    log_path = work_dir / "train.log"
    logger.info("training job %s: starting %s (log: %s)", job_name, ENTRY_MODULE, log_path)
    returncode, timed_out, tail = _run_entry_point(job_name, env, work_dir, log_path, max_runtime_s)
    metrics = _final_metrics(log_path)

    if timed_out:
        raise StageError(
            f"training job {job_name} ran past max_runtime_s={max_runtime_s:g} s and was stopped; "
            "raise train.max_runtime_s in the config or lower num_round"
        )
    if returncode != 0:
        failure = opt_ml / container.FAILURE_FILE
        reason = failure.read_text().strip() if failure.is_file() else ""
        if not reason:
            reason = f"exit status {returncode} without a failure file; last output: {tail[-1] if tail else '(none)'}"
        raise StageError(f"training job {job_name} failed: {' '.join(reason.split())} (log: {log_path})")

    tar_path = pack_model_dir(opt_ml / container.MODEL_DIR, work_dir / "model.tar.gz")
    _upload(fs, tar_path, output_model_uri)
    model_dir = work_dir / "model"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    extract_model_tar(tar_path, model_dir)
    duration = round(time.monotonic() - started, 3)
    logger.info("training job %s: completed in %.1f s, model at %s", job_name, duration, output_model_uri)
    return TrainResult(
        job_name=job_name,
        model_uri=output_model_uri,
        metrics=metrics,
        model_dir=str(model_dir),
        duration_s=duration,
        status="Completed",
    )


def _prepare_opt_ml(
    opt_ml: Path, job_name: str, channels: Mapping[str, str], hyperparameters: Mapping[str, Any], fs: Any
) -> dict[str, str]:
    """Lay out the container's folders and files; return the environment the entry point runs with."""
    config_dir = opt_ml / container.INPUT_CONFIG_DIR
    for sub in (container.INPUT_CONFIG_DIR, container.INPUT_DATA_DIR, container.MODEL_DIR,
                container.OUTPUT_DATA_DIR, container.CHECKPOINTS_DIR):
        (opt_ml / sub).mkdir(parents=True, exist_ok=True)

    # The parent's own SM_* variables (if it runs inside a job) must not leak in: they would
    # point the entry point at the wrong folders.
    env = {k: v for k, v in os.environ.items() if not k.startswith(container.SM_PREFIX)}
    for name, uri in channels.items():
        local = opt_ml / container.INPUT_DATA_DIR / name
        count = download_channel(fs, uri, local)
        logger.debug("training job %s: channel %s <- %s (%d files)", job_name, name, uri, count)
        env[container.channel_env_var(name)] = str(local)

    hps = container.stringify_hyperparameters(hyperparameters)
    (config_dir / container.HYPERPARAMETERS_FILE).write_text(json.dumps(hps, indent=2))
    input_config = {
        name: {
            "ContentType": container.CHANNEL_CONTENT_TYPES.get(name, "application/octet-stream"),
            "TrainingInputMode": "File",
            "S3DistributionType": "FullyReplicated",
            "RecordWrapperType": "None",
        }
        for name in channels
    }
    (config_dir / container.INPUT_DATA_CONFIG_FILE).write_text(json.dumps(input_config, indent=2))
    resource = {
        "current_host": container.DEFAULT_HOST,
        "hosts": [container.DEFAULT_HOST],
        "network_interface_name": "lo",
    }
    (config_dir / container.RESOURCE_CONFIG_FILE).write_text(json.dumps(resource, indent=2))

    pythonpath = [str(_REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])]
    env.update(
        {
            container.BASE_DIR_ENV: str(opt_ml),
            container.SM_MODEL_DIR: str(opt_ml / container.MODEL_DIR),
            container.SM_OUTPUT_DATA_DIR: str(opt_ml / container.OUTPUT_DATA_DIR),
            container.SM_HPS: json.dumps(hps),
            container.SM_CHANNELS: json.dumps(sorted(channels)),
            container.SM_CURRENT_HOST: container.DEFAULT_HOST,
            container.SM_HOSTS: json.dumps([container.DEFAULT_HOST]),
            container.TRAINING_JOB_NAME: job_name,
            container.OMP_NUM_THREADS: env.get(container.OMP_NUM_THREADS) or "2",
            "PYTHONPATH": os.pathsep.join(pythonpath),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def download_channel(fs: Any, uri: str, dest: Path) -> int:
    """Copy a channel's files (a folder's tree, or one file) from ``fs`` into ``dest``; returns the count."""
    path = strip_protocol(uri).rstrip("/")
    dest.mkdir(parents=True, exist_ok=True)
    if fs.isfile(path):
        fs.get_file(path, str(dest / path.rsplit("/", 1)[-1]))
        return 1
    files = [f for f in fs.find(path) if f.startswith(path + "/")]
    if not files:
        raise StageError(f"training channel {dest.name!r}: nothing found at {uri}")
    for remote in files:
        local = dest.joinpath(*remote[len(path) + 1 :].split("/"))
        local.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(remote, str(local))
    return len(files)


def _run_entry_point(
    job_name: str, env: Mapping[str, str], work_dir: Path, log_path: Path, max_runtime_s: float | None
) -> tuple[int, bool, list[str]]:
    """Run the entry point, teeing its output to the logger and the log file; ``(rc, timed_out, tail)``."""
    tail: deque[str] = deque(maxlen=1)
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", ENTRY_MODULE, "train"],
            cwd=work_dir,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            bufsize=1,
        )

        def follow() -> None:
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = raw.rstrip("\n")
                log.write(line + "\n")
                log.flush()
                tail.append(line)
                log_container_line(job_name, line)

        reader = threading.Thread(target=follow, name=f"train-log-{job_name}", daemon=True)
        reader.start()
        timed_out = False
        try:
            try:
                returncode = proc.wait(timeout=max_runtime_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                logger.warning("training job %s: past max_runtime_s=%s, sending SIGTERM", job_name, max_runtime_s)
                proc.terminate()
                try:
                    returncode = proc.wait(timeout=STOP_GRACE_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    returncode = proc.wait()
        except BaseException:  # interrupted (Ctrl-C, a cancelled task): never leave the child behind
            proc.kill()
            proc.wait()
            raise
        finally:
            reader.join(timeout=10)
            if proc.stdout is not None:
                proc.stdout.close()
    return returncode, timed_out, list(tail)


def log_container_line(job_name: str, line: str) -> None:
    """One line of the container's output: per-round metrics at DEBUG (``-v``), the rest at INFO."""
    level = logging.DEBUG if _ROUND_LINE.match(line) else logging.INFO
    logger.log(level, "[%s] %s", job_name, line)


def _final_metrics(log_path: Path) -> dict[str, float]:
    metrics: dict[str, float] = {}
    with open(log_path, encoding="utf-8") as log:
        for line in log:
            parsed = container.parse_metric_line(line)
            if parsed:
                metrics[parsed[0]] = parsed[1]
    return metrics


def pack_model_dir(model_dir: Path, tar_path: Path) -> Path:
    """``model.tar.gz`` as SageMaker packs ``/opt/ml/model``: its files at the archive root."""
    files = sorted(p for p in model_dir.rglob("*") if p.is_file())
    if not files:
        raise StageError(f"the training entry point wrote no model files to {model_dir}")
    with tarfile.open(tar_path, "w:gz") as archive:
        for path in files:
            archive.add(path, arcname=path.relative_to(model_dir).as_posix(), recursive=False)
    return tar_path


def _upload(fs: Any, local: Path, uri: str) -> None:
    path = strip_protocol(uri)
    if isinstance(fs, LocalFileSystem):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    fs.put_file(str(local), path)
