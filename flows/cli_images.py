"""``updraft images``: build the container images, push them to the project's ECR repositories.

Docker's own progress goes to stderr; stdout carries the result (with ``--json`` exactly one
JSON object), so ``updraft images push --json | jq -r .aws.training_image`` fills a config.
The logic lives in :mod:`tasks.images` and :mod:`tasks.aws.ecr`; this module only reads options.
"""

from __future__ import annotations

import json
from typing import List, Optional

import typer

images_app = typer.Typer(
    help="Container images: build images/*/Dockerfile with Docker, push them to your account's ECR.",
    no_args_is_help=True,
)

_ONLY_OPTION = typer.Option(
    None, "--only", help="Only this image: training, inference or flows (repeat for several). Default: all three."
)
_GPU_OPTION = typer.Option(False, "--gpu", help="Also the CUDA training image (images/training/Dockerfile.gpu), tagged TAG-gpu.")
_TAG_HELP = "Image tag. Default: the checkout's commit (12 hex digits), with -dirty when files have local changes."


@images_app.command("build")
def build(
    tag: Optional[str] = typer.Option(None, "--tag", help=_TAG_HELP),
    only: Optional[List[str]] = _ONLY_OPTION,
    gpu: bool = _GPU_OPTION,
    platform: str = typer.Option(
        "linux/amd64", "--platform", help="Target platform (SageMaker and Fargate run x86-64); '' for the engine's own."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object: the tag and each local image."),
) -> None:
    """Build the images from the repository root as updraft-<image>:<tag> (needs a Docker engine)."""
    from flows.cli import _user_errors
    from tasks.images import (
        DockerClient,
        build_images,
        default_tag,
        find_repo_root,
        select_images,
        validate_tag,
    )

    with _user_errors():
        specs = select_images(only, gpu)
        root = find_repo_root()
        chosen = validate_tag(tag) if tag else default_tag(root)
        built = build_images(DockerClient(), specs, chosen, root, platform=platform or None)
    if json_out:
        typer.echo(json.dumps({"tag": chosen, "images": built}))
        return
    for name, ref in built.items():
        typer.echo(f"{name:<13} {ref}")
    typer.echo(f"push them with 'updraft images push --project NAME --stack STACK --tag {chosen}'", err=True)


@images_app.command("push")
def push(
    project: str = typer.Option(..., "--project", help="The project's name (the config's 'name'): repositories are <project>-<image>."),
    stack: Optional[str] = typer.Option(
        None, "--stack", help="The infrastructure stack (updraft infra deploy): repository URIs from its outputs."
    ),
    registry: Optional[str] = typer.Option(
        None, "--registry", help="Instead of --stack: the ECR registry, <account>.dkr.ecr.<region>.amazonaws.com."
    ),
    tag: Optional[str] = typer.Option(None, "--tag", help=_TAG_HELP + " The local images must have it."),
    region: Optional[str] = typer.Option(None, "--region", help="AWS region of the stack (default: AWS_REGION, else us-east-1)."),
    only: Optional[List[str]] = _ONLY_OPTION,
    gpu: bool = _GPU_OPTION,
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object: pushed URIs, digests, and the config's aws keys."),
) -> None:
    """Tag the built images with their ECR repository URIs and push them (the aws target only)."""
    from flows.cli import _fail, _user_errors
    from tasks.aws.ecr import INFRA_HINT
    from tasks.aws.target import resolve_target
    from tasks.images import (
        DockerClient,
        default_tag,
        find_repo_root,
        push_images,
        repositories_from_stack_outputs,
        repositories_in_registry,
        require_aws_target,
        select_images,
        stack_repository_outputs,
        validate_project,
        validate_tag,
    )

    if (stack is None) == (registry is None):
        _fail("name where the repositories are: --stack STACK (the infrastructure stack) or --registry URI, one of them")
    with _user_errors():
        validate_project(project)
        specs = select_images(only, gpu)
        chosen = validate_tag(tag) if tag else default_tag(find_repo_root())
        target = resolve_target(None, region)
        require_aws_target(target)
        docker = DockerClient()
        docker.check_engine()  # before any AWS call: without an engine nothing can be pushed
        if stack is not None:
            repositories = repositories_from_stack_outputs(
                stack_repository_outputs(target, stack), stack, project, specs
            )
            hint = f"the stack {stack!r} names it but it is gone; update the stack with 'updraft infra deploy --stack {stack}'"
        else:
            repositories = repositories_in_registry(registry or "", project, specs)
            hint = INFRA_HINT
        result = push_images(target, docker, specs, chosen, repositories, hint=hint)
    summary = result.as_json()
    if json_out:
        typer.echo(json.dumps(summary))
        return
    for name, ref in result.images.items():
        typer.echo(f"{name:<13} {ref}")
    if summary["aws"]:
        typer.echo("put these in the config's aws section:", err=True)
        for key, value in summary["aws"].items():
            typer.echo(f"  {key}: {value}", err=True)
