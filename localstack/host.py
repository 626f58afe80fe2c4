#!/usr/bin/env python3
"""LocalStack for updraft: in Docker when an engine answers, otherwise on this host.

    python localstack/host.py run [--port N] -- COMMAND [ARG...]
        start LocalStack, wait until it is healthy and its init hooks are done, run COMMAND
        with AWS_ENDPOINT_URL (and LOCALSTACK_ENDPOINT) pointing at it, then stop it, always;
        its log is shown when something fails. Exits with COMMAND's status.
    python localstack/host.py up [--port 4566]
        start it and serve in the foreground until Ctrl-C (host mode), or run
        ``docker compose up`` on localstack/docker-compose.yml (Docker mode).
    python localstack/host.py venv
        only build (or check) the host-mode venv, e.g. in a CI step that caches it.

Why a host mode: LocalStack's images need a Docker engine, which CI machines and many
laptops lack. ``localstack-core`` runs as a plain process, but only under Python 3.13,
so this script (stdlib only, any Python 3.9+) finds a 3.13 interpreter, builds its own
venv in ``.venv-localstack/`` from ``localstack/requirements-host.txt`` once (rebuilt
when that file changes), and starts LocalStack bound to 127.0.0.1 with its files in a
temporary folder. The init hooks in ``localstack/init`` run in both modes: mounted into
the container, or linked into the host-mode filesystem root where LocalStack looks.

Settings (environment): ``UPDRAFT_LOCALSTACK_MODE`` = auto (default) | docker | host;
``LOCALSTACK_PYTHON``: a Python 3.13 to use; ``UPDRAFT_LOCALSTACK_VENV``: where the venv
lives; ``UPDRAFT_LOCALSTACK_BUCKETS`` / ``UPDRAFT_LOCALSTACK_PROJECT``: what the init
hook creates (see localstack/init/ready.d/10-updraft-resources.py).
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
INIT_DIR = HERE / "init"
COMPOSE_FILE = HERE / "docker-compose.yml"
REQUIREMENTS = HERE / "requirements-host.txt"
HOST_ENTRY = HERE / "host_entry.py"
VENV_DIR = Path(os.environ.get("UPDRAFT_LOCALSTACK_VENV") or REPO / ".venv-localstack")

DEFAULT_PORT = 4566
HOST_PYTHON = (3, 13)
#: LocalStack answers /_localstack/health in about 1.5 s on host; a cold image pull is
#: separate (``docker compose up`` returns after it), so these only bound a stuck start.
HEALTH_TIMEOUT_S = 120.0
INIT_TIMEOUT_S = 120.0
#: A clean stop takes about a second; after this the process group is killed (its state
#: is in memory and thrown away anyway).
STOP_TIMEOUT_S = 15.0
LOG_TAIL_LINES = 200
#: Credentials LocalStack maps to account 000000000000; the init hook uses the same.
LOCAL_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
#: Settings of the caller that would send a client elsewhere or under another identity.
_FOREIGN_AWS = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL", "UPDRAFT_TARGET")


class LocalStackError(Exception):
    """Something the user can fix; printed as one line, exit status 2."""


def say(message: str) -> None:
    print(f"localstack: {message}", file=sys.stderr, flush=True)


# --- Python 3.13 and the venv ------------------------------------------------------------------


def _python_version(python: str) -> tuple | None:
    try:
        out = subprocess.run(
            [python, "-c", "import sys; print(sys.version_info[0], sys.version_info[1])"],
            capture_output=True, text=True, timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:  # e.g. a pyenv shim for a version that is installed but not selected
        return None
    parts = out.stdout.split()
    return (int(parts[0]), int(parts[1])) if len(parts) == 2 and all(p.isdigit() for p in parts) else None


def _pyenv_roots() -> list[Path]:
    roots = [os.environ.get("PYENV_ROOT")]
    if shutil.which("pyenv"):
        try:
            roots.append(subprocess.run(["pyenv", "root"], capture_output=True, text=True, timeout=20).stdout.strip())
        except (OSError, subprocess.TimeoutExpired):
            pass
    roots.append(str(Path.home() / ".pyenv"))
    return [Path(r) for r in dict.fromkeys(r for r in roots if r)]


def find_python313() -> str:
    """A working Python 3.13: $LOCALSTACK_PYTHON, python3.13 on PATH, or one of pyenv's versions."""
    wanted = "%d.%d" % HOST_PYTHON
    explicit = os.environ.get("LOCALSTACK_PYTHON")
    if explicit:
        if _python_version(explicit) != HOST_PYTHON:
            raise LocalStackError(f"LOCALSTACK_PYTHON={explicit} is not a working Python {wanted}")
        return explicit
    candidates = [shutil.which(f"python{wanted}")]
    for root in _pyenv_roots():
        candidates += sorted(glob.glob(str(root / "versions" / f"{wanted}*" / "bin" / f"python{wanted}")), reverse=True)
    for candidate in dict.fromkeys(c for c in candidates if c):
        if _python_version(candidate) == HOST_PYTHON:
            return candidate
    raise LocalStackError(
        f"LocalStack without Docker needs Python {wanted} (localstack-core 2026.3.0 runs on the host only there) "
        f"and none was found on PATH or under pyenv: install it (pyenv install {wanted}) or set "
        f"LOCALSTACK_PYTHON=/path/to/python{wanted}; or start a Docker engine to use localstack/docker-compose.yml"
    )


def _venv_python() -> Path:
    return VENV_DIR / "bin" / "python"


def _stamp(python: str) -> str:
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    version = subprocess.run([python, "-c", "import sys; print(sys.version)"], capture_output=True, text=True).stdout
    return f"{digest} {version.strip()}\n"


def ensure_venv() -> Path:
    """The LocalStack venv's Python, building the venv when it is missing or its requirements changed.

    The stamp is written last, so a build that was interrupted is redone, not trusted.
    """
    python = find_python313()
    stamp_file = VENV_DIR / ".updraft-stamp"
    wanted = _stamp(python)
    started = time.monotonic()
    if _venv_python().exists() and stamp_file.exists() and stamp_file.read_text() == wanted:
        say(f"venv {VENV_DIR} is up to date ({time.monotonic() - started:.1f} s)")
        return _venv_python()
    if VENV_DIR.exists():
        say(f"rebuilding {VENV_DIR}: {REQUIREMENTS.name} or the Python changed")
        shutil.rmtree(VENV_DIR)
    say(f"building {VENV_DIR} with {python} from {REQUIREMENTS.relative_to(REPO)} (about a minute, once)")
    try:
        subprocess.run([python, "-m", "venv", str(VENV_DIR)], check=True)
        # --no-compile: byte-compiling all ~500 MB at install took 20 of its 42 s here; Python
        # compiles only what LocalStack imports, once, on its first start.
        subprocess.run(
            [str(_venv_python()), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile",
             "-r", str(REQUIREMENTS)],
            check=True,
        )
    except subprocess.CalledProcessError as exc:
        raise LocalStackError(
            f"building {VENV_DIR} failed ({' '.join(map(str, exc.cmd[:4]))} ... exited {exc.returncode}); "
            "see pip's output above"
        ) from None
    stamp_file.write_text(wanted)
    say(f"venv built in {time.monotonic() - started:.1f} s")
    return _venv_python()


# --- ports and HTTP --------------------------------------------------------------------------


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def choose_port(requested: int) -> int:
    """``requested`` (which must then be free), or 0: 4566 when free, else any free port."""
    if requested:
        if not port_is_free(requested):
            raise LocalStackError(f"port {requested} on 127.0.0.1 is in use: stop what holds it or pass --port 0")
        return requested
    if port_is_free(DEFAULT_PORT):
        return DEFAULT_PORT
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    say(f"port {DEFAULT_PORT} is in use; using {port}")
    return port


def get_json(url: str, timeout: float = 2.0) -> dict | None:
    """The JSON body of a 200 answer, or None when nothing (or something else) answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return json.loads(answer.read().decode())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def expected_hooks() -> list[str]:
    ready = INIT_DIR / "ready.d"
    return sorted(p.name for p in ready.iterdir() if p.suffix in (".py", ".sh")) if ready.is_dir() else []


def wait_until_ready(endpoint: str, alive: Callable[[], str | None]) -> None:
    """Wait for ``/_localstack/health``, then for the READY init hooks to finish without error.

    ``alive`` returns None while LocalStack runs, else why it stopped.
    """
    started = time.monotonic()
    while get_json(f"{endpoint}/_localstack/health") is None:
        stopped = alive()
        if stopped:
            raise LocalStackError(f"LocalStack stopped before it answered: {stopped}")
        if time.monotonic() - started > HEALTH_TIMEOUT_S:
            raise LocalStackError(f"LocalStack did not answer {endpoint}/_localstack/health within {HEALTH_TIMEOUT_S:.0f} s")
        time.sleep(0.1)
    healthy = time.monotonic()
    say(f"healthy at {endpoint} after {healthy - started:.1f} s")
    while True:
        init = get_json(f"{endpoint}/_localstack/init/ready") or {}
        if init.get("completed"):
            break
        stopped = alive()
        if stopped:
            raise LocalStackError(f"LocalStack stopped while its init hooks ran: {stopped}")
        if time.monotonic() - healthy > INIT_TIMEOUT_S:
            raise LocalStackError(f"the READY init hooks did not finish within {INIT_TIMEOUT_S:.0f} s")
        time.sleep(0.1)
    states = {s.get("name"): s.get("state") for s in init.get("scripts", [])}
    failed = sorted(name for name, state in states.items() if state == "ERROR")
    if failed:
        raise LocalStackError(f"init hook(s) failed: {', '.join(failed)} (their output is in the log above)")
    missing = [name for name in expected_hooks() if name not in states]
    if missing:
        raise LocalStackError(
            f"init hook(s) {', '.join(missing)} did not run: is {INIT_DIR / 'ready.d'} mounted at /etc/localstack/init/ready.d?"
        )
    say(f"init hooks done after {time.monotonic() - healthy:.1f} s more: {', '.join(sorted(states)) or 'none'}")


def client_environment(endpoint: str) -> dict:
    """The environment of a command that talks to this LocalStack and nothing else."""
    env = {k: v for k, v in os.environ.items() if k not in _FOREIGN_AWS and not k.startswith("AWS_ENDPOINT_URL_")}
    env.update(LOCAL_CREDENTIALS)
    env["AWS_ENDPOINT_URL"] = endpoint
    env["LOCALSTACK_ENDPOINT"] = endpoint
    if not (env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")):
        env["AWS_DEFAULT_REGION"] = "us-east-1"
    return env


# --- the two ways to run it ------------------------------------------------------------------


class HostLocalStack:
    """localstack-core as a process group of ours, bound to 127.0.0.1, files in a temp folder."""

    mode = "host"

    def __init__(self, port: int) -> None:
        self.port = port
        self.endpoint = f"http://127.0.0.1:{port}"
        self.python = ensure_venv()
        self.root: Path | None = None
        self.log_path: Path | None = None
        self.process: subprocess.Popen | None = None

    def _environment(self, root: Path) -> dict:
        env = client_environment(self.endpoint)
        for name in ("AWS_ENDPOINT_URL", "LOCALSTACK_ENDPOINT", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):
            env.pop(name, None)  # LocalStack finds itself; the hook derives its URL from GATEWAY_LISTEN
        # The venv is installed without byte-code (see ensure_venv): the first start writes it
        # for what LocalStack imports. Where PYTHONDONTWRITEBYTECODE is set, every start would
        # compile again (2-3 s slower here), so it does not apply to this process.
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        listen = f"127.0.0.1:{self.port}"
        env.update(
            # This machine may itself be a container: LocalStack would take it for its own,
            # ignore FILESYSTEM_ROOT and write under /var/lib/localstack.
            OVERRIDE_IN_DOCKER="0",
            # hypercorn honours GATEWAY_LISTEN; the default (twisted) binds 0.0.0.0.
            GATEWAY_SERVER="hypercorn",
            GATEWAY_LISTEN=listen,
            LOCALSTACK_HOST=listen,
            DNS_ADDRESS="0",
            SKIP_SSL_CERT_DOWNLOAD="1",
            DISABLE_EVENTS="1",
            FILESYSTEM_ROOT=str(root),
            PATH=f"{self.python.parent}{os.pathsep}{env.get('PATH', '')}",  # `aws` for .sh hooks
        )
        return env

    def start(self) -> None:
        root = Path(tempfile.mkdtemp(prefix="updraft-localstack-"))
        self.root = root
        # LocalStack looks for hooks in $FILESYSTEM_ROOT/etc/localstack/init; link ours there.
        (root / "etc" / "localstack").mkdir(parents=True)
        (root / "etc" / "localstack" / "init").symlink_to(INIT_DIR, target_is_directory=True)
        # Its cache (the service catalog, the TLS certificate) is kept with the venv: rebuilding
        # it costs about 3 s on the first request of every start.
        cache = VENV_DIR / "localstack-cache"
        cache.mkdir(exist_ok=True)
        (root / "var" / "lib" / "localstack").mkdir(parents=True)
        (root / "var" / "lib" / "localstack" / "cache").symlink_to(cache, target_is_directory=True)
        self.log_path = root / "localstack.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [str(self.python), str(HOST_ENTRY)],
                cwd=root, env=self._environment(root), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        say(f"started LocalStack on the host (pid {self.process.pid}, files in {root})")

    def alive(self) -> str | None:
        code = self.process.poll() if self.process else 1
        return None if code is None else f"exit status {code}"

    def logs(self) -> str:
        if not self.log_path or not self.log_path.exists():
            return ""
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-LOG_TAIL_LINES:])

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            started = time.monotonic()
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                say(f"LocalStack did not stop within {STOP_TIMEOUT_S:.0f} s of SIGTERM; killing it")
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            say(f"stopped in {time.monotonic() - started:.1f} s")
        if process is not None:
            try:  # anything the runtime started in its group
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def serve_forever(self) -> None:
        self.process.wait()


class DockerLocalStack:
    """localstack/docker-compose.yml under a compose project of its own, removed on stop."""

    mode = "docker"

    def __init__(self, port: int, project: str | None = None) -> None:
        self.port = port
        self.endpoint = f"http://127.0.0.1:{port}"
        self.project = project or f"updraft-localstack-{os.getpid()}"

    def _compose(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        env = dict(os.environ, LOCALSTACK_PORT=str(self.port))
        command = ["docker", "compose", "-f", str(COMPOSE_FILE), "-p", self.project, *args]
        return subprocess.run(command, env=env, **kwargs)

    def start(self) -> None:
        if self._compose("up", "-d").returncode != 0:
            raise LocalStackError(f"docker compose up failed for {COMPOSE_FILE} (its output is above)")
        say(f"started LocalStack in Docker (compose project {self.project})")

    def alive(self) -> str | None:
        return None  # `docker compose up -d` returned; a dead container shows as a health timeout

    def logs(self) -> str:
        out = self._compose("logs", "--no-color", "--tail", str(LOG_TAIL_LINES), capture_output=True, text=True)
        return out.stdout + out.stderr

    def stop(self) -> None:
        started = time.monotonic()
        self._compose("down", "--volumes", "--remove-orphans", "--timeout", "10", capture_output=True)
        say(f"stopped in {time.monotonic() - started:.1f} s")

    def serve_forever(self) -> None:
        self._compose("logs", "--follow")


def docker_engine_answers() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        info = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, timeout=15)
        compose = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return info.returncode == 0 and compose.returncode == 0


def make_localstack(port: int, project: str | None = None):
    mode = os.environ.get("UPDRAFT_LOCALSTACK_MODE", "auto").strip().lower() or "auto"
    if mode not in ("auto", "docker", "host"):
        raise LocalStackError(f"UPDRAFT_LOCALSTACK_MODE={mode!r}: use auto, docker or host")
    if mode == "docker" or (mode == "auto" and docker_engine_answers()):
        if mode == "docker" and not docker_engine_answers():
            raise LocalStackError("UPDRAFT_LOCALSTACK_MODE=docker but no Docker engine (with compose) answers")
        return DockerLocalStack(port, project)
    if mode == "auto":
        say("no Docker engine answers: running LocalStack on the host")
    return HostLocalStack(port)


def _show_logs(localstack) -> None:
    text = localstack.logs().rstrip()
    if text:
        print(f"----- LocalStack log (last {LOG_TAIL_LINES} lines) -----", file=sys.stderr)
        print(text, file=sys.stderr)
        print("----- end of LocalStack log -----", file=sys.stderr, flush=True)


def _raise_on_sigterm() -> None:
    """SIGTERM (a cancelled CI job) unwinds like Ctrl-C, so LocalStack is stopped on the way out."""

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


# --- commands --------------------------------------------------------------------------------


def _start_and_wait(localstack: "HostLocalStack | DockerLocalStack") -> None:
    """Start LocalStack and wait for its health and init hooks; its log is shown if it never gets there."""
    localstack.start()
    try:
        wait_until_ready(localstack.endpoint, localstack.alive)
    except LocalStackError:
        _show_logs(localstack)
        raise


def command_run(port: int, command: list[str]) -> int:
    if not command:
        raise LocalStackError("run needs a command after --, e.g. run -- python -m pytest tests/localstack")
    _raise_on_sigterm()
    started = time.monotonic()
    localstack = make_localstack(choose_port(port))
    ok = False
    try:
        _start_and_wait(localstack)
        say(f"ready after {time.monotonic() - started:.1f} s; running: {' '.join(command)}")
        code = subprocess.run(command, env=client_environment(localstack.endpoint)).returncode
        ok = code == 0
        if not ok:
            _show_logs(localstack)
        return code
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    finally:
        localstack.stop()
        say(f"{'passed' if ok else 'failed'} in {time.monotonic() - started:.1f} s in all ({localstack.mode} mode)")


def command_up(port: int) -> int:
    _raise_on_sigterm()
    localstack = make_localstack(choose_port(port), project="updraft-localstack")
    try:
        _start_and_wait(localstack)
        print(
            f"LocalStack is ready. In another shell:\n"
            f"  export AWS_ENDPOINT_URL={localstack.endpoint} AWS_ACCESS_KEY_ID=test "
            f"AWS_SECRET_ACCESS_KEY=test AWS_DEFAULT_REGION=us-east-1\n"
            f"Ctrl-C stops it.",
            flush=True,
        )
        localstack.serve_forever()
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        localstack.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="localstack/host.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="start LocalStack, run a command against it, stop it")
    run.add_argument("--port", type=int, default=0, help="0 (default): 4566 when free, else any free port")
    run.add_argument("argv", nargs=argparse.REMAINDER, help="-- COMMAND [ARG...]")
    up = sub.add_parser("up", help="serve LocalStack in the foreground until Ctrl-C")
    up.add_argument("--port", type=int, default=DEFAULT_PORT)
    sub.add_parser("venv", help="build or check the host-mode venv only")
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
            return command_run(args.port, command)
        if args.command == "up":
            return command_up(args.port)
        ensure_venv()
        return 0
    except LocalStackError as exc:
        print(f"localstack: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
