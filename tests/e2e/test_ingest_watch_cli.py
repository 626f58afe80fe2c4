"""``updraft ingest --watch`` as a platform team leaves it running: a JSON line per ingest
run, only what is new each time, and a clean stop on Ctrl-C."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
from pathlib import Path
from typing import IO, Any

import boto3
import pytest
import yaml

from tasks.aws.embedded import EmbeddedAWS
from tests.e2e.conftest import UPDRAFT
from tasks.sample import write_sample

pytestmark = pytest.mark.e2e


def _lines(stream: IO[str]) -> "queue.Queue[str | None]":
    """stdout's lines as they come, so the test can wait on each with a timeout."""
    lines: "queue.Queue[str | None]" = queue.Queue()

    def pump() -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _next_run(lines: "queue.Queue[str | None]", timeout: float = 180) -> dict[str, Any]:
    line = lines.get(timeout=timeout)
    assert line is not None, "the watcher ended before printing a run"
    return json.loads(line)


def test_watch_ingests_each_arrival_once_and_stops_cleanly_on_sigint(embedded: EmbeddedAWS, tmp_path: Path) -> None:
    sample = write_sample(tmp_path / "sample", n_rows=3000)
    config = yaml.safe_load(Path(sample.config).read_text())
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=config["bucket"])
    first, *later = sample.data_files
    s3.upload_file(str(first), config["bucket"], config["source"] + first.name)

    stderr_path = tmp_path / "watch.stderr"
    with open(stderr_path, "w") as stderr:
        watcher = subprocess.Popen(
            [UPDRAFT, "ingest", "--config", str(sample.config), "--watch", "--interval", "0.5", "--json"],
            stdout=subprocess.PIPE, stderr=stderr, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
    try:
        lines = _lines(watcher.stdout)
        run1 = _next_run(lines)  # what was there before it started
        assert (run1["files"], run1["files_skipped"]) == (1, 0), run1
        assert run1["rows_in"] == run1["rows_curated"] + run1["rows_quarantined"] > 0

        for path in later:
            s3.upload_file(str(path), config["bucket"], config["source"] + path.name)
        runs = [_next_run(lines)]
        while sum(r["files"] for r in runs) < len(later):  # one run or several, as the uploads fall
            runs.append(_next_run(lines))
        assert sum(r["files"] for r in runs) == len(later), runs  # each new file once, the first never again
        assert all(r["files_skipped"] >= 1 for r in runs)
        assert len({r["run_id"] for r in [run1, *runs]}) == 1 + len(runs)
        assert all(r["rows_in"] == r["rows_curated"] + r["rows_quarantined"] for r in runs)

        watcher.send_signal(signal.SIGINT)
        assert watcher.wait(timeout=60) == 0, stderr_path.read_text()[-3000:]
        assert lines.get(timeout=10) is None  # nothing more on stdout: only the JSON lines
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()
    assert "Traceback" not in stderr_path.read_text()
