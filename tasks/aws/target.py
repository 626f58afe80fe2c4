"""Targets: ``embedded`` (moto in-process), ``local`` (``AWS_ENDPOINT_URL``), ``aws`` (real).

boto3's own conventions are honoured: ``AWS_ENDPOINT_URL`` and
``AWS_ENDPOINT_URL_<SERVICE>`` decide the endpoint, ``AWS_PROFILE`` and the usual
credential chain the identity, ``AWS_REGION``/``AWS_DEFAULT_REGION`` the region. No
code here builds an endpoint URL by hand.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import boto3
import botocore.config
import botocore.exceptions

from tasks.errors import TargetError

KINDS = ("embedded", "local", "aws")
DEFAULT_REGION = "us-east-1"

#: Attempts per S3 request, the first included, on the local and aws targets (AWS_MAX_ATTEMPTS
#: overrides it, as boto3's convention has it). S3 answers 503 SlowDown while it scales a
#: prefix under load, and now and then a 500; both are safe to repeat for the requests
#: updraft makes (listings, HEADs, ranged GETs, whole-object PUTs, multipart parts). With
#: botocore's standard backoff (a random wait up to 2**n s, at most 20 s) ten attempts give a
#: throttled prefix up to about two minutes before a request fails, where five gave 15 s:
#: a multi-GB ingest on many workers should wait for S3 to scale, not fail and start over.
S3_MAX_ATTEMPTS = 10
#: Attempts per request to the other services (control-plane calls, which fail fast).
DEFAULT_MAX_ATTEMPTS = 5
#: s3fs's attempts on the embedded target (its boto3 clients make one: see ``_retries``).
EMBEDDED_S3_MAX_ATTEMPTS = 5


def _region(explicit: str | None = None) -> str:
    return explicit or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION


@dataclass(frozen=True)
class Target:
    """Where AWS is for this run. Cheap to build; clients are made on demand, never at import."""

    kind: str
    region: str
    endpoint_url: str | None = None

    @property
    def is_local(self) -> bool:
        """True where training and endpoints run as local processes (embedded and local targets)."""
        return self.kind != "aws"

    def _retries(self, service: str, *, transfer: bool = False) -> dict[str, Any]:
        """botocore's own retries: standard mode repeats throttling (503 SlowDown) and 5xx
        answers with exponential backoff and jitter, within a per-client retry quota.
        ``transfer``: for s3fs, which moves the data (Dask workers, pandas)."""
        if self.kind == "embedded":
            # moto answers 500 for the calls it lacks: one attempt, fail fast; s3fs only
            # talks to its S3, which is complete, and keeps the few attempts it always had.
            attempts = EMBEDDED_S3_MAX_ATTEMPTS if transfer else 1
        elif os.environ.get("AWS_MAX_ATTEMPTS"):
            attempts = int(os.environ["AWS_MAX_ATTEMPTS"])
        else:
            attempts = S3_MAX_ATTEMPTS if transfer or service == "s3" else DEFAULT_MAX_ATTEMPTS
        return {"mode": "standard", "total_max_attempts": attempts}

    def _botocore_config(self, service: str) -> botocore.config.Config:
        return botocore.config.Config(
            region_name=self.region,
            retries=self._retries(service),
            connect_timeout=10,
            read_timeout=120,
        )

    def client(self, service: str) -> Any:
        """A boto3 client for ``service``; the endpoint comes from boto3's environment conventions."""
        return boto3.session.Session(region_name=self.region).client(service, config=self._botocore_config(service))

    def storage_options(self) -> dict[str, Any]:
        """fsspec/s3fs options that Dask workers and pandas need to reach this target's S3.

        The retry settings travel with them to every worker (an explicit setting wins over
        the worker's environment). s3fs adds its own few quick retries of SlowDown answers
        and dropped connections on top of botocore's.
        """
        opts: dict[str, Any] = {"config_kwargs": {"retries": self._retries("s3", transfer=True)}}
        client_kwargs: dict[str, Any] = {"region_name": self.region}
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or self.endpoint_url
        if endpoint:
            client_kwargs["endpoint_url"] = endpoint
        opts["client_kwargs"] = client_kwargs
        return opts

    def filesystem(self) -> Any:
        """An s3fs filesystem for this target (no listing cache: objects change under us)."""
        import s3fs

        return s3fs.S3FileSystem(use_listings_cache=False, skip_instance_cache=True, **self.storage_options())

    def check_bucket(self, bucket: str) -> None:
        """Fail with a message that says what to do when the bucket is missing or unreachable."""
        s3 = self.client("s3")
        try:
            s3.head_bucket(Bucket=bucket)
        except botocore.exceptions.NoCredentialsError:
            raise TargetError(
                "no AWS credentials found: set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                "or run with --embedded"
            ) from None
        except botocore.exceptions.EndpointConnectionError:
            raise TargetError(
                f"cannot reach the AWS endpoint {self.endpoint_url or '(default)'}: is it running?"
            ) from None
        except botocore.exceptions.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("404", "NoSuchBucket", "NotFound"):
                if self.kind == "embedded":
                    raise TargetError(
                        f"bucket {bucket!r} does not exist on the embedded target, which starts empty: "
                        "pass --upload DATA to create it and upload your files"
                    ) from None
                raise TargetError(
                    f"bucket {bucket!r} does not exist on the {self.kind} target; create it "
                    f"(aws s3 mb s3://{bucket}) or fix 'bucket' in the config"
                ) from None
            if code in ("403", "AccessDenied", "Forbidden"):
                raise TargetError(f"access to bucket {bucket!r} is denied for the current credentials") from None
            raise


def resolve_target(kind: str | None = None, region: str | None = None) -> Target:
    """The target named by ``kind``, else ``local`` when ``AWS_ENDPOINT_URL`` is set, else ``aws``.

    The embedded target must already be running (see :mod:`tasks.aws.embedded`), which
    sets ``AWS_ENDPOINT_URL`` for this process and its children.
    """
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or None
    if kind is None:
        kind = os.environ.get("UPDRAFT_TARGET") or ("local" if endpoint else "aws")
    if kind not in KINDS:
        raise TargetError(f"unknown target {kind!r}; use one of {', '.join(KINDS)}")
    if kind in ("embedded", "local") and not endpoint:
        raise TargetError(f"the {kind} target needs AWS_ENDPOINT_URL (start one with 'updraft up')")
    return Target(kind=kind, region=_region(region), endpoint_url=endpoint if kind != "aws" else None)
