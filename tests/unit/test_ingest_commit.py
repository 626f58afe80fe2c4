"""A run killed at any point leaves no half-visible data: the next run completes or redoes
its work, and every row lands in curated exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import tasks.ingest.commit as commit_module
from tasks.ingest import load_manifest
from tests.unit.test_ingest import (
    FS,
    assert_conserved,
    claims,
    curated,
    ingest,
    quarantined,
)
from tests.unit.test_ingest_policies import UNIQUE

ROOT = Path(__file__).resolve().parents[2]
#: Three files of 400 rows (two bad each), read in several blocks.
N_FILES, N_ROWS = 3, 400


@pytest.fixture()
def raw(tmp_path: Path) -> Path:
    path = tmp_path / "raw"
    path.mkdir()
    for i in range(N_FILES):
        claims(N_ROWS, {7: ("amount", "-1"), 300: ("channel", "fax")}, start=i * N_ROWS).to_csv(path / f"f{i}.csv", index=False)
    return path


def _expected_ids() -> list[str]:
    return sorted(f"c{i:05d}" for i in range(N_FILES * N_ROWS) if i % N_ROWS not in (7, 300))


def _staged(tmp_path: Path) -> list[Path]:
    return sorted(p for p in (tmp_path / "curated.staging").rglob("*") if p.is_file())


def _run_and_kill(tmp_path: Path, raw: Path, patch: str, *, unique: bool = False) -> None:
    """Ingest in a child process that ``patch`` kills with SIGKILL part-way (with the
    contract's ``claim_id`` unique if ``unique``)."""
    script = textwrap.dedent(
        """
        import os, signal, sys
        from pathlib import Path
        from tests.unit.test_ingest import SCHEMA, ingest
        from tests.unit.test_ingest_policies import UNIQUE

        def die():
            os.kill(os.getpid(), signal.SIGKILL)

        {patch}
        ingest(Path(sys.argv[1]), Path(sys.argv[2]), "run-killed", blocksize=4_000, schema={schema})
        """
    ).format(patch=textwrap.indent(textwrap.dedent(patch), "").strip(), schema="UNIQUE" if unique else "SCHEMA")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path), str(raw)], cwd=ROOT, capture_output=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-3000:]


def test_a_run_killed_while_staging_leaves_curated_untouched_and_is_redone(
    tmp_path: Path, raw: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # killed after the first file's blocks are written, before anything is committed
    _run_and_kill(
        tmp_path,
        raw,
        """
        import tasks.ingest.writer as writer
        written, put = [], writer.put_parquet
        def put_then_die(fs, uri, frame):
            size = put(fs, uri, frame)
            written.append(uri)
            if len({u.split("/curated.staging/")[1].split("/")[1] for u in written}) > 1:
                die()
            return size
        writer.put_parquet = put_then_die
        """,
    )
    assert _staged(tmp_path) and not (tmp_path / "curated").exists()
    assert not (tmp_path / "curated.manifest.json").exists()

    monkeypatch.setattr(commit_module, "STALE_AFTER_S", 0.0)  # the dead run's staging may go now
    result = ingest(tmp_path, raw, "run-2", blocksize=4_000)
    assert (result.files, result.rows_in, result.rows_quarantined) == (N_FILES, N_FILES * N_ROWS, 2 * N_FILES)
    assert sorted(curated(tmp_path)["claim_id"]) == _expected_ids()
    assert _staged(tmp_path) == []


def test_a_recent_unfinished_run_is_left_alone_and_does_not_count(tmp_path: Path, raw: Path) -> None:
    _run_and_kill(
        tmp_path,
        raw,
        """
        import tasks.ingest.writer as writer
        put = writer.put_parquet
        def put_then_die(fs, uri, frame):
            put(fs, uri, frame)
            die()
        writer.put_parquet = put_then_die
        """,
    )
    result = ingest(tmp_path, raw, "run-2")  # another ingest may still be running: its files stay
    assert result.rows_curated == N_FILES * (N_ROWS - 2)
    assert sorted(curated(tmp_path)["claim_id"]) == _expected_ids()
    assert _staged(tmp_path) and all("run-killed" in str(p) for p in _staged(tmp_path))


def test_a_run_killed_while_moving_files_is_completed_by_the_next(tmp_path: Path, raw: Path) -> None:
    claims(N_ROWS, start=9000).to_csv(raw / "f0.csv", index=False)  # f0 changes after a first ingest
    ingest(tmp_path, raw, "run-1")
    claims(N_ROWS, {7: ("amount", "-1"), 300: ("channel", "fax")}, start=0).to_csv(raw / "f0.csv", index=False)
    (raw / "f1.csv").unlink()
    (raw / "f2.csv").unlink()
    for i in (1, 2):
        claims(N_ROWS, {7: ("amount", "-1"), 300: ("channel", "fax")}, start=i * N_ROWS).to_csv(raw / f"f{i}.csv", index=False)
    _run_and_kill(
        tmp_path,
        raw,
        """
        from fsspec.implementations.local import LocalFileSystem
        copies, copy = [], LocalFileSystem.cp_file
        def copy_then_die(self, path1, path2, **kwargs):
            copy(self, path1, path2, **kwargs)
            copies.append(path2)
            if len(copies) == 2:
                die()
        LocalFileSystem.cp_file = copy_then_die
        """,
    )
    assert (tmp_path / "curated.staging" / "run-killed" / "_commit.json").is_file()

    result = ingest(tmp_path, raw, "run-2")

    assert (result.files, result.files_skipped) == (0, N_FILES)  # the killed run's commit was finished
    assert sorted(curated(tmp_path)["claim_id"]) == _expected_ids()
    assert len(quarantined(tmp_path, "run-killed")) == 2 * N_FILES
    entries = load_manifest(FS, str(tmp_path / "curated.manifest.json")).entries
    assert {e.run_id for e in entries.values()} == {"run-killed"}
    assert _staged(tmp_path) == []


def _repeat_ids(raw: Path) -> list[str]:
    """A fourth file repeating two ids of the others: with ``claim_id`` unique, four rows go."""
    claims(2, start=5).assign(claim_id=["c00005", "c00410"]).to_csv(raw / "repeats.csv", index=False)
    return ["c00005", "c00410"]


def test_a_run_with_unique_columns_killed_while_moving_files_commits_no_keys_files(tmp_path: Path, raw: Path) -> None:
    repeated = _repeat_ids(raw)
    _run_and_kill(
        tmp_path,
        raw,
        """
        from fsspec.implementations.local import LocalFileSystem
        copies, copy = [], LocalFileSystem.cp_file
        def copy_then_die(self, path1, path2, **kwargs):
            copy(self, path1, path2, **kwargs)
            copies.append(path2)
            if len(copies) == 2:
                die()
        LocalFileSystem.cp_file = copy_then_die
        """,
        unique=True,
    )
    assert any("/work/keys/" in str(p) for p in _staged(tmp_path))  # staged, not committed

    result = ingest(tmp_path, raw, "run-2", schema=UNIQUE)

    assert result.files == 0  # the killed run's commit was finished
    committed = [p for p in (tmp_path / "curated").rglob("*") if p.is_file()]
    committed += [p for p in (tmp_path / "quarantine").rglob("*") if p.is_file()]
    assert committed and all(p.suffix == ".parquet" and "work" not in p.parts for p in committed)
    frame = curated(tmp_path)
    assert "_row" not in frame.columns
    assert sorted(frame["claim_id"]) == [i for i in _expected_ids() if i not in repeated]
    rows = quarantined(tmp_path, "run-killed")
    assert len(rows) == 2 * N_FILES + 4 and sorted(rows["claim_id"][rows["_reason"].str.contains("field_uniqueness")]) == sorted(repeated * 2)
    assert _staged(tmp_path) == []


@pytest.mark.parametrize("dies", ["before its swap", "after its swap"])
def test_a_finishing_task_run_again_after_dying_writes_and_counts_each_row_once(
    tmp_path: Path, raw: Path, monkeypatch: pytest.MonkeyPatch, dies: str
) -> None:
    """Dask reruns the task of a worker that died; the group's file replaces its first piece."""
    from fsspec.implementations.local import LocalFileSystem

    import tasks.ingest as ingest_module

    repeated = _repeat_ids(raw)
    finish, move = ingest_module.finish_group, LocalFileSystem.mv
    died: set[str] = set()

    def mv_dies_once(self, path1, path2, **kwargs):  # type: ignore[no-untyped-def]
        if dies == "before its swap" and str(path1).endswith(".merging") and path2 not in died:
            died.add(path2)
            raise ConnectionResetError("the worker died")
        return move(self, path1, path2, **kwargs)

    def dying_then_rerun(group, job, duplicates):  # type: ignore[no-untyped-def]
        try:
            finish(group, job, duplicates)  # when it returns, its result is lost with the worker
        except ConnectionResetError:
            pass
        return finish(group, job, duplicates)

    monkeypatch.setattr(LocalFileSystem, "mv", mv_dies_once)
    monkeypatch.setattr(ingest_module, "finish_group", dying_then_rerun)
    result = ingest(tmp_path, raw, schema=UNIQUE, blocksize=4_000)

    assert_conserved(result)
    assert (result.rows_in, result.rows_quarantined) == (N_FILES * N_ROWS + 2, 2 * N_FILES + 4)
    assert sorted(curated(tmp_path)["claim_id"]) == [i for i in _expected_ids() if i not in repeated]
    rows = quarantined(tmp_path)
    assert sorted(rows["claim_id"][rows["_reason"].str.contains("field_uniqueness")]) == sorted(repeated * 2)
    assert bool(died) == (dies == "before its swap")


def test_an_error_between_the_moves_and_the_manifest_is_finished_by_a_retry_of_the_same_run(
    tmp_path: Path, raw: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Prefect retry reuses the run id: it finishes the commit and reports the run's rows."""

    def fail(*args: object, **kwargs: object) -> None:
        raise ConnectionError("S3 went away")

    monkeypatch.setattr(commit_module, "write_manifest", fail)
    with pytest.raises(ConnectionError):
        ingest(tmp_path, raw, "run-1", blocksize=4_000)
    assert not (tmp_path / "curated.manifest.json").exists()
    assert sorted(curated(tmp_path)["claim_id"]) == _expected_ids()  # moved, but not recorded yet

    monkeypatch.undo()
    result = ingest(tmp_path, raw, "run-1", blocksize=4_000)
    assert_conserved(result)
    assert (result.files, result.files_skipped, result.rows_in) == (N_FILES, 0, N_FILES * N_ROWS)
    assert sorted(curated(tmp_path)["claim_id"]) == _expected_ids()
    assert len(load_manifest(FS, result.manifest_uri).entries) == N_FILES


def test_curated_shows_nothing_of_a_run_before_its_commit(tmp_path: Path, raw: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, list[Path]] = {}
    apply = commit_module.apply_journal

    def look_then_apply(fs, run_staging, journal):
        seen["curated"] = sorted((tmp_path / "curated").rglob("*.parquet")) if (tmp_path / "curated").exists() else []
        seen["staged"] = _staged(tmp_path)
        apply(fs, run_staging, journal)

    monkeypatch.setattr(commit_module, "apply_journal", look_then_apply)
    ingest(tmp_path, raw, blocksize=4_000)
    assert seen["curated"] == [] and len(seen["staged"]) > N_FILES
    assert os.path.commonpath([tmp_path / "curated", *seen["staged"]]) == str(tmp_path)  # staging is beside curated/


def test_prefect_retries_outages_but_not_what_only_the_user_can_fix() -> None:
    """Retrying is safe (a retry finishes or redoes the commit); retrying a bad contract is pointless."""
    from prefect.states import Failed

    from tasks.errors import ContractError, DataError
    from tasks.ingest import ingest_stage

    retry = ingest_stage.retry_condition_fn
    assert ingest_stage.retries == 2
    assert retry(ingest_stage, None, Failed(data=ConnectionError("S3 went away"))) is True
    assert retry(ingest_stage, None, Failed(data=DataError("too many bad rows"))) is False
    assert retry(ingest_stage, None, Failed(data=ContractError("no such column"))) is False
