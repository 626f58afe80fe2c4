"""Multi-instance XGBoost: two entry-point processes on 127.0.0.1 train one model, as two SageMaker hosts would."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

from images.training import distributed
from images.training.channels import read_channel
from images.training.distributed import (
    Cluster,
    Collective,
    channel_distribution,
    host_address,
    read_cluster,
    shard_files,
)
from tasks.errors import ConfigError
from tasks.training import container
from tests.unit.test_train_entrypoint import REPO, layout_opt_ml, write_feature_splits

HOSTS = ["algo-1", "algo-2"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _host_env(base: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SM_") and not k.startswith("UPDRAFT_")}
    env.update({
        container.BASE_DIR_ENV: str(base),
        container.UPDRAFT_HOST_ADDRESSES: json.dumps({h: "127.0.0.1" for h in HOSTS}),
        container.UPDRAFT_TRACKER_PORT: str(port),
        container.UPDRAFT_TRACKER_TIMEOUT: "60",
        container.OMP_NUM_THREADS: "1",
        container.SM_NUM_GPUS: "0",
    })
    return env


def _layout_host(root: Path, host: str, features: Path, hyperparameters: dict, distribution: str) -> Path:
    base = root / host / "opt_ml"
    layout_opt_ml(base, features, hyperparameters)
    config = base / "input" / "config"
    (config / "resourceconfig.json").write_text(
        json.dumps({"current_host": host, "hosts": HOSTS, "network_interface_name": "lo"})
    )
    (config / "inputdataconfig.json").write_text(json.dumps({
        name: {"TrainingInputMode": "File", "S3DistributionType": distribution}
        for name in ("train", "validation", "transform")
    }))
    return base


def _run_hosts(tmp_path: Path, features: Path, hyperparameters: dict, distribution: str = "FullyReplicated"):
    port = _free_port()
    bases = {h: tmp_path / h / "opt_ml" for h in HOSTS}
    for host, base in bases.items():
        if not base.exists():  # a second run reuses the folders, as a restarted job does
            _layout_host(tmp_path, host, features, hyperparameters, distribution)
    procs = {
        h: subprocess.Popen(
            [sys.executable, "-m", "images.training.train", "train"],
            cwd=REPO, env=_host_env(bases[h], port), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for h in reversed(HOSTS)  # the worker first: it must wait for the tracker
    }
    outputs = {}
    try:
        for host, proc in procs.items():
            out, err = proc.communicate(timeout=180)
            outputs[host] = (proc.returncode, out, err)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return bases, outputs


def _rounds(out: str) -> list[str]:
    return [line for line in out.splitlines() if re.match(r"^\[\d+\]\t", line)]


def test_two_hosts_train_one_model_on_their_shards(tmp_path):
    features = tmp_path / "features"
    write_feature_splits(features, n_train=800, n_valid=300)  # two files per split: one per host
    bases, outputs = _run_hosts(tmp_path, features, {"num_round": "12", "max_depth": "3", "eta": "0.3",
                                                     "early_stopping_rounds": "4"})

    for host, (code, out, err) in outputs.items():
        assert code == 0, f"{host}: {out}\n{err}"
        # Each host read half of each split (file i goes to host i % 2).
        assert "rows train=400 validation=150" in out, out
        assert f"host={host} rank={HOSTS.index(host)} of 2" in out
    master_out, worker_out = outputs["algo-1"][1], outputs["algo-2"][1]
    # Metrics are the cluster's: every host prints the same values each round.
    assert _rounds(master_out) and _rounds(master_out) == _rounds(worker_out)
    assert "validation:auc=" in _rounds(master_out)[0]

    model = bases["algo-1"] / "model"
    assert sorted(p.name for p in model.iterdir()) == ["metadata.json", "transform.json", "xgboost-model.json"]
    assert not (bases["algo-2"] / "model").exists() or not any((bases["algo-2"] / "model").iterdir())
    assert not (bases["algo-2"] / "checkpoints").exists() or not any((bases["algo-2"] / "checkpoints").iterdir())
    metadata = json.loads((model / "metadata.json").read_text())
    assert metadata["hosts"] == 2
    assert metadata["rows"] == {"train": 800, "validation": 300}  # the cluster's totals
    final = dict(p for p in map(container.parse_metric_line, master_out.splitlines()) if p)
    assert final == pytest.approx(metadata["metrics"])
    assert "validation:auc=" not in "".join(l for l in worker_out.splitlines() if container.parse_metric_line(l))

    # The model is a real one: it predicts the whole validation split well.
    valid = pd.read_parquet(features / "validation")
    booster = xgb.Booster(model_file=str(model / "xgboost-model.json"))
    scores = booster.inplace_predict(valid[metadata["feature_names"]].to_numpy(np.float32))
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(valid["_label"], scores) > 0.8


def test_sharded_by_s3_key_channels_are_read_whole_on_each_host(tmp_path):
    """SageMaker already gave each host its files: the entry point keeps them all."""
    features = tmp_path / "features"
    write_feature_splits(features, n_train=400, n_valid=120)
    _, outputs = _run_hosts(tmp_path, features, {"num_round": "3", "max_depth": "2"}, distribution="ShardedByS3Key")

    for host, (code, out, err) in outputs.items():
        assert code == 0, f"{host}: {out}\n{err}"
        assert "rows train=400 validation=120" in out


def test_a_restarted_cluster_resumes_on_every_host_from_the_first_hosts_checkpoint(tmp_path):
    """Only hosts[0] writes checkpoints; on a restart it hands its checkpoint to the others."""
    features = tmp_path / "features"
    write_feature_splits(features, n_train=400, n_valid=120)
    hps = {"num_round": "12", "max_depth": "3", "subsample": "0.8", "early_stopping_rounds": "0",
           "checkpoint_interval": "5"}
    bases, first = _run_hosts(tmp_path, features, hps)
    assert all(code == 0 for code, _, _ in first.values()), first
    model = (bases["algo-1"] / "model" / "xgboost-model.json").read_bytes()
    assert not (bases["algo-2"] / "checkpoints").exists() or not any((bases["algo-2"] / "checkpoints").iterdir())

    _, second = _run_hosts(tmp_path, features, hps)  # the same folders: a restarted job

    for host, (code, out, err) in second.items():
        assert code == 0, f"{host}: {out}\n{err}"
        assert "resuming from checkpoint at round 10" in out
        assert [line.split("\t")[0] for line in _rounds(out)] == ["[10]", "[11]"]
    assert (bases["algo-1"] / "model" / "xgboost-model.json").read_bytes() == model


# --- the pieces, without processes ------------------------------------------------------


def test_files_are_dealt_round_robin_and_rows_when_files_are_too_few():
    files = [Path(f"part.{i}.parquet") for i in range(5)]
    first, second = Cluster(tuple(HOSTS), "algo-1"), Cluster(tuple(HOSTS), "algo-2")
    assert shard_files(files, first, "FullyReplicated") == ([files[0], files[2], files[4]], None)
    assert shard_files(files, second, "FullyReplicated") == ([files[1], files[3]], None)
    assert shard_files(files, second, "ShardedByS3Key") == (files, None)
    assert shard_files(files[:1], second, "FullyReplicated") == (files[:1], (1, 2))
    assert shard_files(files, Cluster(("algo-1",), "algo-1"), "FullyReplicated") == (files, None)
    # Ranking keeps each query on one host, wherever its rows lie.
    assert shard_files(files, second, "FullyReplicated", whole_queries=True) == (files, (1, 2))
    assert shard_files(files, second, "ShardedByS3Key", whole_queries=True) == (files, None)


def test_row_shards_keep_each_query_on_one_host(tmp_path):
    path = tmp_path / "part.0.parquet"
    groups = np.array([7, 7, -3, 9, -3, 7, 12, 9], dtype=np.int64)
    pd.DataFrame({"x": np.arange(8, dtype=np.float32), "_label": [1.0, 0, 2, 0, 1, 0, 3, 1], "_group": groups}).to_parquet(path)

    shards = [read_channel("train", ["x"], [path], task="ranking", row_shard=(rank, 2)) for rank in (0, 1)]

    seen = [set(groups[s.X[:, 0].astype(int)]) for s in shards]
    assert seen[0].isdisjoint(seen[1]) and seen[0] | seen[1] == {7, -3, 9, 12}
    assert sum(s.rows for s in shards) == 8


def test_the_channel_distribution_defaults_to_fully_replicated():
    assert channel_distribution("train", {}) == "FullyReplicated"
    assert channel_distribution("train", {"train": {"S3DistributionType": "ShardedByS3Key"}}) == "ShardedByS3Key"


def test_the_cluster_comes_from_resourceconfig_or_sm_variables(tmp_path, monkeypatch):
    for name in ("SM_HOSTS", "SM_CURRENT_HOST"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(container.BASE_DIR_ENV, str(tmp_path))
    config = tmp_path / "input" / "config"
    config.mkdir(parents=True)
    assert read_cluster() == Cluster(("algo-1",), "algo-1")  # nothing said: one host
    (config / "resourceconfig.json").write_text(json.dumps({"current_host": "algo-2", "hosts": HOSTS}))
    cluster = read_cluster()
    assert (cluster.rank, cluster.size, cluster.is_master) == (1, 2, False)
    monkeypatch.setenv("SM_CURRENT_HOST", "algo-9")
    with pytest.raises(ConfigError, match="algo-9.*not among"):
        read_cluster()


def test_addresses_come_from_the_override_or_dns():
    env = {container.UPDRAFT_HOST_ADDRESSES: json.dumps({"algo-1": "10.0.0.5"})}
    assert host_address("algo-1", env, timeout_s=1) == "10.0.0.5"
    assert host_address("algo-2", env, timeout_s=1, resolve=lambda h: "10.0.0.6") == "10.0.0.6"

    def unknown(host: str) -> str:
        raise socket.gaierror("Name or service not known")

    with pytest.raises(ConfigError, match="cannot resolve host 'algo-3'.*UPDRAFT_HOST_ADDRESSES"):
        host_address("algo-3", {}, timeout_s=0, resolve=unknown)
    with pytest.raises(ConfigError, match="not JSON"):
        host_address("algo-1", {container.UPDRAFT_HOST_ADDRESSES: "algo-1=1.2.3.4"}, timeout_s=0)


def test_the_tracker_port_is_fixed_unless_overridden():
    assert distributed.tracker_port({}) == 9099
    assert distributed.tracker_port({container.UPDRAFT_TRACKER_PORT: "9200"}) == 9200
    with pytest.raises(ConfigError, match="UPDRAFT_TRACKER_PORT"):
        distributed.tracker_port({container.UPDRAFT_TRACKER_PORT: "99999"})


def test_on_one_host_the_collective_answers_itself():
    solo = Collective(1)
    assert solo.share(b"abc") == b"abc" and solo.share(None) is None
    assert solo.any(True) and not solo.any(False)
    assert solo.mean(np.array([1.0, 2.0])).tolist() == [1.0, 2.0]
