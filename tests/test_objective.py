"""The objective's settings: the default config is MAL's published recipe, field by field
(expected values written here, from the reference's README commands and options), plain
ManyDepth is every MAL part off, and the train step reports the balance weights."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default, manydepth_baseline
from configs import test as test_config
from mal_jax.mal import loss_balance
from mal_jax.mal.objective import MAL_PRESET, MANYDEPTH, MalSettings
from mal_jax.mal.temporal_hints import TemporalHintConfig
from mal_jax.train import step as train_step

# MAL's README: `manydepth.train --step_lr --validate_every 3000 --loss_blc --load_pretrained
# --temporal --distil` (KITTI; Cityscapes adds --train_cs, --num_epochs 7); options.py
# defaults for the rest: --main_temporal off, --no_ens off (ensemble on), --ins_threshold 0.9,
# --lambda_for_adjust_start/slope/min 3 / -1.5 / -3; image_synthesis passes replace=False.
PUBLISHED = {
    "temporal": True,
    "main_temporal": False,
    "distil": True,
    "ensemble": True,
    "multi_scale": False,
    "hints": {"score_threshold": 0.9, "replace": False},
    "balance": {"enabled": True, "schedule": (3.0, -1.5, -3.0)},
}


def _as_recipe(settings: MalSettings) -> dict:
    balance = settings.balance
    return {
        "temporal": settings.temporal,
        "main_temporal": settings.main_temporal,
        "distil": settings.distil,
        "ensemble": settings.ensemble,
        "multi_scale": settings.multi_scale,
        "hints": {"score_threshold": settings.hints.score_threshold,
                  "replace": settings.hints.replace},
        "balance": {"enabled": balance.enabled,
                    "schedule": (balance.schedule.start, balance.schedule.slope,
                                 balance.schedule.floor)},
    }


def test_default_config_is_the_published_recipe():
    settings = train_step.step_settings(default.get_config(), steps_per_epoch=150)
    assert _as_recipe(settings.mal) == PUBLISHED
    assert _as_recipe(MAL_PRESET) == PUBLISHED  # the settings' own defaults too
    assert settings.mal.balance.steps_per_epoch == 150
    # Argued difference (README, MAL options table): no batch-size factor on the loss.
    assert settings.mal.balance.batch_factor is False
    # Every MAL part on but multi_scale: both losses at full resolution only, as MAL's code.
    assert settings.loss.scales == (0,)
    assert settings.mal.hints == TemporalHintConfig(score_threshold=0.9, replace=False)


def test_manydepth_is_every_mal_part_off():
    settings = train_step.step_settings(manydepth_baseline.get_config(), steps_per_epoch=10)
    off = dataclasses.replace(MANYDEPTH, balance=dataclasses.replace(
        MANYDEPTH.balance, steps_per_epoch=10))
    assert settings.mal == off
    assert not (off.temporal or off.main_temporal or off.distil or off.balance.enabled)
    assert settings.loss.scales == (0, 1, 2, 3)  # ManyDepth keeps its four scales
    assert train_step.initial_balance(settings) == {}
    # multi_scale keeps ManyDepth's scales under MAL too.
    assert dataclasses.replace(MAL_PRESET, multi_scale=True).loss_scales((0, 1, 2, 3)) == (
        0, 1, 2, 3)


def test_balance_settings_drive_init_update_and_metrics():
    settings = loss_balance.BalanceSettings(steps_per_epoch=2)
    state = loss_balance.initial_state(settings)
    parts = {"original_loss": jnp.asarray(0.4), "distil_loss": jnp.asarray(0.1)}
    # Step 0 initialises (w_k = total / (2 mean_k), total 0.25); step 2 starts epoch 1, whose
    # lambda is 3 - 1.5 = 1.5, and restarts the means.
    state = loss_balance.update(settings, state, parts, 0)
    np.testing.assert_allclose(state.weights, [0.3125, 1.25], rtol=1e-6)
    metrics = loss_balance.weight_metrics(settings, state)
    assert set(metrics) == {"balance/w_original", "balance/w_distil"}
    assert float(metrics["balance/w_distil"]) == pytest.approx(1.25)
    assert float(loss_balance.apply(settings, state, parts, 4)) == pytest.approx(0.25)
    factored = dataclasses.replace(settings, batch_factor=True)
    assert float(loss_balance.apply(factored, state, parts, 4)) == pytest.approx(1.0)
    after = loss_balance.update(settings, state, parts, 2)
    np.testing.assert_array_equal(after.epoch_count, 1)  # a new epoch: means restarted
    off = loss_balance.BalanceSettings(enabled=False)
    assert loss_balance.initial_state(off) == {}
    assert loss_balance.update(off, {}, parts, 5) == {}
    assert loss_balance.weight_metrics(off, {}) == {}
    with pytest.raises(ValueError, match="steps_per_epoch=0"):
        loss_balance.update(loss_balance.BalanceSettings(), state, parts, 0)


def test_train_step_reports_the_balance_weights():
    """One compiled step on configs/test.py (heavy: run under the lock): the step's metrics
    carry the weights of the state it returns."""
    from mal_jax.data import pipeline, registry
    from mal_jax.train import state as train_state
    from mal_jax.train import trainer

    config = test_config.get_config()
    model = trainer.build_model(config)
    settings = train_step.step_settings(config, steps_per_epoch=4)
    schedule = train_state.learning_rate_schedule(1e-4, 0, 1.0)
    optimizer = train_state.make_optimizer(schedule)
    variables = model.init(jax.random.PRNGKey(0), config.data.height, config.data.width)
    state = train_state.create_state(variables, optimizer, 0.1, 10.0,
                                     train_step.initial_balance(settings), 0)
    batch = next(iter(pipeline.train_batches(registry.train_source(config),
                                             batch_size=config.training.batch_size, seed=0)))
    step = jax.jit(train_step.make_train_step(model, optimizer, schedule, settings, False))
    new_state, metrics = step(state, batch, jax.random.PRNGKey(1))
    assert float(metrics["finite"]) == 1.0
    np.testing.assert_array_equal(
        [metrics["balance/w_original"], metrics["balance/w_distil"]], new_state.balance.weights)
    assert bool(new_state.balance.initialized)
    # The first update equalises the weighted losses: w_0 * original == w_1 * distillation.
    np.testing.assert_allclose(metrics["balance/w_original"] * metrics["loss/original_loss"],
                               metrics["balance/w_distil"] * metrics["loss/distil_loss"],
                               rtol=1e-5)
