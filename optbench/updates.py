"""The update of a population's members: one fused pass per group of members that share a kernel.

Each member has its own optimizer, hyperparameters and state. Members whose optimizers have the
same row kernel (`kernels.RowsKernel`: SGD, Adam, RMSprop and their families, Lion, Schedule-Free,
AdEMAMix) with the same state arrays, in one dtype, form a group: their state lives in stacked (members, N) arrays, and one
launch updates all of them, each with its own hyperparameters and step scalars. Every other
member (a rule without a CPU kernel, a user's class, the GPU) is updated alone by
`Optimizer.update`, its one-member dispatcher.

A member's state dict still says what is its own: its arrays are rows of the group's stacks, so
reading or checkpointing one member's state needs nothing of the group.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager

import numpy as np

from optbench import kernels
from optbench.errors import OptbenchError
from optbench.optimizers import OPTIMIZERS, Optimizer, fused_paths, init_state, optimizer_label

BUILTIN_CLASSES = frozenset(OPTIMIZERS.values())


class _Group:
    """Members that one row kernel updates together."""

    def __init__(self, kernel: kernels.RowsKernel, members: list[int], optimizers, states, rows):
        self.kernel, self.members = kernel, members
        self.optimizers = [optimizers[k] for k in members]
        self.states = [states[k] for k in members]
        self.rows = np.array(members, dtype=np.intp)
        self.position = {k: s for s, k in enumerate(members)}
        names = kernel.state_arrays(self.optimizers[0])
        dtype = rows.dtype
        self.stacked = {}
        for name in names:
            # SGD's momentum buffer is made by its first step: until then the state says None.
            initial = [state.get(name) for state in self.states]
            stack = self.stacked[name] = np.empty((len(members), rows.shape[1]), dtype=dtype)
            for s, (state, value) in enumerate(zip(self.states, initial)):
                if value is not None:
                    stack[s] = value
                    state[name] = stack[s]
        self.constants = kernel.constants(self.optimizers, dtype.type)

    def update(self, params, grads, members: Sequence[int]) -> None:
        active = np.array([self.position[k] for k in members], dtype=np.intp)
        steps, scalars = [], []
        for s in active:
            state = self.states[s]
            state["step"] += 1
            steps.append(state["step"])
            scalars.append(self.optimizers[s].step_scalars(state))
        self.kernel.launch(params, grads, self.rows, active, self.stacked, self.constants, steps, scalars)
        for s in active:
            for name, stack in self.stacked.items():
                self.states[s][name] = stack[s]  # SGD's momentum buffer, made by the first step


def _builtin(opt) -> bool:
    return type(opt) in BUILTIN_CLASSES


def _init(opt, p, layout) -> dict:
    try:
        return init_state(opt, p, layout)
    except OptbenchError:
        raise
    except Exception as exc:  # a user's init(p): one line that names it, before anything trains
        raise OptbenchError(f"{optimizer_label(type(opt))}: init(p) raised {type(exc).__name__}: {exc}") from None


class MemberUpdates:
    """The optimizer states of a population's members and the step that updates them.

    `step(members)` updates the rows of `params` given by `members` (the others are left as they
    are: a frozen member keeps its weights and its state) from the matching rows of `grads`.
    `layout` is the (name, shape) of each tensor in a row, for the rules that work per tensor.
    """

    def __init__(self, optimizers, params, grads, layout=None):
        self.optimizers, self.params, self.grads = list(optimizers), params, grads
        self.states = [_init(opt, params[k], layout) for k, opt in enumerate(self.optimizers)]
        self.failures: dict[int, str] = {}  # member -> what its own `update` raised
        self.group_of: dict[int, _Group] = {}
        if not kernels.usable(params[0], grads[0], 0.0) or params.ndim != 2:
            return
        by_layout: dict[tuple, list[int]] = {}
        for k, opt in enumerate(self.optimizers):
            kernel = fused_paths(type(opt)).numba
            # A class that overrides `update` (a subclass that clips, say) is updated by its own.
            own_update = type(opt).update is not Optimizer.update
            # A user's class (a subclass with its own step_scalars, say) runs on its own, where a
            # failure of its code stops that member only (`step`).
            if isinstance(kernel, kernels.RowsKernel) and np.isscalar(opt.lr) and not own_update and _builtin(opt):
                by_layout.setdefault((kernel.name, kernel.state_arrays(opt)), []).append(k)
        for (name, _), members in by_layout.items():
            group = _Group(fused_paths(type(self.optimizers[members[0]])).numba, members, self.optimizers,
                           self.states, params)
            for k in members:
                self.group_of[k] = group

    def step(self, members: Sequence[int]) -> None:
        """One update of each member in `members`, in one launch per group."""
        grouped: dict[int, list[int]] = {}
        for k in members:
            group = self.group_of.get(k)
            if group is None:
                opt = self.optimizers[k]
                if _builtin(opt):  # a failure of ours (or out of memory) stops the run, as it should
                    opt.update(self.params[k], self.grads[k], self.states[k])
                    continue
                try:
                    opt.update(self.params[k], self.grads[k], self.states[k])
                except Exception as exc:  # a bug in a user's rule stops that member, not the population
                    self.failures.setdefault(k, f"{type(exc).__name__}: {exc}")
            else:
                grouped.setdefault(id(group), []).append(k)
        for ks in grouped.values():
            self.group_of[ks[0]].update(self.params, self.grads, ks)

    @contextmanager
    def answering(self):
        """Inside, each row holds its optimizer's evaluation weights (Schedule-Free's average:
        what the reference's `eval()` switches to); afterwards, bitwise what it held before.
        Yields the members whose rows were swapped."""
        saved = {}
        try:
            for k, opt in enumerate(self.optimizers):
                answer = getattr(type(opt), "evaluation_weights", Optimizer.evaluation_weights)
                if answer is Optimizer.evaluation_weights:  # the parameters themselves: nothing to swap
                    continue
                row = self.params[k]
                weights = opt.evaluation_weights(row, self.states[k])
                if weights is not row:
                    saved[k] = row.copy()
                    row[...] = weights
            yield sorted(saved)
        finally:
            for k, row in saved.items():
                self.params[k][...] = row
