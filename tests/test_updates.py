"""One fused launch updates a group of members, each with its own hyperparameters, exactly as the
ufunc rule (the definition in `optimizers`) updates each member alone."""

from __future__ import annotations

import numpy as np
import pytest

from optbench import kernels
from optbench.optimizers import make_optimizer
from optbench.updates import MemberUpdates

pytestmark = pytest.mark.skipif(kernels.njit is None, reason="numba is not installed: every member is updated alone")

# Interleaved families, and within each family members that differ in every hyperparameter the
# kernel takes per member (a flag that adds a state array makes a group of its own).
MEMBERS = [
    ("adam", {"lr": 0.01}),
    ("sgd", {"lr": 0.1}),
    ("adamw", {"lr": 0.003, "weight_decay": 0.3}),
    ("momentum", {"lr": 0.05, "dampening": 0.3, "weight_decay": 0.1}),
    ("adam", {"lr": 0.02, "beta1": 0.3, "beta2": 0.9, "eps": 1e-3, "weight_decay": 0.1}),
    ("nesterov", {"lr": 0.02, "momentum": 0.5}),
    ("rmsprop", {"lr": 0.01}),
    ("adagrad", {"lr": 0.1}),  # no CPU kernel: updated alone
    ("rmsprop", {"lr": 0.003, "alpha": 0.3, "weight_decay": 0.01}),
    ("amsgrad", {"lr": 0.01}),
    ("adamw", {"lr": 0.01, "weight_decay": 0.1, "amsgrad": True}),
    ("rmsprop", {"lr": 0.01, "centered": True, "momentum": 0.9}),
    ("sgd", {"lr": 0.2, "weight_decay": 0.01}),
    ("lion", {"lr": 0.01, "weight_decay": 0.1}),
    ("sf_adamw", {"lr": 0.01, "warmup_steps": 5.0}),
    ("lion", {"lr": 0.003, "beta1": 0.5}),
    ("sf_sgd", {"lr": 0.05, "weight_decay": 0.1}),
    ("sf_adamw", {"lr": 0.02, "beta2": 0.9, "weight_decay": 0.1}),
    ("ademamix", {"lr": 0.01, "t_alpha_beta3": 8.0}),
    ("ademamix", {"lr": 0.003, "weight_decay": 0.1, "weight_decouple": True}),
]


def _population(dtype, n=1_001):
    rng = np.random.default_rng(0)
    params = rng.standard_normal((len(MEMBERS), n)).astype(dtype)
    return params, np.zeros_like(params), rng


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_group_launch_equals_each_member_updated_alone_bitwise(dtype):
    params, grads, rng = _population(dtype)
    optimizers = [make_optimizer(name, **hp) for name, hp in MEMBERS]
    updates = MemberUpdates(optimizers, params, grads)
    alone = params.copy()
    # Each member alone, as a (1, n) array: the ufunc rule, not a kernel.
    alone_states = [opt.init(alone[k : k + 1]) for k, opt in enumerate(optimizers)]
    frozen = {1, 4, 9, 15, 16}  # stop updating after step 10, as a diverged member is frozen
    for step in range(25):
        grads[...] = (rng.standard_normal(grads.shape) * 0.9**step).astype(dtype)
        members = [k for k in range(len(MEMBERS)) if step < 10 or k not in frozen]
        updates.step(members)
        for k in members:
            optimizers[k].update(alone[k : k + 1], grads[k : k + 1], alone_states[k])
        np.testing.assert_array_equal(params, alone)
    for k, (state, alone_state) in enumerate(zip(updates.states, alone_states)):
        assert state["step"] == alone_state["step"] == (10 if k in frozen else 25)
        for name, value in state.items():
            if name in ("step", "scratch"):
                continue
            if value is None:  # SGD without momentum has no buffer
                assert alone_state[name] is None
            elif np.isscalar(value):  # Schedule-Free's running lr maximum and weight sum
                assert value == alone_state[name], (MEMBERS[k], name)
            else:
                np.testing.assert_array_equal(value, alone_state[name][0], err_msg=f"{MEMBERS[k]} {name}")
    assert params.dtype == dtype


def test_members_sharing_a_kernel_and_state_layout_take_one_launch_per_step(monkeypatch):
    params, grads, _ = _population(np.float32)
    optimizers = [make_optimizer(name, **hp) for name, hp in MEMBERS]
    updates = MemberUpdates(optimizers, params, grads)
    launches = []
    real = kernels.RowsKernel.launch

    def counting(self, P, G, rows, active, *args):
        launches.append((self.name, tuple(int(rows[s]) for s in active)))
        return real(self, P, G, rows, active, *args)

    monkeypatch.setattr(kernels.RowsKernel, "launch", counting)
    updates.step(range(len(MEMBERS)))
    # Adam with AdamW (same state arrays), AMSGrad-like ones apart; SGD without momentum apart
    # from momentum and Nesterov; RMSprop plain apart from centered-with-momentum; Schedule-Free
    # AdamW apart from SGD (no second moment); Adagrad alone.
    assert sorted(launches) == sorted([
        ("adam", (0, 2, 4)), ("adam", (9, 10)), ("sgd", (1, 12)), ("sgd", (3, 5)), ("rmsprop", (6, 8)),
        ("rmsprop", (11,)), ("lion", (13, 15)), ("schedule_free", (14, 17)), ("schedule_free", (16,)),
        ("ademamix", (18, 19)),
    ])
    assert updates.states[7]["step"] == 1 and "scratch" in updates.states[7]  # adagrad: its ufunc rule


def test_a_member_state_is_its_own_row_of_the_group_stack():
    params, grads, _ = _population(np.float64, n=7)
    optimizers = [make_optimizer("adam", lr=0.01 * (k + 1)) for k in range(3)]
    updates = MemberUpdates(optimizers, params, grads)
    grads[...] = 1.0
    updates.step([0, 2])
    assert [s["step"] for s in updates.states] == [1, 0, 1]
    assert not updates.states[1]["exp_avg"].any() and updates.states[2]["exp_avg"].all()
    assert updates.states[0]["exp_avg"].base is updates.states[2]["exp_avg"].base is not None  # one stack


def test_a_subclass_with_its_own_update_is_updated_by_it_not_by_a_group_kernel():
    from optbench.optimizers import Adam

    calls = []

    class Clipped(Adam):
        name = "clipped"

        def update(self, p, g, state):
            calls.append(1)
            super().update(p, np.clip(g, -1e-3, 1e-3), state)

    params, grads, _ = _population(np.float64, n=11)
    params, grads = params[:3], grads[:3]
    updates = MemberUpdates([Clipped(), Adam(), Adam()], params, grads)
    grads[...] = 1.0
    updates.step([0, 1, 2])
    assert calls == [1] and 0 not in updates.group_of and 1 in updates.group_of


def test_answering_swaps_in_the_average_and_restores_every_row_bitwise():
    params, grads, rng = _population(np.float64, n=9)
    params, grads = params[:3], grads[:3]
    updates = MemberUpdates([make_optimizer("sf_adamw", lr=0.05), make_optimizer("adam"),
                             make_optimizer("sf_sgd", lr=0.05)], params, grads)
    for _ in range(5):
        grads[...] = rng.standard_normal(grads.shape)
        updates.step([0, 1, 2])
    before = params.copy()
    with updates.answering():
        np.testing.assert_array_equal(params[1], before[1])  # Adam answers with its parameters
        for k in (0, 2):
            expected = updates.optimizers[k].evaluation_weights(before[k], updates.states[k])
            np.testing.assert_array_equal(params[k], expected)
            assert not np.array_equal(params[k], before[k])
    np.testing.assert_array_equal(params, before)
