"""S3 event notifications through SQS on moto: configure, upload, receive, parse, delete after success."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from tasks.aws.target import Target
from tasks.errors import DataError
from tasks.ingest.watch import QueueEvents, find_pending, pipeline_prefixes, watch
from tasks.layout import Layout

BUCKET = "updraft-events"
PREFIX = "raw/claims/"


@pytest.fixture()
def notified_queue(embedded_target: Target) -> tuple[Any, Any, str]:
    """A bucket whose ObjectCreated events go to an SQS queue (messages come back 1 s after a receive)."""
    s3, sqs = embedded_target.client("s3"), embedded_target.client("sqs")
    s3.create_bucket(Bucket=BUCKET)
    queue_url = sqs.create_queue(QueueName="updraft-ingest-events", Attributes={"VisibilityTimeout": "1"})["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    s3.put_bucket_notification_configuration(
        Bucket=BUCKET,
        NotificationConfiguration={"QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]},
    )
    return s3, sqs, queue_url


def _events(sqs: Any, queue_url: str) -> QueueEvents:
    return QueueEvents(sqs, queue_url, bucket=BUCKET, prefix=PREFIX, exclude=pipeline_prefixes(Layout(BUCKET, "claims")), wait_s=1)


def _visible(sqs: Any, queue_url: str) -> int:
    attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessages"])
    return int(attributes["Attributes"]["ApproximateNumberOfMessages"])


def test_an_upload_under_the_prefix_wakes_the_watcher_and_other_messages_are_deleted(notified_queue: tuple[Any, Any, str]) -> None:
    s3, sqs, queue_url = notified_queue
    s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}jan 2026+v2.csv", Body=b"a\n1\n")  # URL-encoded in the event
    s3.put_object(Bucket=BUCKET, Key="elsewhere/b.csv", Body=b"a\n1\n")
    s3.put_object(Bucket=BUCKET, Key="curated/claims/part.parquet", Body=b"PAR1")

    events = _events(sqs, queue_url)
    wakeup = events.wait(threading.Event())
    assert wakeup.check and len(wakeup.receipts) == 1

    time.sleep(1.5)  # past the visibility timeout: only the relevant message is left, as it was not acknowledged
    again = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages") or []
    assert len(again) == 1 and "jan+2026%2Bv2.csv" in again[0]["Body"]

    events.acknowledge(tuple(m["ReceiptHandle"] for m in again))
    time.sleep(1.5)
    assert events.wait(threading.Event()).check is False
    assert _visible(sqs, queue_url) == 0


def test_messages_are_deleted_only_after_the_ingest_they_triggered_succeeded(
    embedded_target: Target, notified_queue: tuple[Any, Any, str]
) -> None:
    s3, sqs, queue_url = notified_queue
    layout = Layout(BUCKET, "claims")
    fs = embedded_target.filesystem()
    source_uri = f"s3://{BUCKET}/{PREFIX}"

    uploaded: list[str] = []

    def pending() -> Any:
        fs.invalidate_cache()
        diff = find_pending(fs, source_uri, layout.manifest(), pipeline_prefixes(layout))
        if not uploaded:  # the file lands just after the watcher's first look, so S3's event wakes it
            s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}a.csv", Body=b"a\n1\n")
            uploaded.append("a.csv")
        return diff

    def failing() -> dict[str, Any]:
        raise DataError("more than 10% of the rows were quarantined")

    stop = threading.Event()
    results: list[dict[str, Any]] = []
    failed = watch(pending=pending, ingest=failing, waiter=_events(sqs, queue_url), stop=stop, on_result=results.append, max_runs=1)
    assert failed == 1 and results == [{"error": "more than 10% of the rows were quarantined"}]

    time.sleep(1.5)  # the message comes back: the failed run did not delete it
    runs: list[int] = []
    failed = watch(  # at the start, then woken by the message delivered again
        pending=pending, ingest=lambda: runs.append(1) or {"files": 1}, waiter=_events(sqs, queue_url), stop=stop,
        on_result=results.append, max_runs=2,
    )
    assert failed == 0 and len(runs) == 2 and results[-1] == {"files": 1}
    time.sleep(1.5)
    assert _visible(sqs, queue_url) == 0
