"""The embedded AWS endpoint: moto's server on a free loopback port, no Docker, no account.

Starting it points this process (and every child it starts afterwards: Dask workers,
training jobs) at it through ``AWS_ENDPOINT_URL`` with throwaway credentials; stopping
it restores the environment exactly as it was.

One route is answered by updraft instead of moto: SageMaker runtime's
``POST /endpoints/<name>/invocations`` (``invoke_endpoint``). moto answers it with a
canned ``b'body'``; here it reaches the local endpoint of that name (the real model,
served by :mod:`tasks.deploy.local_endpoints`), so code written for SageMaker gets real
predictions offline, unchanged. The answers keep SageMaker's shapes: the container's
body and content type on success; ``ModelError`` (424, with ``OriginalStatusCode`` and
``OriginalMessage``) when the model answers an error, as SageMaker wraps a container's
4xx/5xx, so the caller's ``except client.exceptions.ModelError`` works offline too;
``ValidationError`` (400) for an endpoint that does not exist; ``ServiceUnavailable`` (503)
when the endpoint's server is not running. An endpoint recorded in moto but not served
locally keeps moto's own answer.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import uuid
from types import TracebackType
from typing import Any, Callable, Iterable

logger = logging.getLogger("updraft.embedded")

EMBEDDED_ENV = {
    "AWS_ACCESS_KEY_ID": "updraft-embedded",
    "AWS_SECRET_ACCESS_KEY": "updraft-embedded",
    "AWS_SESSION_TOKEN": "updraft-embedded",
    # moto answers 500 for calls it lacks; retrying those only hides the message.
    "AWS_MAX_ATTEMPTS": "1",
}


#: SageMaker runtime's real-time invocation route (botocore's ``InvokeEndpoint`` requestUri).
_INVOCATIONS_PATH = re.compile(r"^/endpoints/(?P<name>[^/]+)/invocations$")
#: SigV4 credential scope of SageMaker runtime calls (its signing name is ``sagemaker``).
_SCOPE = re.compile(r"Credential=[^/,]+/\d{8}/(?P<region>[^/,]+)/(?P<service>[^/,]+)/aws4_request")
#: SageMaker's limit for a real-time invocation's answer; the container has as long.
INVOCATION_TIMEOUT_S = 60.0
VARIANT_NAME = "AllTraffic"

#: Finds the invocation URL of the local endpoint with a given name (None: there is none).
EndpointResolver = Callable[[str], "str | None"]


def _local_endpoint_url(name: str) -> str | None:
    # Imported here: the embedded endpoint serves what the deploy stage started; tasks.aws
    # does not otherwise depend on tasks.deploy.
    from tasks.deploy.local_endpoints import local_endpoint_url

    return local_endpoint_url(name)


def _moto_has_endpoint(name: str, region: str) -> bool:
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.sagemaker.models import sagemaker_backends

    return name in sagemaker_backends[DEFAULT_ACCOUNT_ID][region].endpoints


def _account_id() -> str:
    from moto.core import DEFAULT_ACCOUNT_ID

    return DEFAULT_ACCOUNT_ID


class RuntimeInvocations:
    """WSGI middleware in front of moto: ``invoke_endpoint`` calls go to the local endpoint's server."""

    def __init__(self, app: Callable[..., Iterable[bytes]], resolve: EndpointResolver = _local_endpoint_url) -> None:
        self.app = app
        self.resolve = resolve

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") == "POST":
            path = _INVOCATIONS_PATH.match(environ.get("PATH_INFO", ""))
            scope = _SCOPE.search(environ.get("HTTP_AUTHORIZATION", ""))
            if path and scope and scope["service"] == "sagemaker":
                name, region = path["name"], scope["region"]
                url = self.resolve(name)
                if url is not None:
                    return self._forward(name, region, url, environ, start_response)
                if not _moto_has_endpoint(name, region):
                    return _error(
                        start_response, 400, "ValidationError", f"Endpoint {name} of account {_account_id()} not found."
                    )
        return self.app(environ, start_response)

    def _forward(
        self, name: str, region: str, url: str, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        import requests

        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        headers = {"Content-Type": environ.get("CONTENT_TYPE") or "application/octet-stream"}
        if environ.get("HTTP_ACCEPT"):
            headers["Accept"] = environ["HTTP_ACCEPT"]
        if environ.get("HTTP_X_AMZN_SAGEMAKER_CUSTOM_ATTRIBUTES"):
            headers["X-Amzn-SageMaker-Custom-Attributes"] = environ["HTTP_X_AMZN_SAGEMAKER_CUSTOM_ATTRIBUTES"]
        log_stream = f"arn:aws:logs:{region}:{_account_id()}:log-group:/aws/sagemaker/Endpoints/{name}"
        try:
            answer = requests.post(url, data=body, headers=headers, timeout=(5.0, INVOCATION_TIMEOUT_S))
        except requests.Timeout:
            return _model_error(
                start_response, 0,
                "Your invocation timed out while waiting for a response from container primary. "
                "Review the latency metrics for each container in Amazon CloudWatch, resolve the issue, and try again.",
                log_stream,
            )
        except requests.ConnectionError:
            logger.warning("invoke_endpoint %s: nothing answers at %s", name, url)
            return _error(
                start_response, 503, "ServiceUnavailable",
                f"The local endpoint {name} is not answering at {url}: its server is not running. "
                "Deploy it again ('updraft deploy') or see 'updraft endpoint list'.",
            )
        if not 200 <= answer.status_code < 300:
            return _model_error(start_response, answer.status_code, answer.text, log_stream)
        response_headers = [
            ("Content-Type", answer.headers.get("Content-Type", "application/octet-stream")),
            ("Content-Length", str(len(answer.content))),
            ("x-Amzn-Invoked-Production-Variant", VARIANT_NAME),
            ("x-amzn-RequestId", str(uuid.uuid4())),
        ]
        if answer.headers.get("X-Amzn-SageMaker-Custom-Attributes"):
            response_headers.append(("X-Amzn-SageMaker-Custom-Attributes", answer.headers["X-Amzn-SageMaker-Custom-Attributes"]))
        start_response("200 OK", response_headers)
        return [answer.content]


_REASONS = {400: "Bad Request", 424: "Failed Dependency", 503: "Service Unavailable"}


def _error(start_response: Callable[..., Any], status: int, code: str, message: str, **fields: Any) -> list[bytes]:
    """An error in the rest-json shape botocore parses into ``ClientError`` (and the modeled fields)."""
    body = json.dumps({"__type": code, "message": message, **fields}).encode()
    start_response(
        f"{status} {_REASONS.get(status, 'Error')}",
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            ("x-amzn-ErrorType", code),
            ("x-amzn-RequestId", str(uuid.uuid4())),
        ],
    )
    return [body]


def _model_error(start_response: Callable[..., Any], status: int, text: str, log_stream: str) -> list[bytes]:
    """What SageMaker answers when the container answers an error (or none in time)."""
    kind = "client" if 400 <= status < 500 else "server"
    message = f'Received {kind} error ({status}) from primary with message "{text}". See {log_stream} for more information.'
    return _error(
        start_response, 424, "ModelError", message, OriginalStatusCode=status, OriginalMessage=text, LogStreamArn=log_stream
    )


class EmbeddedAWS:
    """A moto server in a background thread; use as a context manager or start()/stop().

    ``resolve_endpoint`` finds the local endpoint that answers ``invoke_endpoint`` for a
    name (default: the local endpoints under ``UPDRAFT_HOME``).
    """

    def __init__(
        self,
        port: int = 0,
        host: str = "127.0.0.1",
        region: str = "us-east-1",
        resolve_endpoint: EndpointResolver = _local_endpoint_url,
    ) -> None:
        self._requested_port = port
        self.host = host
        self.region = region
        self._resolve_endpoint = resolve_endpoint
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._saved_env: dict[str, str | None] = {}
        self.port: int | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("the embedded endpoint is not running")
        return f"http://{self.host}:{self.port}"

    def start(self, *, set_env: bool = True) -> "EmbeddedAWS":
        # moto's ThreadedMotoServer, with the runtime invocations route in front of its app.
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
        from werkzeug.serving import make_server

        app = RuntimeInvocations(DomainDispatcherApplication(create_backend_app), self._resolve_endpoint)
        try:
            server = make_server(self.host, self._requested_port, app, threaded=True, request_handler=MotoRequestHandler)
        except OSError as exc:
            from tasks.errors import TargetError

            raise TargetError(f"cannot start the embedded AWS endpoint on {self.host}:{self._requested_port}: {exc.strerror}") from None
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="updraft-embedded-aws", daemon=True)
        self._thread.start()
        self.port = server.server_address[1]
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
            self._server.shutdown()
            if self._thread is not None:
                self._thread.join()
            self._server.server_close()  # release the port now, not when the object is collected
            self._server = None
            self._thread = None
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
