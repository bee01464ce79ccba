"""Experiment configs (``get_config()`` per file), and resolving ``--config=configs/x.py``.

``train.py`` and ``eval.py`` run from any folder: a ``--config`` path that does not exist
relative to the current folder is looked up relative to the repository root.
"""

from __future__ import annotations

import os

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT = os.path.join(REPO_ROOT, "configs", "default.py")


def resolve_config_path(value: str) -> str:
    """``value`` (``path`` or ``path:argument``) with the path made absolute against the
    repository root when it is not found from the current folder."""
    path, colon, argument = value.partition(":")
    if os.path.exists(path) or os.path.isabs(path):
        return value
    candidate = os.path.join(REPO_ROOT, path)
    return candidate + colon + argument if os.path.exists(candidate) else value


def resolve_config_argv(argv: list[str], flag: str = "config") -> list[str]:
    """``argv`` with the ``--config`` value (``--config=X`` or ``--config X``) resolved."""
    resolved = list(argv)
    for index, argument in enumerate(resolved):
        if argument.startswith(f"--{flag}="):
            resolved[index] = f"--{flag}=" + resolve_config_path(argument.split("=", 1)[1])
        elif argument == f"--{flag}" and index + 1 < len(resolved):
            resolved[index + 1] = resolve_config_path(resolved[index + 1])
    return resolved
