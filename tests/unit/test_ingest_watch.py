"""The pure parts of ``updraft ingest --watch``: what counts as news, and when the loop ingests."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path
from typing import Any

import fsspec
import pytest

from tasks.errors import DataError
from tasks.ingest.manifest import INGESTED, Manifest, ManifestEntry, ObjectDiff, write_manifest
from tasks.ingest.sources import SourceObject, list_source_objects
from tasks.ingest.watch import (
    Polling,
    Wakeup,
    call_in_thread,
    describe_pending,
    find_pending,
    parse_s3_event,
    pipeline_prefixes,
    stop_on_signals,
    watch,
)
from tasks.layout import Layout


def s3_event(*records: tuple[str, str, str]) -> str:
    """An S3 notification body as S3 (and moto) sends it: (eventName, bucket, URL-encoded key)."""
    return json.dumps(
        {
            "Records": [
                {"eventSource": "aws:s3", "eventName": name, "s3": {"bucket": {"name": bucket}, "object": {"key": key, "size": 3}}}
                for name, bucket, key in records
            ]
        }
    )


def test_created_objects_under_the_prefix_are_news_with_their_keys_decoded() -> None:
    body = s3_event(
        ("ObjectCreated:Put", "data", "raw%2Fclaims%2Fjan+2026%2B1.csv"),
        ("ObjectCreated:CompleteMultipartUpload", "data", "raw/claims/big.csv.gz"),
    )
    assert parse_s3_event(body, bucket="data", prefix="raw/claims/") == ["raw/claims/jan 2026+1.csv", "raw/claims/big.csv.gz"]


@pytest.mark.parametrize(
    "body",
    [
        json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "data"}),
        s3_event(("ObjectRemoved:Delete", "data", "raw/claims/a.csv")),
        s3_event(("ObjectCreated:Put", "other-bucket", "raw/claims/a.csv")),
        s3_event(("ObjectCreated:Put", "data", "raw/elsewhere/a.csv")),
        s3_event(("ObjectCreated:Put", "data", "raw/claims/_SUCCESS")),
        "not json at all",
        json.dumps(["a list"]),
    ],
    ids=["test-event", "deletion", "other-bucket", "other-prefix", "unreadable-file", "garbage", "not-an-object"],
)
def test_messages_that_announce_nothing_to_ingest_give_no_keys(body: str) -> None:
    assert parse_s3_event(body, bucket="data", prefix="raw/claims/") == []


def test_updraft_own_outputs_are_never_news_even_from_the_bucket_root() -> None:
    exclude = pipeline_prefixes(Layout("data", "claims"))
    assert {"curated/", "quarantine/", "manifests/", "staging/"} <= set(exclude)
    body = s3_event(("ObjectCreated:Put", "data", "curated/claims/part-0.parquet"), ("ObjectCreated:Put", "data", "in/a.parquet"))
    assert parse_s3_event(body, bucket="data", prefix="", exclude=exclude) == ["in/a.parquet"]


def test_sns_wrapped_and_eventbridge_notifications_are_read_too() -> None:
    inner = s3_event(("ObjectCreated:Post", "data", "raw/claims/a.tsv"))
    sns = json.dumps({"Type": "Notification", "Message": inner})
    assert parse_s3_event(sns, bucket="data", prefix="raw/claims/") == ["raw/claims/a.tsv"]
    bridge = json.dumps(
        {"source": "aws.s3", "detail-type": "Object Created", "detail": {"bucket": {"name": "data"}, "object": {"key": "raw/claims/b c.jsonl"}}}
    )
    assert parse_s3_event(bridge, bucket="data", prefix="raw/claims/") == ["raw/claims/b c.jsonl"]


def _obj(key: str) -> SourceObject:
    return SourceObject(uri=f"s3://data/{key}", key=key, size=1, etag="e")


def test_the_log_line_says_what_is_pending() -> None:
    assert describe_pending(ObjectDiff(new=[], changed=[], unchanged=[_obj("a.csv")])) == "nothing new (1 objects ingested already)"
    diff = ObjectDiff(new=[_obj("a.csv"), _obj("b.csv"), _obj("c.csv")], changed=[_obj("d.csv")], unchanged=[])
    assert describe_pending(diff) == "3 new, 1 changed: ingesting"
    assert describe_pending(ObjectDiff(new=[], changed=[_obj("d.csv")], unchanged=[])) == "1 changed: ingesting"


def test_pending_is_the_listing_against_the_manifest_and_an_empty_prefix_is_no_error(tmp_path: Path) -> None:
    fs = fsspec.filesystem("file")
    source = tmp_path / "raw"
    source.mkdir()
    manifest_uri = str(tmp_path / "manifest.json")
    assert find_pending(fs, str(source), manifest_uri).to_ingest == []

    (source / "a.csv").write_text("x\n1\n")
    (source / "b.csv").write_text("x\n2\n")
    [first, second] = list_source_objects(fs, str(source))
    entry = ManifestEntry(
        key=first.key, uri=first.uri, etag=first.etag, size=first.size, status=INGESTED, rows_in=1, rows_curated=1,
        rows_quarantined=0, run_id="r1", ingested_at="2026-01-01T00:00:00+00:00",
    )
    write_manifest(fs, manifest_uri, Manifest(entries={first.key: entry}))
    diff = find_pending(fs, str(source), manifest_uri)
    assert [o.key for o in diff.new] == [second.key] and [o.key for o in diff.unchanged] == [first.key]

    # our own outputs under the prefix (source at the bucket root) never count as new
    assert find_pending(fs, str(source), manifest_uri, exclude=(second.key,)).to_ingest == []


class ScriptedWaiter:
    """Wake-ups from a script; records what was acknowledged, and stops the watch when the script ends."""

    def __init__(self, stop: threading.Event, wakeups: list[Wakeup]) -> None:
        self.stop, self.wakeups, self.acknowledged = stop, list(wakeups), []

    def wait(self, stop: threading.Event) -> Wakeup:
        if not self.wakeups:
            stop.set()
            return Wakeup(check=False)
        return self.wakeups.pop(0)

    def acknowledge(self, receipts: tuple[str, ...]) -> None:
        self.acknowledged.extend(receipts)


def test_the_watch_ingests_only_when_something_is_pending_and_acknowledges_after_success() -> None:
    stop = threading.Event()
    pending = [[_obj("a.csv")], [], [_obj("b.csv")]]  # what each check finds
    checks: list[int] = []

    def find() -> ObjectDiff:
        checks.append(1)
        return ObjectDiff(new=pending.pop(0), changed=[], unchanged=[])

    results: list[dict[str, Any]] = []
    ingested = iter([{"files": 1, "run_id": "r1"}, {"files": 1, "run_id": "r2"}])
    waiter = ScriptedWaiter(stop, [Wakeup(check=True, receipts=("m1",)), Wakeup(check=False), Wakeup(check=True, receipts=("m2",))])
    failed = watch(pending=find, ingest=lambda: next(ingested), waiter=waiter, stop=stop, on_result=results.append)
    assert failed == 0
    assert len(checks) == 3  # at the start, then only when woken to check
    assert [r["run_id"] for r in results] == ["r1", "r2"]
    assert waiter.acknowledged == ["m1", "m2"]


def test_a_failed_run_is_reported_its_messages_kept_and_the_watch_goes_on() -> None:
    stop = threading.Event()
    outcomes: list[Any] = [DataError("too much quarantined"), {"files": 1}]

    def ingest() -> dict[str, Any]:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    results: list[dict[str, Any]] = []
    waiter = ScriptedWaiter(stop, [Wakeup(check=True, receipts=("m1",)), Wakeup(check=True, receipts=("m1-again",))])
    pending = [[], [_obj("a.csv")], [_obj("a.csv")]]  # nothing at the start; then a.csv until it is ingested
    failed = watch(
        pending=lambda: ObjectDiff(new=pending.pop(0), changed=[], unchanged=[]),
        ingest=ingest, waiter=waiter, stop=stop, on_result=results.append, max_runs=3,
    )
    assert failed == 1
    assert results[0] == {"error": "too much quarantined"} and results[1] == {"files": 1}
    assert waiter.acknowledged == ["m1-again"]  # the first message was not deleted: SQS delivers it again


def test_max_runs_stops_the_watch_and_a_bug_is_not_swallowed() -> None:
    stop = threading.Event()
    runs: list[int] = []
    waiter = ScriptedWaiter(stop, [Wakeup(check=True)] * 10)
    watch(
        pending=lambda: ObjectDiff(new=[_obj("a.csv")], changed=[], unchanged=[]),
        ingest=lambda: runs.append(1) or {"files": 1}, waiter=waiter, stop=stop, on_result=lambda r: None, max_runs=2,
    )
    assert len(runs) == 2 and not stop.is_set()

    with pytest.raises(ZeroDivisionError):
        watch(
            pending=lambda: ObjectDiff(new=[_obj("a.csv")], changed=[], unchanged=[]),
            ingest=lambda: 1 / 0, waiter=waiter, stop=threading.Event(), on_result=lambda r: None,
        )


def test_polling_waits_the_interval_but_a_stop_ends_the_wait_at_once() -> None:
    stop = threading.Event()
    threading.Timer(0.1, stop.set).start()
    assert Polling(interval_s=30).wait(stop) == Wakeup(check=False)
    assert Polling(interval_s=0.01).wait(threading.Event()) == Wakeup(check=True)


def test_a_run_in_its_thread_returns_its_value_or_raises_its_error() -> None:
    assert call_in_thread(lambda: {"files": 2}) == {"files": 2}
    with pytest.raises(DataError, match="bad"):
        call_in_thread(lambda: (_ for _ in ()).throw(DataError("bad")))


def test_the_first_signal_asks_to_stop_and_the_second_interrupts() -> None:
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    stop = threading.Event()
    try:
        stop_on_signals(stop)
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.wait(5)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            threading.Event().wait(1)  # the handler runs here at the latest
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
