"""PyTorch's bare training loop for the 12 stacked default nets, one epoch of real MNIST: the
reference for the whole command `optbench mnist --compare all --epochs 1`.

    time python benchmarks/torch_stacked_epoch.py          # needs torch (pip install torch==2.13.0)
    time optbench mnist --compare all --epochs 1 --no-plot

The loop is what a user would write by hand, nothing more: load the data (through optbench's
verified loader, so both read the same files), 12 nets stacked as (12, in, out) weights, the
shared batch broadcast (`baddbmm`), ReLU, the members' cross-entropies summed, one backward,
Adam with foreach over the stacked tensors; a shuffled epoch of 468 batches of 128; the test
accuracy at the end. No warm-up, no files, no plots.
"""

from __future__ import annotations

import math
import time

import torch

from optbench import datasets

MEMBERS, BATCH, SIZES = 12, 128, (784, 100, 100, 100, 100, 10)


def main() -> None:
    started = time.perf_counter()
    x_train, y_train, x_test, y_test = (torch.from_numpy(a) for a in datasets.load("mnist"))
    generator = torch.Generator().manual_seed(0)
    weights, biases = [], []
    for fan_in, fan_out in zip(SIZES[:-1], SIZES[1:]):
        bound = 1 / math.sqrt(fan_in)
        weights.append(((torch.rand(MEMBERS, fan_in, fan_out, generator=generator) * 2 - 1) * bound).requires_grad_())
        biases.append(((torch.rand(MEMBERS, 1, fan_out, generator=generator) * 2 - 1) * bound).requires_grad_())
    optimizer = torch.optim.Adam(weights + biases, lr=1e-3, foreach=True)

    def logits(x):
        h = x.expand(MEMBERS, *x.shape)
        for i, (W, b) in enumerate(zip(weights, biases)):
            h = torch.baddbmm(b, h, W)
            if i < len(weights) - 1:
                h = torch.relu(h)
        return h

    order = torch.randperm(len(x_train), generator=generator)
    train_started = time.perf_counter()
    for b in range(len(x_train) // BATCH):
        index = order[b * BATCH : (b + 1) * BATCH]
        x, y = x_train[index], y_train[index]
        out = logits(x)
        loss = torch.nn.functional.cross_entropy(out.reshape(-1, 10), y.repeat(MEMBERS), reduction="sum") / BATCH
        optimizer.zero_grad(set_to_none=False)
        loss.backward()
        optimizer.step()
    trained = time.perf_counter() - train_started
    with torch.no_grad():
        accuracy = (logits(x_test).argmax(-1) == y_test).float().mean(dim=1)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads: {MEMBERS} members, one epoch in {trained:.2f} s "
          f"({MEMBERS * BATCH * (len(x_train) // BATCH) / trained:,.0f} samples/s), "
          f"test accuracy {100 * accuracy.min():.2f}–{100 * accuracy.max():.2f} %, "
          f"{time.perf_counter() - started:.2f} s after the imports")


if __name__ == "__main__":
    main()
