"""Reading AWS errors the same way everywhere.

Targets differ in what they lack: LocalStack's free edition answers SageMaker calls with
HTTP 501 ("not included in your current license plan"); moto answers 500 for a call it
does not implement. Stages that only *record* work in the SageMaker API treat those as
"this endpoint has no SageMaker" and go on; everything else is a real error.
"""

from __future__ import annotations

from botocore.exceptions import ClientError


def http_status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code") or "")


def error_message(exc: ClientError) -> str:
    error = exc.response.get("Error", {})
    return str(error.get("Message") or error.get("Code") or exc)


def is_service_missing(exc: BaseException) -> bool:
    """True when the endpoint has no such service at all (LocalStack free edition's 501)."""
    if not isinstance(exc, ClientError):
        return False
    return (
        http_status(exc) == 501
        or error_code(exc) == "NotImplemented"
        or "not included in your current license" in error_message(exc).lower()
    )


def is_call_missing(exc: BaseException) -> bool:
    """The service or just this call is missing: moto's 500 (or NotImplementedError in-process) too."""
    if isinstance(exc, NotImplementedError) or is_service_missing(exc):
        return True
    return isinstance(exc, ClientError) and http_status(exc) == 500
