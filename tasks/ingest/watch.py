"""``updraft ingest --watch``: ingest again whenever new objects arrive under the source prefix.

Whatever wakes the watcher (a timer, or S3 event notifications read from SQS), the
decision to ingest is always the manifest diff (:func:`find_pending`): a message is only
a hint, so a lost, late or repeated notification never loses or duplicates rows, and a
file uploaded while the watcher was down is picked up at its first check. Messages are
deleted only after the ingest they triggered succeeded, so a crash has SQS deliver them
again. A stop signal (SIGINT, SIGTERM) ends the watch between runs, never inside one.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Protocol
from urllib.parse import unquote_plus

from tasks.errors import DataError, UpdraftError
from tasks.ingest.manifest import ObjectDiff, load_manifest, diff_objects
from tasks.ingest.sources import FORMATS, list_source_objects
from tasks.layout import Layout

log = logging.getLogger("updraft.ingest.watch")

DEFAULT_INTERVAL_S = 30.0
#: SQS's longest long poll; a stop signal waits for the poll in progress at most this long.
SQS_MAX_WAIT_S = 20
#: Receives per wake-up, so a burst of uploads becomes one ingest run rather than one per 10 messages.
SQS_MAX_BATCHES = 10


@dataclass(frozen=True)
class Wakeup:
    """What ended one wait: ``check`` whether to look for new objects now; ``receipts`` the
    SQS messages to delete once the check (and any ingest it started) has succeeded."""

    check: bool
    receipts: tuple[str, ...] = ()


class Waiter(Protocol):
    def wait(self, stop: threading.Event) -> Wakeup: ...

    def acknowledge(self, receipts: tuple[str, ...]) -> None: ...


# --- what is new ----------------------------------------------------------------------------


def pipeline_prefixes(layout: Layout) -> tuple[str, ...]:
    """Key prefixes updraft writes itself; never news, even when the source is the bucket's root."""
    written = (
        layout.curated(), layout.quarantine("-"), layout.features("-"), layout.model("-"), layout.report("-"),
        layout.manifest(), layout.staging(), layout.results(),
    )
    return tuple(sorted({uri.split("/", 4)[3] + "/" for uri in written}))


def find_pending(fs: Any, source_uri: str, manifest_uri: str, exclude: tuple[str, ...] = ()) -> ObjectDiff:
    """The source listing against the manifest, as the next ingest will see it.

    An empty prefix is no error here: the watcher is waiting for the first upload.
    """
    try:
        objects = list_source_objects(fs, source_uri)
    except DataError:  # nothing readable under the prefix yet
        objects = []
    objects = [obj for obj in objects if not obj.key.startswith(exclude)]
    return diff_objects(load_manifest(fs, manifest_uri), objects)


def describe_pending(diff: ObjectDiff) -> str:
    if not diff.to_ingest:
        return f"nothing new ({len(diff.unchanged)} objects ingested already)"
    parts = [f"{len(diff.new)} new"] if diff.new else []
    parts += [f"{len(diff.changed)} changed"] if diff.changed else []
    return ", ".join(parts) + ": ingesting"


# --- S3 event notifications -------------------------------------------------------------------


def parse_s3_event(body: str, *, bucket: str, prefix: str, exclude: tuple[str, ...] = ()) -> list[str]:
    """The keys of objects created under ``bucket``/``prefix`` that one SQS message announces.

    Reads S3's own notification records (keys URL-encoded, '+' for a space), the same
    wrapped in an SNS notification, and EventBridge's "Object Created" events. Test events,
    deletions, other buckets, other prefixes, files ingest cannot read and anything that is
    not an S3 event give no keys, so such messages are simply deleted.
    """
    try:
        event = json.loads(body)
    except (TypeError, ValueError):
        return []
    if isinstance(event, dict) and event.get("Type") == "Notification" and isinstance(event.get("Message"), str):
        return parse_s3_event(event["Message"], bucket=bucket, prefix=prefix, exclude=exclude)
    found: list[tuple[str, str]] = []
    if isinstance(event, dict) and isinstance(event.get("Records"), list):
        for record in event["Records"]:
            if not isinstance(record, dict) or not str(record.get("eventName", "")).startswith("ObjectCreated:"):
                continue
            s3 = record.get("s3") or {}
            name = (s3.get("bucket") or {}).get("name")
            key = (s3.get("object") or {}).get("key")
            if isinstance(name, str) and isinstance(key, str):
                found.append((name, unquote_plus(key)))
    elif isinstance(event, dict) and event.get("source") == "aws.s3" and event.get("detail-type") == "Object Created":
        detail = event.get("detail") or {}
        name = (detail.get("bucket") or {}).get("name")
        key = (detail.get("object") or {}).get("key")
        if isinstance(name, str) and isinstance(key, str):
            found.append((name, key))  # EventBridge does not URL-encode keys
    return [
        key
        for name, key in found
        if name == bucket and key.startswith(prefix) and not key.startswith(exclude) and _readable(key)
    ]


def _readable(key: str) -> bool:
    name = key.rsplit("/", 1)[-1].lower()
    return any(name.endswith(suffix) for suffix in FORMATS)


class Polling:
    """Wake up every ``interval_s`` seconds (or at once on a stop signal)."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s

    def wait(self, stop: threading.Event) -> Wakeup:
        stop.wait(self.interval_s)
        return Wakeup(check=not stop.is_set())

    def acknowledge(self, receipts: tuple[str, ...]) -> None:
        pass


class QueueEvents:
    """Wake up when S3 announces a new object under the source prefix through an SQS queue.

    ``sqs`` is a boto3 SQS client; the queue receives the bucket's ``s3:ObjectCreated:*``
    notifications (directly, or through SNS or EventBridge).
    """

    def __init__(
        self, sqs: Any, queue_url: str, *, bucket: str, prefix: str, exclude: tuple[str, ...] = (),
        wait_s: int = SQS_MAX_WAIT_S,
    ) -> None:
        self.sqs, self.queue_url = sqs, queue_url
        self.bucket, self.prefix, self.exclude = bucket, prefix, exclude
        self.wait_s = max(0, min(int(wait_s), SQS_MAX_WAIT_S))

    def wait(self, stop: threading.Event) -> Wakeup:
        keys: list[str] = []
        relevant: list[str] = []
        ignored: list[str] = []
        for batch in range(SQS_MAX_BATCHES):
            messages = self._receive(self.wait_s if batch == 0 else 0)
            for message in messages:
                found = parse_s3_event(message.get("Body", ""), bucket=self.bucket, prefix=self.prefix, exclude=self.exclude)
                (relevant if found else ignored).append(message["ReceiptHandle"])
                keys += found
            if not messages or stop.is_set():
                break
        if ignored:
            log.debug("deleting %d queue messages that announce nothing to ingest", len(ignored))
            self.acknowledge(tuple(ignored))
        if stop.is_set():
            return Wakeup(check=False)  # not deleted: delivered again to the next watcher
        if keys:
            shown = ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
            log.info("S3 announced %d new objects: %s", len(keys), shown)
        return Wakeup(check=bool(keys), receipts=tuple(relevant))

    def _receive(self, wait_s: int) -> list[dict[str, Any]]:
        answer = self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=wait_s)
        return answer.get("Messages") or []

    def acknowledge(self, receipts: tuple[str, ...]) -> None:
        for start in range(0, len(receipts), 10):  # the batch call takes at most 10 entries
            entries = [{"Id": str(i), "ReceiptHandle": r} for i, r in enumerate(receipts[start : start + 10])]
            answer = self.sqs.delete_message_batch(QueueUrl=self.queue_url, Entries=entries)
            for failed in answer.get("Failed") or []:
                # the message was received again meanwhile (its visibility ran out): it comes back, and its check finds nothing new
                log.warning("could not delete a queue message (%s); it will be delivered again", failed.get("Message"))


# --- the loop ---------------------------------------------------------------------------------


def watch(
    *,
    pending: Callable[[], ObjectDiff],
    ingest: Callable[[], dict[str, Any]],
    waiter: Waiter,
    stop: threading.Event,
    on_result: Callable[[dict[str, Any]], None],
    max_runs: int | None = None,
) -> int:
    """Check, ingest when something is pending, wait; until ``stop`` is set or ``max_runs`` ran.

    A run that fails with a user error (too much quarantined, say) is logged and reported
    to ``on_result`` as ``{"error": ...}``, and the watch goes on: the next check retries
    the same objects, since the manifest does not hold them. Returns the number of failed runs.
    """
    runs = failed = 0
    wakeup = Wakeup(check=True)  # look once at the start: uploads made while nobody watched
    while not stop.is_set():
        if wakeup.check:
            diff = pending()
            log.info(describe_pending(diff))
            if diff.to_ingest:
                runs += 1
                try:
                    result = ingest()
                except UpdraftError as exc:
                    failed += 1
                    log.error("ingest failed: %s; trying again at the next check", exc)
                    on_result({"error": str(exc)})
                else:
                    waiter.acknowledge(wakeup.receipts)
                    on_result(result)
            else:
                waiter.acknowledge(wakeup.receipts)
        if max_runs is not None and runs >= max_runs:
            log.info("stopping after %d ingest runs (--max-runs)", runs)
            break
        if stop.is_set():
            break
        wakeup = waiter.wait(stop)
    return failed


def call_in_thread(fn: Callable[[], Any]) -> Any:
    """``fn()`` in a worker thread, so a stop signal reaches the watcher's handler (in the main
    thread) and not the run: Prefect turns SIGTERM into an abort while a flow runs in the
    main thread. The run finishes; then the watcher stops."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed back to the caller below
            box["error"] = exc

    worker = threading.Thread(target=target, name="updraft-ingest-run", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.5)
    if "error" in box:
        raise box["error"]
    return box.get("value")


def stop_on_signals(stop: threading.Event, signals: Iterable[int] = (signal.SIGINT, signal.SIGTERM)) -> None:
    """The first SIGINT/SIGTERM asks the watcher to stop after the run in progress; a second
    one interrupts at once (KeyboardInterrupt)."""

    def handler(signum: int, _frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        log.info("%s: stopping after the run in progress (send it again to stop at once)", signal.Signals(signum).name)
        stop.set()

    for signum in signals:
        signal.signal(signum, handler)
