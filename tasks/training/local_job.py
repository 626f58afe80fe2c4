"""A SageMaker training job run as local processes: the same container entry point, the same contract.

The runner does what SageMaker does around the container: for each instance ("host",
``algo-1`` ... ``algo-N``) it lays out ``/opt/ml`` (here ``<host folder>/opt_ml``),
downloads each channel, writes the config files, starts the entry point with the
SageMaker environment, follows its log, and at the end packs ``algo-1``'s
``/opt/ml/model`` into ``model.tar.gz`` with the files at the archive root before
uploading it. What differs from a managed job is only where the processes run.

Folders under ``work_dir``:

- one host: ``opt_ml/``, ``train.log``; several: ``hosts/algo-K/opt_ml/`` and
  ``hosts/algo-K/train.log`` each, plus ``train.log`` with every line prefixed by its host;
- ``checkpoints/algo-K/``: mapped in as ``<base>/checkpoints``. It lives outside the
  per-attempt ``opt_ml`` (which a rerun wipes), so rerunning a job that crashed or ran out
  of time resumes from its checkpoints, as SageMaker's checkpoint sync to S3 makes a
  restarted job resume. With ``checkpoint_uri`` the folder is also synced from that URI
  before the run and back to it after (whatever the outcome), so a resume on another
  machine works too;
- ``model.tar.gz`` and ``model/`` (the unpacked artifact).

Multi-host jobs: every host starts together; the ``train`` channel is sharded by S3 key
(host k of N gets the data files i with i % N == k, as ``ShardedByS3Key`` does), the other
channels are replicated; ``UPDRAFT_HOST_ADDRESSES`` and ``UPDRAFT_TRACKER_PORT`` tell the
entry point where its peers are. If any host fails, the others are stopped and the job
fails with that host's failure text.

A user's own script (``script``, see :mod:`tasks.training.script_mode`) runs the same way
with the training toolkit's command line and environment instead of our entry point.

The children's output goes to this module's logger (stderr) and to the log files, never
to stdout, which belongs to the CLI's ``--json``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from fsspec.core import strip_protocol
from fsspec.implementations.local import LocalFileSystem

from tasks.errors import StageError
from tasks.modelbundle import extract_model_tar
from tasks.training import container, script_mode
from tasks.training.script_mode import ScriptSpec

logger = logging.getLogger("updraft.train")

ENTRY_MODULE = "images.training.train"
#: The built-in algorithm's process: the training image's ``train`` command.
DEFAULT_ENTRY_COMMAND: tuple[str, ...] = (sys.executable, "-m", ENTRY_MODULE, "train")
#: SageMaker's grace between SIGTERM and SIGKILL when it stops a job.
STOP_GRACE_S = 120.0
#: Grace for the surviving hosts of a job whose peer failed: they are usually blocked on it.
PEER_STOP_GRACE_S = 10.0
#: Lines of a failed process's output quoted when it left no failure file.
TAIL_LINES = 15
#: The channel SageMaker shards across instances (``S3DataDistributionType: ShardedByS3Key``).
SHARDED_CHANNEL = container.CHANNEL_TRAIN
CHECKPOINTS_FOLDER = "checkpoints"
LOG_FILE = "train.log"

_REPO_ROOT = Path(__file__).resolve().parents[2]
_ROUND_LINE = re.compile(r"^\[\d+\]\t")
_POLL_S = 0.05


@dataclass
class TrainResult:
    """What the train stage hands on: where the model is and how training went (JSON-ready)."""

    job_name: str
    model_uri: str
    metrics: dict[str, float] = field(default_factory=dict)
    model_dir: str = ""
    duration_s: float = 0.0
    status: str = "Completed"
    #: The hyperparameter search this model won, when there was one (objective, best value, trials).
    tuning: dict[str, Any] | None = None


@dataclass
class _Host:
    """One instance of the job: its folders, environment and command."""

    name: str
    root: Path
    opt_ml: Path
    log_path: Path
    checkpoint_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    command: list[str] = field(default_factory=list)
    cwd: Path | None = None


def host_names(instance_count: int) -> list[str]:
    """``algo-1`` ... ``algo-N``, as SageMaker names a job's instances."""
    if instance_count < 1:
        raise StageError(f"a training job needs at least one instance, got instance_count={instance_count}")
    return [f"algo-{i}" for i in range(1, instance_count + 1)]


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
    instance_count: int = 1,
    checkpoint_uri: str | None = None,
    script: ScriptSpec | None = None,
    entry_command: Sequence[str] | None = None,
    stop_event: threading.Event | None = None,
) -> TrainResult:
    """Run the training job as ``instance_count`` local processes with SageMaker's layout and environment.

    ``channels`` maps channel names to URIs on ``fs`` (a folder, or a single file);
    ``environment`` adds variables as a job's ``Environment`` does. ``script`` runs a
    user's training script (toolkit style) instead of the built-in entry point;
    ``entry_command`` replaces the built-in entry point's command (tests, other images).
    ``checkpoint_uri`` is the job's ``CheckpointConfig.S3Uri`` on ``fs``. Setting
    ``stop_event`` stops the job as ``StopTrainingJob`` would (SIGTERM, then SIGKILL).

    On a non-zero exit the entry point's ``output/failure`` text (else the end of its log)
    becomes the :class:`StageError`'s message.
    """
    started = time.monotonic()
    work_dir = Path(work_dir).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    names = host_names(instance_count)
    hps = container.stringify_hyperparameters(hyperparameters)
    hosts = [_host_folders(work_dir, name, len(names)) for name in names]

    # A rerun starts clean (a stale model or failure file would mislead), whatever its host count was.
    for stale in (work_dir / "opt_ml", work_dir / "hosts"):
        if stale.exists():
            shutil.rmtree(stale)
    for host in hosts:
        host.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        if checkpoint_uri:
            count = download_checkpoints(fs, checkpoint_uri, host.checkpoint_dir)
            if count:
                logger.info("training job %s: %d checkpoint file(s) for %s from %s", job_name, count, host.name, checkpoint_uri)
    _prepare_hosts(hosts, job_name, channels, hps, fs, environment or {}, script, entry_command)

    combined_log = work_dir / LOG_FILE
    what = f"script {script.entry_point}" if script else " ".join(hosts[0].command[1:3])
    logger.info(
        "training job %s: starting %s on %d host(s) (log: %s)", job_name, what, len(hosts), combined_log
    )
    try:
        outcome = _run_hosts(job_name, hosts, combined_log, max_runtime_s, stop_event)
    finally:
        if checkpoint_uri:
            _upload_host_checkpoints(fs, hosts, checkpoint_uri, job_name)

    leader = hosts[0]
    metrics = _final_metrics(leader.log_path)
    if outcome.timed_out:
        raise StageError(
            f"training job {job_name} ran past max_runtime_s={max_runtime_s:g} s and was stopped; "
            "raise train.max_runtime_s in the config" + (" or lower num_round" if script is None else "")
            + (f" (its checkpoints are in {work_dir / CHECKPOINTS_FOLDER}: a rerun resumes from them)"
               if _has_files(work_dir / CHECKPOINTS_FOLDER) else "")
        )
    if outcome.stopped:
        raise StageError(f"training job {job_name} was stopped before it completed")
    if outcome.failed_host is not None:
        host = next(h for h in hosts if h.name == outcome.failed_host)
        where = f" on {host.name}" if len(hosts) > 1 else ""
        reason = _failure_reason(host, outcome.returncodes[host.name], outcome.tails[host.name])
        gap = "" if reason.endswith("\n") else " "
        raise StageError(f"training job {job_name} failed{where}: {reason}{gap}(log: {host.log_path})")

    model_dir_out = leader.opt_ml / container.MODEL_DIR
    if script is not None:
        script_mode.finalize_model_dir(
            model_dir_out,
            spec=script,
            transform_dir=_transform_channel_dir(leader, channels),
            metrics=metrics,
            environment=environment or {},
            hyperparameters=hps,
            job_name=job_name,
        )
    tar_path = pack_model_dir(model_dir_out, work_dir / "model.tar.gz")
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


def _host_folders(work_dir: Path, name: str, count: int) -> _Host:
    root = work_dir if count == 1 else work_dir / "hosts" / name
    return _Host(
        name=name,
        root=root,
        opt_ml=root / "opt_ml",
        log_path=root / LOG_FILE,
        checkpoint_dir=work_dir / CHECKPOINTS_FOLDER / name,
    )


def _transform_channel_dir(host: _Host, channels: Mapping[str, str]) -> Path | None:
    if container.CHANNEL_TRANSFORM not in channels:
        return None
    return host.opt_ml / container.INPUT_DATA_DIR / container.CHANNEL_TRANSFORM


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _prepare_hosts(
    hosts: list[_Host],
    job_name: str,
    channels: Mapping[str, str],
    hps: Mapping[str, str],
    fs: Any,
    environment: Mapping[str, str],
    script: ScriptSpec | None,
    entry_command: Sequence[str] | None,
) -> None:
    """Lay out every host's folders and files and set its environment and command."""
    names = [h.name for h in hosts]
    sharded = len(hosts) > 1
    # The parent's own SM_* variables (if it runs inside a job) must not leak in: they would
    # point the entry point at the wrong folders.
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(container.SM_PREFIX)}
    threads = max(1, _cpu_count() // len(hosts))
    num_gpus = script_mode.count_gpus() if script is not None else 0
    peers: dict[str, str] = {}
    if sharded:
        peers = {
            container.UPDRAFT_HOST_ADDRESSES: json.dumps({name: "127.0.0.1" for name in names}),
            # a free port rather than the image's fixed one: parallel local jobs must not collide
            container.UPDRAFT_TRACKER_PORT: str(_free_port()),
        }
    listings = {name: list_channel_files(fs, uri, name) for name, uri in channels.items()}

    for index, host in enumerate(hosts):
        opt_ml = host.opt_ml
        for sub in (container.INPUT_CONFIG_DIR, container.INPUT_DATA_DIR, container.MODEL_DIR, container.OUTPUT_DATA_DIR):
            (opt_ml / sub).mkdir(parents=True, exist_ok=True)
        (opt_ml / container.CHECKPOINTS_DIR).symlink_to(host.checkpoint_dir, target_is_directory=True)

        env = dict(base_env)
        for name, (root, files) in listings.items():
            local = opt_ml / container.INPUT_DATA_DIR / name
            shard = (index, len(hosts)) if sharded and name == SHARDED_CHANNEL else None
            count = _download_files(fs, root, files, local, name, shard)
            logger.debug("training job %s: %s channel %s <- %s (%d files)", job_name, host.name, name, channels[name], count)
            env[container.channel_env_var(name)] = str(local)

        config_dir = opt_ml / container.INPUT_CONFIG_DIR
        (config_dir / container.HYPERPARAMETERS_FILE).write_text(json.dumps(dict(hps), indent=2))
        input_config = {
            name: {
                "ContentType": container.CHANNEL_CONTENT_TYPES.get(name, "application/octet-stream"),
                "TrainingInputMode": "File",
                "S3DistributionType": (
                    container.SHARDED_BY_S3_KEY if sharded and name == SHARDED_CHANNEL else container.FULLY_REPLICATED
                ),
                "RecordWrapperType": "None",
            }
            for name in channels
        }
        (config_dir / container.INPUT_DATA_CONFIG_FILE).write_text(json.dumps(input_config, indent=2))
        resource = {"current_host": host.name, "hosts": names, "network_interface_name": "lo"}
        (config_dir / container.RESOURCE_CONFIG_FILE).write_text(json.dumps(resource, indent=2))

        env.update(
            {
                container.BASE_DIR_ENV: str(opt_ml),
                container.SM_MODEL_DIR: str(opt_ml / container.MODEL_DIR),
                container.SM_OUTPUT_DATA_DIR: str(opt_ml / container.OUTPUT_DATA_DIR),
                container.SM_HPS: json.dumps(dict(hps)),
                container.SM_CHANNELS: json.dumps(sorted(channels)),
                container.SM_INPUT_DATA_CONFIG: json.dumps(input_config),
                container.SM_CURRENT_HOST: host.name,
                container.SM_HOSTS: json.dumps(names),
                container.SM_NUM_CPUS: str(threads),
                container.TRAINING_JOB_NAME: job_name,
                container.OMP_NUM_THREADS: base_env.get(container.OMP_NUM_THREADS) or str(threads),
                "PYTHONUNBUFFERED": "1",
                **peers,
            }
        )
        if script is None:
            env["PYTHONPATH"] = os.pathsep.join([str(_REPO_ROOT), *filter(None, [base_env.get("PYTHONPATH")])])
            host.command = list(entry_command or DEFAULT_ENTRY_COMMAND)
            host.cwd = host.root
        else:
            code_dir = opt_ml / script_mode.CODE_DIR
            entry = script_mode.stage_code(script, code_dir, fs)
            env.update(
                script_mode.script_environment(
                    opt_ml=opt_ml,
                    code_dir=code_dir,
                    entry=entry,
                    job_name=job_name,
                    channels=list(channels),
                    hyperparameters=hps,
                    input_data_config=input_config,
                    resource_config=resource,
                    num_cpus=threads,
                    num_gpus=num_gpus,
                )
            )
            host.command = list(entry_command) if entry_command else script_mode.script_command(entry, code_dir, hps)
            host.cwd = code_dir
        env.update(environment)
        host.env = env


def _is_data_file(path: str) -> bool:
    """Writers' markers (``_SUCCESS``, ``.crc`` files) are not data: they are not sharded."""
    return not path.rsplit("/", 1)[-1].startswith(("_", "."))


def list_channel_files(fs: Any, uri: str, channel: str) -> tuple[str, list[str]]:
    """``(root, files)`` of a channel on ``fs``, sorted by key: a folder's tree, or one file (root is its folder)."""
    path = strip_protocol(uri).rstrip("/")
    if fs.isfile(path):
        return path.rsplit("/", 1)[0], [path]
    files = sorted(f for f in fs.find(path) if f.startswith(path + "/"))
    if not files:
        raise StageError(f"training channel {channel!r}: nothing found at {uri}")
    return path, files


def _download_files(
    fs: Any, root: str, files: Sequence[str], dest: Path, channel: str, shard: tuple[int, int] | None
) -> int:
    if shard is not None:
        index, count = shard
        data = [f for f in files if _is_data_file(f)]
        if len(data) < count:
            raise StageError(
                f"training channel {channel!r} has {len(data)} data file(s) but the job runs on {count} instances: "
                f"sharded by S3 key, every instance needs at least one; write the split as {count} or more files "
                "or lower train.instance_count"
            )
        files = [f for f in files if not _is_data_file(f)] + data[index::count]
    dest.mkdir(parents=True, exist_ok=True)
    for remote in files:
        local = dest.joinpath(*remote[len(root) + 1 :].split("/"))
        local.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(remote, str(local))
    return len(files)


def download_channel(fs: Any, uri: str, dest: Path) -> int:
    """Copy a channel's files (a folder's tree, or one file) from ``fs`` into ``dest``; returns the count."""
    root, files = list_channel_files(fs, uri, dest.name)
    return _download_files(fs, root, files, dest, dest.name, None)


# ---------------------------------------------------------------------------------------------
# Checkpoints: the local folder is the working copy; an S3 URI (CheckpointConfig) the shared one.


def _modified(info: Mapping[str, Any]) -> float | None:
    """A file's modification time from ``fs.info`` (``mtime`` locally, ``LastModified`` on S3)."""
    for key in ("mtime", "LastModified", "last_modified", "created"):
        value = info.get(key)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, (int, float)):
            return float(value)
    return None


def download_checkpoints(fs: Any, uri: str, dest: Path) -> int:
    """Bring ``dest`` up to date from ``uri``: files missing here or newer there are copied; returns the count.

    Local files newer than the remote ones are kept: they are this machine's own later
    progress (a run interrupted before its checkpoints were uploaded).
    """
    root = strip_protocol(uri).rstrip("/")
    if not fs.exists(root):
        return 0
    copied = 0
    for remote, info in sorted(fs.find(root, detail=True).items()):
        if not remote.startswith(root + "/"):
            continue
        local = dest.joinpath(*remote[len(root) + 1 :].split("/"))
        if local.is_file():
            remote_time = _modified(info)
            if remote_time is None or remote_time <= local.stat().st_mtime:
                continue
        local.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(remote, str(local))
        copied += 1
    return copied


def upload_checkpoints(fs: Any, source: Path, uri: str) -> int:
    """Copy every file under ``source`` to ``uri`` (same relative keys), as SageMaker syncs checkpoints; returns the count."""
    root = strip_protocol(uri).rstrip("/")
    files = sorted(p for p in Path(source).rglob("*") if p.is_file())
    for path in files:
        target = f"{root}/{path.relative_to(source).as_posix()}"
        if isinstance(fs, LocalFileSystem):
            Path(target).parent.mkdir(parents=True, exist_ok=True)
        fs.put_file(str(path), target)
    return len(files)


def _upload_host_checkpoints(fs: Any, hosts: Sequence[_Host], uri: str, job_name: str) -> None:
    # Every host syncs to the same URI, as on SageMaker; algo-1 last, so its files win a clash.
    for host in reversed(hosts):
        try:
            count = upload_checkpoints(fs, host.checkpoint_dir, uri)
        except OSError as exc:
            logger.warning("training job %s: could not upload %s's checkpoints to %s (%s)", job_name, host.name, uri, exc)
            continue
        if count:
            logger.info("training job %s: %d checkpoint file(s) of %s synced to %s", job_name, count, host.name, uri)


def _has_files(folder: Path) -> bool:
    return folder.is_dir() and any(p.is_file() for p in folder.rglob("*"))


# ---------------------------------------------------------------------------------------------
# Processes


@dataclass
class _Outcome:
    returncodes: dict[str, int | None]
    tails: dict[str, list[str]]
    timed_out: bool = False
    stopped: bool = False
    failed_host: str | None = None


def _signal(proc: subprocess.Popen, sig: int) -> None:
    """Signal the process's whole group (the entry point may have children of its own)."""
    if proc.poll() is not None:
        return
    try:
        if os.name == "posix":
            os.killpg(proc.pid, sig)
        elif sig == signal.SIGTERM:
            proc.terminate()
        else:
            proc.kill()
    except ProcessLookupError:
        pass


def _stop_all(procs: Mapping[str, subprocess.Popen], grace_s: float) -> None:
    """SIGTERM every running process, then SIGKILL whatever is left after ``grace_s``."""
    for proc in procs.values():
        _signal(proc, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for proc in procs.values():
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for proc in procs.values():
        if proc.poll() is None:
            _signal(proc, signal.SIGKILL if os.name == "posix" else signal.SIGTERM)
            proc.wait()


def _run_hosts(
    job_name: str,
    hosts: Sequence[_Host],
    combined_log: Path,
    max_runtime_s: float | None,
    stop_event: threading.Event | None,
) -> _Outcome:
    """Start every host's process together and supervise them until all end, one fails, time runs out or a stop comes."""
    multi = len(hosts) > 1
    tails = {h.name: deque(maxlen=TAIL_LINES) for h in hosts}
    procs: dict[str, subprocess.Popen] = {}
    readers: list[threading.Thread] = []
    files: list[IO[str]] = []
    lock = threading.Lock()
    outcome = _Outcome(returncodes={h.name: None for h in hosts}, tails={})
    try:
        combined = open(combined_log, "w", encoding="utf-8")
        files.append(combined)
        for host in hosts:
            host_log = combined if not multi else open(host.log_path, "w", encoding="utf-8")
            if multi:
                files.append(host_log)
            proc = subprocess.Popen(
                host.command,
                cwd=host.cwd,
                env=host.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
                bufsize=1,
                start_new_session=os.name == "posix",
            )
            procs[host.name] = proc
            reader = threading.Thread(
                target=_follow,
                args=(proc, job_name, host.name if multi else None, host_log, combined if multi else None, lock, tails[host.name]),
                name=f"train-log-{job_name}-{host.name}",
                daemon=True,
            )
            reader.start()
            readers.append(reader)

        deadline = time.monotonic() + max_runtime_s if max_runtime_s is not None else None
        while True:
            codes = {name: proc.poll() for name, proc in procs.items()}
            failed = [name for name, code in codes.items() if code not in (None, 0)]
            if failed:
                outcome.failed_host = failed[0]
                if multi and any(code is None for code in codes.values()):
                    logger.warning(
                        "training job %s: %s failed; stopping the other hosts", job_name, outcome.failed_host
                    )
                _stop_all(procs, PEER_STOP_GRACE_S)
                break
            if all(code is not None for code in codes.values()):
                break
            if deadline is not None and time.monotonic() >= deadline:
                outcome.timed_out = True
                logger.warning("training job %s: past max_runtime_s=%s, sending SIGTERM", job_name, max_runtime_s)
                _stop_all(procs, STOP_GRACE_S)
                break
            if stop_event is not None and stop_event.is_set():
                outcome.stopped = True
                logger.warning("training job %s: stop requested, sending SIGTERM", job_name)
                _stop_all(procs, STOP_GRACE_S)
                break
            try:  # returns at once when that process ends; the others are seen at the next poll
                next(p for p in procs.values() if p.poll() is None).wait(timeout=_POLL_S)
            except (subprocess.TimeoutExpired, StopIteration):
                pass
    except BaseException:  # interrupted (Ctrl-C, a cancelled task): never leave a child behind
        for proc in procs.values():
            _signal(proc, signal.SIGKILL if os.name == "posix" else signal.SIGTERM)
        for proc in procs.values():
            proc.wait()
        raise
    finally:
        for reader in readers:
            reader.join(timeout=10)
        for proc in procs.values():
            if proc.stdout is not None:
                proc.stdout.close()
        for handle in files:
            handle.close()
    outcome.returncodes = {name: proc.returncode for name, proc in procs.items()}
    outcome.tails = {name: list(tail) for name, tail in tails.items()}
    return outcome


def _follow(
    proc: subprocess.Popen,
    job_name: str,
    host: str | None,
    host_log: IO[str],
    combined: IO[str] | None,
    lock: threading.Lock,
    tail: deque[str],
) -> None:
    """Tee one process's output: its own log, the job's combined log (prefixed by host), our logger."""
    assert proc.stdout is not None
    for raw in proc.stdout:
        line = raw.rstrip("\n")
        tail.append(line)
        with lock:
            host_log.write(line + "\n")
            host_log.flush()
            if combined is not None:
                combined.write(f"[{host}] {line}\n")
                combined.flush()
        log_container_line(job_name, line, host)


def _failure_reason(host: _Host, returncode: int | None, tail: Sequence[str]) -> str:
    failure = host.opt_ml / container.FAILURE_FILE
    reason = failure.read_text().strip() if failure.is_file() else ""
    if reason:
        return " ".join(reason.split())
    shown = [line for line in tail if line.strip()][-TAIL_LINES:]
    last = "\n    ".join(shown) if shown else "(no output)"
    return f"exit status {returncode} without a failure file; last output:\n    {last}\n"


def log_container_line(job_name: str, line: str, host: str | None = None) -> None:
    """One line of the container's output: per-round metrics at DEBUG (``-v``), the rest at INFO."""
    level = logging.DEBUG if _ROUND_LINE.match(line) else logging.INFO
    if host is None:
        logger.log(level, "[%s] %s", job_name, line)
    else:
        logger.log(level, "[%s/%s] %s", job_name, host, line)


def _final_metrics(log_path: Path) -> dict[str, float]:
    metrics: dict[str, float] = {}
    if not log_path.is_file():
        return metrics
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
