"""Multi-instance XGBoost: the job's hosts train one model together through XGBoost's collective.

SageMaker lists the job's instances in ``resourceconfig.json`` (``SM_HOSTS``); they reach
each other by name (algo-1, algo-2...). hosts[0] runs XGBoost's tracker on a fixed port
(``UPDRAFT_TRACKER_PORT``, default 9099), which every host knows without being told, and
every host, hosts[0] included, joins it as a worker. Ranks follow the hosts' order. Each
host reads its shard of a channel: all of its files when SageMaker already sharded it
(``S3DistributionType: ShardedByS3Key``), else files i with i % N == rank, or, when the
channel has fewer files than hosts, rows i with i % N == rank. Ranking shards by query
instead (each host reads every file and keeps queries i with i % N == rank): a query's rows
may lie in several files, and LambdaMART learns from pairs within a query. A local
run of several processes gives the hosts' addresses in ``UPDRAFT_HOST_ADDRESSES`` (JSON
host -> IP) instead of DNS.
"""

from __future__ import annotations

import json
import math
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from tasks.errors import ConfigError, UpdraftError
from tasks.training import container

#: How often a host retries resolving another host's name before giving up (SageMaker's DNS
#: entries appear while the instances start).
RESOLVE_PAUSE_S = 1.0


@dataclass(frozen=True)
class Cluster:
    """The job's hosts and which one this is."""

    hosts: tuple[str, ...]
    current_host: str

    @property
    def size(self) -> int:
        return len(self.hosts)

    @property
    def rank(self) -> int:
        return self.hosts.index(self.current_host)

    @property
    def is_master(self) -> bool:
        """hosts[0]: it runs the tracker and is the one host that writes the model and the checkpoints."""
        return self.rank == 0


def read_cluster() -> Cluster:
    """The job's hosts (``SM_HOSTS`` / ``resourceconfig.json``) and this one (``SM_CURRENT_HOST`` / the same file)."""
    current = container.read_current_host()
    hosts = tuple(container.read_hosts()) or (current,)
    if len(set(hosts)) != len(hosts):
        raise ConfigError(f"{container.RESOURCE_CONFIG_FILE} lists a host twice: {list(hosts)}")
    if current not in hosts:
        raise ConfigError(
            f"this host ({current}) is not among the job's hosts {list(hosts)}: check {container.SM_CURRENT_HOST} "
            f"or current_host in {container.RESOURCE_CONFIG_FILE}"
        )
    return Cluster(hosts=hosts, current_host=current)


def _positive_int(env: Mapping[str, str], name: str, default: int, maximum: int | None = None) -> int:
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < 1 or (maximum is not None and int(raw) > maximum):
        limit = f" and <= {maximum}" if maximum is not None else ""
        raise ConfigError(f"{name} must be an integer >= 1{limit}, got {raw!r}")
    return int(raw)


def tracker_port(env: Mapping[str, str]) -> int:
    return _positive_int(env, container.UPDRAFT_TRACKER_PORT, container.DEFAULT_TRACKER_PORT, 65535)


def tracker_timeout(env: Mapping[str, str]) -> int:
    return _positive_int(env, container.UPDRAFT_TRACKER_TIMEOUT, container.DEFAULT_TRACKER_TIMEOUT_S)


def host_address(
    host: str,
    env: Mapping[str, str],
    *,
    timeout_s: float,
    resolve: Callable[[str], str] = socket.gethostbyname,
) -> str:
    """The IP address of ``host``: from ``UPDRAFT_HOST_ADDRESSES`` when it names it, else by DNS (retried)."""
    raw = env.get(container.UPDRAFT_HOST_ADDRESSES)
    if raw:
        try:
            addresses = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"{container.UPDRAFT_HOST_ADDRESSES} is not JSON ({exc}); give a map host -> IP"
            ) from None
        if not isinstance(addresses, dict):
            raise ConfigError(f"{container.UPDRAFT_HOST_ADDRESSES} must map host names to IP addresses")
        if host in addresses:
            return str(addresses[host])
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return resolve(host)
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise ConfigError(
                    f"cannot resolve host {host!r} ({exc}); on a local run give its address in "
                    f"{container.UPDRAFT_HOST_ADDRESSES}"
                ) from None
            time.sleep(RESOLVE_PAUSE_S)


def channel_distribution(channel: str, input_config: Mapping[str, Any]) -> str:
    """The channel's ``S3DistributionType`` (FullyReplicated when inputdataconfig.json says nothing)."""
    entry = input_config.get(channel) or {}
    value = entry.get("S3DistributionType") if isinstance(entry, Mapping) else None
    return str(value or container.FULLY_REPLICATED)


def shard_files(
    files: Sequence[Path], cluster: Cluster, distribution: str, *, whole_queries: bool = False
) -> tuple[list[Path], tuple[int, int] | None]:
    """``(files to read, row shard)`` for this host: see the module's docstring for the rule.

    ``whole_queries`` (ranking) shards rows by query so that no query is split between hosts.
    """
    if cluster.size == 1 or distribution == container.SHARDED_BY_S3_KEY:
        return list(files), None
    if len(files) >= cluster.size and not whole_queries:
        return [f for i, f in enumerate(files) if i % cluster.size == cluster.rank], None
    return list(files), (cluster.rank, cluster.size)


class Collective:
    """What the training loop asks of the other hosts; on one host every answer is its own."""

    def __init__(self, size: int = 1) -> None:
        self.size = size

    def mean(self, values: np.ndarray) -> np.ndarray:
        """The hosts' average of ``values`` (identical everywhere afterwards)."""
        if self.size == 1:
            return values
        from xgboost import collective as coll

        return coll.allreduce(np.asarray(values, dtype=np.float64), coll.Op.SUM) / self.size

    def any(self, flag: bool) -> bool:
        """True on every host when it is true on one (a SIGTERM on one host stops them all at the same round)."""
        if self.size == 1:
            return flag
        from xgboost import collective as coll

        return bool(coll.allreduce(np.array([1 if flag else 0], dtype=np.int32), coll.Op.MAX)[0])

    def share(self, data: bytes | None) -> bytes | None:
        """hosts[0]'s ``data`` on every host (None when hosts[0] has none); others pass anything.

        Raw bytes through two allreduces, not ``collective.broadcast``, which pickles: nothing
        a host receives is ever executed.
        """
        if self.size == 1:
            return data
        from xgboost import collective as coll

        mine = (data if data is not None else b"") if coll.get_rank() == 0 else b""
        flag = 1 if (coll.get_rank() == 0 and data is not None) else 0
        header = coll.allreduce(np.array([flag, len(mine)], dtype=np.int64), coll.Op.MAX)
        if header[0] == 0:
            return None
        buffer = np.zeros(int(header[1]), dtype=np.uint8)
        buffer[: len(mine)] = np.frombuffer(mine, dtype=np.uint8)
        if buffer.size == 0:
            return b""
        return coll.allreduce(buffer, coll.Op.SUM).astype(np.uint8).tobytes()


@contextmanager
def join_cluster(cluster: Cluster, env: Mapping[str, str]) -> Iterator[Collective]:
    """Start the tracker on hosts[0] and join the collective as this host's rank; a no-op on one host."""
    if cluster.size == 1:
        yield Collective(1)
        return
    from xgboost import collective as coll
    from xgboost.core import XGBoostError
    from xgboost.tracker import RabitTracker

    timeout = tracker_timeout(env)
    port = tracker_port(env)
    master = host_address(cluster.hosts[0], env, timeout_s=timeout)
    tracker = None
    if cluster.is_master:
        try:
            tracker = RabitTracker(n_workers=cluster.size, host_ip=master, port=port, sortby="task", timeout=timeout)
            tracker.start()
        except XGBoostError as exc:
            raise ConfigError(
                f"cannot start XGBoost's tracker on {master}:{port} ({_first_line(exc)}); "
                f"set {container.UPDRAFT_TRACKER_PORT} to a free port"
            ) from None
    args = {
        "dmlc_tracker_uri": master,
        "dmlc_tracker_port": port,
        # Zero-padded so that sorting by task gives rank = index in hosts.
        "dmlc_task_id": f"{cluster.rank:06d}",
        # XGBoost waits 2, 4, 6... s between attempts: about `timeout` seconds in all.
        "dmlc_retry": max(3, math.ceil(math.sqrt(timeout))),
        "dmlc_timeout": timeout,
    }
    print(
        f"host {cluster.current_host} (rank {cluster.rank} of {cluster.size}): joining the tracker at {master}:{port}",
        flush=True,
    )
    failed = False
    try:
        with coll.CommunicatorContext(**args):
            if coll.get_rank() != cluster.rank or coll.get_world_size() != cluster.size:
                raise ConfigError(
                    f"XGBoost's tracker gave host {cluster.current_host} rank {coll.get_rank()} of "
                    f"{coll.get_world_size()}, expected {cluster.rank} of {cluster.size}"
                )
            try:
                yield Collective(cluster.size)
            except BaseException:
                failed = True
                raise
    except XGBoostError as exc:
        raise UpdraftError(f"training across {cluster.size} hosts failed: {_first_line(exc)}") from None
    finally:
        if tracker is not None and not failed:
            tracker.wait_for()
        if tracker is not None:
            tracker.free()


def _first_line(exc: BaseException) -> str:
    text = str(exc).split("Stack trace:")[0]
    return " ".join(text.split())[:400]
