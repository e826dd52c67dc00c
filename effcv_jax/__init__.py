"""effcv_jax: efficient learning in computer vision with JAX and Flax."""

__version__ = "0.1.0"
