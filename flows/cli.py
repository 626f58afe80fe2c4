"""The ``updraft`` command line: run the pipeline, serve the embedded endpoint, manage endpoints and model versions.

Heavy imports (Prefect, Dask, pandas) happen inside the commands that need them, so
``updraft --help`` and user errors answer at once. Logs go to stderr; with ``--json``
stdout carries exactly one JSON object.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import typer

from tasks.errors import UpdraftError

app = typer.Typer(
    help="updraft: raw data in S3 to a judged, registered, deployed model. Offline with --embedded.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
endpoint_app = typer.Typer(help="Local endpoints started by 'updraft run' on local targets.", no_args_is_help=True)
app.add_typer(endpoint_app, name="endpoint")
models_app = typer.Typer(help="The project's versions in the SageMaker Model Registry.", no_args_is_help=True)
app.add_typer(models_app, name="models")
from flows.cli_infra import infra_app  # noqa: E402  (a sub-typer of its own; imports nothing heavy)
app.add_typer(infra_app, name="infra")
from flows.cli_prefect import deploy_flows_command  # noqa: E402 (it imports Prefect lazily)

app.command("deploy-flows")(deploy_flows_command)
from flows.cli_images import images_app  # noqa: E402 (its commands import their modules lazily)

app.add_typer(images_app, name="images")

log = logging.getLogger("updraft")


def _configure_logging(verbose: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger("updraft")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False
    for noisy in ("werkzeug", "distributed", "botocore", "s3fs", "fsspec", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("PREFECT_LOGGING_COLORS", "false")
    # The temporary Prefect server's telemetry heartbeat races its own SQLite setup and
    # prints a "database is locked" traceback on a fresh home; updraft sends no telemetry.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"updraft: error: {message}", err=True)
    raise typer.Exit(code)


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    """One line on stderr and a non-zero exit for errors the user can fix; tracebacks for bugs."""
    try:
        yield
    except UpdraftError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        _fail("interrupted", code=130)


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[Callable[[str], None]]:
    """Send everything written to fd 1 (ours, Prefect's, child processes') to stderr meanwhile.

    Yields a writer for the real stdout, so ``--json`` can print exactly one object there.
    """
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    real = os.fdopen(os.dup(saved), "w")
    try:
        yield lambda text: (real.write(text), real.flush())
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
        real.close()


class _SilenceUserTracebacks(logging.Filter):
    """Prefect logs a failed task's traceback; for an UpdraftError the message alone is the news."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], UpdraftError):
            record.exc_info = None
            record.exc_text = None
        return True


def _quiet_prefect_tracebacks() -> None:
    flt = _SilenceUserTracebacks()
    for name in ("prefect", "prefect.task_runs", "prefect.flow_runs", "prefect.flow_engine", "prefect.task_engine"):
        logging.getLogger(name).addFilter(flt)
    for handler in logging.getLogger("prefect").handlers:
        handler.addFilter(flt)


@contextlib.contextmanager
def _target(embedded: bool) -> Iterator[str | None]:
    """Start the embedded endpoint when asked; yield the target kind to use."""
    if not embedded:
        yield None
        return
    from tasks.aws.embedded import EmbeddedAWS

    with EmbeddedAWS() as aws:
        log.info("embedded AWS endpoint at %s", aws.url)
        yield "embedded"


def _preflight(config_path: Path, target_kind: str | None, upload: list[Path] | None = None) -> None:
    """Check what the user controls before Prefect starts: a user error costs seconds and prints one line."""
    from tasks.aws.target import resolve_target
    from tasks.config import load_config
    from tasks.preflight import preflight

    config = load_config(config_path)
    target = resolve_target(target_kind, config.aws.region)
    if upload:
        from tasks.aws.upload import upload_files

        upload_files(target, config.bucket, config.source, upload)
    preflight(config, target)
    _quiet_prefect_tracebacks()


def _run_pipeline_cli(
    config_path: Path, *, target_kind: str | None, run_id: str | None, upload: list[Path] | None = None
) -> dict[str, Any]:
    _preflight(config_path, target_kind, upload)
    from flows.pipeline import pipeline_flow

    return pipeline_flow(str(config_path), run_id=run_id, target_kind=target_kind)


def _run_stage_cli(stage: str, config_path: Path, *, target_kind: str | None, run_id: str | None) -> dict[str, Any]:
    _preflight(config_path, target_kind)
    from flows import stages

    stage_flow = getattr(stages, f"{stage}_flow")
    return stage_flow(str(config_path), run_id=run_id, target_kind=target_kind)


def _summary_text(summary: dict[str, Any]) -> str:
    from flows.summary import format_summary

    return format_summary(summary)


def _run_command(
    start: Callable[[str | None], dict[str, Any]],
    describe: Callable[[dict[str, Any]], str],
    *,
    json_out: bool,
    embedded: bool,
    verbose: bool,
) -> None:
    """What every running command shares: logs and target, then one JSON object on stdout or a summary on stderr.

    ``start`` gets the target kind (None: decided by the environment) and returns the result.
    """
    _configure_logging(verbose)
    with _user_errors(), _stdout_to_stderr() as write_stdout, _target(embedded) as kind:
        result = start(kind)
        if json_out:
            write_stdout(json.dumps(result, default=str) + "\n")
        else:
            typer.echo(describe(result), err=True)


_CONFIG_OPTION = typer.Option(..., "--config", "-c", help="Pipeline config (YAML).")
_JSON_OPTION = typer.Option(False, "--json", help="Print one JSON object on stdout; logs stay on stderr.")
_EMBEDDED_OPTION = typer.Option(False, "--embedded", help="Start an embedded AWS endpoint for this run.")
_NEW_RUN_OPTION = typer.Option(None, "--run-id", help="Reuse a run id (default: a new one).")
_RUN_OPTION = typer.Option(..., "--run-id", help="The run whose earlier outputs in S3 this stage uses.")
_VERBOSE_OPTION = typer.Option(False, "--verbose", "-v")
_UPLOAD_OPTION = typer.Option(
    None,
    "--upload",
    help="Local file or folder to upload under the config's source prefix first (creates the bucket); "
    "how local data reaches a fresh --embedded endpoint. Repeatable.",
)


def _flow_command(
    start: Callable[..., dict[str, Any]], describe: Callable[[dict[str, Any]], str], run_option: Any
) -> Callable[..., None]:
    """A command that runs a flow on one config: ``start(config, target_kind=..., run_id=...)``."""

    def command(
        config: Path = _CONFIG_OPTION,
        json_out: bool = _JSON_OPTION,
        embedded: bool = _EMBEDDED_OPTION,
        run_id: Optional[str] = run_option,
        verbose: bool = _VERBOSE_OPTION,
    ) -> None:
        _run_command(
            lambda kind: start(config, target_kind=kind, run_id=run_id),
            describe,
            json_out=json_out,
            embedded=embedded,
            verbose=verbose,
        )

    return command


@app.command("run")
def run(
    config: Path = _CONFIG_OPTION,
    json_out: bool = _JSON_OPTION,
    embedded: bool = _EMBEDDED_OPTION,
    upload: Optional[list[Path]] = _UPLOAD_OPTION,
    run_id: Optional[str] = typer.Option(
        None, "--run-id", help="Start or resume this run: the stages an earlier attempt completed are skipped (default: a new run)."
    ),
    verbose: bool = _VERBOSE_OPTION,
) -> None:
    """Run the whole pipeline on the dataset the config describes.

    With AWS_ENDPOINT_URL set it targets that endpoint (LocalStack, 'updraft up'); with --embedded it starts its own (empty: add --upload DATA to put local files in it); otherwise real AWS.
    """
    _run_command(
        lambda kind: _run_pipeline_cli(config, target_kind=kind, run_id=run_id, upload=upload),
        _summary_text,
        json_out=json_out,
        embedded=embedded,
        verbose=verbose,
    )


@app.command()
def demo(
    rows: int = typer.Option(30000, help="Rows of sample claims to generate."),
    json_out: bool = typer.Option(False, "--json", help="Print the run's JSON object on stdout."),
    keep_endpoint: bool = typer.Option(False, "--keep-endpoint", help="Leave the demo endpoint running."),
    verbose: bool = _VERBOSE_OPTION,
) -> None:
    """The whole pipeline on the embedded target with a generated benefit-claims dataset."""

    def start(_: str | None) -> dict[str, Any]:
        from flows.demo import run_demo  # it starts its own embedded endpoint

        return run_demo(rows=rows, keep_endpoint=keep_endpoint)

    _run_command(start, _summary_text, json_out=json_out, embedded=False, verbose=verbose)


# --------------------------------------------------------------------------------------
# One command per stage: each runs one flow of flows/stages.py on the run that --run-id names.


def _describe_ingest(r: dict[str, Any]) -> str:
    rejected = len(r.get("files_rejected") or [])
    return (
        f"ingested {r['files']} files ({r.get('files_skipped', 0)} already ingested, {rejected} rejected): "
        f"{r['rows_in']} rows in, {r['rows_curated']} curated, {r['rows_quarantined']} quarantined "
        f"({r['quarantine_uri']})"
    )


def _describe_preprocess(r: dict[str, Any]) -> str:
    rows = ", ".join(f"{name} {n}" for name, n in r["rows"].items())
    return f"run {r['run_id']}: preprocessed {rows} rows into {len(r['feature_names'])} features ({r['features_uri']})"


def _describe_train(r: dict[str, Any]) -> str:
    metrics = ", ".join(f"{k}={v:.4f}" for k, v in r["metrics"].items() if isinstance(v, (int, float)))
    return f"run {r['run_id']}: training job {r['job_name']} {r['status']} in {r['duration_s']:.1f} s ({metrics}): {r['model_uri']}"


def _describe_evaluate(r: dict[str, Any]) -> str:
    return f"run {r['run_id']}: gate {'passed' if r['passed'] else 'failed'}: {r['reason']}"


def _describe_register(r: dict[str, Any]) -> str:
    if r["skipped"]:
        return f"run {r['run_id']}: not registered: {r['skipped']}"
    return (
        f"run {r['run_id']}: version {r['version']} of {r['model_package_group']} "
        f"({r['approval_status']}): {r['model_package_arn']}"
    )


def _describe_deploy(r: dict[str, Any]) -> str:
    if r["skipped"]:
        return f"run {r['run_id']}: endpoint {r['endpoint_name']} not deployed: {r['skipped']}"
    return f"run {r['run_id']}: endpoint {r['endpoint_name']} answers at {r['url']}"


#: name -> (help, one-line summary, whether it may start a new run)
_STAGE_COMMANDS: dict[str, tuple[str, Callable[[dict[str, Any]], str], bool]] = {
    "ingest": ("Only the ingest stage: validate raw files into curated Parquet and the quarantine.", _describe_ingest, True),
    "preprocess": (
        "Only the preprocess stage: fit the features on the curated data and write a run's splits "
        "(a new run unless --run-id names one).",
        _describe_preprocess,
        True,
    ),
    "train": ("Only the train stage: train the model of --run-id on the splits 'updraft preprocess' wrote.", _describe_train, False),
    "evaluate": (
        "Only the evaluate stage: judge the model of --run-id against baselines; writes its evaluation.json.",
        _describe_evaluate,
        False,
    ),
    "register": (
        "Only the register stage: add the model of --run-id to the registry, approved only if its evaluation passed.",
        _describe_register,
        False,
    ),
    "deploy": (
        "Only the deploy stage: serve the model of --run-id at the config's endpoint if its evaluation passed.",
        _describe_deploy,
        False,
    ),
}


for _name, (_help, _describe, _new_run) in _STAGE_COMMANDS.items():
    if _name == "ingest":
        continue  # below: it also watches
    app.command(_name, help=_help)(
        _flow_command(functools.partial(_run_stage_cli, _name), _describe, _NEW_RUN_OPTION if _new_run else _RUN_OPTION)
    )

_ingest_once = _flow_command(functools.partial(_run_stage_cli, "ingest"), _describe_ingest, _NEW_RUN_OPTION)


@app.command("ingest")
def ingest(
    config: Path = _CONFIG_OPTION,
    json_out: bool = typer.Option(
        False, "--json", help="Print one JSON object on stdout (with --watch: one line per ingest run); logs stay on stderr."
    ),
    embedded: bool = _EMBEDDED_OPTION,
    run_id: Optional[str] = _NEW_RUN_OPTION,
    watch: bool = typer.Option(
        False, "--watch", help="Keep running: ingest whenever new or changed files arrive; SIGINT/SIGTERM stops between runs."
    ),
    interval: float = typer.Option(30.0, "--interval", min=0.1, help="With --watch: seconds between looks at the source prefix."),
    queue_url: Optional[str] = typer.Option(
        None,
        "--queue-url",
        help="With --watch: wait on this SQS queue of the bucket's S3 ObjectCreated notifications "
        "instead of listing the prefix every interval (default: the config's ingest.queue_url).",
    ),
    max_runs: Optional[int] = typer.Option(None, "--max-runs", min=1, help="With --watch: stop after this many ingest runs."),
    verbose: bool = _VERBOSE_OPTION,
) -> None:
    """Only the ingest stage: validate raw files into curated Parquet and the quarantine.

    With --watch it keeps going: it ingests what is new at once, then again whenever files
    arrive (by polling, or by S3 event notifications through SQS with --queue-url).
    """
    if not watch:
        if queue_url or max_runs is not None:
            _fail("--queue-url and --max-runs go with --watch")
        _ingest_once(config=config, json_out=json_out, embedded=embedded, run_id=run_id, verbose=verbose)
        return
    if run_id:
        _fail("--run-id does not go with --watch: every ingest run gets its own id")
    _configure_logging(verbose)
    with _user_errors(), _stdout_to_stderr() as write_stdout, _target(embedded) as kind:
        failed = _watch_ingest_cli(
            config,
            target_kind=kind,
            interval=interval,
            queue_url=queue_url,
            max_runs=max_runs,
            emit=(lambda r: write_stdout(json.dumps(r, default=str) + "\n"))
            if json_out
            else (lambda r: typer.echo(r["error"] if "error" in r else _describe_ingest(r), err=True)),
        )
    if failed and max_runs is not None:
        _fail(f"{failed} of the ingest runs failed (see the log above)", code=1)


def _watch_ingest_cli(
    config_path: Path,
    *,
    target_kind: str | None,
    interval: float,
    queue_url: str | None,
    max_runs: int | None,
    emit: Callable[[dict[str, Any]], None],
) -> int:
    """Watch the source prefix; returns how many ingest runs failed."""
    from tasks.aws.target import resolve_target
    from tasks.config import load_config
    from tasks.contracts import load_contract
    from tasks.ingest.watch import Polling, QueueEvents, call_in_thread, find_pending, pipeline_prefixes, stop_on_signals, watch
    from tasks.layout import Layout

    config = load_config(config_path)
    target = resolve_target(target_kind, config.aws.region)
    # what preflight checks, less the source files: the watcher waits for those
    target.check_bucket(config.bucket)
    fs = target.filesystem()
    load_contract(config.contract, fs)
    _quiet_prefect_tracebacks()
    from flows.stages import ingest_flow

    layout = Layout.for_config(config)
    exclude = pipeline_prefixes(layout)
    queue_url = queue_url or config.ingest.queue_url
    if queue_url:
        waiter: Any = QueueEvents(
            target.client("sqs"), queue_url, bucket=config.bucket, prefix=config.source, exclude=exclude,
            wait_s=max(1, int(min(interval, 20))),
        )
        log.info("watching %s through the SQS queue %s", config.source_uri, queue_url)
    else:
        waiter = Polling(interval)
        log.info("watching %s every %g s", config.source_uri, interval)
    stop = threading.Event()
    stop_on_signals(stop)
    failed = watch(
        pending=lambda: find_pending(target.filesystem(), config.source_uri, layout.manifest(), exclude),
        ingest=lambda: call_in_thread(lambda: ingest_flow(str(config_path), target_kind=target_kind)),
        waiter=waiter,
        stop=stop,
        on_result=emit,
        max_runs=max_runs,
    )
    log.info("stopped watching %s", config.source_uri)
    return failed


@app.command()
def up(
    port: int = typer.Option(4566, help="Port to listen on (LocalStack's, by default)."),
    host: str = typer.Option("127.0.0.1", help="Interface to bind; keep loopback unless you mean it."),
) -> None:
    """Serve the embedded AWS endpoint in the foreground until interrupted (like LocalStack)."""
    _configure_logging()
    from tasks.aws.embedded import EmbeddedAWS

    with _user_errors():
        aws = EmbeddedAWS(port=port, host=host).start(set_env=False)
        typer.echo(f"updraft: embedded AWS endpoint listening on {aws.url}", err=True)
        typer.echo(
            f"  export AWS_ENDPOINT_URL={aws.url} AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing "
            "AWS_DEFAULT_REGION=us-east-1",
            err=True,
        )
        typer.echo("  Ctrl-C stops it; its state lives in memory and goes with it.", err=True)
        stop = threading.Event()
        # Both signals only set the event: a KeyboardInterrupt raised wherever the main
        # thread happens to be (inside a lock, mid-log) could leave the server half stopped.
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        try:
            while not stop.wait(0.5):
                pass
        finally:
            aws.stop()
            typer.echo("updraft: embedded AWS endpoint stopped", err=True)


@endpoint_app.command("list")
def endpoint_list(json_out: bool = typer.Option(False, "--json")) -> None:
    """Show the local endpoints with their URLs and whether they answer."""
    from tasks.deploy.local_endpoints import list_local_endpoints

    with _user_errors():
        endpoints = [_as_dict(e) for e in list_local_endpoints()]
        if json_out:
            typer.echo(json.dumps(endpoints, default=str))
            return
        if not endpoints:
            typer.echo("no local endpoints", err=True)
            return
        width = max(len(e["name"]) for e in endpoints)
        for e in endpoints:
            state = "InService" if e.get("alive") else "Failed (not answering)"
            typer.echo(f"{e['name']:<{width}}  {state:<22}  {e['url']}")


@endpoint_app.command("delete")
def endpoint_delete(name: str = typer.Argument(..., help="Endpoint name (see 'updraft endpoint list').")) -> None:
    """Stop a local endpoint and remove its files (and its record on the current target, if reachable)."""
    _configure_logging()
    from tasks.deploy.local_endpoints import delete_local_endpoint

    with _user_errors():
        delete_local_endpoint(name)
        _forget_endpoint_record(name)
        typer.echo(f"deleted endpoint {name}", err=True)


def _forget_endpoint_record(name: str) -> None:
    """Best effort: the SageMaker API record lives on whatever endpoint AWS_ENDPOINT_URL names."""
    if not os.environ.get("AWS_ENDPOINT_URL"):
        return
    from tasks.aws.target import resolve_target
    from tasks.deploy.sagemaker_endpoints import delete_endpoint_record

    try:
        delete_endpoint_record(resolve_target("local").client("sagemaker"), name)
    except Exception as exc:  # the process is gone either way; the record is bookkeeping
        log.warning("could not delete the SageMaker record of %s: %s", name, exc)


# --------------------------------------------------------------------------------------
# The model registry: what teams look at and approve with. These act on a registry that
# already exists (AWS_ENDPOINT_URL, e.g. 'updraft up', or real AWS): an --embedded
# endpoint would start empty and vanish with the command.

_NO_EMBEDDED = (
    "--embedded starts an empty AWS endpoint that ends with this command, so it holds no model registry: "
    "point AWS_ENDPOINT_URL at the endpoint your runs used (e.g. 'updraft up') or use real AWS"
)
_REGISTRY_EMBEDDED_OPTION = typer.Option(False, "--embedded", hidden=True)
_PACKAGE_ARGUMENT = typer.Argument(
    ..., help="A model package ARN, or GROUP/VERSION as 'updraft models list' shows it (e.g. fraud-claims/3)."
)


@contextlib.contextmanager
def _registry(region: str | None) -> Iterator[Any]:
    """A SageMaker client for the target the environment names, with AWS failures as one-line errors."""
    from tasks.aws.target import resolve_target
    from tasks.registry import registry_errors

    sm = resolve_target(None, region).client("sagemaker")
    with registry_errors(sm):
        yield sm


def _format_value(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def _versions_table(versions: list[dict[str, Any]]) -> str:
    from tasks.evaluate import metric_label

    header = ("VERSION", "CREATED (UTC)", "STATUS", "METRIC", "VALUE", "RUN", "SERVING")
    rows = [
        (
            str(v["version"]),
            str(v["created"] or "-")[:19].replace("T", " "),
            str(v["approval_status"] or "-"),
            metric_label(v["metric"]) if v["metric"] else "-",
            _format_value(v["value"]),
            v["run_id"] or "-",
            "*" if v["current"] else "",
        )
        for v in versions
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows])


@models_app.command("list")
def models_list(
    config: Path = _CONFIG_OPTION,
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object: the group, the endpoint, its versions."),
    embedded: bool = _REGISTRY_EMBEDDED_OPTION,
    verbose: bool = _VERBOSE_OPTION,
) -> None:
    """Show the versions of the config's model package group: status, main metric, run, and which one the endpoint serves."""
    _configure_logging(verbose)
    if embedded:
        _fail(_NO_EMBEDDED)
    from tasks.config import load_config
    from tasks.registry import list_model_versions

    with _user_errors():
        cfg = load_config(config)
        with _registry(cfg.aws.region) as sm:
            versions = list_model_versions(sm, cfg.name, endpoint_name=cfg.endpoint_name)
    if json_out:
        typer.echo(
            json.dumps(
                {"model_package_group": cfg.name, "endpoint_name": cfg.endpoint_name, "versions": versions}, default=str
            )
        )
        return
    if not versions:
        typer.echo(f"no versions of {cfg.name} in the model registry yet", err=True)
        return
    typer.echo(_versions_table(versions))
    if not any(v["current"] for v in versions):
        typer.echo(f"(endpoint {cfg.endpoint_name} serves none of these, or does not exist)", err=True)
    typer.echo(f"approve or reject one with 'updraft approve {cfg.name}/VERSION' or 'updraft reject {cfg.name}/VERSION'", err=True)


def _set_approval_cli(status: str, package: str, reason: str | None, json_out: bool, embedded: bool, verbose: bool) -> None:
    _configure_logging(verbose)
    if embedded:
        _fail(_NO_EMBEDDED)
    from tasks.registry import package_region, set_approval_status

    with _user_errors():
        with _registry(package_region(package)) as sm:
            entry = set_approval_status(sm, package, status, reason=reason)
    if json_out:
        typer.echo(json.dumps(entry, default=str))
    was = f" (was {entry['previous_status']})" if entry["previous_status"] != entry["approval_status"] else ""
    typer.echo(
        f"version {entry['version']} of {entry['model_package_group']} is {entry['approval_status']}{was}: {entry['arn']}",
        err=True,
    )


_REASON_OPTION = typer.Option(None, "--reason", help="Why: recorded as the version's ApprovalDescription.")


@app.command("approve")
def approve(
    package: str = _PACKAGE_ARGUMENT,
    reason: Optional[str] = _REASON_OPTION,
    json_out: bool = typer.Option(False, "--json", help="Print the version, as updated, as one JSON object."),
    embedded: bool = _REGISTRY_EMBEDDED_OPTION,
    verbose: bool = _VERBOSE_OPTION,
) -> None:
    """Approve a model version by hand (its ApprovalStatus becomes Approved), whatever the gate said."""
    _set_approval_cli("Approved", package, reason, json_out, embedded, verbose)


@app.command("reject")
def reject(
    package: str = _PACKAGE_ARGUMENT,
    reason: Optional[str] = _REASON_OPTION,
    json_out: bool = typer.Option(False, "--json", help="Print the version, as updated, as one JSON object."),
    embedded: bool = _REGISTRY_EMBEDDED_OPTION,
    verbose: bool = _VERBOSE_OPTION,
) -> None:
    """Reject a model version by hand (its ApprovalStatus becomes Rejected), e.g. one found wrong after the gate."""
    _set_approval_cli("Rejected", package, reason, json_out, embedded, verbose)


@app.command("transform")
def transform(
    input_uri: str = typer.Argument(..., help="An s3:// prefix (or one object, or a local folder) of records to score."),
    output_uri: str = typer.Argument(..., help="Where each input object's '<name>.out' goes (s3:// or a local folder)."),
    model: str = typer.Option(..., "--model", help="The model: an s3:// or local model.tar.gz, or an extracted model folder."),
    content_type: str = typer.Option("text/csv", "--content-type", help="text/csv, application/json or application/x-parquet."),
    accept: str = typer.Option("application/json", "--accept", help="application/json or text/csv."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
    verbose: bool = typer.Option(False, "-v", "--verbose"),
) -> None:
    """Batch transform: score every record under a prefix with the inference server's own code, as SageMaker does."""
    _configure_logging(verbose)
    import tempfile

    import fsspec

    from images.inference.batch import batch_transform
    from tasks.aws.target import resolve_target

    with _user_errors():
        remote = any(uri.startswith("s3://") for uri in (input_uri, output_uri, model))
        fs = resolve_target(None, None).filesystem() if remote else fsspec.filesystem("file")
        with tempfile.TemporaryDirectory(prefix="updraft-transform-") as tmp:
            model_path = model
            if model.startswith("s3://"):
                model_path = str(Path(tmp) / "model.tar.gz")
                fs.get_file(model, model_path)
            result = batch_transform(fs, input_uri, output_uri, model_path, content_type, accept)
        out = result.to_dict()
        if json_out:
            typer.echo(json.dumps(out, default=str))
        else:
            typer.echo(f"updraft transform: {json.dumps(out, default=str)}", err=True)


def _as_dict(obj: Any) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else dict(obj)


def main() -> None:  # pragma: no cover - console script entry
    app()


if __name__ == "__main__":  # pragma: no cover
    app()

