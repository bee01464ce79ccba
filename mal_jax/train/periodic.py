"""The one place that decides whether it is time to log, write images, save or evaluate."""

from __future__ import annotations


def is_due(step: int, every: int, last_step: int | None = None) -> bool:
    """True after ``step`` completed steps when ``every`` divides it, or at the final step.

    ``every <= 0`` means never (except at ``last_step`` when given).
    """
    if last_step is not None and step == last_step:
        return True
    return every > 0 and step > 0 and step % every == 0
