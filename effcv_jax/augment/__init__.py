"""Batch augmentations for the jitted train step: `f(key, images, labels) -> (images, labels)`.

Build a pipeline from a spec string: `build("flip_lr|random_crop(padding=4)|cutout(size=16)")`.
See `spec.py` for the grammar, and the op modules for each op's arguments.
"""

from effcv_jax.augment.base import AugmentFn, BatchOp, GeometricOp
from effcv_jax.augment import (augmix, colour, erase_mix, geometry, policies, randaugment_tf,
                               saliency_mix, tta)
from effcv_jax.augment.spec import Pipeline, build, parse_spec, registry

__all__ = [
    "AugmentFn", "BatchOp", "GeometricOp", "Pipeline", "augmix", "build", "colour", "erase_mix",
    "geometry", "parse_spec", "policies", "randaugment_tf", "registry", "saliency_mix", "tta"
]
