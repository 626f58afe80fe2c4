"""The embedded AWS endpoint: moto's server on a free loopback port, no Docker, no account.

Starting it points this process (and every child it starts afterwards: Dask workers,
training jobs) at it through ``AWS_ENDPOINT_URL`` with throwaway credentials; stopping
it restores the environment exactly as it was.
"""

from __future__ import annotations

import os
import re
from types import TracebackType
from typing import Any

EMBEDDED_ENV = {
    "AWS_ACCESS_KEY_ID": "updraft-embedded",
    "AWS_SECRET_ACCESS_KEY": "updraft-embedded",
    "AWS_SESSION_TOKEN": "updraft-embedded",
    # moto answers 500 for calls it lacks; retrying those only hides the message.
    "AWS_MAX_ATTEMPTS": "1",
}


class EmbeddedAWS:
    """A moto server in a background thread; use as a context manager or start()/stop()."""

    def __init__(self, port: int = 0, host: str = "127.0.0.1", region: str = "us-east-1") -> None:
        self._requested_port = port
        self.host = host
        self.region = region
        self._server = None
        self._saved_env: dict[str, str | None] = {}
        self.port: int | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("the embedded endpoint is not running")
        return f"http://{self.host}:{self.port}"

    def start(self, *, set_env: bool = True) -> "EmbeddedAWS":
        from moto.server import ThreadedMotoServer

        server = ThreadedMotoServer(ip_address=self.host, port=self._requested_port, verbose=False)
        try:
            server.start()
        except OSError as exc:
            from tasks.errors import TargetError

            raise TargetError(f"cannot start the embedded AWS endpoint on {self.host}:{self._requested_port}: {exc.strerror}") from None
        self._server = server
        self.port = server.get_host_and_port()[1]
        # moto keeps its state per process, not per server: a second endpoint started in
        # the same process would see the first one's buckets and jobs. Start empty.
        import urllib.request

        urllib.request.urlopen(urllib.request.Request(f"{self.url}/moto-api/reset", method="POST"), timeout=10).close()
        if set_env:
            env = dict(EMBEDDED_ENV)
            env["AWS_ENDPOINT_URL"] = self.url
            env["AWS_DEFAULT_REGION"] = os.environ.get("AWS_DEFAULT_REGION") or self.region
            for key, value in env.items():
                self._saved_env[key] = os.environ.get(key)
                os.environ[key] = value
            # A profile would point boto3 at real credentials files; the embedded target needs none.
            self._saved_env.setdefault("AWS_PROFILE", os.environ.pop("AWS_PROFILE", None))
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved_env.clear()
        self.port = None

    def __enter__(self) -> "EmbeddedAWS":
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def amend_training_job(name: str, fields: dict[str, Any], region: str | None = None) -> bool:
    """Write a local run's real status, timings and metrics into the job moto recorded; False if moto has no such job.

    moto answers fixed timings and a placeholder metric for every job it records. The
    embedded endpoint runs in this process, so its state is reachable here; this is the
    only place that reaches into moto, and only for the embedded target.
    """
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.sagemaker.models import sagemaker_backends

    region = region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    job = sagemaker_backends[DEFAULT_ACCOUNT_ID][region].training_jobs.get(name)
    if job is None:
        return False
    for key, value in fields.items():  # moto keeps each field as a snake_case attribute
        setattr(job, re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower(), value)
    return True
