"""Long calls that Ctrl-C, a deadline or a cancelled request can stop: DuckDB work on a worker thread while the
calling thread waits in short slices.

Python delivers Ctrl-C to the main thread, between bytecodes; DuckDB holds its calling thread in C++ while a
query runs, so a query run on the main thread could not be interrupted until it ended.

The waiting thread waits on an event the worker sets when it ends, never in ``Thread.join``: a Ctrl-C landing in
``join`` marks the still-running worker as ended (CPython gh-90882, seen on 3.11), so its query was never
interrupted and its connection stayed busy.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import duckdb

_POLL_S = 0.1


def interruptible(con: duckdb.DuckDBPyConnection, work, timeout: float | None,
                  cancelled: threading.Event | None = None):
    """``work()`` (which uses ``con``) in a worker thread; TimeoutError after ``timeout`` s or once ``cancelled``
    is set, Ctrl-C passed on.

    Why a thread: DuckDB holds the calling thread in C++ while it runs, so Ctrl-C
    would wait for the query to end; the main thread instead waits in short
    slices (a KeyboardInterrupt arrives between them) and interrupts ``con``.
    """
    outcome: dict = {}
    stopped, done = threading.Event(), threading.Event()

    def unless_stopped():
        if stopped.is_set():  # stopped before the worker began (a Ctrl-C while it was being started)
            raise KeyboardInterrupt
        return work()

    worker = threading.Thread(target=_hand_over, args=(unless_stopped, outcome, done), name="genoembed-sql",
                              daemon=True)
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        worker.start()
        while _running(worker, done) and (deadline is None or time.monotonic() < deadline) \
                and not (cancelled is not None and cancelled.is_set()):
            done.wait(_POLL_S)
    except KeyboardInterrupt:
        _stop(con, worker, done, stopped)
        raise
    if _running(worker, done):
        _stop(con, worker, done, stopped)
        if "value" not in outcome:
            raise TimeoutError
    return _outcome(outcome)


def off_the_main_thread(work):
    """``work()``, run on a worker thread while the main thread waits (on any other thread, run there).

    Python delivers Ctrl-C to the main thread only; one that lands while DuckDB calls back into Python (reading
    a registered Arrow dataset's schema as views are made) comes out of DuckDB as its own error, reported as a
    damaged store. Here it lands in the wait: the work (short, no statement) ends, then KeyboardInterrupt.
    """
    if threading.current_thread() is not threading.main_thread():
        return work()
    outcome: dict = {}
    done = threading.Event()
    worker = threading.Thread(target=_hand_over, args=(work, outcome, done), name="genoembed-sql", daemon=True)
    try:
        worker.start()
        while _running(worker, done):
            done.wait(_POLL_S)
    except KeyboardInterrupt:
        while _running(worker, done):
            done.wait(_POLL_S)
        raise
    return _outcome(outcome)


def _hand_over(work, outcome: dict, done: threading.Event) -> None:
    """Run ``work()`` on a worker thread, keeping its value or its error for the waiting thread; ``done`` is set
    once it is kept."""
    try:
        outcome["value"] = work()
    except BaseException as error:  # handed to the caller's thread
        outcome["error"] = error
    finally:
        done.set()


def _running(worker: threading.Thread, done: threading.Event) -> bool:
    """The worker has not ended: ``done`` unset, and started (a Ctrl-C may land before ``start`` has run it; one
    that stopped ``start`` after the thread was made leaves a thread that runs nothing, see ``unless_stopped``)."""
    return not done.is_set() and worker.is_alive()


def _outcome(outcome: dict):
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _stop(con: duckdb.DuckDBPyConnection, worker: threading.Thread, done: threading.Event,
          stopped: threading.Event) -> None:
    """Interrupt until the worker ends (an interrupt sent before DuckDB starts the query is lost); a worker not
    yet running finds ``stopped`` set and runs nothing."""
    stopped.set()
    while _running(worker, done):
        con.interrupt()
        done.wait(_POLL_S)
