"""``updraft deploy-flows``: register updraft's Prefect deployments, work pool and failure notification.

The work is in :mod:`flows.deployments`; this module only parses options and prints.
Registered in flows/cli.py as ``app.command("deploy-flows")(deploy_flows_command)``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional

import typer


def deploy_flows_command(
    config: Path = typer.Option(
        ..., "--config", "-c", help="The pipeline config the deployments run (for --pool ecs: a file inside the checkout)."
    ),
    pool: str = typer.Option(
        "process", "--pool", help="process (updraft-process, this machine) or ecs (<project>-ecs, polled by your stack's worker)."
    ),
    stack: Optional[str] = typer.Option(
        None, "--stack", help="With --pool ecs: the CloudFormation stack of infra/ whose outputs fill the ECS settings."
    ),
    image_tag: Optional[str] = typer.Option(
        None, "--image-tag", help="With --stack: the flows image's tag in FlowsRepositoryUri (default: the stack's WorkerImageTag)."
    ),
    public_ip: bool = typer.Option(
        False, "--public-ip", help="With --stack: give flow-run tasks a public IP (subnets without a NAT gateway or VPC endpoints)."
    ),
    notify_block: Optional[str] = typer.Option(
        None, "--notify-block", help="Notify failed runs through this saved notification block, TYPE/NAME (e.g. slack-webhook/ops)."
    ),
    notify_webhook: Optional[str] = typer.Option(
        None, "--notify-webhook", help="Notify failed runs by POSTing JSON {subject, body} to this URL (saved as block custom-webhook/updraft-failures)."
    ),
    prefect_file: Optional[Path] = typer.Option(None, "--prefect-file", help="The prefect.yaml to register (default: the checkout's)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object on stdout: what was registered."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Register updraft on the Prefect server PREFECT_API_URL names: work pool, deployments (prefect.yaml), failure notification.

    Equivalent by hand, from the checkout: UPDRAFT_CONFIG=FILE prefect deploy --name local (or --name ecs).
    """
    from flows.cli import _configure_logging, _user_errors
    from flows.deployments import PREFECT_FILE, deploy_flows

    _configure_logging(verbose)
    with _user_errors():
        report = deploy_flows(
            config,
            pool_kind=pool,
            stack=stack,
            image_tag=image_tag,
            public_ip=public_ip,
            notify_block=notify_block,
            notify_webhook=notify_webhook,
            prefect_file=prefect_file or PREFECT_FILE,
        )
    if json_out:
        typer.echo(json.dumps(dataclasses.asdict(report), default=str))
        return
    state = "created" if report.pool_created else "exists"
    typer.echo(f"work pool {report.pool} ({state}) on {report.api_url}", err=True)
    for name in report.deployments:
        typer.echo(f"  deployment {name}", err=True)
    if report.automation_id:
        typer.echo(f"failed, crashed or timed-out runs notify through {report.notification_block}", err=True)
    else:
        typer.echo("no failure notification: pass --notify-block TYPE/NAME or --notify-webhook URL", err=True)
    typer.echo(f"start a worker: prefect worker start --pool {report.pool}", err=True)
