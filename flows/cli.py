"""The ``updraft`` command line: run the pipeline, serve the embedded endpoint, manage endpoints.

Heavy imports (Prefect, Dask, pandas) happen inside the commands that need them, so
``updraft --help`` and user errors answer at once. Logs go to stderr; with ``--json``
stdout carries exactly one JSON object.
"""

from __future__ import annotations

import contextlib
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


def _run_pipeline_cli(config_path: Path, *, target_kind: str | None, run_id: str | None) -> dict[str, Any]:
    from tasks.aws.target import resolve_target
    from tasks.config import load_config
    from tasks.preflight import preflight

    config = load_config(config_path)
    preflight(config, resolve_target(target_kind, config.aws.region))
    _quiet_prefect_tracebacks()
    from flows.pipeline import pipeline_flow

    return pipeline_flow(str(config_path), run_id=run_id, target_kind=target_kind)


def _print_summary(summary: dict[str, Any]) -> None:
    from flows.summary import format_summary

    typer.echo(format_summary(summary), err=True)


@app.command()
def run(
    config: Path = typer.Option(..., "--config", "-c", help="Pipeline config (YAML)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object on stdout; logs stay on stderr."),
    embedded: bool = typer.Option(False, "--embedded", help="Start an embedded AWS endpoint for this run."),
    run_id: Optional[str] = typer.Option(None, "--run-id", help="Reuse a run id (default: a new one)."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Run the whole pipeline on the dataset the config describes.

    With AWS_ENDPOINT_URL set it targets that endpoint (LocalStack, 'updraft up'); with
    --embedded it starts its own; otherwise real AWS.
    """
    _configure_logging(verbose)
    with _user_errors(), _stdout_to_stderr() as write_stdout, _target(embedded) as kind:
        summary = _run_pipeline_cli(config, target_kind=kind, run_id=run_id)
        if json_out:
            write_stdout(json.dumps(summary, default=str) + "\n")
        else:
            _print_summary(summary)


@app.command()
def demo(
    rows: int = typer.Option(30000, help="Rows of sample claims to generate."),
    json_out: bool = typer.Option(False, "--json", help="Print the run's JSON object on stdout."),
    keep_endpoint: bool = typer.Option(False, "--keep-endpoint", help="Leave the demo endpoint running."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """The whole pipeline on the embedded target with a generated benefit-claims dataset."""
    _configure_logging(verbose)
    from flows.demo import run_demo

    with _user_errors(), _stdout_to_stderr() as write_stdout:
        summary = run_demo(rows=rows, keep_endpoint=keep_endpoint)
        if json_out:
            write_stdout(json.dumps(summary, default=str) + "\n")
        else:
            _print_summary(summary)


@app.command()
def ingest(
    config: Path = typer.Option(..., "--config", "-c", help="Pipeline config (YAML)."),
    json_out: bool = typer.Option(False, "--json"),
    embedded: bool = typer.Option(False, "--embedded"),
    run_id: Optional[str] = typer.Option(None, "--run-id"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Only the ingest stage: validate raw files into curated Parquet and the quarantine."""
    _configure_logging(verbose)
    with _user_errors(), _stdout_to_stderr() as write_stdout, _target(embedded) as kind:
        from flows.stages import ingest_flow
        from tasks.aws.target import resolve_target
        from tasks.config import load_config
        from tasks.preflight import preflight

        cfg = load_config(config)
        preflight(cfg, resolve_target(kind, cfg.aws.region))
        _quiet_prefect_tracebacks()
        result = ingest_flow(str(config), run_id=run_id, target_kind=kind)
        if json_out:
            write_stdout(json.dumps(result, default=str) + "\n")
        else:
            typer.echo(
                f"ingested {result['files']} files: {result['rows_in']} rows in, "
                f"{result['rows_curated']} curated, {result['rows_quarantined']} quarantined "
                f"({result['quarantine_uri']})",
                err=True,
            )


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
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
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


def _as_dict(obj: Any) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else dict(obj)


def main() -> None:  # pragma: no cover - console script entry
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
