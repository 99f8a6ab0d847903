"""2-D test functions: value, analytic gradient, plotting domain, default start and known minima.

Every function takes `points` of shape (..., 2), computes in float64 and is vectorised over any
number of points; `gradient` returns the same shape as `points`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from optbench.errors import OptbenchError

Point = tuple[float, float]


@dataclass(frozen=True)
class Surface:
    name: str
    formula: str
    f: Callable  # f(x, y) -> value
    df: Callable  # df(x, y) -> (df/dx, df/dy)
    domain: tuple[Point, Point]  # ((xmin, xmax), (ymin, ymax))
    start: Point
    minima: tuple[Point, ...] = ()  # global minima; empty when there is none
    min_value: float | None = None  # None: unbounded below
    steps: int = 200  # default number of steps for `optbench surface`
    note: str = ""

    def value(self, points) -> np.ndarray:
        p = np.asarray(points, dtype=np.float64)
        return np.asarray(self.f(p[..., 0], p[..., 1]), dtype=np.float64)

    def gradient(self, points) -> np.ndarray:
        p = np.asarray(points, dtype=np.float64)
        gx, gy = self.df(p[..., 0], p[..., 1])
        return np.stack(np.broadcast_arrays(gx, gy), axis=-1).astype(np.float64, copy=False)

    @property
    def bounded(self) -> bool:
        return self.min_value is not None


def _bowl(x, y):
    return x**2 / 20 + y**2


def _bowl_grad(x, y):
    return x / 10, 2 * y


def _rosenbrock(x, y):
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


def _rosenbrock_grad(x, y):
    return -2 * (1 - x) - 400 * x * (y - x**2), 200 * (y - x**2)


def _beale_terms(x, y):
    return 1.5 - x + x * y, 2.25 - x + x * y**2, 2.625 - x + x * y**3


def _beale(x, y):
    t1, t2, t3 = _beale_terms(x, y)
    return t1**2 + t2**2 + t3**2


def _beale_grad(x, y):
    t1, t2, t3 = _beale_terms(x, y)
    gx = 2 * t1 * (y - 1) + 2 * t2 * (y**2 - 1) + 2 * t3 * (y**3 - 1)
    gy = 2 * t1 * x + 4 * t2 * x * y + 6 * t3 * x * y**2
    return gx, gy


def _himmelblau(x, y):
    return (x**2 + y - 11) ** 2 + (x + y**2 - 7) ** 2


def _himmelblau_grad(x, y):
    a, b = x**2 + y - 11, x + y**2 - 7
    return 4 * x * a + 2 * b, 2 * a + 4 * y * b


def _rastrigin(x, y):
    return 20 + x**2 - 10 * np.cos(2 * np.pi * x) + y**2 - 10 * np.cos(2 * np.pi * y)


def _rastrigin_grad(x, y):
    return 2 * x + 20 * np.pi * np.sin(2 * np.pi * x), 2 * y + 20 * np.pi * np.sin(2 * np.pi * y)


def _ackley_parts(x, y):
    r = np.sqrt(0.5 * (x**2 + y**2))
    return r, np.exp(-0.2 * r), np.exp(0.5 * (np.cos(2 * np.pi * x) + np.cos(2 * np.pi * y)))


def _ackley(x, y):
    _, e1, e2 = _ackley_parts(x, y)
    # Grouped so that the origin gives exactly 0.
    return (20 - 20 * e1) + (math.e - e2)


def _ackley_grad(x, y):
    r, e1, e2 = _ackley_parts(x, y)
    # d r / dx = x / (2 r); at r = 0 the cone's subgradient 0 is used instead of 0/0.
    scale = np.divide(2 * e1, r, out=np.zeros(np.broadcast(x, r).shape), where=r > 0)
    return x * scale + np.pi * np.sin(2 * np.pi * x) * e2, y * scale + np.pi * np.sin(2 * np.pi * y) * e2


def _booth(x, y):
    return (x + 2 * y - 7) ** 2 + (2 * x + y - 5) ** 2


def _booth_grad(x, y):
    a, b = x + 2 * y - 7, 2 * x + y - 5
    return 2 * a + 4 * b, 4 * a + 2 * b


def _goldstein_price_parts(x, y):
    a = x + y + 1
    A = 19 - 14 * x + 3 * x**2 - 14 * y + 6 * x * y + 3 * y**2
    b = 2 * x - 3 * y
    B = 18 - 32 * x + 12 * x**2 + 48 * y - 36 * x * y + 27 * y**2
    return a, A, b, B


def _goldstein_price(x, y):
    a, A, b, B = _goldstein_price_parts(x, y)
    return (1 + a**2 * A) * (30 + b**2 * B)


def _goldstein_price_grad(x, y):
    a, A, b, B = _goldstein_price_parts(x, y)
    P, Q = 1 + a**2 * A, 30 + b**2 * B
    dA = -14 + 6 * x + 6 * y  # dA/dx = dA/dy
    P_x = P_y = 2 * a * A + a**2 * dA
    Q_x = 4 * b * B + b**2 * (-32 + 24 * x - 36 * y)
    Q_y = -6 * b * B + b**2 * (48 - 36 * x + 54 * y)
    return P_x * Q + P * Q_x, P_y * Q + P * Q_y


def _six_hump_camel(x, y):
    return (4 - 2.1 * x**2 + x**4 / 3) * x**2 + x * y + (-4 + 4 * y**2) * y**2


def _six_hump_camel_grad(x, y):
    return 8 * x - 8.4 * x**3 + 2 * x**5 + y, x - 8 * y + 16 * y**3


def _styblinski_tang(x, y):
    return 0.5 * (x**4 - 16 * x**2 + 5 * x + y**4 - 16 * y**2 + 5 * y)


def _styblinski_tang_grad(x, y):
    return 0.5 * (4 * x**3 - 32 * x + 5), 0.5 * (4 * y**3 - 32 * y + 5)


_BRANIN_B, _BRANIN_C, _BRANIN_T = 5.1 / (4 * math.pi**2), 5 / math.pi, 1 / (8 * math.pi)


def _branin(x, y):
    inner = y - _BRANIN_B * x**2 + _BRANIN_C * x - 6
    return inner**2 + 10 * (1 - _BRANIN_T) * np.cos(x) + 10


def _branin_grad(x, y):
    inner = y - _BRANIN_B * x**2 + _BRANIN_C * x - 6
    return 2 * inner * (-2 * _BRANIN_B * x + _BRANIN_C) - 10 * (1 - _BRANIN_T) * np.sin(x), 2 * inner


def _double_well(x, y):
    return x**4 - 2.48 * x**2 + 0.96 * x + y**2


def _double_well_grad(x, y):
    # 4 (x + 1.2)(x - 0.2)(x - 1): the minima at x = -1.2 and 1 and the ridge between them at
    # x = 0.2 are exact, so the basin of each minimum under gradient flow is known in closed form.
    return 4 * x**3 - 4.96 * x + 0.96, 2 * y


def _saddle(x, y):
    return x**2 - y**2


def _saddle_grad(x, y):
    return 2 * x, -2 * y


def _monkey_saddle(x, y):
    return x**3 - 3 * x * y**2


def _monkey_saddle_grad(x, y):
    return 3 * x**2 - 3 * y**2, -6 * x * y


# Minima not known in closed form, refined by Newton's method in float64 (see tests).
_HIMMELBLAU_MINIMA = (
    (3.0, 2.0),
    (-2.805118086952745, 3.131312518250573),
    (-3.779310253377747, -3.283185991286170),
    (3.584428340330492, -1.848126526964404),
)
_CAMEL_MIN = (0.08984201310031807, -0.7126564030207396)
_STYBLINSKI_X = -2.903534027771177

SURFACES: dict[str, Surface] = {
    s.name: s
    for s in (
        Surface(
            "bowl", "x^2/20 + y^2", _bowl, _bowl_grad, ((-10, 10), (-5, 5)), (-7.0, 2.0),
            ((0.0, 0.0),), 0.0, note="ill-conditioned quadratic (condition number 20)",
        ),
        Surface(
            "rosenbrock", "(1 - x)^2 + 100 (y - x^2)^2", _rosenbrock, _rosenbrock_grad,
            ((-2, 2), (-1, 3)), (-1.5, 2.5), ((1.0, 1.0),), 0.0, steps=1000, note="narrow curved valley",
        ),
        Surface(
            "beale", "(1.5 - x + xy)^2 + (2.25 - x + xy^2)^2 + (2.625 - x + xy^3)^2",
            _beale, _beale_grad, ((-4.5, 4.5), (-4.5, 4.5)), (1.0, 1.5), ((3.0, 0.5),), 0.0,
            steps=500, note="flat plateau and steep walls",
        ),
        Surface(
            "himmelblau", "(x^2 + y - 11)^2 + (x + y^2 - 7)^2", _himmelblau, _himmelblau_grad,
            ((-5, 5), (-5, 5)), (-0.27, -0.92), _HIMMELBLAU_MINIMA, 0.0,
            note="four global minima; starts at the local maximum",
        ),
        Surface(
            "rastrigin", "20 + x^2 - 10 cos(2 pi x) + y^2 - 10 cos(2 pi y)", _rastrigin, _rastrigin_grad,
            ((-5.12, 5.12), (-5.12, 5.12)), (-2.3, 3.6), ((0.0, 0.0),), 0.0,
            note="a lattice of local minima",
        ),
        Surface(
            "ackley", "-20 exp(-0.2 sqrt((x^2 + y^2)/2)) - exp((cos 2 pi x + cos 2 pi y)/2) + e + 20",
            _ackley, _ackley_grad, ((-5, 5), (-5, 5)), (-3.2, 2.4), ((0.0, 0.0),), 0.0,
            note="many local minima around a sharp global one",
        ),
        Surface(
            "booth", "(x + 2y - 7)^2 + (2x + y - 5)^2", _booth, _booth_grad,
            ((-10, 10), (-10, 10)), (-8.0, -6.0), ((1.0, 3.0),), 0.0, note="quadratic",
        ),
        Surface(
            "goldstein_price",
            "[1 + (x+y+1)^2 (19 - 14x + 3x^2 - 14y + 6xy + 3y^2)] [30 + (2x-3y)^2 (18 - 32x + 12x^2 + 48y - 36xy + 27y^2)]",
            _goldstein_price, _goldstein_price_grad, ((-2, 2), (-2, 2)), (-1.0, -1.5), ((0.0, -1.0),), 3.0,
            steps=300, note="values from 3 to 10^6; local minima",
        ),
        Surface(
            "six_hump_camel", "(4 - 2.1x^2 + x^4/3) x^2 + xy + (4y^2 - 4) y^2",
            _six_hump_camel, _six_hump_camel_grad, ((-3, 3), (-2, 2)), (-2.0, 1.6),
            (_CAMEL_MIN, (-_CAMEL_MIN[0], -_CAMEL_MIN[1])), -1.0316284534898774, note="two global, four local minima",
        ),
        Surface(
            "styblinski_tang", "(x^4 - 16x^2 + 5x + y^4 - 16y^2 + 5y) / 2", _styblinski_tang, _styblinski_tang_grad,
            ((-5, 5), (-5, 5)), (0.3, 4.6), ((_STYBLINSKI_X, _STYBLINSKI_X),), -78.33233140754284,
            note="one global and three local minima",
        ),
        Surface(
            "branin", "(y - 5.1x^2/(4 pi^2) + 5x/pi - 6)^2 + 10 (1 - 1/(8 pi)) cos x + 10",
            _branin, _branin_grad, ((-5, 10), (0, 15)), (2.0, 13.0),
            ((-math.pi, 12.275), (math.pi, 2.275), (3 * math.pi, 2.475)), 10 / (8 * math.pi),
            note="three global minima",
        ),
        Surface(
            "double_well", "x^4 - 2.48x^2 + 0.96x + y^2", _double_well, _double_well_grad,
            ((-2, 2), (-1.5, 1.5)), (1.6, 1.0), ((-1.2, 0.0),), -2.6496,
            note="tilted double well: global minimum at x = -1.2, local at x = 1, basins split at x = 0.2",
        ),
        Surface(
            "saddle", "x^2 - y^2", _saddle, _saddle_grad, ((-2, 2), (-2, 2)), (-1.8, 0.01),
            note="saddle point at the origin; unbounded below",
        ),
        Surface(
            "monkey_saddle", "x^3 - 3xy^2", _monkey_saddle, _monkey_saddle_grad, ((-2, 2), (-2, 2)), (1.6, 0.3),
            note="flat (degenerate) saddle at the origin; unbounded below",
        ),
    )
}


def get_surface(name: str) -> Surface:
    try:
        return SURFACES[name]
    except KeyError:
        raise OptbenchError(f"unknown surface {name!r} (choose from {', '.join(SURFACES)}, all)") from None
