"""The 2-D test functions checked against oracles from outside the code.

- Gradients against central finite differences of `value` (an independent computation).
- Values and gradients at one point away from the minima per surface, worked out by hand from
  the published formula.
- Minima and minimum values against the values published in the optimization literature,
  typed in by hand here at the precision they are published (Surjanovic & Bingham, "Virtual
  Library of Simulation Experiments", sfu.ca/~ssurjano; Jamil & Yang 2013, "A literature survey
  of benchmark functions for global optimization problems"; Wikipedia "Test functions for
  optimization").
- Local optimality by comparison with neighbouring points, global lower bounds on a dense grid.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from optbench.errors import OptbenchError
from optbench.surfaces import SURFACES, get_surface

ALL = sorted(SURFACES)
BOUNDED = sorted(name for name, s in SURFACES.items() if s.bounded)
UNBOUNDED = ["saddle", "monkey_saddle"]


def random_points(surface, n: int, seed: int) -> np.ndarray:
    """n points drawn uniformly from the surface's domain, shape (n, 2)."""
    (x0, x1), (y0, y1) = surface.domain
    rng = np.random.default_rng(seed)
    return np.column_stack([rng.uniform(x0, x1, n), rng.uniform(y0, y1, n)])


def central_difference(surface, points: np.ndarray) -> np.ndarray:
    """(f(p + h e_i) - f(p - h e_i)) / 2h per coordinate, h = 1e-6 * max(1, |p_i|)."""
    grad = np.empty_like(points)
    for i in range(2):
        h = 1e-6 * np.maximum(1.0, np.abs(points[:, i]))
        step = np.zeros_like(points)
        step[:, i] = h
        # (p + h) - (p - h) is the step actually taken after rounding, not 2h.
        width = (points + step)[:, i] - (points - step)[:, i]
        grad[:, i] = (surface.value(points + step) - surface.value(points - step)) / width
    return grad


# --- gradients -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_gradient_matches_central_differences_at_200_random_points(name):
    surface = SURFACES[name]
    points = random_points(surface, 200, seed=sum(map(ord, name)))
    analytic = surface.gradient(points)
    numeric = central_difference(surface, points)
    # Truncation error of a central difference is O(h^2) ~ 1e-12 relative; rounding error is
    # about eps * |f| / h ~ 2e-10 * |f| absolute (Goldstein-Price reaches 1e6 on its domain).
    # So: 1e-6 relative to the gradient, plus an absolute allowance of 1e-8 * (1 + |f|).
    err = np.linalg.norm(analytic - numeric, axis=-1)
    tol = 1e-6 * np.linalg.norm(analytic, axis=-1) + 1e-8 * (1 + np.abs(surface.value(points)))
    bad = np.flatnonzero(err > tol)
    assert bad.size == 0, (
        f"{name}: analytic gradient off at {points[bad[:3]].tolist()}: "
        f"analytic {analytic[bad[:3]].tolist()} vs finite difference {numeric[bad[:3]].tolist()}"
    )


# --- published minima ------------------------------------------------------------------------

# (surface, published minimizers, their precision, published minimum value, its precision).
# A figure published with n decimals is trusted to 0.5e-n when rounded; a truncated one to 1e-n.
PUBLISHED = [
    # Quadratic bowl x^2/20 + y^2 (this project's own): 0 at the origin, by inspection.
    ("bowl", [(0.0, 0.0)], 0.0, 0.0, 0.0),
    # Rosenbrock 1960: f(1, 1) = 0.
    ("rosenbrock", [(1.0, 1.0)], 0.0, 0.0, 0.0),
    # Beale 1958: f(3, 0.5) = 0.
    ("beale", [(3.0, 0.5)], 0.0, 0.0, 0.0),
    # Himmelblau 1972: four global minima of value 0; the three irrational ones are published
    # with 6 decimals (Wikipedia, sfu.ca), truncated rather than rounded (3.1313125... appears
    # as 3.131312), hence 1e-6.
    (
        "himmelblau",
        [(3.0, 2.0), (-2.805118, 3.131312), (-3.779310, -3.283186), (3.584428, -1.848126)],
        1e-6,
        0.0,
        0.0,
    ),
    # Rastrigin: f(0, 0) = 0.
    ("rastrigin", [(0.0, 0.0)], 0.0, 0.0, 0.0),
    # Ackley: f(0, 0) = 0.
    ("ackley", [(0.0, 0.0)], 0.0, 0.0, 0.0),
    # Booth: f(1, 3) = 0.
    ("booth", [(1.0, 3.0)], 0.0, 0.0, 0.0),
    # Goldstein-Price 1971: f(0, -1) = 3.
    ("goldstein_price", [(0.0, -1.0)], 0.0, 3.0, 0.0),
    # Six-hump camel: f = -1.0316 at (0.0898, -0.7126) and (-0.0898, 0.7126) (sfu.ca, Jamil &
    # Yang; 4 decimals, truncated: the minimizer's y is -0.712656..., hence 1e-4).
    ("six_hump_camel", [(0.0898, -0.7126), (-0.0898, 0.7126)], 1e-4, -1.0316, 1e-4),
    # Styblinski-Tang: x_i = -2.903534 (sfu.ca, Wikipedia, 6 decimals). For the value, sfu.ca
    # states -39.16599 d, but that is not f at its own minimizer: f(-2.903534) = -39.166166 per
    # coordinate, the figure Wikipedia publishes as the bracket -39.16617 d < f < -39.16616 d
    # (1e-5 per coordinate). The Wikipedia figure is used; see
    # test_styblinski_tang_value_at_the_published_minimizer.
    ("styblinski_tang", [(-2.903534, -2.903534)], 0.5e-6, -39.16617 * 2, 2e-5),
    # Branin (Dixon & Szego 1978; sfu.ca): f = 0.397887 at (-pi, 12.275), (pi, 2.275),
    # (9.42478, 2.475); 9.42478 is 3 pi to 5 decimals.
    # Tilted double well x^4 - 2.48x^2 + 0.96x + y^2 (this project's own): its x-derivative is
    # 4 (x + 1.2)(x - 0.2)(x - 1), so the global minimum is f(-1.2, 0) = 2.0736 - 3.5712 - 1.152.
    ("double_well", [(-1.2, 0.0)], 0.0, -2.6496, 1e-15),
    ("branin", [(-math.pi, 12.275), (math.pi, 2.275), (9.42478, 2.475)], 0.5e-5, 0.397887, 0.5e-6),
]


def test_published_table_covers_every_bounded_surface():
    assert sorted(name for name, *_ in PUBLISHED) == BOUNDED


@pytest.mark.parametrize(
    ("name", "minima", "x_precision", "value", "value_precision"), PUBLISHED, ids=[p[0] for p in PUBLISHED]
)
def test_listed_minima_and_value_agree_with_published(name, minima, x_precision, value, value_precision):
    surface = SURFACES[name]
    assert len(surface.minima) == len(minima)
    listed = np.asarray(surface.minima, dtype=np.float64)
    for published in minima:
        # Every published minimizer is one of the listed ones, to the published precision.
        nearest = np.min(np.max(np.abs(listed - np.asarray(published)), axis=1))
        assert nearest <= x_precision + 1e-15, (name, published, nearest)
    assert surface.min_value == pytest.approx(value, abs=value_precision + 1e-15)


@pytest.mark.parametrize("name", BOUNDED)
def test_listed_minima_have_zero_gradient_and_the_listed_value(name):
    surface = SURFACES[name]
    minima = np.asarray(surface.minima, dtype=np.float64)
    values = surface.value(minima)
    np.testing.assert_allclose(values, surface.min_value, rtol=1e-12, atol=1e-12)
    # Scale: the gradient of an O(1)..O(10) function at an O(1) point, rounded: ~1e-14.
    np.testing.assert_allclose(surface.gradient(minima), 0.0, atol=1e-9)


def test_styblinski_tang_value_at_the_published_minimizer():
    # The value at the published minimizer, computed here in Python floats, is -39.166166 per
    # coordinate; sfu.ca's -39.16599 is 1.8e-4 higher, so it is not the minimum's value.
    x = -2.903534
    per_coordinate = 0.5 * (x**4 - 16 * x**2 + 5 * x)
    assert per_coordinate == pytest.approx(-39.166166, abs=1e-6)
    assert SURFACES["styblinski_tang"].min_value == pytest.approx(2 * per_coordinate, abs=1e-9)


def test_six_hump_camel_minima_are_symmetric_pair():
    (a, b), (c, d) = SURFACES["six_hump_camel"].minima
    assert (c, d) == (-a, -b)


@pytest.mark.parametrize("name", BOUNDED)
def test_each_listed_minimum_is_a_local_minimum(name):
    surface = SURFACES[name]
    angles = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    circle = np.column_stack([np.cos(angles), np.sin(angles)])
    for minimum in np.asarray(surface.minima):
        centre = surface.value(minimum)
        for radius in (1e-3, 1e-2):
            around = surface.value(minimum + radius * circle)
            assert np.all(around > centre), (name, minimum.tolist(), radius)


@pytest.mark.parametrize("name", BOUNDED)
def test_no_point_of_a_dense_grid_is_below_the_minimum(name):
    surface = SURFACES[name]
    (x0, x1), (y0, y1) = surface.domain
    xs, ys = np.meshgrid(np.linspace(x0, x1, 801), np.linspace(y0, y1, 801))
    values = surface.value(np.stack([xs, ys], axis=-1))
    assert values.shape == (801, 801)
    assert np.all(np.isfinite(values))
    lowest = values.min()
    assert lowest >= surface.min_value - 1e-12 * (1 + abs(surface.min_value)), (name, lowest)


@pytest.mark.parametrize("name", UNBOUNDED)
def test_saddles_have_no_minimum_and_go_below_any_bound(name):
    surface = get_surface(name)
    assert surface.minima == ()
    assert surface.min_value is None
    assert not surface.bounded
    # Along a descent ray (y axis for x^2 - y^2; negative x axis for x^3 - 3xy^2) the value
    # falls like -t^2 resp. -t^3, so below any bound.
    direction = np.array([0.0, 1.0]) if name == "saddle" else np.array([-1.0, 0.0])
    t = 10.0 ** np.arange(1, 9)
    values = surface.value(t[:, None] * direction)
    np.testing.assert_allclose(values, -(t**2) if name == "saddle" else -(t**3), rtol=1e-15)
    assert np.all(np.diff(values) < 0)
    assert values[-1] < -1e15


def test_saddles_have_a_stationary_point_at_the_origin_that_is_not_a_minimum():
    for name in UNBOUNDED:
        surface = get_surface(name)
        np.testing.assert_array_equal(surface.gradient([0.0, 0.0]), [0.0, 0.0])
        angles = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        around = surface.value(1e-2 * np.column_stack([np.cos(angles), np.sin(angles)]))
        assert around.min() < surface.value([0.0, 0.0]) < around.max()


# --- hand-evaluated values and gradients away from the minima -------------------------------

# (surface, point, f there, (df/dx, df/dy) there), each worked out by hand from the published
# formula (README's surface table), not from this code. The points are not minima and leave no
# term of the formula at zero, so a wrong coefficient anywhere changes the value or the gradient.
PI, E = math.pi, math.e
HAND = [
    # x^2/20 + y^2 at (2, 1): 4/20 + 1 = 1.2; gradient (x/10, 2y) = (0.2, 2).
    ("bowl", (2.0, 1.0), 1.2, (0.2, 2.0)),
    # (1 - x)^2 + 100 (y - x^2)^2 at (-1, 2): 2^2 + 100 * 1^2 = 104; gradient
    # (-2 (1 - x) - 400 x (y - x^2), 200 (y - x^2)) = (-4 + 400, 200).
    ("rosenbrock", (-1.0, 2.0), 104.0, (396.0, 200.0)),
    # Beale at (1, 2): terms 1.5 - 1 + 2 = 2.5, 2.25 - 1 + 4 = 5.25, 2.625 - 1 + 8 = 9.625;
    # 6.25 + 27.5625 + 92.640625 = 126.453125. d/dx = sum 2 t_i (y^i - 1) = 5 + 31.5 + 134.75;
    # d/dy = 2 t1 x + 2 t2 (2xy) + 2 t3 (3xy^2) = 5 + 42 + 231.
    ("beale", (1.0, 2.0), 126.453125, (171.25, 278.0)),
    # (x^2 + y - 11)^2 + (x + y^2 - 7)^2 at (2, 1): a = -6, b = -4: 36 + 16 = 52; gradient
    # (4xa + 2b, 2a + 4yb) = (-48 - 8, -12 - 16).
    ("himmelblau", (2.0, 1.0), 52.0, (-56.0, -28.0)),
    # 20 + x^2 - 10 cos 2 pi x + y^2 - 10 cos 2 pi y at (1/4, 1/2): cos(pi/2) = 0, cos(pi) = -1:
    # 20 + 0.0625 + 0.25 + 10 = 30.3125; gradient (2x + 20 pi sin 2 pi x, ...) = (0.5 + 20 pi, 1 + 0).
    ("rastrigin", (0.25, 0.5), 30.3125, (0.5 + 20 * PI, 1.0)),
    # Ackley at (1/4, -1/4): r = sqrt((x^2 + y^2)/2) = 1/4, cos(+-pi/2) = 0, so
    # f = -20 e^-0.05 - e^0 + e + 20 = 19 + e - 20 e^-0.05 (2.69369...). d/dx of the first term:
    # -20 e^(-0.2 r) (-0.2) x / (2r) = 2 e^-0.05 (x / r = 1); of the second: pi sin(2 pi x) e^0 = pi.
    # At y = -1/4 both flip sign.
    ("ackley", (0.25, -0.25), 19 + E - 20 * math.exp(-0.05),
     (2 * math.exp(-0.05) + PI, -(2 * math.exp(-0.05) + PI))),
    # (x + 2y - 7)^2 + (2x + y - 5)^2 at (2, 0): a = -5, b = -1: 25 + 1 = 26 (f(0, 2) would be 18);
    # gradient (2a + 4b, 4a + 2b) = (-14, -22).
    ("booth", (2.0, 0.0), 26.0, (-14.0, -22.0)),
    # Goldstein-Price at (1, -1): a = x + y + 1 = 1, A = 19 - 14 + 3 + 14 - 6 + 3 = 19, P = 1 + a^2 A = 20;
    # b = 2x - 3y = 5, B = 18 - 32 + 12 - 48 + 36 + 27 = 13, Q = 30 + b^2 B = 355; f = 7100.
    # dP/dx = dP/dy = 2aA + a^2 (-14 + 6x + 6y) = 38 - 14 = 24;
    # dQ/dx = 4bB + b^2 (-32 + 24x - 36y) = 260 + 25 * 28 = 960;
    # dQ/dy = -6bB + b^2 (48 - 36x + 54y) = -390 + 25 * (-42) = -1440;
    # df = (24 * 355 + 20 * 960, 24 * 355 - 20 * 1440) = (27720, -20280).
    ("goldstein_price", (1.0, -1.0), 7100.0, (27720.0, -20280.0)),
    # (4 - 2.1x^2 + x^4/3) x^2 + xy + (4y^2 - 4) y^2 at (1, 1/2): 67/30 + 1/2 - 3/4 = 119/60;
    # gradient (8x - 8.4x^3 + 2x^5 + y, x - 8y + 16y^3) = (8 - 8.4 + 2 + 0.5, 1 - 4 + 2).
    ("six_hump_camel", (1.0, 0.5), 119 / 60, (2.1, -1.0)),
    # (x^4 - 16x^2 + 5x + y^4 - 16y^2 + 5y) / 2 at (1, 2): (-10 - 38) / 2 = -24; gradient
    # ((4x^3 - 32x + 5)/2, (4y^3 - 32y + 5)/2) = (-23/2, -27/2).
    ("styblinski_tang", (1.0, 2.0), -24.0, (-11.5, -13.5)),
    # Branin at (pi, 5.275): 5.1 pi^2/(4 pi^2) = 1.275 and 5 pi/pi = 5, so the bracket is
    # 5.275 - 1.275 + 5 - 6 = 3, cos pi = -1: 9 - 10 (1 - 1/(8 pi)) + 10 = 9 + 5/(4 pi).
    # d/dx = 2 * 3 * (-2 * 5.1 pi/(4 pi^2) + 5/pi) - 10 (1 - 1/(8 pi)) sin pi = 6 * 2.45/pi; d/dy = 2 * 3.
    ("branin", (PI, 5.275), 9 + 5 / (4 * PI), (14.7 / PI, 6.0)),
    # x^4 - 2.48x^2 + 0.96x + y^2 at (2, 1/2): 16 - 9.92 + 1.92 + 0.25 = 8.25; d/dx from the
    # factored form 4 (x + 1.2)(x - 0.2)(x - 1) = 4 * 3.2 * 1.8 * 1 = 23.04; d/dy = 2y = 1.
    ("double_well", (2.0, 0.5), 8.25, (23.04, 1.0)),
    # x^2 - y^2 at (2, 1): 3; gradient (2x, -2y) = (4, -2).
    ("saddle", (2.0, 1.0), 3.0, (4.0, -2.0)),
    # x^3 - 3xy^2 at (2, 1): 8 - 6 = 2; gradient (3x^2 - 3y^2, -6xy) = (9, -12).
    ("monkey_saddle", (2.0, 1.0), 2.0, (9.0, -12.0)),
]


def test_hand_table_covers_every_surface():
    assert sorted(name for name, *_ in HAND) == ALL


@pytest.mark.parametrize(("name", "point", "value", "grad"), HAND, ids=[h[0] for h in HAND])
def test_value_and_gradient_away_from_the_minima_match_the_hand_evaluated_formula(name, point, value, grad):
    surface = SURFACES[name]
    if surface.bounded:  # away from the minima: the point says something the minima tests do not
        assert value > surface.min_value + 1
    # The hand values are exact up to the rounding of a few float64 operations (and of cos and
    # sin at multiples of pi/2, ~1e-16): 1e-13 relative is ~500 ulps, far below any wrong term.
    np.testing.assert_allclose(surface.value(point), value, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(surface.gradient(point), grad, rtol=1e-13, atol=1e-13)
    # And vectorised: the same numbers inside a batch.
    batch = np.array([surface.start, point, surface.start])
    np.testing.assert_allclose(surface.value(batch)[1], value, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(surface.gradient(batch)[1], grad, rtol=1e-13, atol=1e-13)


# --- Ackley at its cone tip ------------------------------------------------------------------


def test_double_well_has_a_local_minimum_at_1_and_its_ridge_at_0_2():
    # The stationary points of the factored derivative: a local minimum above the global one
    # and the ridge that splits their basins (the oracle of the robustness-map tests).
    surface = SURFACES["double_well"]
    points = np.array([[1.0, 0.0], [0.2, 0.0]])
    np.testing.assert_allclose(surface.gradient(points), 0.0, atol=1e-14)
    assert surface.value(points[0]) == pytest.approx(1 - 2.48 + 0.96, abs=1e-15)
    assert surface.value(points[0]) > surface.min_value
    # Along x the ridge is a maximum, between the two wells.
    h = 1e-3
    assert surface.value([0.2 - h, 0.0]) < surface.value(points[1]) > surface.value([0.2 + h, 0.0])


def test_ackley_is_finite_and_zero_at_the_origin():
    ackley = get_surface("ackley")
    with np.errstate(all="raise"):  # a 0/0 or sqrt(-0) issue would raise here
        value = ackley.value([0.0, 0.0])
        grad = ackley.gradient([0.0, 0.0])
        batch_grad = ackley.gradient(np.array([[0.0, 0.0], [1e-3, 0.0], [0.0, -2e-3]]))
    assert value == 0.0
    assert np.all(np.isfinite(grad))
    np.testing.assert_array_equal(grad, [0.0, 0.0])
    assert np.all(np.isfinite(batch_grad))
    np.testing.assert_array_equal(batch_grad[0], [0.0, 0.0])


# --- vectorisation and dtypes ----------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_value_and_gradient_of_a_5x7_batch_equal_the_per_point_results(name):
    surface = SURFACES[name]
    points = random_points(surface, 35, seed=7).reshape(5, 7, 2)
    values = surface.value(points)
    grads = surface.gradient(points)
    assert values.shape == (5, 7)
    assert grads.shape == (5, 7, 2)
    assert values.dtype == np.float64 and grads.dtype == np.float64
    for i in range(5):
        for j in range(7):
            point = (float(points[i, j, 0]), float(points[i, j, 1]))
            # Same computation on a 0-d input: agreement to a couple of ulps (vectorised
            # transcendental kernels may round differently from the scalar ones).
            np.testing.assert_allclose(values[i, j], surface.value(point), rtol=1e-14, atol=1e-14)
            np.testing.assert_allclose(grads[i, j], surface.gradient(point), rtol=1e-14, atol=1e-13)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.int32])
def test_outputs_are_float64_for_float32_and_int_inputs(name, dtype):
    surface = SURFACES[name]
    points = np.array([[1, -1], [0, 2], [-1, 1]], dtype=dtype)
    values = surface.value(points)
    grads = surface.gradient(points)
    assert values.dtype == np.float64
    assert grads.dtype == np.float64
    assert grads.shape == points.shape
    # And computed in float64: identical to feeding the same numbers as float64.
    exact = points.astype(np.float64)
    np.testing.assert_array_equal(values, surface.value(exact))
    np.testing.assert_array_equal(grads, surface.gradient(exact))


@pytest.mark.parametrize("name", ALL)
def test_python_lists_and_single_points_are_accepted(name):
    surface = SURFACES[name]
    assert surface.value([0.5, -0.25]).shape == ()
    assert surface.gradient([0.5, -0.25]).shape == (2,)
    assert surface.value([[0.5, -0.25]]).shape == (1,)


# --- defaults and lookup ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_default_start_lies_inside_the_domain(name):
    surface = SURFACES[name]
    (x0, x1), (y0, y1) = surface.domain
    x, y = surface.start
    assert x0 < x1 and y0 < y1
    assert x0 <= x <= x1 and y0 <= y <= y1


@pytest.mark.parametrize("name", BOUNDED)
def test_listed_minima_lie_inside_the_domain(name):
    surface = SURFACES[name]
    (x0, x1), (y0, y1) = surface.domain
    for x, y in surface.minima:
        assert x0 <= x <= x1 and y0 <= y <= y1


@pytest.mark.parametrize("name", ALL)
def test_get_surface_returns_the_registered_surface(name):
    assert get_surface(name) is SURFACES[name]
    assert SURFACES[name].name == name


def test_get_surface_unknown_name_raises_optbench_error_naming_the_choices():
    with pytest.raises(OptbenchError) as info:
        get_surface("nope")
    message = str(info.value)
    assert "nope" in message
    for name in SURFACES:
        assert name in message


@pytest.mark.parametrize("tol, noise", [(-1.0, 0.0), (float("nan"), 0.0), (1e-3, -0.5), (1e-3, float("inf"))])
def test_run_surface_refuses_a_bad_tolerance_or_noise_as_the_cli_does(tol, noise):
    from optbench.errors import OptbenchError
    from optbench.optimizers import select_contenders
    from optbench.surface_run import run_surface
    from optbench.surfaces import get_surface

    with pytest.raises(OptbenchError, match="invalid --(tol|noise)"):
        run_surface(get_surface("bowl"), select_contenders(["adam"], [], points=True), tol=tol, noise=noise)
