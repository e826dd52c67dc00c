"""Datasets: sources (npz, TFDS, packaged), class-balanced splits, grain pipelines.

Submodules imported by name: `data.run_data` (a training run's data as its config
describes it, evaluation data alone, host-side resizing) and `data.prefetch` (a
background thread reading an iterator ahead).
"""

from effcv_jax.data.pipeline import Subset, WithSoftLabels, eval_batches, train_iterator
from effcv_jax.data.sources import (ArraySource, DataError, load_arrays, load_source,
                                    resolve_data_dir)
from effcv_jax.data.splits import Split, make_split
