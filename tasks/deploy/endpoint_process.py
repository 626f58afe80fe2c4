"""The process behind a local endpoint: the inference app on a listening socket it was handed.

A local endpoint keeps one URL for its whole life while the model behind it changes, and
an update must not fail a single request. Whatever owns the endpoint's port must therefore
outlive each model's process. Three ways were weighed:

- A front process (reverse proxy) on the stable port, forwarding to the current model's
  port: simple to switch, but every request crosses one more process, which on a 2-core
  machine competes with the model for CPU. Measured with wrk (-t2 -c16, 5 s runs, three
  alternating runs each, other work running: load average about 4): ``GET /ping``
  7,600-8,700 requests/s straight to the server, 4,400-5,400 through the leanest Python
  front (an asyncio TCP forwarder, no HTTP parsing); single-row CSV predictions
  1,160-1,430 against 1,040-1,080. The serving benchmark measures through this path, so a
  front process is out.
- gunicorn's master holding the socket, uvicorn workers, ``SIGHUP`` to reload: its
  ``Arbiter.reload`` forks the new workers and at once stops the oldest (``spawn_worker``,
  then ``manage_workers``), before the new ones have loaded the model, so requests wait in
  the queue for the whole load; a new worker that fails to boot halts the master ("Worker
  failed to boot"), old workers included; and it is one more dependency and process.
- What we do: **the listening socket itself is passed on**. The deployer binds the port
  once; each model's server process inherits the socket (``pass_fds``) and accepts on it
  directly, with no process in between (per-request overhead: none). On an update the
  deployer asks the running server for its socket over a Unix socket (``SCM_RIGHTS``),
  starts the new server on that very socket plus a private check port, waits until the
  new model answers ``/ping`` on the check port, and only then stops the old server. Both
  servers accept from one shared accept queue, so a connection that arrives at any moment
  is taken by whichever is accepting; none sits in a queue that closes.

The old server, on ``SIGTERM``, stops accepting, then *drains*: every answer it still
gives carries ``Connection: close``, so a client in the middle of a keep-alive session
finishes its request and reconnects (to the new server) instead of finding its idle
connection closed under it. uvicorn's own shutdown closes idle keep-alive connections at
once, and a busy client's next request on one fails: measured over five updates under six
keep-alive clients, 24 of 10,807 requests failed (connection reset) with uvicorn's own
shutdown, 0 of 10,387 with the drain (``tests/e2e/test_local_update.py`` holds the line at
zero). Connections still idle after ``DRAIN_S`` are closed as a keep-alive timeout would.

With ``SAGEMAKER_MODEL_SERVER_WORKERS`` > 1 the main process starts that many minus one
worker processes on the same socket (the inference server's own ``main`` honours the same
variable); it answers ``/ping`` only once every worker serves, and exits only after they
have drained.

The app is the inference server's own (``images/inference/serve.py``'s ``create_app``),
named here by an import string as uvicorn names apps, so ``tasks`` does not import
``images``; its environment interface (``SM_MODEL_DIR``) is unchanged.

Run as ``python -m tasks.deploy.endpoint_process`` by :mod:`tasks.deploy.local_endpoints`.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Awaitable, Callable

#: This module, as run by the deployer (and by the main process for its workers).
MODULE = "tasks.deploy.endpoint_process"
#: The inference server's app factory: ``create_app(model_dir) -> ASGI app``.
APP_FACTORY = "images.inference.serve:create_app"
MODEL_DIR_ENV = "SM_MODEL_DIR"
#: File descriptor of the endpoint's listening socket (the stable port), inherited.
LISTEN_FD_ENV = "UPDRAFT_LISTEN_FD"
#: File descriptor of this process's private listening socket, where the deployer checks /ping.
CHECK_FD_ENV = "UPDRAFT_CHECK_FD"
#: Path of the Unix socket on which this process hands its listening socket to a successor.
HANDOVER_ENV = "UPDRAFT_HANDOVER_SOCKET"
#: Set in a worker: the pipe on which it reports that it serves, and its main process's pid.
READY_FD_ENV = "UPDRAFT_READY_FD"
PARENT_PID_ENV = "UPDRAFT_PARENT_PID"
WORKER_START_TIMEOUT_S = 120
#: How long a draining server keeps idle keep-alive connections open for one last request.
DRAIN_S = 2.0
#: SageMaker allows 30 s between SIGTERM and SIGKILL; in-flight requests finish within this.
GRACEFUL_SHUTDOWN_S = 25
#: Idle keep-alive connections stay open this long (the inference server's own choice).
KEEP_ALIVE_S = 75
HANDOVER_MESSAGE = b"updraft-listener"

logger = logging.getLogger("updraft.endpoint")

ASGIApp = Callable[[dict[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


def load_app_factory(spec: str = APP_FACTORY) -> Callable[[str], ASGIApp]:
    """``module:attribute`` to the callable it names."""
    module_name, _, attribute = spec.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


class Draining:
    """Set once the server stops accepting; from then on every answer closes its connection."""

    def __init__(self) -> None:
        self.active = False


def close_connections_when_draining(app: ASGIApp, draining: Draining) -> ASGIApp:
    """Wrap ``app`` so that, while draining, responses carry ``Connection: close``.

    Outside a drain the wrapper costs one attribute test per request.
    """

    async def wrapped(scope: dict[str, Any], receive: Callable[[], Awaitable[Any]], send: Callable[[Any], Awaitable[None]]) -> None:
        if not draining.active or scope["type"] != "http":
            await app(scope, receive, send)
            return

        async def send_closing(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        await app(scope, receive, send_closing)

    return wrapped


def serve_handover(path: str, listen_fd: int) -> socket.socket:
    """Hand ``listen_fd`` to whoever connects to the Unix socket at ``path`` (the next deploy).

    The socket file is created readable by this user only; the accept loop runs in a
    daemon thread and never touches a request.
    """
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o077)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        server.bind(path)
    finally:
        os.umask(old_umask)
    server.listen(4)

    def loop() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return  # closed at shutdown
            with conn:
                try:
                    socket.send_fds(conn, [HANDOVER_MESSAGE], [listen_fd])
                    logger.info("handed the endpoint's listening socket to the next server")
                except OSError as exc:
                    logger.warning("could not hand over the listening socket: %s", exc)

    threading.Thread(target=loop, name="updraft-handover", daemon=True).start()
    return server


def _server_class() -> type:
    import uvicorn

    class DrainingServer(uvicorn.Server):
        """uvicorn's server, whose shutdown stops accepting, then drains keep-alive connections."""

        def __init__(self, config: Any, draining: Draining, on_started: Callable[[], None] | None = None) -> None:
            super().__init__(config)
            self.draining = draining
            self.on_started = on_started

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started and self.on_started is not None:
                self.on_started()

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            for server in self.servers:  # stop accepting: the successor accepts from the same socket
                server.close()
            self.draining.active = True
            loop = asyncio.get_running_loop()
            deadline = loop.time() + DRAIN_S
            while self.server_state.connections and loop.time() < deadline and not self.force_exit:
                await asyncio.sleep(0.01)
            await super().shutdown(sockets)

    return DrainingServer


def _inherited_socket(env_name: str) -> socket.socket:
    raw = os.environ.get(env_name)
    if not raw or not raw.isdigit():
        raise SystemExit(f"{env_name} must name an inherited listening socket's file descriptor (got {raw!r})")
    sock = socket.socket(fileno=int(raw))
    sock.setblocking(False)
    return sock


def _start_workers(count: int, listener: socket.socket) -> list[tuple[subprocess.Popen, int]]:
    """``count`` more server processes on the same listening socket; each with the read end of its ready pipe.

    They stay in this process's group, so the deployer's SIGTERM to the group drains them
    too, and they die with this process if it is killed (``PR_SET_PDEATHSIG``).
    """
    workers = []
    for _ in range(count):
        read_end, write_end = os.pipe()
        env = {k: v for k, v in os.environ.items() if k not in (CHECK_FD_ENV, HANDOVER_ENV)}
        env.update({LISTEN_FD_ENV: str(listener.fileno()), READY_FD_ENV: str(write_end), PARENT_PID_ENV: str(os.getpid())})
        proc = subprocess.Popen(
            [sys.executable, "-m", MODULE], env=env, stdin=subprocess.DEVNULL, pass_fds=(listener.fileno(), write_end)
        )
        os.close(write_end)
        workers.append((proc, read_end))
    return workers


def _wait_for_workers(workers: list[tuple[subprocess.Popen, int]], timeout_s: float) -> str | None:
    """None once every worker serves; otherwise why one does not."""
    deadline = time.monotonic() + timeout_s
    for proc, read_end in workers:
        try:
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([read_end], [], [], max(0.0, remaining))
            if not ready:
                return f"worker process {proc.pid} did not start serving within {timeout_s:g} s"
            if os.read(read_end, 1) != b"1":
                return f"worker process {proc.pid} exited with status {proc.wait()}"
        finally:
            os.close(read_end)
    return None


def _stop_workers(workers: list[tuple[subprocess.Popen, int]], timeout_s: float) -> None:
    for proc, _ in workers:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + timeout_s
    for proc, _ in workers:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _die_with_parent() -> None:
    """A worker must not outlive the endpoint's main process (its pid is what deploy stops)."""
    parent = int(os.environ.get(PARENT_PID_ENV) or 0)
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if parent and os.getppid() != parent:
        raise SystemExit("the endpoint's main process is gone; not starting a worker")


def main() -> None:
    """Serve the model in ``SM_MODEL_DIR`` on the inherited sockets until SIGTERM, then drain.

    The main process (the endpoint's recorded pid) also starts
    ``SAGEMAKER_MODEL_SERVER_WORKERS - 1`` worker processes on the same socket, and answers
    ``/ping`` on its check port only once all of them serve, so a deploy that goes on to
    stop the old version finds the new one at full strength.
    """
    # XGBoost reads its thread count when its OpenMP runtime loads: before the app factory
    # imports it. One thread per server process (ENVIRONMENT.md: "Serving a 1-row CSV request").
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import logging.config

    import uvicorn

    # The server's own logging and worker rules, so an endpoint and the image behave alike.
    from images.inference.serve import logging_config, worker_count
    from tasks.errors import UpdraftError

    ready_fd = int(os.environ[READY_FD_ENV]) if os.environ.get(READY_FD_ENV) else None
    if ready_fd is not None:
        _die_with_parent()
    logging.config.dictConfig(logging_config())
    model_dir = os.environ.get(MODEL_DIR_ENV)
    if not model_dir:
        raise SystemExit(f"{MODEL_DIR_ENV} is not set: it names the folder of the model to serve")
    listener = _inherited_socket(LISTEN_FD_ENV)
    check = _inherited_socket(CHECK_FD_ENV) if ready_fd is None else None
    workers = _start_workers(worker_count() - 1, listener) if ready_fd is None else []
    try:
        app = load_app_factory()(model_dir)
    except UpdraftError as exc:  # a model the user must fix: one line in the log, no traceback
        logger.error("cannot serve the model in %s: %s", model_dir, exc)
        _stop_workers(workers, timeout_s=10)
        raise SystemExit(1) from None
    problem = _wait_for_workers(workers, WORKER_START_TIMEOUT_S)
    if problem is not None:
        logger.error("cannot serve the model in %s: %s", model_dir, problem)
        _stop_workers(workers, timeout_s=10)
        raise SystemExit(1)

    handover_path = os.environ.get(HANDOVER_ENV) if ready_fd is None else None
    # A duplicate for the handover: uvicorn closes its own copy when it stops accepting,
    # while a successor may still be asking for it.
    handover = serve_handover(handover_path, os.dup(listener.fileno())) if handover_path else None
    draining = Draining()
    # The settings of the inference server's own main(): it logs each request itself
    # (method, path, status, sizes, latency; never a payload), so uvicorn's access log is off.
    config = uvicorn.Config(
        close_connections_when_draining(app, draining),
        log_config=logging_config(),
        access_log=False,
        server_header=False,
        timeout_keep_alive=KEEP_ALIVE_S,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )

    def started() -> None:
        if ready_fd is not None:  # tell the main process this worker serves
            with contextlib.suppress(OSError):  # the main process gave up waiting: it stops us anyway
                os.write(ready_fd, b"1")
            os.close(ready_fd)

    server = _server_class()(config, draining, started)
    if check is not None:
        logger.info(
            "serving on port %d (check port %d) with %d process%s",
            listener.getsockname()[1], check.getsockname()[1], len(workers) + 1, "" if not workers else "es",
        )
    try:
        server.run(sockets=[listener] if check is None else [listener, check])
    finally:
        if handover is not None:
            with contextlib.suppress(OSError):
                handover.shutdown(socket.SHUT_RDWR)  # wakes the accept loop
            handover.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(handover_path)
        # The workers got the same SIGTERM (one process group) and drain; this process,
        # the one deploy waits for, is gone only once they are.
        _stop_workers(workers, timeout_s=GRACEFUL_SHUTDOWN_S + DRAIN_S)


if __name__ == "__main__":
    main()
