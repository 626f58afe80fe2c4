"""LocalStack fixtures: find one that answers (or skip at once), and point this test's AWS clients at it.

``make localstack-test`` starts LocalStack (``localstack/host.py``) and sets
``LOCALSTACK_ENDPOINT``; a developer's own LocalStack is found through
``AWS_ENDPOINT_URL`` or on 127.0.0.1:4566. Anything else (nothing listening, moto's
``updraft up``, real AWS) skips these tests: only LocalStack answers ``/_localstack/health``.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

import pytest

DEFAULT_ENDPOINT = "http://127.0.0.1:4566"
#: What localstack/init/ready.d/10-updraft-resources.py creates unless told otherwise.
HOOK_BUCKETS = [b.strip() for b in os.environ.get("UPDRAFT_LOCALSTACK_BUCKETS", "updraft-demo").split(",") if b.strip()]
HOOK_PROJECT = os.environ.get("UPDRAFT_LOCALSTACK_PROJECT", "").strip() or "claims-fraud"


def answers_as_localstack(endpoint: str) -> bool:
    """True when ``endpoint`` is a LocalStack: its health route answers JSON with its services."""
    try:
        with urllib.request.urlopen(f"{endpoint.rstrip('/')}/_localstack/health", timeout=1.0) as answer:
            return "services" in json.loads(answer.read().decode())
    except (urllib.error.URLError, OSError, ValueError):
        return False


def find_localstack() -> str | None:
    """The first of LOCALSTACK_ENDPOINT, AWS_ENDPOINT_URL and 127.0.0.1:4566 that is a LocalStack."""
    for candidate in (os.environ.get("LOCALSTACK_ENDPOINT"), os.environ.get("AWS_ENDPOINT_URL"), DEFAULT_ENDPOINT):
        if candidate and answers_as_localstack(candidate):
            return candidate.rstrip("/")
    return None


#: Looked up when pytest loads this folder, before any test runs: fixtures that start moto set
#: AWS_ENDPOINT_URL while their test runs, and must not decide where these tests go. Nothing
#: listening on loopback answers at once.
_ENDPOINT_AT_START = find_localstack()

#: Put on every test here: a skip decided at collection, so none of the suite's session
#: fixtures (moto, the Prefect server) starts just to be skipped. LOCALSTACK_ENDPOINT set
#: but dead is not a skip: the ``localstack_endpoint`` fixture fails.
requires_localstack = pytest.mark.skipif(
    _ENDPOINT_AT_START is None and not os.environ.get("LOCALSTACK_ENDPOINT"),
    reason="no LocalStack answers (set LOCALSTACK_ENDPOINT, or run `make localstack-test`)",
)


@pytest.fixture(scope="session")
def localstack_endpoint() -> str:
    """LocalStack's URL; skips where none answers, fails where LOCALSTACK_ENDPOINT names one that does not
    (``make localstack-test`` sets it: CI must not pass by skipping)."""
    endpoint = _ENDPOINT_AT_START
    named = os.environ.get("LOCALSTACK_ENDPOINT")
    if named and endpoint != named.rstrip("/"):
        pytest.fail(f"LOCALSTACK_ENDPOINT={named} does not answer /_localstack/health: is LocalStack running there?")
    if endpoint is None:
        pytest.skip("no LocalStack answers (set LOCALSTACK_ENDPOINT, or run `make localstack-test`)")
    return endpoint


@pytest.fixture()
def localstack(localstack_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """This test and the CLI it starts talk to LocalStack only, as the local target, with its test identity."""
    for name in list(os.environ):
        if name.startswith("AWS_ENDPOINT_URL_") or name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "UPDRAFT_TARGET"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ENDPOINT_URL", localstack_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    if not (os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")):
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return localstack_endpoint


