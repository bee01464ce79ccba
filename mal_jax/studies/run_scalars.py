"""Scalars a training run logged, read back from the TensorBoard event files in its workdir.

The trainer writes its step metrics (clu's default writer, TensorFlow summaries) to the
workdir; studies read trajectories (e.g. MAL's balance weights) back from there instead of
asking the trainer to keep them.
"""

from __future__ import annotations

import os


def logged_scalars(workdir: str, tags: tuple[str, ...]) -> dict[int, dict[str, float]]:
    """``{step: {tag: value}}`` for the scalars named ``tags`` in ``workdir``'s event files.

    A resumed run writes a new events file; where two files hold the same step, the later
    file's value counts (files are read in name order, which starts with the write time).
    """
    import tensorflow as tf  # only here: reading events needs TF's record reader

    by_step: dict[int, dict[str, float]] = {}
    for path in sorted(tf.io.gfile.glob(os.path.join(workdir, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag not in tags:
                    continue
                scalar = (float(tf.make_ndarray(value.tensor)) if value.HasField("tensor")
                          else float(value.simple_value))
                by_step.setdefault(int(event.step), {})[value.tag] = scalar
    return by_step
