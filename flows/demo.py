"""``updraft demo``: the whole pipeline on the embedded target with generated benefit claims.

Everything it starts (the embedded endpoint, Dask workers, the model endpoint unless
``--keep-endpoint``) is stopped before it returns.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger("updraft.demo")


def run_demo(*, rows: int = 30000, keep_endpoint: bool = False, invoke_rows: int = 5) -> dict[str, Any]:
    from tasks.aws.embedded import EmbeddedAWS
    from tasks.aws.target import resolve_target
    from tasks.config import load_config
    from tasks.sample import write_sample

    with EmbeddedAWS() as aws, tempfile.TemporaryDirectory(prefix="updraft-demo-") as tmp:
        log.info("embedded AWS endpoint at %s", aws.url)
        sample = write_sample(Path(tmp), n_rows=rows)
        config = load_config(sample.config)
        target = resolve_target("embedded", config.aws.region)
        s3 = target.client("s3")
        s3.create_bucket(Bucket=config.bucket)
        for path in sample.data_files:
            s3.upload_file(str(path), config.bucket, config.source + path.name)
        log.info("uploaded %d raw CSV files (%d rows) to %s", len(sample.data_files), rows, config.source_uri)

        from flows.cli import _run_pipeline_cli

        summary = _run_pipeline_cli(sample.config, target_kind="embedded", run_id=None)
        deploy = summary.get("deploy") or {}
        if deploy.get("url"):
            try:
                summary["demo"] = _invoke(deploy["url"], sample.data_files[0], summary, invoke_rows)
            finally:
                if not keep_endpoint:
                    from tasks.deploy.local_endpoints import delete_local_endpoint

                    delete_local_endpoint(deploy["endpoint_name"])
                    summary.setdefault("demo", {})["endpoint_deleted"] = True
        return summary


def _invoke(url: str, data_file: Path, summary: dict[str, Any], n: int) -> dict[str, Any]:
    """POST a few raw rows (feature columns in contract order, label absent) as a client would."""
    import io

    import pandas as pd
    import requests

    from tasks.modelbundle import load_model_bundle

    columns = load_model_bundle(summary["train"]["model_dir"]).spec["input_columns"]
    frame = pd.read_csv(data_file, dtype=str, nrows=200, keep_default_na=False)
    frame = frame[columns].head(n)
    body = io.StringIO()
    frame.to_csv(body, header=False, index=False)
    response = requests.post(url, data=body.getvalue(), headers={"Content-Type": "text/csv"}, timeout=30)
    response.raise_for_status()
    return {"rows": frame.to_dict(orient="records"), "predictions": response.json()["predictions"]}
