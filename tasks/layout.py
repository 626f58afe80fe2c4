"""Where each stage's data lives in the bucket (ARCHITECTURE.md, "The path of the data").

Every S3 path string in updraft comes from here, so the layout is one readable table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Layout:
    bucket: str
    dataset: str
    #: the config's ``stages.results_prefix``: Prefect's persisted stage results (tasks/resume.py)
    results_prefix: str = "prefect/results/"

    @classmethod
    def for_config(cls, config: Any) -> "Layout":
        """The layout of a pipeline config (bucket, dataset name, results prefix)."""
        return cls(config.bucket, config.name, config.stages.results_prefix)

    def _uri(self, *parts: str) -> str:
        return "s3://" + "/".join([self.bucket, *parts])

    def results(self) -> str:
        """Every run's persisted stage results, under ``<dataset>/<run_id>/``."""
        return self._uri(self.results_prefix.strip("/"), self.dataset) + "/"

    def curated(self) -> str:
        return self._uri("curated", self.dataset) + "/"

    def quarantine(self, run_id: str) -> str:
        return self._uri("quarantine", run_id) + "/"

    def manifest(self) -> str:
        """Every raw object ingest has taken (key, ETag, rows, outputs): what the next run skips."""
        return self._uri("manifests", self.dataset, "manifest.json")

    def staging(self) -> str:
        """Where ingest writes a run's output (``<run_id>/`` below) before moving it into
        ``curated/`` and ``quarantine/``; outside ``curated/`` so no reader ever sees it."""
        return self._uri("staging", self.dataset) + "/"

    def features(self, run_id: str) -> str:
        return self._uri("features", run_id) + "/"

    def split(self, run_id: str, split: str) -> str:
        return self._uri("features", run_id, split) + "/"

    def transform(self, run_id: str) -> str:
        return self._uri("features", run_id, "transform.json")

    def model_prefix(self, run_id: str) -> str:
        return self._uri("models", run_id) + "/"

    def model(self, run_id: str) -> str:
        return self._uri("models", run_id, "model.tar.gz")

    def evaluation(self, run_id: str) -> str:
        return self._uri("models", run_id, "evaluation.json")

    def report(self, run_id: str) -> str:
        return self._uri("reports", run_id, "report.html")
