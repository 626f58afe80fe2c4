"""``updraft images build`` and ``push``: the docker commands they run and the ECR calls behind them.

ECR is moto's (the embedded endpoint, or moto in-process for the CLI, which refuses any
target but aws). Docker is a stand-in: a small ``docker`` script first on PATH that records
each call's arguments and standard input and answers like the real client. The real
``docker build`` cannot run on the test machines (no Docker engine); what is checked here is
every command line updraft hands to Docker and what it does with the answers.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from typer.testing import CliRunner

from flows.cli import app
from tasks.aws.target import Target
from tasks.errors import TargetError
from tasks.images import (
    DockerClient,
    ImageError,
    build_images,
    find_repo_root,
    push_images,
    repositories_from_stack_outputs,
    repositories_in_registry,
    select_images,
    stack_repository_outputs,
    tag_from_revision,
)

REPO = Path(__file__).resolve().parents[2]
PROJECT = "demo"
NO_ENGINE = "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?"

FAKE_DOCKER = textwrap.dedent(
    """\
    #!{python} -S
    # A stand-in for the docker client: records argv and stdin, answers like docker does.
    import hashlib, json, os, sys
    args = sys.argv[1:]
    stdin = sys.stdin.read() if "--password-stdin" in args else None
    with open(os.environ["FAKE_DOCKER_LOG"], "a") as log:
        log.write(json.dumps({{"argv": args, "stdin": stdin}}) + "\\n")
    if os.environ.get("FAKE_DOCKER_NO_ENGINE"):
        print({no_engine!r}, file=sys.stderr)
        sys.exit(1)
    if args[0] == "version":
        print("28.2.2")
    elif args[:2] == ["image", "inspect"]:
        if args[-1] in os.environ.get("FAKE_DOCKER_MISSING", "").split(","):
            print("Error response from daemon: No such image: " + args[-1], file=sys.stderr)
            sys.exit(1)
        print("sha256:" + "0" * 64)
    elif args[0] == "login":
        print("Login Succeeded")
    elif args[0] == "push":
        repository, tag = args[1].rsplit(":", 1)
        print("The push refers to repository [" + repository + "]")
        print(tag + ": digest: sha256:" + hashlib.sha256(args[1].encode()).hexdigest() + " size: 1234")
    """
)


class FakeDocker:
    """The recorded calls of the stand-in client."""

    def __init__(self, log: Path) -> None:
        self.log = log

    def calls(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def argvs(self, command: str) -> list[list[str]]:
        return [call["argv"] for call in self.calls() if call["argv"][0] == command]


@pytest.fixture()
def fake_docker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeDocker:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "docker"
    script.write_text(FAKE_DOCKER.format(python=sys.executable, no_engine=NO_ENGINE))
    script.chmod(0o755)
    log = tmp_path / "docker-calls.jsonl"
    monkeypatch.setenv("FAKE_DOCKER_LOG", str(log))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    for name in ("FAKE_DOCKER_NO_ENGINE", "FAKE_DOCKER_MISSING"):
        monkeypatch.delenv(name, raising=False)
    return FakeDocker(log)


def _quiet() -> DockerClient:
    return DockerClient(echo=lambda line: None)


def _create_repositories(ecr: Any, *images: str) -> dict[str, str]:
    return {
        image: ecr.create_repository(repositoryName=f"{PROJECT}-{image}")["repository"]["repositoryUri"]
        for image in images
    }


def _registry_password(ecr: Any, registry: str) -> str:
    """What ECR's token decodes to, asked independently of updraft."""
    token = ecr.get_authorization_token(registryIds=[registry.split(".", 1)[0]])["authorizationData"][0]
    user, password = base64.b64decode(token["authorizationToken"]).decode().split(":", 1)
    assert user == "AWS"
    return password


# --- push against ECR on the embedded endpoint ------------------------------------------------


def test_push_logs_in_with_the_decoded_token_on_stdin_then_tags_and_pushes_each_image(
    embedded_target: Target, fake_docker: FakeDocker
) -> None:
    ecr = embedded_target.client("ecr")
    uris = _create_repositories(ecr, "training", "inference", "flows")
    registry = uris["training"].split("/", 1)[0]
    specs = select_images()

    result = push_images(embedded_target, _quiet(), specs, "abc123", repositories_in_registry(registry, PROJECT, specs))

    password = _registry_password(ecr, registry)
    logins = [call for call in fake_docker.calls() if call["argv"][0] == "login"]
    assert [call["argv"] for call in logins] == [["login", "--username", "AWS", "--password-stdin", registry]]
    assert logins[0]["stdin"] == password + "\n"
    assert not any(password in " ".join(call["argv"]) for call in fake_docker.calls()), "the password reached a command line"
    assert fake_docker.argvs("tag") == [
        ["tag", f"updraft-{image}:abc123", f"{uris[image]}:abc123"] for image in ("training", "inference", "flows")
    ]
    assert fake_docker.argvs("push") == [["push", f"{uris[image]}:abc123"] for image in ("training", "inference", "flows")]
    order = [call["argv"][0] for call in fake_docker.calls()]
    assert order.index("login") < order.index("push")
    assert result.images == {image: f"{uris[image]}:abc123" for image in ("training", "inference", "flows")}
    assert set(result.digests) == {"training", "inference", "flows"}
    assert all(digest.startswith("sha256:") for digest in result.digests.values())
    assert result.as_json()["aws"] == {
        "training_image": f"{uris['training']}:abc123", "inference_image": f"{uris['inference']}:abc123",
    }


def test_push_reads_the_repositories_from_the_stack_outputs_and_pushes_the_gpu_variant(
    embedded_target: Target, fake_docker: FakeDocker
) -> None:
    template = {
        "Resources": {
            f"{image.title()}Repo": {"Type": "AWS::ECR::Repository", "Properties": {"RepositoryName": f"{PROJECT}-{image}"}}
            for image in ("training", "inference", "flows")
        },
        "Outputs": {
            f"{image.title()}RepositoryUri": {"Value": {"Fn::GetAtt": [f"{image.title()}Repo", "RepositoryUri"]}}
            for image in ("training", "inference", "flows")
        },
    }
    embedded_target.client("cloudformation").create_stack(StackName="demo-infra", TemplateBody=json.dumps(template))
    specs = select_images(["training"], gpu=True)

    repositories = repositories_from_stack_outputs(
        stack_repository_outputs(embedded_target, "demo-infra"), "demo-infra", PROJECT, specs
    )
    result = push_images(embedded_target, _quiet(), specs, "v1", repositories)

    training = embedded_target.client("ecr").describe_repositories(repositoryNames=[f"{PROJECT}-training"])
    uri = training["repositories"][0]["repositoryUri"]
    assert fake_docker.argvs("push") == [["push", f"{uri}:v1"], ["push", f"{uri}:v1-gpu"]]
    assert ["tag", "updraft-training:v1-gpu", f"{uri}:v1-gpu"] in fake_docker.argvs("tag")
    assert result.as_json()["aws"] == {"training_image": f"{uri}:v1"}
    with pytest.raises(ImageError, match=r"names the training repository 'demo-training', not other-training"):
        repositories_from_stack_outputs(stack_repository_outputs(embedded_target, "demo-infra"), "demo-infra", "other", specs)


def test_a_missing_repository_names_the_infra_command_and_nothing_is_pushed(
    embedded_target: Target, fake_docker: FakeDocker
) -> None:
    uris = _create_repositories(embedded_target.client("ecr"), "training")
    specs = select_images()
    repositories = repositories_in_registry(uris["training"].split("/", 1)[0], PROJECT, specs)

    with pytest.raises(TargetError, match=r"ECR repository demo-inference, demo-flows does not exist .*updraft infra deploy"):
        push_images(embedded_target, _quiet(), specs, "abc123", repositories)
    assert fake_docker.argvs("push") == [] and fake_docker.argvs("login") == []


def test_a_local_image_that_was_never_built_says_how_to_build_it(
    embedded_target: Target, fake_docker: FakeDocker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_DOCKER_MISSING", "updraft-flows:abc123")
    specs = select_images()
    repositories = repositories_in_registry("123456789012.dkr.ecr.us-east-1.amazonaws.com", PROJECT, specs)

    with pytest.raises(ImageError, match=r"local image updraft-flows:abc123 does not exist: .*updraft images build --tag abc123"):
        push_images(embedded_target, _quiet(), specs, "abc123", repositories)
    assert fake_docker.argvs("push") == []


def test_without_a_docker_engine_build_and_push_fail_with_the_reason(
    embedded_target: Target, fake_docker: FakeDocker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_DOCKER_NO_ENGINE", "1")
    specs = select_images()
    repositories = repositories_in_registry("123456789012.dkr.ecr.us-east-1.amazonaws.com", PROJECT, specs)

    with pytest.raises(ImageError, match=r"no Docker engine answers the docker client \(Cannot connect to the Docker daemon.*DOCKER_HOST"):
        build_images(_quiet(), specs, "abc123", find_repo_root())
    with pytest.raises(ImageError, match=r"no Docker engine answers"):
        push_images(embedded_target, _quiet(), specs, "abc123", repositories)
    assert [call["argv"][0] for call in fake_docker.calls()] == ["version", "version"]


def test_without_a_docker_client_the_error_says_to_install_docker(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ImageError, match=r"the docker client is not installed \(no 'docker' on PATH\)"):
        DockerClient()


# --- build ------------------------------------------------------------------------------------


def test_build_runs_one_docker_build_per_image_from_the_repository_root(fake_docker: FakeDocker) -> None:
    root = find_repo_root()
    built = build_images(_quiet(), select_images(gpu=True), "abc123", root)

    assert built == {
        "training": "updraft-training:abc123", "training-gpu": "updraft-training:abc123-gpu",
        "inference": "updraft-inference:abc123", "flows": "updraft-flows:abc123",
    }
    builds = fake_docker.argvs("build")
    assert [argv[argv.index("--file") + 1] for argv in builds] == [
        str(root / "images/training/Dockerfile"), str(root / "images/training/Dockerfile.gpu"),
        str(root / "images/inference/Dockerfile"), str(root / "images/flows/Dockerfile"),
    ]
    assert all(argv[-1] == str(root) for argv in builds), "the context is the repository root"
    assert all(argv[argv.index("--platform") + 1] == "linux/amd64" for argv in builds)
    assert [argv[argv.index("--tag") + 1] for argv in builds] == list(built.values())


def test_default_tags_are_the_short_commit_and_say_dirty() -> None:
    sha = "0123456789abcdef0123456789abcdef01234567"
    assert tag_from_revision(sha) == "0123456789ab"
    assert tag_from_revision(f"{sha}-dirty") == "0123456789ab-dirty"
    assert tag_from_revision("release-7") == "release-7"  # UPDRAFT_GIT_REVISION pinned by a CI build
    with pytest.raises(ImageError, match="not a valid image tag"):
        tag_from_revision("has space")
    with pytest.raises(ImageError, match="unknown image 'web': choose from training, inference, flows"):
        select_images(["web"])


# --- the command line -------------------------------------------------------------------------


def _cli(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def test_cli_build_prints_the_images_and_uses_the_commit_tag(fake_docker: FakeDocker, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UPDRAFT_GIT_REVISION", "0123456789abcdef0123456789abcdef01234567-dirty")
    result = _cli("images", "build", "--only", "inference", "--json")

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"tag": "0123456789ab-dirty", "images": {"inference": "updraft-inference:0123456789ab-dirty"}}


@pytest.fixture()
def moto_in_process(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The aws target as the CLI resolves it (no AWS_ENDPOINT_URL), its calls answered by moto in-process."""
    from moto import mock_aws

    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_ECR", "UPDRAFT_TARGET", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        yield


def test_cli_push_prints_one_json_object_with_the_config_keys(moto_in_process: None, fake_docker: FakeDocker) -> None:
    uris = _create_repositories(boto3.client("ecr", region_name="us-east-1"), "training", "inference", "flows")
    registry = uris["training"].split("/", 1)[0]

    result = _cli("images", "push", "--project", PROJECT, "--registry", registry, "--tag", "t1", "--json")

    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["images"] == {image: f"{uri}:t1" for image, uri in uris.items()}
    assert summary["aws"] == {"training_image": f"{uris['training']}:t1", "inference_image": f"{uris['inference']}:t1"}
    assert "Login Succeeded" not in result.stdout, "docker's output belongs on stderr"


def test_cli_push_refuses_other_targets_and_needs_one_place_for_the_repositories(
    embedded_aws: Any, fake_docker: FakeDocker
) -> None:
    refused = _cli("images", "push", "--project", PROJECT, "--registry", "123456789012.dkr.ecr.us-east-1.amazonaws.com", "--tag", "t1")
    assert refused.exit_code == 2
    assert refused.stderr.count("\n") == 1 and "pushes to ECR in your AWS account (the aws target)" in refused.stderr
    assert "unset AWS_ENDPOINT_URL" in refused.stderr and "Traceback" not in refused.output

    neither = _cli("images", "push", "--project", PROJECT, "--tag", "t1")
    assert neither.exit_code == 2 and "--stack STACK (the infrastructure stack) or --registry URI" in neither.stderr
    bad_project = _cli("images", "push", "--project", "Demo Project", "--registry", "x", "--tag", "t1")
    assert bad_project.exit_code == 2 and "cannot name ECR repositories" in bad_project.stderr
    assert fake_docker.argvs("push") == []


def test_cli_without_a_docker_engine_is_one_line(fake_docker: FakeDocker, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_DOCKER_NO_ENGINE", "1")
    result = _cli("images", "build", "--tag", "t1")

    assert result.exit_code == 2
    assert result.stderr.startswith("updraft: error: no Docker engine answers the docker client (Cannot connect")
    assert result.stderr.count("\n") == 1 and result.stdout == ""
