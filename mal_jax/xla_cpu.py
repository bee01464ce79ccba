"""XLA:CPU settings this package turns on at import: convolutions off the YNNPACK path.

jaxlib 0.10 hands each convolution to YNNPACK (``--xla_cpu_experimental_ynn_fusion_type``).
On the 2-core AMD EPYC this project measures on, that path runs the depth decoders' and the
matching encoder's convolutions (32-192 input channels at 24x80-96x320) 3-10x slower than
XLA's own convolution emitter: a 3x3 convolution 96 -> 32 channels at 48x160, batch 4, takes
44 ms forward and 143 ms forward+backward with YNNPACK, 10 ms and 34 ms without; the
ManyDepth train step at 96x320 drops from 2.28 s to about 2.0 s
(``python -m mal_jax.studies.bench ... --no_mal``, README *Speed*). With every YNNPACK fusion
type off, XLA falls back to its Eigen-based kernels for convolutions, dots and reductions.

Only CPU programs are affected (the flag is an ``xla_cpu_`` flag). XLA reads ``XLA_FLAGS``
once, when the first backend starts, so this must run before anything touches a device; the
package does it when ``mal_jax`` is imported. A user's own setting of the flag in
``XLA_FLAGS`` is kept, and ``MAL_JAX_YNN=on`` leaves jaxlib's default in place.
"""

from __future__ import annotations

import os

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
# Environment variable: "on" keeps jaxlib's YNNPACK fusions (its default).
KEEP_YNN_ENV = "MAL_JAX_YNN"


def prefer_xla_convolutions(environ=os.environ) -> bool:
    """Add ``--xla_cpu_experimental_ynn_fusion_type=`` (no YNNPACK fusions) to ``XLA_FLAGS``
    unless the user set that flag or ``MAL_JAX_YNN=on``. True when it was added."""
    flags = environ.get("XLA_FLAGS", "")
    if environ.get(KEEP_YNN_ENV, "").strip().lower() == "on" or YNN_FLAG in flags:
        return False
    environ["XLA_FLAGS"] = f"{flags} {YNN_FLAG}=".strip()
    return True
