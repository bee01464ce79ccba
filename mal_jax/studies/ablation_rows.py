"""The rows of MAL's ablation: which MAL parts each fine-tuning switches on, and the names the
runs, the summary and the tables share (``mal_jax.studies.ablation`` runs them,
``mal_jax.studies.ablation_report`` reports them)."""

from __future__ import annotations

import dataclasses

import ml_collections

# What a row reports: every metric of the evaluation, for both networks and both regions.
REPORTED = ("abs_rel", "sq_rel", "rmse", "a1")
MODELS = ("student", "teacher")
REGIONS = ("all", "moving")


@dataclasses.dataclass(frozen=True)
class Row:
    """One line of the ablation table: which MAL parts the fine-tuning uses."""

    name: str  # folder and JSON key
    label: str  # table label
    temporal: bool  # temporal hints for the teacher
    distil: bool  # distillation hints with the ensemble candidate
    loss_balance: bool  # balancing of original vs distillation loss
    student_hints: bool = False  # temporal hints for the student too (not in MAL's recipe)
    loss_scales: tuple[int, ...] | None = None  # ManyDepth's loss scales (None: the config's)


ROWS = (
    Row("baseline", "ManyDepth", temporal=False, distil=False, loss_balance=False),
    # Control: MAL's losses run at full resolution only (as the MAL code does), ManyDepth's at
    # four scales; this row is ManyDepth at full resolution only, so that the MAL rows can also
    # be read against a baseline that differs from them in MAL's parts alone.
    Row("baseline_scale0", "ManyDepth, full-resolution loss only", temporal=False,
        distil=False, loss_balance=False, loss_scales=(0,)),
    # MAL's parts added one by one up to its published recipe (teacher hints only).
    Row("temporal", "+ temporal hints (teacher)", temporal=True, distil=False, loss_balance=False),
    Row("distil", "+ distillation hints", temporal=True, distil=True, loss_balance=False),
    Row("mal", "+ loss balancing (MAL's published recipe)", temporal=True, distil=True,
        loss_balance=True),
    # Hints for the student too (--main_temporal, not in the published recipe).
    Row("mal_student_hints", "MAL + student hints", temporal=True, distil=True,
        loss_balance=True, student_hints=True),
)
BASELINE = ROWS[0].name
CONTROL = ROWS[1].name
# Key of the models every row starts from (evaluated too: the starting point).
START = "pretrained"
# The balance weights as the train step logs them (mal_jax.mal.loss_balance.weight_metrics).
BALANCE_TAGS = ("balance/w_original", "balance/w_distil")


def with_mal_parts(config: ml_collections.ConfigDict, row: Row) -> ml_collections.ConfigDict:
    """A copy of ``config`` with exactly ``row``'s MAL parts on."""
    config = ml_collections.ConfigDict(config.to_dict())
    config.mal.temporal = row.temporal
    config.mal.main_temporal = row.student_hints
    config.mal.distil = config.mal.ensemble = row.distil
    config.mal.loss_balance = row.loss_balance
    if row.loss_scales is not None:
        config.loss.scales = row.loss_scales
    return config
