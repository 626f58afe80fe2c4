"""Container images: build images/*/Dockerfile with Docker, tag and push them to the project's ECR.

Three images, one per ECR repository that infra/ creates (``<project>-<image>``):
``training`` (SageMaker training jobs), ``inference`` (SageMaker endpoints and batch
transform) and ``flows`` (the Prefect ECS worker and its flow runs). ``--gpu`` adds the
CUDA training image, pushed to the training repository with a ``-gpu`` tag suffix.

The command lines are built by plain functions (tested without Docker); :class:`DockerClient`
runs them, streaming Docker's output to stderr so ``--json`` keeps stdout to one object,
and turns the usual failures (no client, no engine answering, no such local image) into
:class:`ImageError` messages that say what to do. Every build context is the repository
root, filtered by its ``.dockerignore`` allow-list.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.aws.ecr import (
    INFRA_HINT,
    EcrRepository,
    check_repositories,
    normalize_registry,
    parse_repository_uri,
    registry_login,
)
from tasks.aws.target import Target
from tasks.errors import TargetError, UpdraftError

#: The images a plain ``build``/``push`` handles, in that order.
IMAGE_NAMES = ("training", "inference", "flows")
#: Local images are ``updraft-<image>:<tag>``; pushed ones ``<repository uri>:<tag>``.
LOCAL_PREFIX = "updraft"
#: SageMaker's instances (and ECS on Fargate by default) are x86-64: an image built on an arm64
#: laptop without this fails there with "exec format error".
DEFAULT_PLATFORM = "linux/amd64"
#: The infrastructure stack's outputs that name each repository (infra/, ``updraft infra deploy``).
STACK_OUTPUTS = {"training": "TrainingRepositoryUri", "inference": "InferenceRepositoryUri", "flows": "FlowsRepositoryUri"}
#: The config keys the pushed URIs belong in.
CONFIG_KEYS = {"training": "training_image", "inference": "inference_image"}
#: Length of the commit prefix in default tags (``git log --oneline`` shows at least 7).
SHORT_SHA = 12
#: Seconds to wait for ``docker version`` to reach the engine.
ENGINE_TIMEOUT_S = 30

# Docker's rule for a tag: up to 128 of [A-Za-z0-9_.-], not starting with '.' or '-'.
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
# ECR's rule for a repository name, which <project>-<image> must follow.
_PROJECT = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$")
_DIGEST = re.compile(r"digest: (sha256:[0-9a-f]{64})")


class ImageError(UpdraftError):
    """An image cannot be built or pushed for a reason the user can fix (Docker, a tag, a checkout)."""


@dataclass(frozen=True)
class ImageSpec:
    """One image: its Dockerfile, the ECR repository it goes to, and a tag suffix for variants."""

    name: str
    repository: str
    dockerfile: str
    tag_suffix: str = ""

    def local_ref(self, tag: str) -> str:
        return f"{LOCAL_PREFIX}-{self.repository}:{tag}{self.tag_suffix}"

    def remote_ref(self, repository_uri: str, tag: str) -> str:
        return f"{repository_uri}:{tag}{self.tag_suffix}"


SPECS: dict[str, ImageSpec] = {
    "training": ImageSpec("training", "training", "images/training/Dockerfile"),
    "inference": ImageSpec("inference", "inference", "images/inference/Dockerfile"),
    "flows": ImageSpec("flows", "flows", "images/flows/Dockerfile"),
    "training-gpu": ImageSpec("training-gpu", "training", "images/training/Dockerfile.gpu", tag_suffix="-gpu"),
}


def select_images(only: Sequence[str] | None = None, gpu: bool = False) -> list[ImageSpec]:
    """The images to handle: all three, or those ``only`` names; ``gpu`` adds the CUDA training image."""
    names = list(dict.fromkeys(only)) if only else list(IMAGE_NAMES)
    unknown = [name for name in names if name not in IMAGE_NAMES]
    if unknown:
        raise ImageError(f"unknown image {unknown[0]!r}: choose from {', '.join(IMAGE_NAMES)}")
    specs = [SPECS[name] for name in names]
    if gpu:
        if "training" not in names:
            raise ImageError("--gpu adds the GPU variant of the training image: it needs training among the images")
        specs.insert(names.index("training") + 1, SPECS["training-gpu"])
    return specs


def validate_tag(tag: str) -> str:
    """``tag`` when Docker accepts it as a tag, else an error saying the rule."""
    if not _TAG.match(tag):
        raise ImageError(
            f"{tag!r} is not a valid image tag: use up to 128 letters, digits, '_', '.' or '-', "
            "not starting with '.' or '-'"
        )
    return tag


def validate_project(project: str) -> str:
    """``project`` when ``<project>-<image>`` is a valid ECR repository name."""
    if not _PROJECT.match(project):
        raise ImageError(
            f"--project {project!r} cannot name ECR repositories: use lowercase letters and digits, "
            "separated by single '.', '_' or '-' (the config's 'name')"
        )
    return project


def tag_from_revision(revision: str) -> str:
    """The default tag for a commit: its first 12 hex digits, ``-dirty`` kept (a pinned revision as given)."""
    head, dirty, _ = revision.partition("-dirty")
    if re.fullmatch(r"[0-9a-f]{40}", head):
        return f"{head[:SHORT_SHA]}{'-dirty' if dirty else ''}"
    return validate_tag(revision)


def _git_revision(root: Path) -> str | None:
    # tasks.provenance imports the ingest package (pandas, pandera): only when a tag is derived.
    from tasks.provenance import git_revision

    return git_revision(root)


def default_tag(root: Path) -> str:
    """The tag of the checkout's commit (``UPDRAFT_GIT_REVISION`` when set), ``-dirty`` with local changes."""
    revision = _git_revision(root)
    if not revision:
        raise ImageError(f"cannot derive an image tag: {root} is not a git checkout (or git is missing); pass --tag")
    return tag_from_revision(revision)


def find_repo_root(candidates: Iterable[Path] | None = None) -> Path:
    """The checkout holding images/*/Dockerfile: this package's own, else the working directory."""
    here = Path(__file__).resolve().parents[1]
    for folder in candidates if candidates is not None else (here, Path.cwd()):
        if all((folder / spec.dockerfile).is_file() for spec in SPECS.values()):
            return folder
    raise ImageError(
        "building images needs updraft's source checkout (images/*/Dockerfile), and neither the "
        "installed package nor the working directory has one: run this from the repository"
    )


def build_command(spec: ImageSpec, tag: str, root: Path, *, platform: str | None = DEFAULT_PLATFORM,
                  revision: str | None = None) -> list[str]:
    """``docker build`` for one image: the repository root as context, OCI labels naming the commit."""
    command = ["docker", "build", "--file", str(root / spec.dockerfile), "--tag", spec.local_ref(tag)]
    if platform:
        command += ["--platform", platform]
    command += ["--label", f"org.opencontainers.image.title={LOCAL_PREFIX}-{spec.name}",
                "--label", f"org.opencontainers.image.version={tag}{spec.tag_suffix}"]
    if revision:
        command += ["--label", f"org.opencontainers.image.revision={revision}"]
    return [*command, str(root)]


def login_command(registry: str, username: str = "AWS") -> list[str]:
    """``docker login`` reading the password from stdin: never on a command line, where ``ps`` shows it."""
    return ["docker", "login", "--username", username, "--password-stdin", registry]


def repositories_from_stack_outputs(outputs: Mapping[str, str], stack: str, project: str,
                                    specs: Sequence[ImageSpec]) -> dict[str, EcrRepository]:
    """Each wanted repository from the infrastructure stack's ``<Image>RepositoryUri`` outputs.

    The stack must be ``project``'s: its repositories are named ``<project>-<image>``, so a
    mismatch means the wrong stack or the wrong ``--project``, caught before anything is pushed.
    """
    found: dict[str, EcrRepository] = {}
    for repository in dict.fromkeys(spec.repository for spec in specs):
        key = STACK_OUTPUTS[repository]
        if not outputs.get(key):
            raise ImageError(
                f"stack {stack!r} has no output {key}: is it updraft's infrastructure stack? "
                f"Deploy or update it with 'updraft infra deploy --stack {stack}', or pass --registry"
            )
        repo = parse_repository_uri(outputs[key])
        if repo.name != f"{project}-{repository}":
            raise ImageError(
                f"stack {stack!r} names the {repository} repository {repo.name!r}, not {project}-{repository}: "
                "is it the stack of another project? Check --project and --stack"
            )
        found[repository] = repo
    return found


def repositories_in_registry(registry: str, project: str, specs: Sequence[ImageSpec]) -> dict[str, EcrRepository]:
    """Each wanted repository as infra/ names it: ``<registry>/<project>-<image>``."""
    host = normalize_registry(registry)
    return {
        repository: parse_repository_uri(f"{host}/{project}-{repository}")
        for repository in dict.fromkeys(spec.repository for spec in specs)
    }


def require_aws_target(target: Target) -> None:
    """Pushing goes to a real account's ECR: refuse the local and embedded targets, saying why."""
    if target.kind != "aws":
        raise TargetError(
            f"'updraft images push' pushes to ECR in your AWS account (the aws target), but this is the "
            f"{target.kind} target (AWS_ENDPOINT_URL={target.endpoint_url or ''}): unset AWS_ENDPOINT_URL "
            "and UPDRAFT_TARGET. The local and embedded targets need no images: they run training and "
            "serving as local processes"
        )


def stack_repository_outputs(target: Target, stack: str) -> dict[str, str]:
    """The outputs of the stack ``updraft infra deploy`` created (its ECR repositories among them)."""
    from tasks.aws.stacks import stack_outputs

    return stack_outputs(target, stack)


def _stderr_echo(line: str) -> None:
    sys.stderr.write(line)
    sys.stderr.flush()


class DockerClient:
    """Runs the ``docker`` command line, its output streamed to ``echo`` (stderr by default)."""

    def __init__(self, executable: str | None = None, echo: Callable[[str], None] = _stderr_echo) -> None:
        found = executable or shutil.which("docker")
        if found is None:
            raise ImageError(
                "the docker client is not installed (no 'docker' on PATH): install Docker Engine or "
                "Docker Desktop (https://docs.docker.com/get-docker/); building and pushing images needs it"
            )
        self.executable = found
        self.echo = echo

    def check_engine(self) -> str:
        """The engine's version; an error saying how to start one when none answers."""
        try:
            done = subprocess.run(
                [self.executable, "version", "--format", "{{.Server.Version}}"],
                capture_output=True, text=True, timeout=ENGINE_TIMEOUT_S, check=False,
            )
        except subprocess.TimeoutExpired:
            raise ImageError(self._no_engine(f"no answer in {ENGINE_TIMEOUT_S} s")) from None
        version = done.stdout.strip()
        if done.returncode != 0 or not version:
            detail = (done.stderr.strip().splitlines() or ["no server version"])[-1]
            raise ImageError(self._no_engine(detail))
        return version

    @staticmethod
    def _no_engine(detail: str) -> str:
        return (
            f"no Docker engine answers the docker client ({detail}): start one (Docker Desktop, colima, "
            "or the docker service) or point DOCKER_HOST at one; images are built and pushed through it"
        )

    def has_image(self, ref: str) -> bool:
        done = subprocess.run(
            [self.executable, "image", "inspect", "--format", "{{.Id}}", ref],
            capture_output=True, text=True, check=False,
        )
        return done.returncode == 0

    def run(self, command: Sequence[str], *, what: str, stdin: str | None = None, cwd: Path | None = None) -> str:
        """Run ``docker ...`` (``command[0]`` is replaced by the client found), streaming its output.

        Returns the output; a non-zero exit raises :class:`ImageError` with its last line.
        """
        argv = [self.executable, *command[1:]]
        tail: deque[str] = deque(maxlen=200)
        with subprocess.Popen(
            argv, cwd=cwd, text=True, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        ) as proc:
            if stdin is not None:
                assert proc.stdin is not None
                proc.stdin.write(stdin)
                proc.stdin.close()
            assert proc.stdout is not None
            for line in proc.stdout:
                tail.append(line)
                self.echo(line)
            code = proc.wait()
        if code != 0:
            last = next((line.strip() for line in reversed(tail) if line.strip()), "no output")
            raise ImageError(f"{what} failed (docker exited {code}): {last}")
        return "".join(tail)


def build_images(docker: DockerClient, specs: Sequence[ImageSpec], tag: str, root: Path, *,
                 platform: str | None = DEFAULT_PLATFORM) -> dict[str, str]:
    """Build each image from the repository root; ``{image: local ref}``."""
    validate_tag(tag)
    docker.check_engine()
    revision = _git_revision(root)
    built: dict[str, str] = {}
    for spec in specs:
        command = build_command(spec, tag, root, platform=platform, revision=revision)
        docker.run(command, what=f"docker build of {spec.dockerfile}", cwd=root)
        built[spec.name] = spec.local_ref(tag)
    return built


@dataclass(frozen=True)
class PushResult:
    """What was pushed: ``{image: remote ref}`` and the digests the registry reported."""

    tag: str
    images: dict[str, str]
    digests: dict[str, str]

    def as_json(self) -> dict[str, Any]:
        """The ``--json`` object, with the config's ``aws`` keys ready to paste."""
        config = {key: self.images[name] for name, key in CONFIG_KEYS.items() if name in self.images}
        return {"tag": self.tag, "images": self.images, "digests": self.digests, "aws": config}


def push_images(target: Target, docker: DockerClient, specs: Sequence[ImageSpec], tag: str,
                repositories: Mapping[str, EcrRepository], *, hint: str = INFRA_HINT) -> PushResult:
    """Tag each local ``updraft-<image>:<tag>`` with its repository URI and push it.

    Docker is checked first (engine, local images), then ECR (every repository exists), so
    a missing piece fails before anything is pushed. One ``docker login`` per registry, with
    the ECR token's password on stdin.
    """
    validate_tag(tag)
    docker.check_engine()
    absent = [spec.local_ref(tag) for spec in specs if not docker.has_image(spec.local_ref(tag))]
    if absent:
        raise ImageError(
            f"local image {absent[0]} does not exist: build it first with 'updraft images build --tag {tag}'"
            + (" --gpu" if any(spec.tag_suffix for spec in specs) else "")
        )
    wanted = [repositories[spec.repository] for spec in specs]
    check_repositories(target, dict.fromkeys(wanted), hint=hint)
    for registry in dict.fromkeys(repo.registry for repo in wanted):
        login = registry_login(target, registry)
        docker.run(login_command(login.registry, login.username), what=f"docker login to {registry}",
                   stdin=login.password + "\n")
    images: dict[str, str] = {}
    digests: dict[str, str] = {}
    for spec in specs:
        remote = spec.remote_ref(repositories[spec.repository].uri, tag)
        docker.run(["docker", "tag", spec.local_ref(tag), remote], what=f"docker tag {remote}")
        output = docker.run(["docker", "push", remote], what=f"docker push {remote}")
        images[spec.name] = remote
        found = _DIGEST.findall(output)
        if found:
            digests[spec.name] = found[-1]
    return PushResult(tag=tag, images=images, digests=digests)
