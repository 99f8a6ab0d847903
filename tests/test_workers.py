"""Local worker processes (`optbench.workers`): every item once, errors raised in the parent, a
dead worker's item run again, and a stop that leaves no thread or process behind."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from pathlib import Path

import pytest

from optbench.errors import OptbenchError
from optbench.workers import run_in_processes


def square(n: int) -> tuple[int, int, str]:
    return n, n * n, os.environ.get("OPTBENCH_TEST_SLOT", "")


def refuse_three(n: int) -> int:
    if n == 3:
        raise OptbenchError("three is refused")
    return n


def die_once(marker: str) -> str:
    # The first worker to run an item dies on it, as an out-of-memory kill would end it.
    path = Path(marker)
    if not path.exists():
        path.write_text("died")
        os._exit(9)
    return marker


def always_die(marker: str) -> str:
    os._exit(9)


@pytest.fixture(autouse=True)
def nothing_left_behind():
    # Threads and processes of other tests (a Dask client's IO loop) may be there already:
    # what matters is that these calls leave none of their own.
    threads, children = set(threading.enumerate()), set(multiprocessing.active_children())
    yield
    assert set(threading.enumerate()) <= threads
    assert set(multiprocessing.active_children()) <= children


def test_every_item_once_with_each_workers_environment():
    got = {}
    run_in_processes(square, range(7), 2, lambda item, value: got.setdefault(item, value),
                     [{"OPTBENCH_TEST_SLOT": "a"}, {"OPTBENCH_TEST_SLOT": "b"}])
    assert sorted(got) == list(range(7)) and all(v[:2] == (n, n * n) for n, v in got.items())
    assert {v[2] for v in got.values()} <= {"a", "b"}


def test_an_error_in_a_worker_is_raised_here_and_the_rest_stop():
    with pytest.raises(OptbenchError, match="three is refused"):
        run_in_processes(refuse_three, [1, 2, 3, 4, 5], 2, lambda item, value: None)


def test_an_item_whose_worker_died_runs_again_on_a_new_one(tmp_path):
    items = [str(tmp_path / f"m{i}") for i in range(3)]
    got = []
    run_in_processes(die_once, items, 2, lambda item, value: got.append(value))
    assert sorted(got) == sorted(items)  # each once, though each killed its first worker
    with pytest.raises(OptbenchError, match="died twice"):
        run_in_processes(always_die, ["x"], 1, lambda item, value: None)


def slow_marked(item: tuple[str, int]) -> int:
    # Leaves a file named after the item as it starts: which items ever started is then known.
    folder, n = item
    (Path(folder) / str(n)).write_text("started")
    time.sleep(1.0)
    return n


def test_an_interrupt_stops_the_workers_at_once_and_leaves_nothing_running(tmp_path):
    def interrupt(item, value):
        raise KeyboardInterrupt

    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_in_processes(slow_marked, [(str(tmp_path), n) for n in range(40)], 2, interrupt)
    # Structural, not timed: the interrupt came with the first result, when each of the two
    # workers had been given one item (the first two), so none of the other 38 ever started;
    # and the workers are gone (the autouse fixture: no child process or thread is left).
    ran = sorted(int(p.name) for p in tmp_path.iterdir())
    assert ran in ([0], [1], [0, 1]), ran
    # Only a hang is caught here (60 s against the 20 s the whole list takes on two workers):
    # how quickly it stops on a loaded machine is not this test's to say.
    assert time.monotonic() - started < 60


class TwoArguments(Exception):
    def __init__(self, a, b):  # pickles, but does not unpickle: its constructor wants two arguments
        super().__init__(f"{a} and {b}")


def raise_two_arguments(n: int) -> int:
    raise TwoArguments("this", "that")


def answer_then_die(marker: str) -> str:
    # Dies just after answering, while the parent is still busy with the answer (an OOM kill
    # between two items): the next item sent to it finds a broken pipe.
    import threading as threads

    threads.Timer(0.05, lambda: os._exit(9)).start()
    return marker


def test_an_exception_that_does_not_unpickle_still_arrives_with_its_words():
    with pytest.raises(OptbenchError, match="TwoArguments: this and that"):
        run_in_processes(raise_two_arguments, [1], 1, lambda item, value: None)


def test_a_worker_that_dies_between_two_items_is_replaced():
    got = []

    def slow_done(item, value):
        time.sleep(0.3)  # the worker dies meanwhile
        got.append(value)

    run_in_processes(answer_then_die, ["a", "b", "c"], 1, slow_done)
    assert got == ["a", "b", "c"]
    with pytest.raises(ValueError):
        run_in_processes(square, [1], 0, lambda item, value: None)
