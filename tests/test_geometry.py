"""Geometry and grid_sample: golden parity with the PyTorch reference plus hand-made cases."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from mal_jax.core import geometry
from mal_jax.port.golden import nchw_to_nhwc


def _intrinsics(batch, height, width):
    K = np.array(
        [
            [0.58 * width, 0, 0.5 * width, 0],
            [0, 1.92 * height, 0.5 * height, 0],
            [0, 0, 1, 0],
            [0, 0, 0, 1],
        ],
        np.float32,
    )
    K = np.broadcast_to(K, (batch, 4, 4)).copy()
    return jnp.asarray(K), jnp.asarray(np.linalg.inv(K))


def _identity_grid(batch, height, width):
    ys, xs = np.meshgrid(np.linspace(-1, 1, height), np.linspace(-1, 1, width), indexing="ij")
    grid = np.stack([xs, ys], -1).astype(np.float32)
    return jnp.asarray(np.broadcast_to(grid, (batch, height, width, 2)).copy())


# ---------------------------------------------------------------- golden parity


def test_golden_pose_is_inverted_pair_minus_one(golden):
    axisangle = jnp.asarray(golden["eval/axisangle/-1"][:, 0, 0])
    translation = jnp.asarray(golden["eval/translation/-1"][:, 0, 0])
    T = geometry.transformation_from_parameters(axisangle, translation, invert=True)
    chex.assert_shape(T, (2, 4, 4))
    np.testing.assert_allclose(T, golden["geo/T"], atol=1e-6)
    np.testing.assert_allclose(T, golden["eval/relative_pose/-1"], atol=1e-6)
    # The non-inverted matrix is a different pose: the inversion is what the fixture used.
    T_forward = geometry.transformation_from_parameters(axisangle, translation, invert=False)
    assert np.abs(np.asarray(T_forward) - golden["geo/T"]).max() > 1e-3


def test_golden_pix_coords_and_warp(golden):
    K = golden["in/K/0"]
    inv_K = np.linalg.pinv(K)  # the reference data loader inverts K with pinv
    depth = jnp.asarray(golden["geo/depth"][:, 0])
    points = geometry.backproject_depth(depth, jnp.asarray(inv_K))
    chex.assert_shape(points, (2, 96, 320, 4))
    pix = geometry.project_points(points, jnp.asarray(K), jnp.asarray(golden["geo/T"]))
    chex.assert_shape(pix, (2, 96, 320, 2))
    np.testing.assert_allclose(pix, golden["geo/pix_coords"], atol=1e-4, rtol=0)

    source = jnp.asarray(nchw_to_nhwc(golden["in/color/-1"]))
    expected = nchw_to_nhwc(golden["geo/warped"])
    sampled = geometry.grid_sample(source, jnp.asarray(golden["geo/pix_coords"]), "border")
    np.testing.assert_allclose(sampled, expected, atol=1e-6, rtol=0)

    warped, pix2 = jax.jit(geometry.warp_frame)(
        source, depth[..., None], jnp.asarray(golden["geo/T"]), jnp.asarray(K), jnp.asarray(inv_K)
    )
    chex.assert_type(warped, jnp.float32)
    np.testing.assert_allclose(warped, expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(pix2, golden["geo/pix_coords"], atol=1e-4, rtol=0)


# ---------------------------------------------------------------- poses


def test_rot_from_axisangle_matches_rodrigues():
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(5, 3)).astype(np.float32)
    rot = np.asarray(geometry.rot_from_axisangle(jnp.asarray(vecs)))
    chex.assert_shape(rot, (5, 4, 4))
    np.testing.assert_allclose(rot[:, :3, :3], Rotation.from_rotvec(vecs).as_matrix(), atol=1e-5)
    np.testing.assert_array_equal(rot[:, 3], np.tile([0, 0, 0, 1], (5, 1)))
    np.testing.assert_array_equal(rot[:, :3, 3], 0)
    # A quarter turn about z sends x to y.
    quarter = np.asarray(geometry.rot_from_axisangle(jnp.array([[0.0, 0.0, np.pi / 2]])))[0]
    np.testing.assert_allclose(quarter[:3, :3] @ [1, 0, 0], [0, 1, 0], atol=1e-6)


def test_zero_rotation_is_identity_with_finite_gradient():
    zero = jnp.zeros((1, 3))
    np.testing.assert_array_equal(geometry.rot_from_axisangle(zero)[0], np.eye(4))
    grad = jax.grad(lambda v: jnp.sum(geometry.rot_from_axisangle(v) ** 2))(zero)
    assert np.all(np.isfinite(grad))


def test_transformation_inverse_and_translation():
    rng = np.random.default_rng(1)
    axisangle = jnp.asarray(rng.normal(size=(3, 3)) * 0.3, jnp.float32)
    translation = jnp.asarray(rng.normal(size=(3, 3)), jnp.float32)
    forward = geometry.transformation_from_parameters(axisangle, translation)
    backward = geometry.transformation_from_parameters(axisangle, translation, invert=True)
    np.testing.assert_allclose(forward @ backward, np.broadcast_to(np.eye(4), (3, 4, 4)), atol=1e-5)
    np.testing.assert_allclose(forward[:, :3, 3], translation, atol=1e-7)
    T = geometry.translation_matrix(jnp.array([[1.0, 2.0, 3.0]]))
    np.testing.assert_array_equal(T[0] @ jnp.array([1.0, 1.0, 1.0, 1.0]), [2, 3, 4, 1])


def test_disp_to_depth_endpoints():
    scaled, depth = geometry.disp_to_depth(jnp.array([0.0, 1.0, 0.5]), 0.1, 100.0)
    np.testing.assert_allclose(scaled, [0.01, 10.0, 0.01 + 0.5 * 9.99], rtol=1e-6)
    np.testing.assert_allclose(depth, [100.0, 0.1, 1 / (0.01 + 0.5 * 9.99)], rtol=1e-6)


# ---------------------------------------------------------------- projection


def test_backproject_hand_case():
    K, inv_K = _intrinsics(1, 4, 6)
    depth = jnp.full((1, 4, 6), 2.0)
    points = geometry.backproject_depth(depth, inv_K)
    chex.assert_shape(points, (1, 4, 6, 4))
    # Pixel (x=5, y=1): ray inv_K @ (5, 1, 1), scaled by depth 2.
    fx, fy, cx, cy = 0.58 * 6, 1.92 * 4, 3.0, 2.0
    np.testing.assert_allclose(
        points[0, 1, 5], [2 * (5 - cx) / fx, 2 * (1 - cy) / fy, 2, 1], rtol=1e-6
    )


def test_identity_pose_projects_to_pixel_centres_and_warps_onto_itself():
    batch, height, width = 2, 8, 12
    K, inv_K = _intrinsics(batch, height, width)
    rng = np.random.default_rng(2)
    depth = jnp.asarray(rng.uniform(0.5, 50.0, size=(batch, height, width, 1)), jnp.float32)
    image = jnp.asarray(rng.uniform(size=(batch, height, width, 3)), jnp.float32)
    T = jnp.broadcast_to(jnp.eye(4), (batch, 4, 4))
    warped, pix = geometry.warp_frame(image, depth, T, K, inv_K)
    chex.assert_shape(warped, image.shape)
    chex.assert_type(warped, jnp.float32)
    np.testing.assert_allclose(pix, _identity_grid(batch, height, width), atol=1e-5)
    np.testing.assert_allclose(warped, image, atol=1e-5)


def test_project_points_uses_additive_eps():
    # Like the reference, eps is added to z rather than used as a floor: a point at
    # z = 1e-7 = eps lands at half its ideal pixel coordinate, and z = 0 stays finite.
    K, _ = _intrinsics(1, 2, 2)  # fx = 1.16, cx = cy = 1
    near, origin = [1e-7, 0.0, 1e-7, 1.0], [0.0, 0.0, 0.0, 1.0]
    points = jnp.array([[[near, origin], [origin, origin]]])  # a 2 x 2 "image" of points
    pix = geometry.project_points(points, K, jnp.eye(4)[None])
    x_pixel, y_pixel = (1.16 + 1.0) / 2, 0.5
    np.testing.assert_allclose(
        pix[0, 0, 0], [(x_pixel - 0.5) * 2, (y_pixel - 0.5) * 2], rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(pix[0, 0, 1], [-1.0, -1.0])


# ---------------------------------------------------------------- grid_sample


IMAGE = jnp.arange(1.0, 13.0).reshape(1, 3, 4, 1)  # rows [1..4], [5..8], [9..12]


def _sample(points, padding, image=IMAGE):
    """Sample at pixel-unit (x, y) points."""
    _, height, width, _ = image.shape
    points = jnp.asarray(points, jnp.float32)
    grid = jnp.stack([points[:, 0] / (width - 1) * 2 - 1, points[:, 1] / (height - 1) * 2 - 1], -1)
    return geometry.grid_sample(image, grid[None, None], padding)[0, 0, :, 0]


@pytest.mark.parametrize("padding", ["border", "zeros"])
def test_grid_sample_pixel_centres_and_half_pixels(padding):
    np.testing.assert_allclose(
        geometry.grid_sample(IMAGE, _identity_grid(1, 3, 4), padding), IMAGE, atol=1e-6
    )
    values = _sample([[0.5, 0.0], [1.0, 1.5], [2.5, 0.5], [3.0, 2.0]], padding)
    np.testing.assert_allclose(values, [1.5, 8.0, (3 + 4 + 7 + 8) / 4, 12.0], rtol=1e-6)


def test_grid_sample_out_of_range_zeros_vs_border():
    points = [[-0.5, 0.0], [3.25, 1.0], [1.0, -0.5], [-3.0, 1.0], [1.0, 7.0]]
    np.testing.assert_allclose(_sample(points, "zeros"), [0.5, 0.75 * 8, 0.5 * 2, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(_sample(points, "border"), [1, 8, 2, 5, 10], rtol=1e-6)


@pytest.mark.parametrize("padding", ["zeros", "border"])
def test_grid_sample_far_and_nonfinite_coordinates(padding):
    grid = jnp.array([[[[1e30, 1e30], [jnp.inf, jnp.inf], [-1e30, 5.0], [jnp.nan, jnp.nan]]]])
    out = geometry.grid_sample(IMAGE, grid, padding)[0, 0, :, 0]
    assert np.all(np.isfinite(out))
    # NaN is treated as far outside on the low side: zeros gives 0, border the first pixel
    # of the row/column it clamps to.
    expected = {"zeros": [0, 0, 0, 0], "border": [12, 12, 9, 1]}[padding]
    np.testing.assert_allclose(out, expected)
    grads = jax.grad(lambda g: jnp.sum(geometry.grid_sample(IMAGE, g, padding)))(grid)
    assert np.all(np.isfinite(grads))


@pytest.mark.parametrize("padding", ["border", "zeros"])
def test_grid_sample_gradients_match_finite_differences(padding):
    rng = np.random.default_rng(3)
    image = jnp.asarray(rng.uniform(size=(1, 5, 6, 2)), jnp.float32)
    # Interior positions and (for zeros) positions between the edge and half a pixel out.
    grid = jnp.array([[[[-0.33, 0.41], [0.77, -0.58], [-1.07, 0.13], [0.23, 1.09]]]])
    weights = jnp.asarray(rng.normal(size=(1, 1, 4, 2)), jnp.float32)
    loss = lambda img, g: jnp.sum(geometry.grid_sample(img, g, padding) * weights)
    d_image, d_grid = jax.grad(loss, argnums=(0, 1))(image, grid)

    step = 1e-3
    numeric_grid = np.zeros(grid.shape, np.float32)
    for idx in np.ndindex(grid.shape):
        bump = jnp.zeros(grid.shape).at[idx].set(step)
        numeric_grid[idx] = (loss(image, grid + bump) - loss(image, grid - bump)) / (2 * step)
    np.testing.assert_allclose(d_grid, numeric_grid, atol=2e-3)
    if padding == "border":
        # Beyond the border the coordinate has no gradient (x of point 2, y of point 3).
        assert d_grid[0, 0, 2, 0] == 0 and d_grid[0, 0, 3, 1] == 0
    else:
        assert d_grid[0, 0, 2, 0] != 0 and d_grid[0, 0, 3, 1] != 0

    # The output is linear in the image, so the image gradient is exact: compare with the
    # derivative of each output channel with respect to every pixel.
    jac = jax.jacobian(lambda img: geometry.grid_sample(img, grid, padding))(image)
    np.testing.assert_allclose(d_image, np.einsum("abcd,abcdefgh->efgh", weights, jac), atol=1e-6)


def test_grid_sample_coordinate_gradient_hand_case_and_border_stop():
    # At (x, y) = (1.25, 0.5): value = bilinear of 2,3 / 6,7; d/dx (pixels) = 1, d/dy = 4.
    # In normalised units dx_pix/dgx = (W-1)/2 = 1.5 and dy_pix/dgy = (H-1)/2 = 1.
    def value(g, padding):
        return geometry.grid_sample(IMAGE, g, padding)[0, 0, 0, 0]

    g = jnp.array([[[[1.25 / 1.5 - 1, 0.5 - 1]]]])
    for padding in ("zeros", "border"):
        np.testing.assert_allclose(jax.grad(value)(g, padding)[0, 0, 0], [1.5, 4.0], rtol=1e-5)
    # Exactly on the border and beyond it, border padding gives no x gradient but keeps y.
    for gx in (-1.0, -1.2, 1.0, 1.3):
        grad = jax.grad(value)(jnp.array([[[[gx, -0.5]]]]), "border")[0, 0, 0]
        assert grad[0] == 0 and grad[1] == pytest.approx(4.0)


def test_grid_sample_rejects_bad_input():
    with pytest.raises(ValueError, match="padding"):
        geometry.grid_sample(IMAGE, jnp.zeros((1, 1, 1, 2)), "reflection")
    with pytest.raises(ValueError, match="grid"):
        geometry.grid_sample(IMAGE, jnp.zeros((1, 1, 1, 3)), "zeros")


def test_jitted_warp_then_pad_equals_eager_at_integer_shift():
    """Regression: XLA on CPU recomputed coordinates in several fusions with different rounding,
    so floor() disagreed between gather index and weight (whole-pixel errors of ~0.9)."""
    height, width = 24, 64
    frames = np.random.default_rng(0).uniform(size=(1, height, width, 3)).astype(np.float32)
    K = np.array([[[0.58 * width, 0, 0.5 * width, 0], [0, 1.92 * height, 0.5 * height, 0],
                   [0, 0, 1, 0], [0, 0, 0, 1]]], np.float32)
    T = np.eye(4, dtype=np.float32)[None].copy()
    T[:, 0, 3] = 2 * 10 / K[0, 0, 0]  # exactly two pixels at depth 10
    depth = np.full((1, height, width), 10.0, np.float32)

    def warp_and_pad(frames, depth, T, K, inv_K):
        warped = geometry.warp_frame(frames, depth, T, K, inv_K)[0]
        return jnp.pad(warped, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")

    args = (frames, depth, T, K, np.linalg.inv(K))
    eager = np.asarray(warp_and_pad(*args))
    jitted = np.asarray(jax.jit(warp_and_pad)(*args))
    np.testing.assert_allclose(jitted, eager, atol=1e-5)
    # And the warp is the two-pixel shift it should be.
    np.testing.assert_allclose(eager[0, 3:-3, 3:-5], frames[0, 2:-2, 4:-2], atol=1e-5)


def test_grid_sample_zeros_padding_fades_to_zero_across_the_last_pixel():
    """Between the last pixel centre (x = W-1) and one pixel beyond it the value falls
    linearly to zero; at and beyond x = W it is zero with zero gradient (torch)."""
    width = IMAGE.shape[2]

    def sample(x_pixel):
        gx = x_pixel / ((width - 1) / 2) - 1
        return geometry.grid_sample(IMAGE, jnp.array([[[[gx, -1.0]]]]), "zeros")[0, 0, 0, 0]

    for x_pixel, expected in ((3.0, 4.0), (3.25, 3.0), (3.75, 1.0), (4.0, 0.0), (5.5, 0.0)):
        assert float(jax.jit(sample)(x_pixel)) == pytest.approx(expected, abs=1e-5)
    assert float(jax.grad(sample)(3.5)) == pytest.approx(-4.0, abs=1e-4)
    assert float(jax.grad(sample)(4.5)) == 0.0
