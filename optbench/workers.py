"""Local worker processes: a function run over items in N spawned processes, each result handed
back as it comes, and a stop that is at once.

concurrent.futures' ProcessPoolExecutor cannot be stopped at once: a worker terminated while it
sends a result leaves the pool's manager thread reading half a message for ever, and the
interpreter joins that thread at exit (seen here: a sweep given SIGTERM that never exited). So
each worker has a pipe of its own, read only by the main thread, which stops reading when it stops.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
from contextlib import contextmanager
from multiprocessing.connection import wait
from typing import Any, Callable, Sequence

from optbench.errors import OptbenchError

RETRIES = 1  # an item whose worker died is run once more on a new one, then the run stops


@contextmanager
def sigint_ignored():
    """Ctrl-C ignored while child processes start: the disposition survives their exec, so a
    terminal's Ctrl-C, which reaches the whole process group, stops the parent alone, and the
    parent stops them (rather than every child dump its traceback on the way down)."""
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread: leave it as it is
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _portable(exc: Exception) -> Exception:
    """`exc` if it comes back whole through a pipe, else an OptbenchError with its words (an
    exception whose constructor takes other arguments than its message does not unpickle)."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - whatever pickling raises, the words still travel
        return OptbenchError(f"{type(exc).__name__}: {exc}")


def _serve(conn, function: Callable, environment: dict[str, str]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent alone decides (see `sigint_ignored`)
    os.environ.update(environment)
    while True:
        try:
            message = conn.recv()
        except EOFError:  # the parent has gone
            return
        if message[0] == "stop":
            return
        try:
            answer = ("result", function(message[1]))
        except Exception as exc:  # the parent raises it, as if the function had run there
            answer = ("error", _portable(exc))
        conn.send(answer)


class _Worker:
    def __init__(self, context, function: Callable, environment: dict[str, str]):
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(child, function, environment), daemon=True)
        with sigint_ignored():
            self.process.start()
        child.close()  # the parent keeps one end only: the worker's death reads as EOF
        self.environment = environment
        self.item: Any = None
        self.busy = False

    def give(self, item) -> bool:
        """Send it `item`; False when it has died (its pipe is broken)."""
        self.item, self.busy = item, True
        try:
            self.conn.send(("run", item))
            return True
        except OSError:
            return False

    def stop(self, at_once: bool) -> None:
        if not at_once:
            try:
                self.conn.send(("stop",))
            except OSError:
                pass
            self.process.join(timeout=30)  # it finishes at once; one that hangs on its way out is ended
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout=5)
        self.conn.close()


def run_in_processes(function: Callable, items: Sequence, workers: int, done: Callable[[Any, Any], None],
                     environments: Sequence[dict[str, str]] = ()) -> None:
    """`done(item, function(item))` in this process for every item, as each finishes, the items
    shared among `workers` spawned processes (worker i with `environments[i]` in its environment:
    CUDA_VISIBLE_DEVICES, say). An exception in the function is raised here; Ctrl-C (or any
    exception) terminates the workers at once, after handing over what they had finished."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    context = multiprocessing.get_context("spawn")  # Numba's threads and fork do not mix
    todo = list(reversed(items))
    deaths: dict[int, int] = {}
    pool: list[_Worker] = []

    def replace(slot: int) -> None:
        """The worker in `slot` died: a new one takes its item, once per item."""
        dead = pool[slot]
        item = dead.item
        dead.stop(at_once=True)
        deaths[id(item)] = deaths.get(id(item), 0) + 1
        if deaths[id(item)] > RETRIES:
            raise OptbenchError(f"a worker process died twice running the same item (exit code "
                                f"{dead.process.exitcode}; out of memory?)")
        pool[slot] = _Worker(context, function, dead.environment)
        if not pool[slot].give(item):
            replace(slot)

    def next_item(slot: int) -> None:
        if todo and not pool[slot].give(todo.pop()):
            replace(slot)

    finished = False
    try:
        for i in range(min(workers, len(todo))):
            pool.append(_Worker(context, function, dict(environments[i]) if i < len(environments) else {}))
            next_item(i)
        while any(w.busy for w in pool):
            busy = [w for w in pool if w.busy]
            ready = wait([w.conn for w in busy] + [w.process.sentinel for w in busy])
            for slot, worker in enumerate(pool):
                if not worker.busy or not (worker.conn in ready or worker.process.sentinel in ready):
                    continue
                try:
                    kind, value = worker.conn.recv()
                except (EOFError, OSError):  # it died (killed, out of memory): its item runs again, once
                    replace(slot)
                    continue
                item, worker.busy = worker.item, False
                if kind == "error":
                    raise value
                done(item, value)
                next_item(slot)
        finished = True
    except BaseException:
        try:
            _hand_over_finished(pool, done)
        except Exception:  # noqa: BLE001 - `done` failing again (a full disk): the first error is the one to tell
            pass
        raise
    finally:
        for worker in pool:
            worker.stop(at_once=not finished)


def _hand_over_finished(pool: list[_Worker], done: Callable[[Any, Any], None]) -> None:
    """Stopped (Ctrl-C, SIGTERM, another item's error): the results already waiting in their
    pipes are still handed over, as finished work is kept."""
    for worker in pool:
        if not (worker.busy and worker.process.is_alive()):
            continue
        try:
            if not worker.conn.poll(0):
                continue
            kind, value = worker.conn.recv()
        except (EOFError, OSError):
            continue
        worker.busy = False
        if kind == "result":
            done(worker.item, value)
