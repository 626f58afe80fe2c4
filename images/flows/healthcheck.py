"""Docker HEALTHCHECK of the flows image: the Prefect worker's /health, when a worker runs here.

The same image runs two kinds of container: the Prefect ECS worker (its default command,
started with ``--with-healthcheck``, which serves ``GET /health`` on
``PREFECT_WORKER_WEBSERVER_HOST:PREFECT_WORKER_WEBSERVER_PORT``) and the flow runs that worker
launches (``prefect flow-run execute``, no web server). Probing the port unconditionally would
mark every flow run unhealthy, so this looks for a worker process first: with one, healthy means
its /health answers 200 (Prefect answers 503 once the worker stops polling its work pool);
without one, the container is as healthy as its main process, which Docker already watches.

Standard library only, and a plain script (``python /opt/updraft/images/flows/healthcheck.py``):
it runs every 30 s beside the worker and must start fast. Exit 0: healthy; 1: unhealthy.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

HOST_ENV = "PREFECT_WORKER_WEBSERVER_HOST"
PORT_ENV = "PREFECT_WORKER_WEBSERVER_PORT"
DEFAULT_PORT = "8080"
TIMEOUT_S = 4.0


def worker_with_healthcheck(proc: Path = Path("/proc")) -> bool:
    """Whether any process here is ``prefect worker start ... --with-healthcheck``."""
    for cmdline in proc.glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:  # the process ended while we looked
            continue
        if b"worker" in args and b"start" in args and b"--with-healthcheck" in args:
            return True
    return False


def health_url(environ: Mapping[str, str] = os.environ) -> str:
    """Where the worker's web server answers; a wildcard bind address is probed on loopback."""
    host = environ.get(HOST_ENV) or "127.0.0.1"
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://{host}:{environ.get(PORT_ENV) or DEFAULT_PORT}/health"


def check(proc: Path = Path("/proc"), environ: Mapping[str, str] = os.environ) -> tuple[int, str]:
    """The exit code and a one-line reason (Docker keeps it in ``docker inspect``'s health log)."""
    if not worker_with_healthcheck(proc):
        return 0, "no Prefect worker with --with-healthcheck in this container: nothing to probe"
    url = health_url(environ)
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as answer:
            return (0, f"{url} answered {answer.status}") if answer.status == 200 else (1, f"{url} answered {answer.status}")
    except urllib.error.HTTPError as exc:
        return 1, f"{url} answered {exc.code}: the worker is not polling its work pool"
    except (urllib.error.URLError, OSError) as exc:
        return 1, f"{url} did not answer: {getattr(exc, 'reason', exc)}"


def main() -> int:
    code, reason = check()
    print(reason)
    return code


if __name__ == "__main__":
    sys.exit(main())
