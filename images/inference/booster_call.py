"""XGBoost's C prediction entry point, called directly: the last saving on a one-row request.

For one row, ``Booster.inplace_predict`` (xgboost 3.2) spends more time in Python than in
C: it serialises its arguments to JSON on every call and wraps the output through a class
built per call, about 65 us against about 50 us for the C call itself (measured on this
project's 2-core machines with a 100-tree model; a request costs about 350 us in all).
:class:`DirectPredict` makes the very call ``inplace_predict`` makes for a NumPy matrix
(``XGBoosterPredictFromDense``, all trees, NaN as missing) with its arguments built once,
and copies the output out.

That reaches into xgboost's internals (``xgboost.core._LIB``), so it is used only after
proving itself: :func:`direct_predict_for` returns it only when it gives bit for bit what
``ModelBundle.predict_features`` gives on probe matrices, shapes included; otherwise (an
xgboost without these internals, a bundle that predicts differently, anything raising) the
server keeps calling ``predict_features``.
"""

from __future__ import annotations

import ctypes
import logging
import math
from typing import Any, Callable

import numpy as np

logger = logging.getLogger("updraft.serve")

Predict = Callable[[np.ndarray], np.ndarray]


class DirectPredict:
    """``booster.inplace_predict(X)`` for float32 matrices, without the wrapper's per-call Python."""

    def __init__(self, booster: Any) -> None:
        from xgboost.core import _LIB, _check_call, c_bst_ulong, make_jcargs

        self._lib = _LIB
        self._check = _check_call
        self._ulong = c_bst_ulong
        self._handle = booster.handle
        self._booster = booster  # keeps the handle alive
        # The arguments inplace_predict builds for predict_type="value" and default iterations.
        self._args = make_jcargs(
            type=0, training=False, iteration_begin=0, iteration_end=0, missing=math.nan, strict_shape=False, cache_id=0
        )

    def __call__(self, X: np.ndarray) -> np.ndarray:
        if X.dtype != np.float32 or X.ndim != 2:
            raise TypeError(f"DirectPredict takes a 2-d float32 matrix, got {X.dtype} {X.shape}")
        face = X.__array_interface__
        strides = "null" if face["strides"] is None else f"[{face['strides'][0]}, {face['strides'][1]}]"
        interface = (
            f'{{"data": [{face["data"][0]}, false], "strides": {strides}, "descr": [["", "<f4"]], '
            f'"typestr": "<f4", "shape": [{X.shape[0]}, {X.shape[1]}], "version": 3}}'
        ).encode()
        preds = ctypes.POINTER(ctypes.c_float)()
        shape = ctypes.POINTER(self._ulong)()
        dims = self._ulong()
        self._check(
            self._lib.XGBoosterPredictFromDense(
                self._handle, interface, self._args, ctypes.c_void_p(), ctypes.byref(shape), ctypes.byref(dims), ctypes.byref(preds)
            )
        )
        out_shape = tuple(int(shape[i]) for i in range(dims.value))
        size = math.prod(out_shape)
        # The buffer belongs to XGBoost and is reused by the next call: copy it out.
        values = np.frombuffer((ctypes.c_float * size).from_address(ctypes.addressof(preds.contents)), dtype=np.float32)
        return values.copy().reshape(out_shape)


def _probes(n_features: int) -> list[np.ndarray]:
    """Matrices in the layouts the server sends: one row, several rows column-major (as
    ``apply_transform`` returns them) and row-major, with missing values and extremes."""
    rng = np.random.default_rng(0)
    block = rng.normal(0.0, 3.0, size=(7, n_features)).astype(np.float32)
    block[1, ::2] = np.nan
    block[2] = 0.0
    block[3] = 1e30
    return [
        np.asfortranarray(block[:1]),
        np.asfortranarray(block[1:2]),
        np.asfortranarray(block),
        np.ascontiguousarray(block),
    ]


def direct_predict_for(bundle: Any) -> Predict | None:
    """A :class:`DirectPredict` for an XGBoost bundle that predicts exactly as its
    ``predict_features`` does, else None (use ``predict_features``)."""
    booster = getattr(bundle, "booster", None)
    if booster is None or getattr(bundle, "algorithm", None) != "xgboost":
        return None
    try:
        direct = DirectPredict(booster)
        for X in _probes(len(bundle.spec["feature_names"])):
            expected = np.asarray(bundle.predict_features(X))
            got = direct(X)
            if got.shape != expected.shape or got.dtype != expected.dtype or not np.array_equal(got, expected, equal_nan=True):
                logger.warning("XGBoost's direct call disagrees with predict_features on a probe; using predict_features")
                return None
    except Exception as exc:  # an xgboost without these internals, or a call that fails: the public path works
        logger.warning("XGBoost's direct call is unavailable (%s: %s); using predict_features", type(exc).__name__, exc)
        return None
    return direct
