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
import signal
from multiprocessing.connection import wait
from typing import Any, Callable, Sequence

from optbench.errors import OptbenchError

RETRIES = 1  # an item whose worker died is run once more on a new one, then the run stops


def _serve(conn, function: Callable, environment: dict[str, str]) -> None:
    # Ctrl-C in a terminal reaches the whole process group: the parent alone decides, and
    # terminates the workers (a worker's traceback on the way down would only be noise).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.update(environment)
    while True:
        try:
            item = conn.recv()
        except EOFError:  # the parent has gone
            return
        if item is None:
            return
        try:
            answer = ("result", function(item))
        except Exception as exc:  # the parent raises it, as if the function had run there
            answer = ("error", exc)
        try:
            conn.send(answer)
        except Exception as exc:  # an exception that does not pickle: its words do
            conn.send(("error", RuntimeError(f"{type(answer[1]).__name__}: {answer[1]}; ({exc})")))


class _Worker:
    def __init__(self, context, function: Callable, environment: dict[str, str]):
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(child, function, environment), daemon=True)
        self.process.start()
        child.close()  # the parent keeps one end only: the worker's death reads as EOF
        self.environment = environment
        self.item: Any = None
        self.busy = False

    def give(self, item) -> None:
        self.item, self.busy = item, True
        self.conn.send(item)

    def stop(self, at_once: bool) -> None:
        if at_once:
            self.process.terminate()
        else:
            try:
                self.conn.send(None)
            except OSError:
                pass
        self.process.join(timeout=None if not at_once else 5)
        self.conn.close()


def run_in_processes(function: Callable, items: Sequence, workers: int, done: Callable[[Any, Any], None],
                     environments: Sequence[dict[str, str]] = ()) -> None:
    """`done(item, function(item))` in this process for every item, as each finishes, the items
    shared among `workers` spawned processes (worker i with `environments[i]` in its environment:
    CUDA_VISIBLE_DEVICES, say). An exception in the function is raised here; Ctrl-C (or any
    exception) terminates the workers at once."""
    context = multiprocessing.get_context("spawn")  # Numba's threads and fork do not mix
    todo = list(reversed(items))
    deaths: dict[int, int] = {}
    pool: list[_Worker] = []
    finished = False
    try:
        for i in range(min(workers, len(todo))):
            pool.append(_Worker(context, function, dict(environments[i]) if i < len(environments) else {}))
        for worker in pool:
            if todo:
                worker.give(todo.pop())
        while any(w.busy for w in pool):
            busy = [w for w in pool if w.busy]
            ready = wait([w.conn for w in busy] + [w.process.sentinel for w in busy])
            for slot, worker in enumerate(pool):
                if not worker.busy or not (worker.conn in ready or worker.process.sentinel in ready):
                    continue
                try:
                    kind, value = worker.conn.recv()
                except (EOFError, OSError):  # it died (killed, out of memory): its item runs again, once
                    item = worker.item
                    deaths[id(item)] = deaths.get(id(item), 0) + 1
                    if deaths[id(item)] > RETRIES:
                        raise OptbenchError(f"a worker process died twice running the same item (exit code "
                                            f"{worker.process.exitcode}; out of memory?)") from None
                    worker.stop(at_once=True)
                    pool[slot] = worker = _Worker(context, function, worker.environment)
                    worker.give(item)
                    continue
                item, worker.busy = worker.item, False
                if kind == "error":
                    raise value
                done(item, value)
                if todo:
                    worker.give(todo.pop())
        finished = True
    finally:
        for worker in pool:
            worker.stop(at_once=not finished)
