"""mal_jax: ManyDepth and the Motion-Aware Loss (MAL) in JAX/Flax."""

from mal_jax import xla_cpu

__version__ = "0.1.0"

# Before any backend starts: XLA reads XLA_FLAGS once (see mal_jax/xla_cpu.py for why).
xla_cpu.prefer_xla_convolutions()
