"""mal_jax: ManyDepth and the Motion-Aware Loss (MAL) in JAX/Flax."""

__version__ = "0.1.0"
