"""Training scripts that tests run in fresh Python processes (several JAX processes, or one
killed with SIGKILL): the repository on ``sys.path``, the tests' compilation cache, and
configs/test.py with one step program (no teacher freeze) in ``config``."""

import os
import subprocess
import sys
import textwrap

import jax

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_PRELUDE = textwrap.dedent("""
    import os, signal, sys, time
    sys.path.insert(0, {repo!r})
    import jax
    jax.config.update("jax_compilation_cache_dir", {cache!r})
    from configs import test as test_config
    config = test_config.get_config()
    config.training.freeze_teacher_step = -1
    config.training.image_every_steps = {image_every_steps}
    config.training.checkpoint_every_steps = {checkpoint_every_steps}
""")


def script(body: str, image_every_steps: int, checkpoint_every_steps: int, **fields) -> str:
    """The prelude, then ``body`` (dedented, ``str.format``-ed with ``fields``)."""
    prelude = _PRELUDE.format(repo=REPO, cache=jax.config.jax_compilation_cache_dir,
                              image_every_steps=image_every_steps,
                              checkpoint_every_steps=checkpoint_every_steps)
    return prelude + textwrap.dedent(body).format(**fields)


def start(source: str, **env) -> subprocess.Popen:
    """Run ``source`` in a new CPU-only Python process from the repository root."""
    return subprocess.Popen([sys.executable, "-c", source], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ, JAX_PLATFORMS="cpu", **env))


def finish(process: subprocess.Popen, timeout: float) -> tuple[int, str, str]:
    """(return code, stdout, stderr); a process past ``timeout`` is killed."""
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
    return process.returncode, out, err
