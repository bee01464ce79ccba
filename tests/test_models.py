"""Networks: parameter counts against the reference, shapes, torch BatchNorm semantics."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mal_jax.models import matching
from mal_jax.models.layers import TorchBatchNorm
from mal_jax.models.manydepth import NETWORK_NAMES, ManyDepth, parameter_count
from mal_jax.port.convert import REFERENCE_FILES

# Trainable parameters of the reference networks (torch ``parameters()``), ResNet-18, 96 bins,
# keyed by the port's names; the reference's file of each is ``REFERENCE_FILES[net]``
# (student_encoder: encoder.pth, student_depth: depth.pth, teacher_encoder: mono_encoder.pth,
# teacher_depth: mono_depth.pth, pose_encoder: pose_encoder.pth, pose_decoder: pose.pth).
REFERENCE_COUNTS = {
    "student_encoder": 11_269_776,
    "student_depth": 3_152_724,
    "teacher_encoder": 11_689_512,
    "teacher_depth": 3_152_724,
    "pose_encoder": 11_698_920,
    "pose_decoder": 1_314_572,
}
# Reference parameters that never take part in the computation, so the port leaves them out:
# the matching encoder's prematching_conv (64*16 + 16) and torchvision's fc (512*1000 + 1000).
UNUSED_IN_REFERENCE = {"student_encoder": 1_040, "teacher_encoder": 513_000,
                       "pose_encoder": 513_000}


@pytest.fixture(scope="module")
def variables():
    return jax.jit(lambda rng: ManyDepth().init(rng, 64, 96))(jax.random.key(0))


def test_parameter_counts_pinned_and_equal_to_reference(variables):
    ours = {net: parameter_count(variables["params"][net]) for net in NETWORK_NAMES}
    assert ours == {
        "student_encoder": 11_268_736,
        "student_depth": 3_152_724,
        "teacher_encoder": 11_176_512,
        "teacher_depth": 3_152_724,
        "pose_encoder": 11_185_920,
        "pose_decoder": 1_314_572,
    }
    for net in NETWORK_NAMES:
        assert ours[net] + UNUSED_IN_REFERENCE.get(net, 0) == REFERENCE_COUNTS[net], net


def test_reference_counts_match_golden_weights(golden):
    for net, expected in REFERENCE_COUNTS.items():
        state = golden.state_dict(REFERENCE_FILES[net])
        count = sum(v.size for k, v in state.items()
                    if not k.endswith(("running_mean", "running_var")))
        assert count == expected, net


def test_resnet50_encoder_counts():
    model = ManyDepth(num_layers=50)
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), 64, 64))
    # torchvision ResNet-50 without fc (23,508,032) + reduce_conv (256 + 96 -> 256, 3x3).
    reduce_conv = (256 + 96) * 256 * 9 + 256
    assert parameter_count(abstract["params"]["student_encoder"]) == 23_508_032 + reduce_conv
    kernel = abstract["params"]["student_depth"]["upconv_4_0"]["conv"]["conv"]["kernel"]
    assert kernel.shape == (3, 3, 2048, 256)


def test_output_shapes_and_dtypes(variables):
    model = ManyDepth()
    image = jnp.full((2, 64, 96, 3), 0.5)
    (disps, feats), _ = model.teacher(variables, image, train=False)
    chex.assert_shape([disps[s] for s in range(4)],
                      [(2, 64 // 2**s, 96 // 2**s, 1) for s in range(4)])
    chex.assert_type(list(disps.values()), jnp.float32)
    chex.assert_shape(feats, [(2, 32, 48, 64), (2, 16, 24, 64), (2, 8, 12, 128), (2, 4, 6, 256),
                              (2, 2, 3, 512)])
    (axisangle, translation), _ = model.pose(variables, image, image, train=False)
    chex.assert_shape([axisangle, translation], [(2, 2, 1, 3)] * 2)
    K = jnp.broadcast_to(jnp.array([[20.0, 0, 24, 0], [0, 20, 16, 0], [0, 0, 1, 0],
                                    [0, 0, 0, 1]]), (2, 4, 4))
    poses = jnp.broadcast_to(jnp.eye(4), (2, 3, 4, 4))
    (disps, _, lowest, confidence), _ = model.student(
        variables, image, jnp.stack([image] * 3, 1), poses, K, jnp.linalg.inv(K), 0.1, 10.0,
        train=False)
    chex.assert_shape([lowest, confidence], [(2, 16, 24)] * 2)
    chex.assert_shape(disps[0], (2, 64, 96, 1))


def test_sigmoid_disparities_in_unit_interval(variables):
    image = jax.random.uniform(jax.random.key(1), (1, 64, 96, 3))
    (disps, _), _ = ManyDepth().teacher(variables, image, train=False)
    for disp in disps.values():
        assert float(disp.min()) > 0.0 and float(disp.max()) < 1.0


def test_torch_batchnorm_semantics_hand_computed():
    x = jnp.array([1.0, 2.0, 3.0, 6.0]).reshape(1, 2, 2, 1)
    bn = TorchBatchNorm()
    variables = bn.init(jax.random.key(0), x, train=True)
    # init must not move the statistics (torch does not run a forward at construction).
    np.testing.assert_allclose(variables["batch_stats"]["mean"], [0.0])
    np.testing.assert_allclose(variables["batch_stats"]["var"], [1.0])
    out, updates = bn.apply(variables, x, train=True, mutable=["batch_stats"])
    mean, biased, unbiased = 3.0, 3.5, 14.0 / 3.0
    np.testing.assert_allclose(out.ravel(), (np.array([1, 2, 3, 6]) - mean)
                               / np.sqrt(biased + 1e-5), rtol=1e-6)
    np.testing.assert_allclose(updates["batch_stats"]["mean"], [0.1 * mean], rtol=1e-6)
    np.testing.assert_allclose(updates["batch_stats"]["var"], [0.9 + 0.1 * unbiased], rtol=1e-6)
    # Eval mode normalises with the running statistics.
    evaluated = bn.apply({**variables, **updates}, x, train=False)
    expected = (np.array([1, 2, 3, 6]) - 0.3) / np.sqrt(0.9 + 0.1 * unbiased + 1e-5)
    np.testing.assert_allclose(evaluated.ravel(), expected, rtol=1e-6)


def test_grouped_batchnorm_equals_separate_calls_in_update_order():
    """Two interleaved groups with update order (0, 1, 0) = torch calls on group 0, group 1,
    group 0: each group normalised with its own statistics, running averages updated thrice."""
    rng = np.random.default_rng(0)
    group0 = jnp.asarray(rng.normal(1.0, 2.0, (3, 4, 5, 6)), jnp.float32)
    group1 = jnp.asarray(rng.normal(-2.0, 0.5, (3, 4, 5, 6)), jnp.float32)
    interleaved = jnp.stack([group0, group1], axis=1).reshape(6, 4, 5, 6)
    single = TorchBatchNorm()
    variables = single.init(jax.random.key(0), group0, train=True)
    outputs, state = [], variables
    for group in (group0, group1, group0):
        out, updates = single.apply(state, group, train=True, mutable=["batch_stats"])
        outputs.append(out)
        state = {**state, **updates}
    grouped = TorchBatchNorm(update_order=(0, 1, 0))
    out, updates = grouped.apply(variables, interleaved, train=True, mutable=["batch_stats"])
    out = out.reshape(3, 2, 4, 5, 6)
    np.testing.assert_allclose(out[:, 0], outputs[0], atol=1e-5)
    np.testing.assert_allclose(out[:, 1], outputs[1], atol=1e-5)
    for name in ("mean", "var"):
        np.testing.assert_allclose(updates["batch_stats"][name], state["batch_stats"][name],
                                   rtol=1e-5)
    with pytest.raises(ValueError, match="batch of 5 cannot hold 2"):
        grouped.apply(variables, interleaved[:5], train=True, mutable=["batch_stats"])
    # The statistics really are per group: one group's statistics would normalise differently.
    assert not np.allclose(out[:, 1], single.apply(variables, interleaved, train=True,
                                                   mutable=["batch_stats"])[0][1::2], atol=1e-2)


def test_batched_pose_pairs_equal_separate_pose_calls(variables):
    """ManyDepth.poses: two pairs in one pass, training mode = the two single-pair calls,
    outputs, gradients and BatchNorm statistics (applied in the calls' order)."""
    model = ManyDepth()
    rng = np.random.default_rng(1)
    frames = [jnp.asarray(rng.uniform(size=(2, 64, 96, 3)), jnp.float32) for _ in range(3)]
    pairs = [(frames[0], frames[1]), (frames[1], frames[2])]

    def separate(params):
        state, translations = {**variables, "params": params}, []
        for pair in pairs:
            (_, translation), stats = model.pose(state, *pair, train=True)
            state = {**state, "batch_stats": {**state["batch_stats"], "pose_encoder": stats}}
            translations.append(translation)
        return jnp.sum(jnp.stack(translations) ** 2), (translations, state["batch_stats"])

    def batched(params):
        poses, stats = model.poses({**variables, "params": params}, pairs, train=True)
        translations = [translation for _, translation in poses]
        return jnp.sum(jnp.stack(translations) ** 2), (translations, stats)

    (_, (want, want_stats)), want_grad = jax.value_and_grad(separate, has_aux=True)(
        variables["params"])
    (_, (got, got_stats)), got_grad = jax.value_and_grad(batched, has_aux=True)(
        variables["params"])
    np.testing.assert_allclose(np.stack(got), np.stack(want), rtol=1e-4, atol=1e-6)
    chex.assert_trees_all_close(got_stats, want_stats["pose_encoder"], rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(got_grad["pose_encoder"], want_grad["pose_encoder"],
                                rtol=1e-3, atol=1e-6)
    with pytest.raises(ValueError, match="update_order"):
        model.poses(variables, pairs, train=True, update_order=(0, 0))


def test_missing_lookup_frame_gives_zero_confidence(variables):
    model = ManyDepth()
    image = jax.random.uniform(jax.random.key(2), (1, 64, 96, 3))
    K = jnp.array([[[40.0, 0, 12, 0], [0, 40, 8, 0], [0, 0, 1, 0], [0, 0, 0, 1]]])
    pose = jnp.eye(4).at[0, 3].set(0.02)[None, None]  # < 1 px shift at every bin

    @jax.jit
    def confidence(lookup_pose):
        return model.student(variables, image, image[:, None], lookup_pose, K,
                             jnp.linalg.inv(K), 1.0, 10.0, train=False)[0][3]

    outs = {"present": confidence(pose), "missing": confidence(jnp.zeros_like(pose))}
    assert float(outs["missing"].sum()) == 0.0
    assert float(outs["present"].sum()) > 0.0


def _cost_volume_inputs(num_bins: int):
    keys = jax.random.split(jax.random.key(3), 2)
    current = jax.random.normal(keys[0], (2, 8, 20, 16))
    lookup = jax.random.normal(keys[1], (2, 1, 8, 20, 16))
    K = jnp.broadcast_to(jnp.array([[16.0, 0, 10, 0], [0, 16, 4, 0], [0, 0, 1, 0],
                                    [0, 0, 0, 1]]), (2, 4, 4))
    pose = jnp.broadcast_to(jnp.eye(4).at[0, 3].set(0.3), (2, 1, 4, 4))
    pose = pose.at[1].set(0.0)  # second sample: missing lookup frame
    return current, lookup, pose, K, jnp.linalg.inv(K), matching.depth_bins(0.5, 8.0, num_bins)


@pytest.mark.parametrize("num_bins", [12, 7])
def test_cost_volume_same_for_any_chunking(monkeypatch, num_bins):
    """The planes are warped a chunk at a time; the chunk size must not change a single value
    (7 bins: only chunks of 1 divide it)."""
    inputs = _cost_volume_inputs(num_bins)
    results = {}
    for per_chunk in (1, 4, num_bins):
        monkeypatch.setattr(matching, "BINS_PER_CHUNK", per_chunk)
        results[per_chunk] = jax.device_get(jax.jit(matching.cost_volume)(*inputs))
    for per_chunk in (4, num_bins):
        for ours, single in zip(results[per_chunk], results[1], strict=True):
            np.testing.assert_array_equal(ours, single)
    cost, confidence, _ = results[1]
    assert cost.shape == (2, 8, 20, num_bins)
    assert confidence[1].sum() == 0 and confidence[0].sum() > 0


def test_bins_per_chunk_is_largest_divisor_up_to_limit():
    assert [matching._bins_per_chunk(n) for n in (96, 32, 30, 7, 2)] == [4, 4, 3, 1, 2]


def test_bfloat16_compute_keeps_float32_interfaces_and_tracks_float32(variables):
    """bfloat16 convolutions from float32 parameters: outputs and gradients stay float32 and
    the disparities stay within bfloat16 rounding of the float32 ones."""
    image = jax.random.uniform(jax.random.key(4), (1, 64, 96, 3))
    outs = {}
    for dtype in ("float32", "bfloat16"):
        model = ManyDepth(compute_dtype=dtype)

        def disparity(params, model=model):
            (disps, _), _ = model.teacher({**variables, "params": params}, image, train=True)
            return disps[0]

        outs[dtype] = jax.jit(disparity)(variables["params"])
        grads = jax.jit(jax.grad(lambda p, f=disparity: jnp.mean(f(p))))(variables["params"])
        assert outs[dtype].dtype == jnp.float32
        assert {leaf.dtype for leaf in jax.tree.leaves(grads)} == {jnp.dtype(jnp.float32)}
    difference = float(jnp.max(jnp.abs(outs["bfloat16"] - outs["float32"])))
    assert 0 < difference < 0.05
    with pytest.raises(ValueError, match="compute_dtype"):
        ManyDepth(compute_dtype="float16")


@pytest.mark.parametrize("shape", [(2, 12, 20, 3), (1, 7, 9, 2)])
def test_max_pool_equals_flax_pool_values_and_gradients(shape):
    """Without ties the fast-gradient pool is flax's max pool, forward and backward, also
    for odd sizes (the last window overhangs the -inf padding)."""
    from flax import linen as nn

    from mal_jax.models.pooling import max_pool

    def flax_pool(x):
        return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))

    x = jnp.asarray(np.random.default_rng(0).normal(size=shape), jnp.float32)
    out, pullback = jax.vjp(max_pool, x)
    expected, expected_pullback = jax.vjp(flax_pool, x)
    cotangent = jnp.asarray(np.random.default_rng(1).normal(size=out.shape), jnp.float32)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(pullback(cotangent)[0], expected_pullback(cotangent)[0])
    np.testing.assert_array_equal(jax.jit(jax.grad(lambda v: max_pool(v).sum()))(x),
                                  jax.grad(lambda v: flax_pool(v).sum())(x))


def test_max_pool_gradient_goes_to_first_maximum_in_row_major_order():
    """torch's rule, hand-computed on a 3x3 image: the single output's window is the whole
    image (with padding), so all gradient goes to the first of the tied maxima."""
    from mal_jax.models.pooling import max_pool

    image = jnp.asarray([[0.0, 2.0, 1.0], [2.0, 0.0, 2.0], [1.0, 1.0, 0.0]])[None, :, :, None]
    grad = jax.grad(lambda x: max_pool(x)[0, 0, 0, 0])(image)
    # Output (0, 0) covers padded rows/cols -1..1: taps (0,1)=2 and (1,0)=2 tie; row-major
    # order visits (0, 1) first.
    expected = np.zeros((3, 3))
    expected[0, 1] = 1.0
    np.testing.assert_array_equal(grad[0, :, :, 0], expected)


@pytest.mark.parametrize("batch,size,in_features,out_features,kernel,stride,padding", [
    (2, (3, 5), 64, 128, 3, 1, 1),   # a deep stage: the GEMM input gradient is taken
    (1, (7, 9), 8, 16, 3, 2, 1),     # odd size, strided: the last window overhangs
    (2, (6, 10), 32, 64, 1, 2, 0),   # 1x1 downsample
    (1, (14, 18), 3, 16, 7, 2, 3),   # the stems' 7x7
])
def test_convolution_gemm_input_gradient_equals_lax(batch, size, in_features, out_features,
                                                    kernel, stride, padding):
    """Values and both gradients equal lax's convolution (up to summation order), including
    the border pixels the padding covers and strided sizes whose last row is never read."""
    from jax import lax

    from mal_jax.models import convolution

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(batch, *size, in_features)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(kernel, kernel, in_features, out_features)), jnp.float32)
    pads = ((padding, padding), (padding, padding))
    strides = (stride, stride)
    ours = lambda x, w: convolution._conv_gemm_backward(x, w, strides, pads)  # noqa: E731
    theirs = lambda x, w: lax.conv_general_dilated(  # noqa: E731
        x, w, strides, pads, dimension_numbers=convolution.NHWC_DIMENSIONS)
    out, pullback = jax.vjp(ours, x, w)
    expected, expected_pullback = jax.vjp(theirs, x, w)
    cotangent = jnp.asarray(rng.normal(size=out.shape), jnp.float32)
    np.testing.assert_array_equal(out, expected)
    for got, want in zip(pullback(cotangent), expected_pullback(cotangent), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4 * float(jnp.max(jnp.abs(want))))


def test_convolution_takes_gemm_gradient_only_where_kernel_outweighs_activations():
    """The choice follows the sizes: ResNet-18's last stage at 96x320 (3x10 pixels, 512
    features) takes it, its first stage (24x80, 64 features) keeps XLA's gradient; and flax's
    Conv built by layers.conv routes through it with the same output as a plain Conv."""
    from flax import linen as nn

    from mal_jax.models import convolution
    from mal_jax.models.layers import conv

    assert convolution._gemm_input_gradient_pays((4, 3, 10, 512), (3, 3, 512, 512))
    assert not convolution._gemm_input_gradient_pays((4, 24, 80, 64), (3, 3, 64, 64))
    x = jnp.asarray(np.random.default_rng(2).normal(size=(1, 4, 6, 32)), jnp.float32)
    ours = conv(64, 3, padding=1)
    variables = ours.init(jax.random.PRNGKey(0), x)
    plain = nn.Conv(64, (3, 3), padding=((1, 1), (1, 1)))
    np.testing.assert_array_equal(ours.apply(variables, x), plain.apply(variables, x))
    assert "custom_vjp" in str(jax.make_jaxpr(lambda v: ours.apply(variables, v))(x))
    assert "custom_vjp" not in str(jax.make_jaxpr(
        lambda v: ours.apply(variables, v))(jnp.zeros((4, 24, 80, 32))))
    grad_ours = jax.grad(lambda v: jnp.sum(ours.apply(variables, v) ** 2))(x)
    grad_plain = jax.grad(lambda v: jnp.sum(plain.apply(variables, v) ** 2))(x)
    np.testing.assert_allclose(grad_ours, grad_plain, rtol=1e-5, atol=1e-5)
