"""The README's headline tables, in Markdown, from the problem set `optbench profile` ran.

    optbench profile --out results/headline            # the set: surfaces 5x5 starts, MNIST, Fashion
    python benchmarks/headline_tables.py results/headline/profile-set

Prints the integrated scores of the profile and, per data set, the time to target over the seeds
at each optimizer's tuned lr: median steps and seconds over the seeds that reached it, and how
many did, with the final test accuracy.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

from optbench.targets import default_accuracy


def scores_table(folder: Path) -> str:
    scores = pd.read_csv(folder / "profile" / "scores.csv")
    costs = pd.read_csv(folder / "profile" / "costs.csv").set_index("problem")
    solved = costs.apply(lambda column: (column.astype(float) < float("inf")).sum())
    lines = [f"| optimizer | integrated score | problems solved (of {len(costs)}) |", "| --- | ---: | ---: |"]
    for row in scores.itertuples():
        lines.append(f"| {row.optimizer} | {row.score:.3f} | {int(solved[row.optimizer])} |")
    return "\n".join(lines)


def target_table(run: Path) -> str:
    aggregate = pd.read_csv(run / "aggregate.csv")
    summary = pd.read_csv(run / "summary.csv")
    config = json.loads((run / "manifest.json").read_text())["config"]
    target = config.get("target") or default_accuracy(config["dataset"])
    final = summary.groupby("optimizer")["final_test_acc"].median()
    rows = aggregate.sort_values(["reached_target", "steps_to_target_median"], ascending=[False, True], kind="stable")
    head = f"| optimizer | tuned lr | reached {100 * target:g} % | median steps | median seconds | final test acc (median) |"
    lines = [head, "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows.itertuples():
        steps = f"{row.steps_to_target_median:.0f}" if row.steps_to_target_median == row.steps_to_target_median else "—"
        seconds = f"{row.seconds_to_target_median:.1f}" if row.seconds_to_target_median == row.seconds_to_target_median else "—"
        lines.append(f"| {row.optimizer} | {row.lr:.3g} | {row.reached_target}/{row.seeds} | {steps} | {seconds} | "
                     f"{100 * final[row.optimizer]:.2f} % |")
    return "\n".join(lines)


def main() -> None:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "results/headline/profile-set")
    print(scores_table(folder))
    for run in sorted((folder / "mnist").iterdir()):
        print(f"\n{run.name}:\n")
        print(target_table(run))


if __name__ == "__main__":
    main()
