"""A training step's forward and backward recorded once as a CUDA graph and replayed.

Eager CuPy launches each of a step's 40 to 70 kernels from Python, several microseconds apiece,
so on a small net the GPU mostly waits for the next launch. Recorded as a CUDA graph, the
gather of the batch, the forward pass, the loss and the backward pass replay with one launch.
The optimizer update stays outside the graph: it is one fused kernel already, and its scalars
(Adam's bias corrections, a first-step flag) change from step to step, while a graph freezes
the arguments of its kernels.

A graph replays fixed addresses, so:
- the batch is gathered inside the graph through a fixed index buffer, which each step fills;
- the gradients land in the network's fixed gradient buffer, the loss in an array kept here;
- the temporaries the graph uses come from a memory pool of its own that nothing else
  allocates from, so no later array can be placed on memory a replay writes.
Dropout (its generator advances on the host side) and batch norm (its running statistics are
rebound each step) do not survive replay and are refused.
"""

from __future__ import annotations

import numpy as np

from optbench.errors import OptbenchError


def unsupported_reason(net) -> str | None:
    """Why this network's step cannot be replayed as a CUDA graph, or None."""
    if net.xp is np:
        return "CUDA graphs need the GPU (--device gpu)"
    if net.dropout > 0:
        return "CUDA graphs do not support dropout (its random draws would repeat on every replay)"
    if net.batchnorm:
        return "CUDA graphs do not support batch norm (its running statistics are rebound each step)"
    return None


class GraphedStep:
    """`net.losses_and_grads(x_train[index], y_train[index], weight_decay)` for index arrays of
    `index_shape` (input groups, batch size), as one CUDA graph. Calling it fills the population's
    gradients and returns the losses (a fresh device array: the graph's own is overwritten by the
    next replay)."""

    def __init__(self, net, x_train, y_train, index_shape: tuple[int, int], weight_decay: float = 0.0):
        reason = unsupported_reason(net)
        if reason:
            raise OptbenchError(reason)
        import cupy

        self._cupy = cupy
        self.index = cupy.zeros(index_shape, dtype=cupy.int64)
        self.pool = cupy.cuda.MemoryPool()  # the graph's private memory, alive as long as it is
        capture_stream = cupy.cuda.Stream(non_blocking=True)

        def step():
            return net.losses_and_grads(x_train[self.index], y_train[self.index], weight_decay)

        # The graph holds the addresses of these arrays: they must outlive it, and `net.params`
        # and `net.grads` must only ever be written in place (optimizers and `restore` do so).
        self._keep = (net, x_train, y_train)
        ready = cupy.cuda.get_current_stream().record()
        with cupy.cuda.using_allocator(self.pool.malloc), capture_stream:
            capture_stream.wait_event(ready)  # the data and weights are in place
            try:
                step()  # once eagerly: kernels compiled and loaded, library handles made, before capture
                capture_stream.synchronize()
                capture_stream.begin_capture()
                try:
                    self.loss = step()
                except Exception:
                    try:
                        capture_stream.end_capture()  # leave the stream usable; the first error is the one to tell
                    except Exception:
                        pass
                    raise
                graph = capture_stream.end_capture()  # raises if the capture was invalidated
            except OptbenchError:
                raise
            except Exception as exc:  # e.g. an operation that waits for the device inside the capture
                raise OptbenchError(f"CUDA graph capture failed: {type(exc).__name__}: {exc}") from exc
        self.graph = graph

    def __call__(self, index):
        if type(index) is not type(self.index) or index.shape != self.index.shape:
            raise ValueError(f"a CUDA-graph step takes a device index array of shape {self.index.shape}")
        stream = self._cupy.cuda.get_current_stream()
        self.index[...] = index  # on the stream the graph then runs on: ordered
        self.graph.launch(stream=stream)
        return self.loss.copy()
