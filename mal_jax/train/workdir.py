"""How files get into a training workdir: through ``etils.epath`` (so ``gs://`` works), by
process 0 only, and atomically (a temp file renamed over the target), so that a run killed
mid-write leaves the previous file, never a half-written one.
"""

from __future__ import annotations

import json
import os
import uuid

import jax
from etils import epath


def path(name: str | os.PathLike) -> epath.Path:
    """``name`` as an epath (local paths made absolute: orbax needs absolute ones)."""
    text = os.fspath(name)
    return epath.Path(text if "://" in text else os.path.abspath(text))


def is_writer() -> bool:
    """Whether this process writes shared files (checkpoints are orbax's own business)."""
    return jax.process_index() == 0


def write_text_atomic(target: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``target`` via a temp file in the same folder and a rename."""
    target = path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    temporary.write_text(text)
    temporary.replace(target)


def write_json_atomic(target: str | os.PathLike, content) -> None:
    write_text_atomic(target, json.dumps(content, indent=2) + "\n")
