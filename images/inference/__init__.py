"""The inference image: SageMaker's serving contract, runnable as a plain process.

``serve`` is the server (``GET /ping``, ``POST /invocations``); ``payloads`` reads request
bodies and writes responses; ``predictor`` turns a body into predictions (the one code
path of the server and of ``batch``, batch transform over an S3 prefix); ``csv_rows`` and
``booster_call`` are the hot path of a single CSV row.
"""
