"""The objective: golden parity of ManyDepth's losses (every MAL part off), MAL's teacher
loss, distillation and loss balancing (on the fixture's stored network outputs, so no network
runs here), hand-computed distillation and balancing cases, the ManyDepth loss when no object
is matched, and the published recipe's hints: the teacher's only."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mal_jax.core import geometry, network_losses
from mal_jax.core.resize import upsample_bilinear
from mal_jax.mal import distillation, loss_balance
from mal_jax.mal import objective as mal_objective
from mal_jax.mal.temporal_hints import instance_hints
from mal_jax.port import parity_mal
from mal_jax.port.golden import nchw_to_nhwc

MIN_DEPTH, MAX_DEPTH = 0.1, 100.0
SETTINGS = network_losses.LossSettings(tie_break_noise=False)
SCALE_0 = network_losses.LossSettings(scales=(0,), tie_break_noise=False)
UNBALANCED = loss_balance.BalanceSettings(enabled=False)


# ---------------------------------------------------------------- golden parity


def _golden_outputs(golden) -> dict:
    """The fixture's training-mode network outputs at full resolution, in ``train_forward``'s
    layout."""
    height, width = golden.image_size
    out = {"teacher_disp": {}, "student_disp": {}, "teacher_depth": {}, "student_depth": {}}
    for scale in range(4):
        # The file's ``mono_disp`` is the teacher's, its ``disp`` the student's.
        for net, file_key in (("teacher", "mono_disp"), ("student", "disp")):
            disp = jnp.asarray(nchw_to_nhwc(golden[f"train/{file_key}/{scale}"]))
            out[f"{net}_disp"][scale] = disp
            full = upsample_bilinear(disp, height, width)
            out[f"{net}_depth"][scale] = geometry.disp_to_depth(full, MIN_DEPTH, MAX_DEPTH)[1]
    out["cam_T_cam"] = {f: jnp.asarray(golden[f"train/cam_T_cam/{f}"]) for f in (-1, 1)}
    out["consistency_mask"] = jnp.asarray(golden["train/consistency_mask"])[..., None]
    out["augmentation_mask"] = jnp.zeros((golden.batch_size,), jnp.float32)
    return out


def _golden_batch(golden) -> dict:
    frames = jnp.stack(
        [jnp.asarray(nchw_to_nhwc(golden[f"in/color/{f}"])) for f in (-1, 0, 1)], axis=1
    )
    K = jnp.stack([jnp.asarray(golden[f"in/K/{s}"]) for s in range(4)], axis=1)
    return {"frames": frames, "frames_aug": frames, "K": K, "inv_K": jnp.linalg.inv(K)}


class _StoredOutputsContext:
    """A stand-in for ``parity.Context`` whose train outputs are the fixture's own."""

    def __init__(self, golden):
        self.golden = golden
        self.batch = _golden_batch(golden)
        self._outputs = _golden_outputs(golden)

    def train_outputs(self):
        return None, self._outputs, None

    def train_float64(self):
        return None, None, self._outputs


@pytest.fixture(scope="module")
def golden_ctx(golden):
    return _StoredOutputsContext(golden)


@pytest.mark.parametrize(
    "group", ["group_synthesis", "group_teacher_loss", "group_distillation", "group_loss_balance"]
)
def test_golden_mal_groups(golden_ctx, group):
    checks = getattr(parity_mal, group)(golden_ctx)
    assert checks
    # ``info`` checks (the port's own error maps deciding the target) never decide a verdict.
    failed = [(c.name, c.max_abs, c.rel, c.detail) for c in checks if not (c.ok or c.info)]
    assert not failed, failed


def test_manydepth_is_the_objective_with_every_mal_part_off(golden_ctx):
    """Plain ManyDepth (every MAL part off, four scales) reproduces the reference's ManyDepth
    losses ``train/losses/*`` from the fixture's own network outputs."""
    g = golden_ctx.golden
    _, parts = jax.jit(lambda o, b: mal_objective.objective(o, b, mal_objective.MANYDEPTH,
                                                            SETTINGS))(
        golden_ctx.train_outputs()[1], golden_ctx.batch)
    names = [key[len("train/losses/"):] for key in g.keys("train/losses/")]
    assert len(names) == 13 and "loss/3" in names  # four scales and the total
    for name in names:
        np.testing.assert_allclose(parts[name], g[f"train/losses/{name}"], rtol=1e-4,
                                   err_msg=name)
    assert "distil_loss" not in parts and "velocity_loss" not in parts


def test_golden_distillation_values(golden_ctx):
    """The composition, value by value: student entries to 1e-5; the distillation loss to
    1e-3, as near-tied candidates may flip with float32 noise (see ``parity_mal``); and the
    ensemble candidate changes it."""
    g = golden_ctx.golden
    terms = parity_mal._mal_terms(golden_ctx)
    for name in ("reproj_loss/0", "consistency_loss/0", "loss/0", "loss"):
        np.testing.assert_allclose(terms["student"][name], g[f"mal/main_losses/{name}"], rtol=1e-5)
    # The loss the reference reports includes the distillation loss.
    np.testing.assert_allclose(
        terms["student"]["loss"] - terms["student"]["original_loss"],
        terms["student"]["distil_loss"],
        rtol=0,
        atol=1e-7,
    )
    np.testing.assert_allclose(
        terms["student"]["distil_loss"], g["mal/main_losses/distil_loss"], rtol=1e-3
    )
    np.testing.assert_allclose(
        terms["student_no_ens"]["distil_loss"], g["mal/main_losses_no_ens/distil_loss"], rtol=1e-3
    )
    assert terms["student"]["distil_loss"] != terms["student_no_ens"]["distil_loss"]


def test_golden_teacher_loss_is_smaller_with_extra_candidates(golden_ctx):
    """More candidates can only lower the per-pixel minimum (up to rounding: the MAL terms are
    computed in float64, the plain teacher error here in float32)."""
    terms = parity_mal._mal_terms(golden_ctx)
    outputs = golden_ctx.train_outputs()[1]
    _, plain, plain_error = jax.jit(
        lambda o, b: network_losses.teacher_loss(o, b, SCALE_0))(outputs, golden_ctx.batch)
    # float64 vs float32 warps: up to 3.8e-5 apart on 0.7% of pixels (measured 2026-12-02).
    assert np.all(terms["teacher_error"] <= plain_error + 1e-4)
    assert np.mean(terms["teacher_error"] < plain_error - 1e-3) > 0.01
    assert terms["teacher"]["reproj_loss/0"] != plain["reproj_loss/0"]


# ---------------------------------------------------------------- distillation by hand


def test_distillation_target_picks_lowest_error_candidate():
    # Four pixels: teacher wins, ensemble wins, student wins, three-way tie (-> teacher).
    teacher_err = jnp.asarray([0.1, 0.5, 0.5, 0.2]).reshape(1, 2, 2, 1)
    ensemble_err = jnp.asarray([0.2, 0.1, 0.5, 0.2]).reshape(1, 2, 2, 1)
    student_err = jnp.asarray([0.3, 0.3, 0.1, 0.2]).reshape(1, 2, 2, 1)
    teacher = jnp.full((1, 2, 2, 1), 4.0)
    student = jnp.full((1, 2, 2, 1), 2.0)
    depths = distillation.candidate_depths(teacher, student)
    target, choice = distillation.select_target((teacher_err, ensemble_err, student_err), depths)
    np.testing.assert_array_equal(choice.ravel(), [0, 1, 2, 0])
    np.testing.assert_array_equal(target.ravel(), [4.0, 3.0, 2.0, 4.0])

    trusted = jnp.asarray([1.0, 1.0, 1.0, 0.0]).reshape(1, 2, 2, 1)
    # |4-2| + |3-2| + 0 over 4 pixels, the untrusted tie left out.
    loss, choice = distillation.distillation_hint(
        teacher_err, student_err, teacher, student, trusted, ensemble_err
    )
    assert float(loss) == pytest.approx(3.0 / 4.0)

    # Without the ensemble, pixel 1 falls to the student (0.3 < 0.5): only pixel 0 pulls.
    loss, choice = distillation.distillation_hint(
        teacher_err, student_err, teacher, student, trusted
    )
    np.testing.assert_array_equal(choice.ravel(), [0, 2, 2, 0])
    assert float(loss) == pytest.approx(2.0 / 4.0)


def test_distillation_gradients_follow_the_reference_detaches():
    errors = (
        jnp.asarray([0.1, 0.5, 0.5]).reshape(1, 1, 3, 1),
        jnp.asarray([0.2, 0.1, 0.5]).reshape(1, 1, 3, 1),
        jnp.asarray([0.3, 0.3, 0.1]).reshape(1, 1, 3, 1),
    )
    teacher = jnp.full((1, 1, 3, 1), 4.0)
    trusted = jnp.ones((1, 1, 3, 1))

    def loss(student, teacher):
        return distillation.distillation_hint(
            errors[0], errors[2], teacher, student, trusted, errors[1]
        )[0]

    student = jnp.full((1, 1, 3, 1), 2.0)
    d_student, d_teacher = jax.grad(loss, argnums=(0, 1))(student, teacher)
    # Teacher target: full pull; ensemble target (t + s) / 2 keeps the student's gradient,
    # so half the pull; the student's own depth: nothing. The teacher never gets a gradient.
    np.testing.assert_allclose(d_student.ravel(), [-1 / 3, -0.5 / 3, 0.0])
    np.testing.assert_array_equal(d_teacher, 0.0)


# ---------------------------------------------------------------- loss balancing by hand


def test_balance_weights_hand_computed():
    state = loss_balance.init_balance()
    # Step 0 initialises: total = 0.5 * 0.4 + 0.5 * 0.1 = 0.25, w_k = total / (2 * mean_k).
    state = loss_balance.update_balance(state, jnp.asarray([0.4, 0.1]), 0, 3.0)
    np.testing.assert_allclose(state.weights, [0.3125, 1.25], rtol=1e-6)
    np.testing.assert_allclose(state.previous_total, 0.25, rtol=1e-6)
    # Step 1: means (0.3, 0.1); total = 0.3125 * 0.3 + 1.25 * 0.1 = 0.21875;
    # adjust_0 = 1 + 1 * ((0.21875 / 0.25) * (0.4 / 0.3) - 1) = 1.1666..., adjust_1 = 0.875.
    state = loss_balance.update_balance(state, jnp.asarray([0.2, 0.1]), 1, 1.0)
    np.testing.assert_allclose(state.weights, [0.3125 * 7 / 6, 1.25 * 0.875], rtol=1e-6)
    # Step 2 with lambda 3: means (0.3, 0.3); the distillation loss tripled, so its factor
    # 1 + 3 * (ratio - 1) falls below 1/2 and is clipped; the other hits the clip at 2.
    state = loss_balance.update_balance(state, jnp.asarray([0.3, 0.7]), 2, 3.0)
    np.testing.assert_allclose(state.weights, [0.3125 * 7 / 6 * 2.0, 1.25 * 0.875 * 0.5], rtol=1e-6)
    # A new epoch restarts the means: (0.3, 0.3) -> the step's own (0.6, 0.6).
    before = state
    state = loss_balance.update_balance(before, jnp.asarray([0.6, 0.6]), 0, 0.0)
    np.testing.assert_allclose(state.previous_mean, [0.6, 0.6])
    np.testing.assert_array_equal(state.weights, before.weights)  # lambda 0: unchanged


def test_balance_waits_out_a_zero_mean():
    """A step whose distillation loss is 0 (every sample augmented) must not make a weight
    infinite: the first update waits for positive means, later ones skip the step."""
    state = loss_balance.update_balance(loss_balance.init_balance(), jnp.asarray([0.4, 0.0]),
                                        0, 3.0)
    np.testing.assert_array_equal(state.weights, [0.5, 0.5])
    assert not bool(state.initialized)
    # Step 1: means (0.3, 0.05) -> total 0.175, w = 0.175 / (2 * mean).
    state = loss_balance.update_balance(state, jnp.asarray([0.2, 0.1]), 1, 3.0)
    np.testing.assert_allclose(state.weights, [0.175 / 0.6, 0.175 / 0.1], rtol=1e-6)
    # A new epoch starting with a zero distillation loss keeps the weights, finitely.
    before = state.weights
    state = loss_balance.update_balance(state, jnp.asarray([0.5, 0.0]), 0, 3.0)
    np.testing.assert_array_equal(state.weights, before)
    state = loss_balance.update_balance(state, jnp.asarray([0.5, 0.0]), 1, 3.0)
    np.testing.assert_array_equal(state.weights, before)
    assert np.all(np.isfinite(np.asarray(state.previous_total)))


def test_lambda_schedule_and_balanced_loss():
    schedule = loss_balance.LambdaSchedule()
    np.testing.assert_allclose([schedule.at(e) for e in range(6)], [3, 1.5, 0, -1.5, -3, -3])
    state = loss_balance.init_balance()
    losses = jnp.asarray([0.4, 0.1])
    assert float(loss_balance.balanced_loss(state, losses, 4)) == pytest.approx(4 * 0.25)
    grad = jax.grad(
        lambda weights: loss_balance.balanced_loss(state.replace(weights=weights), losses)
    )(state.weights)
    np.testing.assert_array_equal(grad, 0.0)  # the weights are constants to the gradient
    np.testing.assert_allclose(
        jax.grad(lambda x: loss_balance.balanced_loss(state, x))(losses), state.weights
    )


def test_balance_state_in_jit_scan_matches_python_loop():
    sequence = jnp.asarray([[0.4, 0.1], [0.35, 0.12], [0.3, 0.08], [0.32, 0.09]])
    state = loss_balance.init_balance()
    for step, losses in enumerate(sequence):
        state = loss_balance.update_balance(state, losses, step, 3.0)
    jitted = parity_mal.balance_weights(np.asarray(sequence), lambdas=(3.0, 3.0))
    np.testing.assert_allclose(jitted[-1], state.weights, rtol=1e-6)


# ---------------------------------------------------------------- ManyDepth equivalence


BATCH, HEIGHT, WIDTH, SLOTS = 2, 32, 64, 3


def _synthetic(seed=0, with_object=False):
    rng = np.random.default_rng(seed)
    frames = rng.uniform(0, 1, (BATCH, 3, HEIGHT, WIDTH, 3)).astype(np.float32)
    K = np.zeros((BATCH, 4, 4, 4), np.float32)
    for s in range(4):
        K[:, s] = np.diag([0.58 * WIDTH / 2**s, 1.92 * HEIGHT / 2**s, 1, 1])
        K[:, s, :2, 2] = [0.5 * WIDTH / 2**s, 0.5 * HEIGHT / 2**s]
    ids = np.zeros((BATCH, 3, HEIGHT, WIDTH), np.int32)
    classes = np.full((BATCH, 3, SLOTS), -1, np.int32)
    scores = np.zeros((BATCH, 3, SLOTS), np.float32)
    if with_object:  # sample 0: one car moving right by 6 px per frame
        for index, left in enumerate((10, 16, 22)):
            ids[0, index, 8:20, left : left + 12] = 1
        classes[0, :, 0], scores[0, :, 0] = 2, 0.95
    batch = {
        "frames": jnp.asarray(frames),
        "frames_aug": jnp.asarray(frames),
        "K": jnp.asarray(K),
        "inv_K": jnp.linalg.inv(jnp.asarray(K)),
        "instance_ids": jnp.asarray(ids),
        "instance_class": jnp.asarray(classes),
        "instance_score": jnp.asarray(scores),
    }
    out = {"teacher_disp": {}, "student_disp": {}, "teacher_depth": {}, "student_depth": {}}
    for s in range(4):
        for net in ("teacher", "student"):
            disp = rng.uniform(0.02, 0.3, (BATCH, HEIGHT // 2**s, WIDTH // 2**s, 1))
            out[f"{net}_disp"][s] = jnp.asarray(disp, jnp.float32)
            full = upsample_bilinear(out[f"{net}_disp"][s], HEIGHT, WIDTH)
            out[f"{net}_depth"][s] = geometry.disp_to_depth(full, MIN_DEPTH, MAX_DEPTH)[1]
    out["cam_T_cam"] = {
        f: geometry.transformation_from_parameters(
            jnp.asarray(rng.normal(0, 0.01, (BATCH, 3)), jnp.float32),
            jnp.asarray([[0.0, 0.0, 0.3 * f]] * BATCH, jnp.float32),
            invert=f < 0,
        )
        for f in (-1, 1)
    }
    out["consistency_mask"] = jnp.asarray(
        rng.uniform(0, 1, (BATCH, HEIGHT, WIDTH, 1)) > 0.3, jnp.float32
    )
    out["augmentation_mask"] = jnp.asarray([0.0, 1.0])
    return out, batch


@jax.jit
def _synthetic_terms(outputs, batch, state):
    """Everything the synthetic-batch tests compare, in one compilation (shared
    subexpressions of the variants are merged by XLA)."""
    hints = instance_hints(batch, mal_objective.MAL_PRESET.hints)
    _, teacher_hints, teacher_hints_error = network_losses.teacher_loss(
        outputs, batch, SCALE_0, hints=hints)
    _, teacher_plain, teacher_plain_error = network_losses.teacher_loss(outputs, batch, SCALE_0)
    _, student_hints, student_hints_error = network_losses.student_loss(
        outputs, batch, SCALE_0, hints=hints)
    _, student_plain, student_plain_error = network_losses.student_loss(outputs, batch, SCALE_0)

    variant = functools.partial(mal_objective.objective, outputs, batch, loss_settings=SETTINGS)
    preset = variant(mal_objective.MAL_PRESET, balance=state)[1]
    # The published recipe without its temporal hints, and with the student's added.
    preset_no_hints = variant(dataclasses.replace(mal_objective.MAL_PRESET, temporal=False),
                              balance=state)[1]
    student_hints_on = variant(dataclasses.replace(mal_objective.MAL_PRESET,
                                                   main_temporal=True), balance=state)[1]
    # The switches' composition, without temporal hints to keep the compilation small.
    no_hints = dict(temporal=False, main_temporal=False)
    factored = variant(mal_objective.MalSettings(
        balance=loss_balance.BalanceSettings(batch_factor=True), **no_hints), balance=state)[1]
    unbalanced = mal_objective.MalSettings(balance=UNBALANCED, **no_hints)
    return {
        "teacher_hints": teacher_hints,
        "teacher_hints_error": teacher_hints_error,
        "teacher_plain": teacher_plain,
        "teacher_plain_error": teacher_plain_error,
        "student_hints": student_hints,
        "student_hints_error": student_hints_error,
        "student_plain": student_plain,
        "student_plain_error": student_plain_error,
        "preset": preset,
        "balanced": preset_no_hints,
        "student_hints_on": student_hints_on,
        "factored": factored,
        "unbalanced": variant(unbalanced)[1],
        "frozen": variant(unbalanced, train_teacher=False)[1],
    }


def _balance_after_one_step():
    state = loss_balance.init_balance()
    return loss_balance.update_balance(state, jnp.asarray([0.5, 0.02]), 0, 3.0)


@pytest.fixture(scope="module")
def with_object():
    return _synthetic_terms(*_synthetic(with_object=True), _balance_after_one_step())


@pytest.fixture(scope="module")
def without_object():
    return _synthetic_terms(*_synthetic(with_object=False), _balance_after_one_step())


def test_no_matched_object_gives_the_manydepth_loss(without_object):
    t = without_object
    # Hints on vs off: the hint frames duplicate the warped frames, so the per-pixel minima
    # agree up to XLA's rounding of the recomputed duplicates (SSIM amplifies ulps to ~1e-5 on
    # single pixels).
    for network in ("teacher", "student"):
        np.testing.assert_allclose(t[f"{network}_hints_error"], t[f"{network}_plain_error"],
                                   rtol=2e-5)
        for name, value in t[f"{network}_plain"].items():
            np.testing.assert_allclose(t[f"{network}_hints"][name], value, rtol=1e-6,
                                       err_msg=f"{network} {name}")


def test_temporal_hints_reach_the_loss_only_with_a_matched_object(with_object):
    with_error = np.asarray(with_object["teacher_hints_error"])
    plain_error = np.asarray(with_object["teacher_plain_error"])
    # Sample 0 has a car in all three frames: its extra candidates lower the minimum where
    # the moved car fits better; sample 1 has no object.
    assert np.all(with_error <= plain_error * (1 + 2e-5))
    assert np.mean(with_error[0] < plain_error[0] - 1e-3) > 0.01
    np.testing.assert_allclose(with_error[1], plain_error[1], rtol=2e-5)
    assert with_object["teacher_hints"]["loss"] < with_object["teacher_plain"]["loss"]


def test_published_recipe_gives_hints_to_the_teacher_only(with_object):
    """Under MAL's published recipe (no --main_temporal) the student's loss is its loss
    without hint candidates, while the teacher's differs on a batch with a matched, moving
    object; turning student hints on changes the student's loss."""
    out = with_object
    student_keys = ("student/loss", "reproj_loss/0", "consistency_loss/0", "distil_loss")
    assert out["teacher_hints"]["loss"] < out["teacher_plain"]["loss"]
    assert out["student_hints"]["loss"] < out["student_plain"]["loss"]
    assert out["preset"]["teacher/loss"] != out["balanced"]["teacher/loss"]
    np.testing.assert_allclose(out["preset"]["teacher/loss"], out["teacher_hints"]["loss"],
                               rtol=1e-6)
    # The student's own loss entries (reproj_loss/0 also holds the teacher's: compare the
    # student's part of it) equal the hint-free student's.
    np.testing.assert_allclose(out["preset"]["student/loss"], out["student_plain"]["loss"],
                               rtol=1e-6)
    np.testing.assert_allclose(
        out["preset"]["reproj_loss/0"] - out["teacher_hints"]["reproj_loss/0"],
        out["student_plain"]["reproj_loss/0"], rtol=1e-5)
    assert out["student_hints_on"]["student/loss"] != out["preset"]["student/loss"]
    np.testing.assert_allclose(out["student_hints_on"]["student/loss"],
                               out["student_hints"]["loss"], rtol=1e-6)
    assert all(key in out["preset"] for key in student_keys)


def test_mal_loss_composition(with_object):
    out, w = with_object, np.asarray(_balance_after_one_step().weights)
    for parts in (out["preset"], out["balanced"]):
        np.testing.assert_allclose(
            parts["original_loss"], parts["student/loss"] + parts["teacher/loss"], rtol=1e-6
        )
        np.testing.assert_allclose(
            parts["loss"], w[0] * parts["original_loss"] + w[1] * parts["distil_loss"], rtol=1e-6
        )
        assert float(parts["distil_loss"]) > 0
    np.testing.assert_allclose(out["factored"]["loss"], BATCH * out["balanced"]["loss"],
                               rtol=1e-6)
    plain = out["unbalanced"]
    np.testing.assert_allclose(
        plain["loss"], plain["original_loss"] + plain["distil_loss"], rtol=1e-6
    )
    np.testing.assert_allclose(
        plain["loss/0"], plain["student/loss"] + plain["teacher/loss"], rtol=1e-6
    )
    np.testing.assert_allclose(plain["distil_loss"], out["balanced"]["distil_loss"], rtol=1e-6)
    np.testing.assert_allclose(out["frozen"]["loss"], plain["student/loss"], rtol=1e-6)


def test_settings_and_batch_errors():
    with pytest.raises(ValueError, match="balance.enabled=True needs distil=True"):
        mal_objective.MalSettings(distil=False)
    outputs, batch = _synthetic()
    del batch["instance_ids"]
    with pytest.raises(KeyError, match="instance_ids"):
        mal_objective.objective(outputs, batch, mal_objective.MalSettings(balance=UNBALANCED),
                                SETTINGS)
    with pytest.raises(ValueError, match="needs a BalanceState"):
        mal_objective.objective(
            outputs, batch, mal_objective.MalSettings(temporal=False), SETTINGS)
