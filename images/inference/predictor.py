"""A loaded model answering request bodies: the one code path of the server and of batch transform.

:meth:`Predictor.predict` gives exactly what :meth:`tasks.modelbundle.ModelBundle.predict_frame`
gives for the same rows, for every task and algorithm: plain CSV rows take the pandas-free
hot path (:mod:`images.inference.csv_rows`) into ``predict_features`` (or XGBoost's C call,
:mod:`images.inference.booster_call`, where it is proven to give the same) and the same
post-processing; every other body is parsed into a frame and handed to ``predict_frame``
itself. Input the transform refuses becomes a 400 naming the column.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from images.inference.booster_call import direct_predict_for
from images.inference.csv_rows import CsvRowEncoder
from images.inference.payloads import CSV, InvalidRequest, check_not_empty, format_predictions, parse_body
from tasks.errors import DataError
from tasks.features.transform import decode_labels

MULTICLASS = "multiclass_classification"


class Predictor:
    """Wraps a :class:`tasks.modelbundle.ModelBundle` (anything with ``spec``, ``predict_features``
    and ``predict_frame``) loaded once; cheap to call, one request at a time per instance."""

    def __init__(self, bundle: Any) -> None:
        self.bundle = bundle
        self.spec: Mapping[str, Any] = bundle.spec
        self._rows = CsvRowEncoder.for_spec(self.spec)
        # XGBoost's C entry point called directly where it provably predicts the same.
        self._predict_features = (direct_predict_for(bundle) if self._rows is not None else None) or bundle.predict_features
        self._multiclass = self.spec["task"] == MULTICLASS

    @property
    def skips_pandas(self) -> bool:
        """True when plain CSV rows take the pandas-free path (models without date-time inputs)."""
        return self._rows is not None

    def predict(self, body: bytes, content_type: str) -> list[Any]:
        """One JSON-ready prediction per row of ``body`` (``content_type`` already checked)."""
        check_not_empty(body)
        if content_type == CSV and self._rows is not None:
            X = self._rows.encode(body)
            if X is not None:
                return self._outputs(self._predict_features(X))
        frame = parse_body(body, content_type, self.spec)
        try:
            return self.bundle.predict_frame(frame)
        except DataError as exc:  # input the transform refuses; its message names the column
            raise InvalidRequest(str(exc)) from None

    def respond(self, body: bytes, content_type: str, accept: str) -> tuple[bytes, int]:
        """The response body for ``body`` in the ``accept`` format, and the number of rows predicted."""
        predictions = self.predict(body, content_type)
        return format_predictions(predictions, accept), len(predictions)

    def _outputs(self, raw: np.ndarray) -> list[Any]:
        """``predict_frame``'s post-processing: the label for multiclass, else the float score."""
        if self._multiclass:
            return list(decode_labels(raw.argmax(axis=1), self.spec))
        return raw.astype(np.float64).tolist()
