"""`updraft transform`: batch transform from the command line, with the server's own predictions."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from flows.cli import app
from tasks.modelbundle import load_model_bundle
from tests.unit.test_serve_payloads import raw_rows, to_csv, write_bundle


def test_transform_scores_a_folder_and_reports_what_it_did(tmp_path: Path) -> None:
    model = write_bundle(tmp_path / "model", "binary_classification")
    rows = raw_rows(25, seed=3)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "part.csv").write_bytes(to_csv(rows))

    done = CliRunner().invoke(app, ["transform", str(tmp_path / "in"), str(tmp_path / "out"), "--model", str(model),
                                    "--accept", "text/csv", "--json"])

    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout.strip().splitlines()[-1])["records"] == 25
    scored = [float(v) for v in (tmp_path / "out" / "part.csv.out").read_text().split()]
    assert scored == load_model_bundle(model).predict_frame(rows)


def test_transform_names_a_bad_content_type_in_one_line(tmp_path: Path) -> None:
    model = write_bundle(tmp_path / "model", "binary_classification")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "part.csv").write_bytes(b"1,2\n")
    done = CliRunner().invoke(app, ["transform", str(tmp_path / "in"), str(tmp_path / "out"), "--model", str(model),
                                    "--content-type", "text/xml"])
    assert done.exit_code == 2
    assert "text/xml" in done.output and "Traceback" not in done.output
