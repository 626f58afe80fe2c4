"""``updraft infra``: the CloudFormation in ``infra/`` for a customer's account.

``validate`` runs cfn-lint and checkov over the templates; ``deploy`` creates or updates a
stack and prints its outputs (the bucket, roles and images a config names); ``outputs``
prints them again. The AWS endpoint is decided as everywhere else: ``AWS_ENDPOINT_URL``
(LocalStack, ``updraft up``) or real AWS with the usual credentials.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

infra_app = typer.Typer(
    help="CloudFormation for a customer's account (infra/): validate the templates, deploy a stack, read its outputs.",
    no_args_is_help=True,
)

_JSON_OPTION = typer.Option(False, "--json", help="Print one JSON object on stdout; progress stays on stderr.")
_REGION_OPTION = typer.Option(None, "--region", help="AWS region (default: AWS_REGION, AWS_DEFAULT_REGION, us-east-1).")
_STACK_OPTION = typer.Option(..., "--stack", help="CloudFormation stack name.")

#: The outputs a pipeline config takes, as ``config key: output``.
CONFIG_KEYS = (
    ("bucket", "DataBucketName"),
    ("aws.role_arn", "SageMakerExecutionRoleArn"),
    ("aws.kms_key_id", "KmsKeyArn"),
    ("aws.training_image", "TrainingRepositoryUri"),
    ("aws.inference_image", "InferenceRepositoryUri"),
)


def _echo_outputs(outputs: dict[str, str]) -> None:
    width = max((len(k) for k in outputs), default=0)
    for key in sorted(outputs):
        typer.echo(f"{key:<{width}}  {outputs[key]}")


def _config_hint(outputs: dict[str, str]) -> str:
    lines = []
    for key, output in CONFIG_KEYS:
        if output in outputs:
            value = outputs[output] + (":<tag>" if output.endswith("RepositoryUri") else "")
            lines.append(f"  {key}: {value}")
    return "point a pipeline config at it (name must be the stack's ProjectName):\n" + "\n".join(lines) if lines else ""


@infra_app.command("validate")
def validate(
    paths: Optional[list[Path]] = typer.Argument(None, help="Templates or folders to check (default: infra/)."),
    json_out: bool = _JSON_OPTION,
) -> None:
    """cfn-lint and checkov over the templates; exits 1 on a cfn-lint error or a failed checkov check.

    Each finding prints as FILE:LINE: TOOL RULE (SEVERITY) RESOURCE: MESSAGE. Checks a template
    skips are listed with the reason its Metadata gives.
    """
    from flows.cli import _user_errors
    from tasks.infra.lint import validate_templates
    from tasks.infra.templates import find_templates

    with _user_errors():
        templates = [t for path in (paths or [None]) for t in find_templates(path)]
        report = validate_templates(templates, root=Path.cwd())
    if json_out:
        typer.echo(json.dumps(report.to_dict()))
    else:
        for finding in report.findings:
            typer.echo(finding.describe())
        for skip in report.skipped:
            typer.echo(f"{skip.path}:{skip.line}: checkov {skip.rule} skipped for {skip.resource}: {skip.reason}", err=True)
        errors = sum(f.blocking for f in report.findings)
        typer.echo(
            f"updraft infra validate: {len(report.templates)} template(s); cfn-lint {report.tools.get('cfn-lint')}, "
            f"checkov {report.tools.get('checkov')}: {report.passed_checks} checks passed, {len(report.skipped)} skipped "
            f"with a reason, {errors} error(s), {len(report.findings) - errors} warning(s)",
            err=True,
        )
    if not report.ok:
        raise typer.Exit(1)


def _deploy_parameters(project: str | None, subnets: str | None, security_groups: str | None, pairs: list[str]) -> dict[str, str]:
    from tasks.errors import ConfigError
    from tasks.infra.deploy import parse_parameter_pairs

    given = parse_parameter_pairs(pairs)
    for flag, key, value in (("--project", "ProjectName", project), ("--subnets", "SubnetIds", subnets), ("--security-groups", "SecurityGroupIds", security_groups)):
        if value is None:
            continue
        if key in given:
            raise ConfigError(f"{flag} and --parameter {key}=... name the same parameter: give one")
        given[key] = ",".join(part.strip() for part in value.split(",") if part.strip()) if key != "ProjectName" else value
    return given


@infra_app.command("deploy")
def deploy(
    stack: str = _STACK_OPTION,
    template: Optional[Path] = typer.Option(None, "--template", help="Template file (default: infra/updraft.yaml)."),
    project: Optional[str] = typer.Option(None, "--project", help="ProjectName: the config's 'name' (required to create)."),
    subnets: Optional[str] = typer.Option(None, "--subnets", help="SubnetIds, comma-separated (required to create)."),
    security_groups: Optional[str] = typer.Option(None, "--security-groups", help="SecurityGroupIds, comma-separated (required to create)."),
    parameter: Optional[list[str]] = typer.Option(None, "--parameter", "-p", help="Any other template parameter as KEY=VALUE. Repeatable."),
    region: Optional[str] = _REGION_OPTION,
    json_out: bool = _JSON_OPTION,
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Create or update a stack from the template, wait for it, and print its outputs.

    On an update, parameters not given keep their previous values. A failed deployment
    names each failed resource with CloudFormation's reason.
    """
    from flows.cli import _configure_logging, _user_errors
    from tasks.aws.target import resolve_target
    from tasks.infra.deploy import PROJECT_TAG, deploy_stack
    from tasks.infra.templates import Template, resolve_template

    _configure_logging(verbose)
    with _user_errors():
        given = _deploy_parameters(project, subnets, security_groups, list(parameter or []))
        tmpl = Template.read(resolve_template(template))
        target = resolve_target(None, region)
        tags = {PROJECT_TAG: given["ProjectName"]} if "ProjectName" in given else {}
        result = deploy_stack(
            target.client("cloudformation"), stack_name=stack, template=tmpl, parameters=given, tags=tags,
            endpoint=target.endpoint_url,
        )
    if json_out:
        typer.echo(json.dumps(result.to_dict()))
        return
    typer.echo(f"stack {stack} {result.action} ({result.status}) in {result.duration_s:.1f} s", err=True)
    _echo_outputs(result.outputs)
    hint = _config_hint(result.outputs)
    if hint:
        typer.echo(hint, err=True)


@infra_app.command("outputs")
def outputs(stack: str = _STACK_OPTION, region: Optional[str] = _REGION_OPTION, json_out: bool = _JSON_OPTION) -> None:
    """Print a deployed stack's outputs (KEY  VALUE lines, or one JSON object)."""
    from flows.cli import _user_errors
    from tasks.aws.stacks import stack_outputs
    from tasks.aws.target import resolve_target

    with _user_errors():
        found: dict[str, Any] = stack_outputs(resolve_target(None, region), stack)
    if json_out:
        typer.echo(json.dumps(found))
    else:
        _echo_outputs(found)
