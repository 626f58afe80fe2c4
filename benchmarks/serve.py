"""Load-test the local endpoint against a reference gunicorn+Flask server on loopback.

    python benchmarks/serve.py [--duration 10] [--connections 16] [--rate 500] [--json]

Builds an XGBoost model (100 trees of depth 6 on 8 numeric and 2 categorical inputs by
default) and serves it twice, the same number of worker processes each, one XGBoost
thread per process:

(a) updraft: the local endpoint exactly as the deploy stage starts it
    (``tasks.deploy.local_endpoints.deploy_local_endpoint``: uvicorn running the lean ASGI
    app of ``images/inference/serve.py``);
(b) reference: the same contract as a team would commonly write it, a Flask app under
    gunicorn's sync workers, parsing with pandas and predicting with the same bundle's
    ``predict_frame`` (:func:`reference_app` below).

Both must answer the same rows with the same predictions before anything is timed. Then:

1. closed loop, the highest throughput: wrk (``apt-get install -y wrk``) with ``--connections``
   connections sending single-row CSV requests (a different row each time) for
   ``--duration`` seconds, after a warm-up, alternating the two servers ``--repeat`` times;
   requests/s, p50 and p99 latency, errors, and requests per CPU second of the server's
   processes (the figure neighbours' load on a shared machine sways least);
2. open loop at a fixed rate (``--rate`` requests/s for ``--rate-duration`` seconds): wrk2 is
   not available, so a small asyncio generator written for this script sends each request
   at its scheduled time on a pool of keep-alive connections, and measures latency from the
   scheduled time (so a stalled server cannot hide queueing: no coordinated omission);
   p50, p99, max and errors, and how late the generator itself was; ``--rate-repeat`` runs
   of updraft (the median p99 is judged), one of the reference.

Without wrk the closed loop falls back to the same asyncio client run closed-loop (say so
in the output: one Python process may then be the bottleneck). The goals (issue 6): at
least 3x the reference's requests/s at equal or lower p99; p99 under 10 ms at 500
requests/s; zero errors. ``--json`` prints one JSON object at the end. Not part of the
test suite; gunicorn and Flask come with the ``bench`` extra.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

HOST = "127.0.0.1"
NUMERIC = 8
CATEGORIES = ("clinic", "hospital", "lab", "pharmacy", "home", "remote")
REGIONS = tuple(f"region-{i}" for i in range(12))
MAX_PAYLOAD_BYTES = 6 * 1024 * 1024


# --- the model ----------------------------------------------------------------------------------


def input_columns(numeric: int = NUMERIC) -> list[str]:
    return [f"x{i}" for i in range(numeric)] + ["kind", "region"]


def sample_rows(n: int, seed: int, numeric: int = NUMERIC) -> "Any":
    """Rows as a client holds them: numbers with a few gaps, two text columns."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    data: dict[str, Any] = {f"x{i}": rng.normal(i, 1.0 + i, n).round(4) for i in range(numeric)}
    data["x0"][rng.random(n) < 0.03] = np.nan
    data["kind"] = rng.choice(CATEGORIES, n).astype(object)
    data["region"] = rng.choice(REGIONS, n).astype(object)
    return pd.DataFrame(data)


def build_model(folder: Path, trees: int, depth: int, numeric: int = NUMERIC) -> Path:
    """A model folder in updraft's layout: transform.json fitted on generated rows, an XGBoost booster, metadata."""
    import xgboost as xgb

    from tasks.features.transform import FORMAT, apply_transform

    rows = sample_rows(20_000, seed=0, numeric=numeric)
    numeric_entries = []
    for i in range(numeric):
        values = rows[f"x{i}"].to_numpy()
        mean, std = float(np.nanmean(values)), float(np.nanstd(values))
        numeric_entries.append(
            {"name": f"x{i}", "count": int(np.isfinite(values).sum()), "null_count": int(np.isnan(values).sum()),
             "mean": mean, "std": std, "min": float(np.nanmin(values)), "max": float(np.nanmax(values)),
             "impute": "mean", "fill": mean, "missing_indicator": False, "bins": None, "clip": None,
             "clip_quantiles": None, "log1p": False, "scale": "standard", "shift": mean, "divisor": std}
        )
    columns = input_columns(numeric)
    spec = {
        "format": FORMAT, "task": "binary_classification", "label": "y", "label_classes": ["0", "1"],
        "input_columns": columns, "numeric": numeric_entries,
        "categorical": [
            {"name": "kind", "encode": "vocabulary", "vocabulary": list(CATEGORIES), "oov_code": 0},
            {"name": "region", "encode": "vocabulary", "vocabulary": list(REGIONS), "oov_code": 0},
        ],
        "datetime": [], "feature_names": columns, "split": {"validation": 0.15, "test": 0.15, "hash": "bench"},
    }
    X = apply_transform(rows, spec)
    rng = np.random.default_rng(1)
    logit = np.nan_to_num(X[:, 0]) - X[:, 1] * X[:, 2] + 0.3 * X[:, numeric] + rng.normal(0, 0.5, len(X))
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": depth, "eta": 0.1, "nthread": 2, "seed": 0},
        xgb.DMatrix(X, label=(logit > 0).astype(np.float32)),
        num_boost_round=trees,
    )
    folder.mkdir(parents=True, exist_ok=True)
    booster.save_model(str(folder / "xgboost-model.json"))
    (folder / "transform.json").write_text(json.dumps(spec))
    (folder / "metadata.json").write_text(json.dumps({
        "task": spec["task"], "label": "y", "label_classes": spec["label_classes"], "feature_names": columns,
        "input_columns": columns, "algorithm": "xgboost", "run_id": "bench-serve",
    }))
    return folder


def csv_lines(n: int, seed: int) -> list[bytes]:
    """``n`` single-row CSV bodies (no header, empty field for a missing value)."""
    rows = sample_rows(n, seed=seed)
    lines = []
    for record in rows.itertuples(index=False):
        fields = ["" if isinstance(v, float) and math.isnan(v) else repr(v) if isinstance(v, float) else str(v) for v in record]
        lines.append((",".join(fields) + "\n").encode())
    return lines


# --- the reference server: gunicorn sync workers + Flask + pandas --------------------------------


def reference_app() -> Any:
    """The serving contract as commonly written with Flask: pandas parsing, ``predict_frame``.

    gunicorn imports this module from ``benchmarks/`` and calls this factory in each worker
    (``serve:reference_app()``); the model folder comes from ``SM_MODEL_DIR``.
    """
    import pandas as pd
    from flask import Flask, Response, jsonify, request

    from tasks.errors import DataError
    from tasks.modelbundle import load_model_bundle

    bundle = load_model_bundle(os.environ["SM_MODEL_DIR"])
    columns = list(bundle.spec["input_columns"])
    text_columns = {e["name"]: str for e in bundle.spec["categorical"]}
    app = Flask("reference")
    app.config["MAX_CONTENT_LENGTH"] = MAX_PAYLOAD_BYTES  # Flask answers 413 above it

    def error(status: int, message: str) -> Response:
        response = jsonify({"error": message})
        response.status_code = status
        return response

    @app.get("/ping")
    def ping() -> Any:
        return jsonify({"status": "ok"})

    @app.post("/invocations")
    def invocations() -> Any:
        content_type = (request.mimetype or "").lower()
        body = request.get_data()
        if not body.strip():
            return error(400, "the request body is empty")
        try:
            if content_type == "text/csv":
                frame = pd.read_csv(io.BytesIO(body), header=None, names=columns, dtype=text_columns)
            elif content_type == "application/json":
                doc = json.loads(body)
                instances = doc["instances"] if isinstance(doc, dict) else doc
                frame = pd.DataFrame(
                    [i if isinstance(i, dict) else dict(zip(columns, i)) for i in instances], columns=columns
                )
            elif content_type == "application/x-parquet":
                frame = pd.read_parquet(io.BytesIO(body))
            else:
                return error(415, f"unsupported content type {content_type!r}")
            predictions = bundle.predict_frame(frame)
        except (ValueError, KeyError, TypeError, DataError, pd.errors.ParserError) as exc:
            return error(400, str(exc))
        if "text/csv" in request.headers.get("Accept", ""):
            return Response("".join(f"{p!r}\n" for p in predictions), mimetype="text/csv")
        return jsonify({"predictions": predictions})

    return app


# --- servers ---------------------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    description: str
    url: str
    pid: int


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _wait_for_ping(port: int, proc: subprocess.Popen | None, timeout_s: float = 90.0) -> None:
    import requests

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"the server on port {port} exited with status {proc.returncode}")
        try:
            if requests.get(f"http://{HOST}:{port}/ping", timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise SystemExit(f"the server on port {port} did not answer /ping within {timeout_s:.0f} s")


@contextlib.contextmanager
def updraft_server(model_tar: Path, home: Path) -> Iterator[Server]:
    """The local endpoint, started by the deploy stage's own function (the production launch)."""
    os.environ["UPDRAFT_HOME"] = str(home)
    from tasks.deploy.local_endpoints import delete_local_endpoint, deploy_local_endpoint

    info = deploy_local_endpoint(name="bench-serve", model_tar=model_tar, model_uri=str(model_tar), run_id="bench-serve")
    try:
        yield Server("updraft", "local endpoint (deploy_local_endpoint): uvicorn + images.inference.serve's app", info.url, info.pid)
    finally:
        delete_local_endpoint("bench-serve", grace_s=10.0)


@contextlib.contextmanager
def reference_server(model_dir: Path, workers: int, log_path: Path, worker_class: str = "sync") -> Iterator[Server]:
    """gunicorn with ``workers`` workers running :func:`reference_app`, one XGBoost thread each.

    ``sync`` (gunicorn's default) answers each request with ``Connection: close``; ``gthread``
    with one thread per worker keeps connections alive, as uvicorn does.
    """
    gunicorn = shutil.which("gunicorn", path=str(Path(sys.executable).parent)) or shutil.which("gunicorn")
    if gunicorn is None:
        raise SystemExit("gunicorn is not installed: .venv/bin/pip install -c constraints.txt -e '.[bench]'")
    port = _free_port()
    env = {**os.environ, "SM_MODEL_DIR": str(model_dir), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [gunicorn, "--workers", str(workers), "--worker-class", worker_class, "--threads", "1", "--keep-alive", "75",
             "--bind", f"{HOST}:{port}", "--chdir", str(REPO / "benchmarks"), "--log-level", "warning",
             "serve:reference_app()"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        _wait_for_ping(port, proc)
        yield Server("reference", f"gunicorn {workers} {worker_class} worker(s) + Flask + pandas", f"http://{HOST}:{port}/invocations", proc.pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and every process below it, so far."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


# --- load generators ------------------------------------------------------------------------------


@dataclass
class Load:
    """One load test's figures; latencies in milliseconds."""

    tool: str
    seconds: float
    requests: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float | None
    errors: int
    error_detail: str = ""
    server_cpu_s: float | None = None
    requests_per_cpu_s: float | None = None
    client_late_p99_ms: float | None = None
    from_send_p99_ms: float | None = None


_WRK_SCRIPT = """
local bodies = {}
for line in io.lines("%(bodies)s") do
  bodies[#bodies + 1] = line .. "\\n"
end
local i = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "text/csv"
request = function()
  i = i %% #bodies + 1
  return wrk.format(nil, nil, nil, bodies[i])
end
"""

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _wrk_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not match:
        raise ValueError(f"cannot read wrk's latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def run_wrk(url: str, bodies_file: Path, script_dir: Path, connections: int, threads: int, duration: float) -> Load:
    script = script_dir / "post.lua"
    script.write_text(_WRK_SCRIPT % {"bodies": str(bodies_file)})
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration:g}s", "--latency", "--timeout", "5s", "-s", str(script), url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=duration + 60)
    if done.returncode != 0:
        raise SystemExit(f"wrk failed: {done.stderr.strip() or done.stdout.strip()}")
    out = done.stdout
    percentiles = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.M))
    total = re.search(r"(\d+) requests in ([\d.]+)(\w+),", out)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    latency_max = re.search(r"^\s+Latency\s+\S+\s+\S+\s+(\S+)", out, re.M)
    if not (percentiles.get("50") and percentiles.get("99") and total and rate):
        raise SystemExit(f"cannot read wrk's output:\n{out}")
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    counts = [int(x) for x in socket_errors.groups()] if socket_errors else [0, 0, 0, 0]
    bad = int(non_2xx.group(1)) if non_2xx else 0
    detail = ", ".join(f"{n} {k}" for k, n in zip(("connect", "read", "write", "timeout"), counts) if n)
    if bad:
        detail = ", ".join(x for x in (detail, f"{bad} non-2xx") if x)
    return Load(
        tool=f"wrk -t{threads} -c{connections}",
        seconds=float(total.group(2)) * _UNITS[total.group(3)] / 1e3,
        requests=int(total.group(1)),
        requests_per_s=float(rate.group(1)),
        p50_ms=_wrk_ms(percentiles["50"]),
        p99_ms=_wrk_ms(percentiles["99"]),
        max_ms=_wrk_ms(latency_max.group(1)) if latency_max else None,
        errors=sum(counts) + bad,
        error_detail=detail,
    )


class _Connections:
    """Up to ``limit`` keep-alive connections, handed out one request at a time."""

    def __init__(self, host: str, port: int, limit: int) -> None:
        self.host, self.port = host, port
        self.slots: asyncio.Queue = asyncio.Queue()
        for _ in range(limit):
            self.slots.put_nowait(None)

    async def call(self, request: bytes, timeout_s: float) -> int:
        """The response status; raises on a connection error or timeout."""
        conn = await self.slots.get()
        keep: Any = None
        try:
            if conn is None:
                conn = await asyncio.open_connection(self.host, self.port)
            reader, writer = conn
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout_s)
            lowered = head.lower()
            match = re.search(rb"content-length:\s*(\d+)", lowered)
            length = int(match.group(1)) if match else 0
            if length:
                await asyncio.wait_for(reader.readexactly(length), timeout_s)
            if b"connection: close" in lowered:
                writer.close()
            else:
                keep = conn
            return int(head[9:12])
        except BaseException:
            if conn is not None:
                conn[1].close()
            raise
        finally:
            self.slots.put_nowait(keep)

    async def close(self) -> None:
        while not self.slots.empty():
            conn = self.slots.get_nowait()
            if conn is not None:
                conn[1].close()


def _request_bytes(url: str, body: bytes) -> bytes:
    path = "/" + url.split("/", 3)[3]
    host = url.split("/")[2]
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: text/csv\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else math.nan


async def _open_loop(url: str, bodies: list[bytes], rate: float, duration: float, connections: int) -> Load:
    host, port = url.split("/")[2].split(":")
    pool = _Connections(host, int(port), connections)
    requests = [_request_bytes(url, body) for body in bodies]
    latencies: list[float] = []
    late: list[float] = []
    errors: dict[str, int] = {}
    total = int(rate * duration)
    loop = asyncio.get_running_loop()

    from_send: list[float] = []

    async def one(i: int, scheduled: float) -> None:
        sent = loop.time()
        late.append((sent - scheduled) * 1e3)
        try:
            status = await pool.call(requests[i % len(requests)], timeout_s=5.0)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as exc:
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            return
        if status != 200:
            errors[f"HTTP {status}"] = errors.get(f"HTTP {status}", 0) + 1
        done = loop.time()
        latencies.append((done - scheduled) * 1e3)
        from_send.append((done - sent) * 1e3)

    tasks = []
    start = loop.time() + 0.05
    for i in range(total):
        scheduled = start + i / rate
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(i, scheduled)))
    await asyncio.gather(*tasks)
    elapsed = loop.time() - start
    await pool.close()
    failed = sum(errors.values())
    return Load(
        tool=f"asyncio open loop at {rate:g}/s",
        seconds=round(elapsed, 3),
        requests=total,
        requests_per_s=round(len(latencies) / elapsed, 1),
        p50_ms=round(_percentile(latencies, 50), 3),
        p99_ms=round(_percentile(latencies, 99), 3),
        max_ms=round(max(latencies), 3) if latencies else None,
        errors=failed,
        error_detail=", ".join(f"{n} {k}" for k, n in errors.items()),
        client_late_p99_ms=round(_percentile(late, 99), 3),
        from_send_p99_ms=round(_percentile(from_send, 99), 3),
    )


async def _closed_loop(url: str, bodies: list[bytes], connections: int, duration: float) -> Load:
    host, port = url.split("/")[2].split(":")
    requests = [_request_bytes(url, body) for body in bodies]
    latencies: list[float] = []
    errors: dict[str, int] = {}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + duration

    async def worker(k: int) -> None:
        pool = _Connections(host, int(port), 1)
        i = k
        while loop.time() < deadline:
            sent = loop.time()
            try:
                status = await pool.call(requests[i % len(requests)], timeout_s=5.0)
                if status != 200:
                    errors[f"HTTP {status}"] = errors.get(f"HTTP {status}", 0) + 1
                else:
                    latencies.append((loop.time() - sent) * 1e3)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            i += connections
        await pool.close()

    start = loop.time()
    await asyncio.gather(*(worker(k) for k in range(connections)))
    elapsed = loop.time() - start
    return Load(
        tool=f"asyncio closed loop, {connections} connections (wrk not found)",
        seconds=round(elapsed, 3),
        requests=len(latencies) + sum(errors.values()),
        requests_per_s=round(len(latencies) / elapsed, 1),
        p50_ms=round(_percentile(latencies, 50), 3),
        p99_ms=round(_percentile(latencies, 99), 3),
        max_ms=round(max(latencies), 3) if latencies else None,
        errors=sum(errors.values()),
        error_detail=", ".join(f"{n} {k}" for k, n in errors.items()),
    )


def closed_loop(server: Server, bodies: list[bytes], bodies_file: Path, workdir: Path, args: argparse.Namespace, duration: float) -> Load:
    before = cpu_seconds(server.pid)
    if shutil.which("wrk"):
        load = run_wrk(server.url, bodies_file, workdir, args.connections, args.threads, duration)
    else:
        load = asyncio.run(_closed_loop(server.url, bodies, args.connections, duration))
    used = cpu_seconds(server.pid) - before
    load.server_cpu_s = round(used, 2)
    load.requests_per_cpu_s = round(load.requests / used, 1) if used > 0 else None
    return load


def open_loop(server: Server, bodies: list[bytes], args: argparse.Namespace) -> Load:
    before = cpu_seconds(server.pid)
    load = asyncio.run(_open_loop(server.url, bodies, args.rate, args.rate_duration, args.rate_connections))
    load.server_cpu_s = round(cpu_seconds(server.pid) - before, 2)
    return load


# --- the run ---------------------------------------------------------------------------------------


def _machine() -> dict[str, Any]:
    model = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as handle:
        model = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), model)
    return {"cores": os.cpu_count(), "cpu": model, "python": platform.python_version()}


def _load_average() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min)"


def check_same_predictions(servers: list[Server], bodies: list[bytes]) -> int:
    """Both servers answer the same rows identically (one request of 200 rows, then single rows)."""
    import requests

    batch = b"".join(bodies[:200])
    answers = [requests.post(s.url, data=batch, headers={"Content-Type": "text/csv"}, timeout=30).json()["predictions"] for s in servers]
    if answers[0] != answers[1]:
        raise SystemExit("the two servers disagree on the same rows: the comparison would be meaningless")
    for body, expected in zip(bodies[:20], answers[0]):
        for server in servers:
            got = requests.post(server.url, data=body, headers={"Content-Type": "text/csv"}, timeout=10).json()["predictions"]
            if got != [expected]:
                raise SystemExit(f"{server.name} answers a single row differently from the batch: {got} != {[expected]}")
    return len(answers[0])


def _row(label: str, values: list[str]) -> str:
    return f"  {label:<22}" + "".join(f"{v:>24}" for v in values)


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:,.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of each closed-loop run (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of load before each timed run (default 2)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (default 16)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1: the servers need the other core)")
    parser.add_argument("--repeat", type=int, default=3, help="closed-loop runs per server, alternating; medians are reported (default 3)")
    parser.add_argument("--rate", type=float, default=500.0, help="requests/s of the open-loop run (default 500)")
    parser.add_argument("--rate-duration", type=float, default=20.0, help="seconds of the open-loop run (default 20)")
    parser.add_argument("--rate-repeat", type=int, default=3, help="open-loop runs of updraft; the median p99 is reported (default 3)")
    parser.add_argument("--rate-connections", type=int, default=64, help="keep-alive connections the open loop may open (default 64)")
    parser.add_argument("--workers", type=int, default=None,
                        help="server processes of both servers (default: what the local endpoint runs, SAGEMAKER_MODEL_SERVER_WORKERS or 1)")
    parser.add_argument("--trees", type=int, default=100)
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--reference-worker", choices=("sync", "gthread"), default="sync",
                        help="gunicorn worker class of the reference: sync (its default; closes each connection) or "
                             "gthread with one thread (keeps connections alive)")
    parser.add_argument("--skip-reference", action="store_true", help="only the local endpoint")
    parser.add_argument("--json", action="store_true", help="end with one JSON object of every figure")
    args = parser.parse_args(argv)

    from images.inference.serve import WORKERS_ENV, worker_count

    if args.workers is not None:
        os.environ[WORKERS_ENV] = str(args.workers)
    workers = worker_count()
    report: dict[str, Any] = {"machine": _machine(), "workers": workers, "reference_worker": args.reference_worker, "model": {"trees": args.trees, "depth": args.depth,
                              "inputs": f"{NUMERIC} numeric, 2 categorical"}, "closed_loop": {}, "open_loop": {}}
    print(f"machine: {report['machine']['cores']} cores, {report['machine']['cpu']}, Python {report['machine']['python']}")
    with tempfile.TemporaryDirectory(prefix="updraft-bench-serve-") as tmp:
        workdir = Path(tmp)
        model_dir = build_model(workdir / "model", args.trees, args.depth)
        model_tar = workdir / "model.tar.gz"
        import tarfile

        with tarfile.open(model_tar, "w:gz") as archive:
            for path in sorted(model_dir.iterdir()):
                archive.add(path, arcname=path.name)
        bodies = csv_lines(1000, seed=42)
        bodies_file = workdir / "rows.csv"
        bodies_file.write_bytes(b"".join(bodies))
        print(f"model: XGBoost, {args.trees} trees of depth {args.depth}, {NUMERIC} numeric + 2 categorical inputs; "
              f"{workers} worker process(es) per server, one XGBoost thread each")
        with contextlib.ExitStack() as stack:
            servers = [stack.enter_context(updraft_server(model_tar, workdir / "home"))]
            if not args.skip_reference:
                servers.append(stack.enter_context(reference_server(model_dir, workers, workdir / "gunicorn.log", args.reference_worker)))
            for server in servers:
                print(f"  {server.name:<10} {server.description} at {server.url}")
            if len(servers) == 2:
                rows = check_same_predictions(servers, bodies)
                print(f"  both answer the same {rows} rows with the same predictions")

            tool = f"wrk -t{args.threads} -c{args.connections}" if shutil.which("wrk") else "the asyncio closed loop (no wrk on PATH)"
            print(f"\n1. closed loop: {tool}, single-row CSV, {args.duration:g} s per run, {args.repeat} run(s) each, alternating")
            runs: dict[str, list[Load]] = {s.name: [] for s in servers}
            for round_ in range(args.repeat):
                for server in servers:
                    closed_loop(server, bodies, bodies_file, workdir, args, args.warmup)
                    print(f"   run {round_ + 1} {server.name:<10} ({_load_average()})", end="", flush=True)
                    load = closed_loop(server, bodies, bodies_file, workdir, args, args.duration)
                    runs[server.name].append(load)
                    print(f": {load.requests_per_s:,.0f} req/s, p50 {load.p50_ms:.2f} ms, p99 {load.p99_ms:.2f} ms, "
                          f"{load.errors} errors, {_fmt(load.requests_per_cpu_s, 0)} req per server CPU s")
            medians = {}
            for name, loads in runs.items():
                medians[name] = {
                    "requests_per_s": statistics.median(l.requests_per_s for l in loads),
                    "p50_ms": statistics.median(l.p50_ms for l in loads),
                    "p99_ms": statistics.median(l.p99_ms for l in loads),
                    "errors": sum(l.errors for l in loads),
                    "requests_per_cpu_s": statistics.median(l.requests_per_cpu_s or 0.0 for l in loads),
                }
                report["closed_loop"][name] = {"median": medians[name], "runs": [asdict(l) for l in loads]}
            names = list(medians)
            print("\n" + _row("median of runs", names))
            print(_row("requests/s", [_fmt(medians[n]["requests_per_s"], 0) for n in names]))
            print(_row("p50 latency (ms)", [_fmt(medians[n]["p50_ms"]) for n in names]))
            print(_row("p99 latency (ms)", [_fmt(medians[n]["p99_ms"]) for n in names]))
            print(_row("errors (all runs)", [str(medians[n]["errors"]) for n in names]))
            print(_row("req per server CPU s", [_fmt(medians[n]["requests_per_cpu_s"], 0) for n in names]))
            if "reference" in medians:
                ratio = medians["updraft"]["requests_per_s"] / medians["reference"]["requests_per_s"]
                cpu_ratio = medians["updraft"]["requests_per_cpu_s"] / max(medians["reference"]["requests_per_cpu_s"], 1e-9)
                p99_ok = medians["updraft"]["p99_ms"] <= medians["reference"]["p99_ms"]
                report["closed_loop"]["ratio"] = round(ratio, 2)
                report["closed_loop"]["ratio_per_cpu_s"] = round(cpu_ratio, 2)
                report["closed_loop"]["p99_not_worse"] = p99_ok
                print(f"\n  updraft / reference: {ratio:.2f}x requests/s (goal >= 3), {cpu_ratio:.2f}x per server CPU second; "
                      f"p99 {'not worse' if p99_ok else 'WORSE'} than the reference's")

            print(f"\n2. open loop: {args.rate:g} requests/s for {args.rate_duration:g} s, {args.rate_repeat} run(s) of "
                  "updraft and one of the reference (asyncio generator of this script; latency from each "
                  "request's scheduled time)")
            for server in servers:
                loads = []
                for _ in range(args.rate_repeat if server.name == "updraft" else 1):
                    print(f"   {server.name:<10} ({_load_average()})", end="", flush=True)
                    load = open_loop(server, bodies, args)
                    loads.append(load)
                    print(f": p50 {load.p50_ms:.2f} ms, p99 {load.p99_ms:.2f} ms, max {_fmt(load.max_ms)} ms, "
                          f"{load.errors} errors{' (' + load.error_detail + ')' if load.error_detail else ''}, "
                          f"{load.requests_per_s:,.0f} answered/s")
                    busy = (load.client_late_p99_ms or 0) > 2
                    print(f"     (p99 {load.from_send_p99_ms:.2f} ms counted from the actual send; the generator itself "
                          f"sent {load.client_late_p99_ms:.2f} ms late at p99{': the machine was busy' if busy else ''})")
                report["open_loop"][server.name] = {
                    "median_p99_ms": statistics.median(l.p99_ms for l in loads),
                    "errors": sum(l.errors for l in loads),
                    "runs": [asdict(l) for l in loads],
                }
            ours = report["open_loop"]["updraft"]
            met = ours["median_p99_ms"] < 10.0 and ours["errors"] == 0
            report["open_loop"]["goal_met"] = met
            p99s = ", ".join(f"{l['p99_ms']:.2f}" for l in ours["runs"])
            print(f"\n  updraft at {args.rate:g}/s: median p99 {ours['median_p99_ms']:.2f} ms (runs: {p99s}) with "
                  f"{ours['errors']} errors (goal: p99 < 10 ms, 0 errors): {'met' if met else 'NOT met'}")
    if args.json:
        print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
