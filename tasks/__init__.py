"""updraft's stages as plain functions (domain logic), each wrapped as a Prefect task at its edge.

Stage packages: ``ingest`` / ``contracts`` (raw S3 files to curated Parquet), ``features``
(Dask preprocessing), ``training`` (the training job), ``evaluate``, ``registry``,
``deploy``, ``report``. ``aws`` is the only place that knows where AWS is.
"""
