"""The feature engine: fit statistics once on the train split, transform every row the same way.

``transform`` is what serving and training import (NumPy and pandas only);
``preprocess`` is the Dask stage that fits and writes the feature splits.
"""
