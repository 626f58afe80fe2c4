"""The hot path: plain CSV rows straight to the model's input matrix, without pandas.

A one-row request spends about 1 ms in pandas (a frame, ``to_numeric``, the transform's
per-column passes) against about 0.1 ms in XGBoost. :class:`CsvRowEncoder` compiles
``transform.json`` once into lookups and one :func:`fused_numeric` call over all scaled
numeric columns, and encodes the rows it can read with certainty: numbers written plainly
(digits, sign, point, exponent), empty fields for missing values, no quotes. Anything else
(quotes, spaces around numbers, ``NA`` or ``inf`` text, a wrong field count, bad UTF-8, a
date-time column in the model) is left to the general parser, which also words the 400.
Every value it encodes equals what :func:`tasks.features.transform.apply_transform` gives
for the same text (``tests/unit/test_serve_payloads.py`` checks it for every transform).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from tasks.features.kernels import NumericParams, fused_numeric
from tasks.features.transform import MISSING_CODE, murmurhash3_32, normalized_spec, outputs_of

#: The characters of a plainly written number; a field made only of them is parsed by
#: ``float`` exactly as ``pandas.to_numeric`` parses it (both round correctly).
_NUMBER_CHARS = "0123456789+-.eE"
#: Hash-bucket lookups remembered per column (one entry per distinct value seen).
_HASH_CACHE_LIMIT = 100_000


class CsvRowEncoder:
    """``transform.json`` compiled for CSV text; build with :meth:`for_spec`."""

    def __init__(self, spec: Mapping[str, Any]) -> None:
        spec = normalized_spec(spec)
        columns = list(spec["input_columns"])
        index = {name: i for i, name in enumerate(columns)}
        position = {name: j for j, name in enumerate(spec["feature_names"])}
        self.n_inputs = len(columns)
        self.n_features = len(position)
        # Numeric inputs are parsed into one float64 table, column k = input _numeric_inputs[k].
        self._numeric_inputs = [index[e["name"]] for e in spec["numeric"]]
        column = {e["name"]: k for k, e in enumerate(spec["numeric"])}
        scaled = [e for e in spec["numeric"] if e.get("bins") is None]
        self._scaled_columns = np.array([column[e["name"]] for e in scaled], dtype=np.intp)
        self._scaled_is_all = len(scaled) == len(spec["numeric"])
        self._scaled_outputs = np.array([position[e["name"]] for e in scaled], dtype=np.intp)
        clips = [e["clip"] or (-np.inf, np.inf) for e in scaled]
        self._params = (
            NumericParams(
                fill=np.array([e["fill"] for e in scaled], dtype=np.float64),
                lo=np.array([c[0] for c in clips], dtype=np.float64),
                hi=np.array([c[1] for c in clips], dtype=np.float64),
                log=np.array([1.0 if e["log1p"] else 0.0 for e in scaled]),
                shift=np.array([e["shift"] for e in scaled], dtype=np.float64),
                inv_scale=np.array([1.0 / e["divisor"] for e in scaled], dtype=np.float64),
            )
            if scaled
            else None
        )
        self._binned = [
            (column[e["name"]], position[e["name"]], np.asarray(e["bins"], dtype=np.float64), float(e["fill"]))
            for e in spec["numeric"]
            if e.get("bins") is not None
        ]
        self._indicators = [
            (column[e["name"]], position[f"{e['name']}__missing"]) for e in spec["numeric"] if e["missing_indicator"]
        ]
        self._vocabularies: list[tuple[int, list[int], dict[str, int], int, bool]] = []
        self._hashed: list[tuple[int, int, str, int, dict[str, float]]] = []
        for entry in spec["categorical"]:
            name = entry["name"]
            if entry["encode"] == "hash":
                self._hashed.append((index[name], position[name], name, int(entry["hash_bits"]), {}))
                continue
            codes: dict[str, int] = {}
            for k, value in enumerate(entry["vocabulary"]):
                codes.setdefault(value, k + 1)  # the first occurrence wins, as an index lookup does
            if entry["encode"] == "onehot":
                outputs = [position[out] for out in outputs_of(spec, name)]
                self._vocabularies.append((index[name], outputs, codes, int(entry["oov_code"]), True))
            else:
                self._vocabularies.append((index[name], [position[name]], codes, int(entry["oov_code"]), False))

    @classmethod
    def for_spec(cls, spec: Mapping[str, Any]) -> CsvRowEncoder | None:
        """An encoder for ``spec``, or None when its model takes inputs only the general path reads
        (date-time columns, or features missing from the input columns)."""
        full = normalized_spec(spec)
        if full["datetime"]:
            return None
        inputs = set(full["input_columns"])
        if any(e["name"] not in inputs for kind in ("numeric", "categorical") for e in full[kind]):
            return None
        return cls(full)

    def encode(self, body: bytes) -> np.ndarray | None:
        """The float32 input matrix (rows x features, column-major, as ``apply_transform`` returns
        it) of a CSV body, or None when the body needs the general parser."""
        if b'"' in body or b"\x00" in body:
            return None
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return None
        if "\r" in text:
            text = text.replace("\r\n", "\n")
            if "\r" in text:
                return None
        if text.startswith("\ufeff"):
            return None
        if text.endswith("\n"):
            text = text[:-1]
        rows = [line.split(",") for line in text.split("\n")]
        width = self.n_inputs
        for row in rows:
            if len(row) != width:
                return None
        numbers = self._numbers(rows)
        if numbers is None:
            return None
        out = np.empty((len(rows), self.n_features), dtype=np.float32, order="F")
        if self._params is not None:
            block = numbers if self._scaled_is_all else numbers[:, self._scaled_columns]
            out[:, self._scaled_outputs] = fused_numeric(block, self._params)
        for k, j, bins, fill in self._binned:
            raw = numbers[:, k]
            out[:, j] = np.searchsorted(bins, np.where(np.isfinite(raw), raw, fill), side="right")
        for k, j in self._indicators:
            out[:, j] = ~np.isfinite(numbers[:, k])
        for i, outputs, codes, oov, onehot in self._vocabularies:
            found = np.array([codes.get(row[i], oov) if row[i] else oov for row in rows], dtype=np.float32)
            if onehot:
                for k, j in enumerate(outputs):
                    out[:, j] = found == k + 1
            else:
                out[:, outputs[0]] = found
        for i, j, name, bits, cache in self._hashed:
            out[:, j] = [_hash_code(row[i], name, bits, cache) for row in rows]
        return out

    def _numbers(self, rows: list[list[str]]) -> np.ndarray | None:
        """The numeric input columns as float64 rows x columns (NaN where empty), in
        ``_numeric_inputs`` order; None if a field is not plainly written as a number."""
        chars = _NUMBER_CHARS
        nan = math.nan
        inputs = self._numeric_inputs
        table = []
        for row in rows:
            values = []
            for i in inputs:
                field = row[i]
                if not field:
                    values.append(nan)
                    continue
                if field.strip(chars):
                    return None
                try:
                    value = float(field)
                except ValueError:
                    return None
                if value - value != 0.0:  # inf (an overflowing exponent): the general parser decides
                    return None
                values.append(value)
            table.append(values)
        return np.array(table, dtype=np.float64).reshape(len(rows), len(inputs))


def _hash_code(value: str, name: str, bits: int, cache: dict[str, float]) -> float:
    """1 + the bucket of ``"name=value"`` (0 when empty), as :func:`tasks.features.transform.hash_codes`."""
    if not value:
        return float(MISSING_CODE)
    code = cache.get(value)
    if code is None:
        code = float(abs(murmurhash3_32(f"{name}={value}")) % (1 << bits) + 1)
        if len(cache) < _HASH_CACHE_LIMIT:
            cache[value] = code
    return code
