"""Putting a user's local files where a run expects them: ``updraft run --embedded --upload DATA``.

A fresh embedded endpoint is empty; this is how local files reach its S3 without a
second tool. It creates the bucket when missing and never overwrites a different object
silently: every upload is logged.
"""

from __future__ import annotations

import logging
from pathlib import Path

import botocore.exceptions

from tasks.aws.target import Target
from tasks.errors import UpdraftError

log = logging.getLogger("updraft.upload")


def upload_files(target: Target, bucket: str, prefix: str, paths: list[Path]) -> list[str]:
    """Upload files (folders recursively, keeping their relative paths) under ``s3://bucket/prefix``."""
    files: list[tuple[Path, str]] = []
    for path in paths:
        if path.is_dir():
            files += [(p, p.relative_to(path).as_posix()) for p in sorted(path.rglob("*")) if p.is_file()]
        elif path.is_file():
            files.append((path, path.name))
        else:
            raise UpdraftError(f"--upload {path}: no such file or folder")
    if not files:
        raise UpdraftError(f"--upload {', '.join(map(str, paths))}: no files to upload")
    s3 = target.client("s3")
    try:
        s3.head_bucket(Bucket=bucket)
    except botocore.exceptions.ClientError:
        kwargs = {} if target.region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": target.region}}
        s3.create_bucket(Bucket=bucket, **kwargs)
        log.info("created bucket s3://%s", bucket)
    base = prefix if not prefix or prefix.endswith("/") else prefix.rsplit("/", 1)[0] + "/"
    uris = []
    for local, relative in files:
        key = base + relative
        s3.upload_file(str(local), bucket, key)
        uris.append(f"s3://{bucket}/{key}")
    log.info("uploaded %d files to s3://%s/%s", len(uris), bucket, base)
    return uris
