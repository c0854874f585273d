"""Stopping the process: whatever is stuck, SIGINT/SIGTERM ends ``edgecrab gateway start`` (and ``edgecrab
sandbox``) within seconds.

The first signal starts the graceful stop (:meth:`SignalStop.wait` returns; the caller cancels its task
group). From then on:

* **a second signal exits at once**, with one line on stderr and no traceback, with exit code
  ``128 + signal``: 130 for SIGINT, 143 for SIGTERM, the shell's convention for "ended by that signal";
* **a watchdog** ends the process :data:`STOP_DEADLINE_S` after the first signal if the stop has not
  finished by then (exit code 1, after a log line);
* **once the graceful stop has finished**, :func:`leave` waits at most :data:`THREADS_GRACE_S` for the
  threads still running, then exits without them (``os._exit``), after a log line naming them.

Why ``os._exit``: a synchronous hook runs in one of anyio's worker threads; when it blocks forever its call
is abandoned (``hooks.timeout_s``), but a thread cannot be killed, anyio's worker threads are not daemon
threads, and Python waits for every such thread when it exits, so the process never ended. Running hooks in
daemon threads of our own would reimplement anyio's thread pool (limiter, cancellation, results) and still
leave any thread a hook or an agent library starts itself. ``os._exit`` after the stop covers them all; by
then the store is closed and the agent's connections too, and the logs are flushed first. What it skips are
``atexit`` handlers, which is what "do not wait for that thread" means anyway.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from types import FrameType, TracebackType

import anyio

log = logging.getLogger("edgecrab.shutdown")

STOP_DEADLINE_S = 4.5
"""Time from the first signal to the end of the process at the latest."""
THREADS_GRACE_S = 0.5
"""Time given, after the stop, to threads that are still running."""
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class SignalStop:
    """SIGINT/SIGTERM for a ``with`` block: :meth:`wait` returns at the first one; from then on a second one
    exits at once and a watchdog bounds the rest of the stop (see the module doc)."""

    def __init__(self, what: str = "gateway") -> None:
        self.what = what
        self._receiver = anyio.open_signal_receiver(*SIGNALS)
        self._open = False

    def __enter__(self) -> SignalStop:
        self._signals = self._receiver.__enter__()
        self._open = True
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._close()

    def _close(self) -> None:
        if self._open:
            self._open = False
            self._receiver.__exit__(None, None, None)

    async def wait(self) -> None:
        """Return at the first signal, with the receiver closed and the second-signal exit armed."""
        async for signum in self._signals:
            log.info("[%s] %s received; stopping", self.what, signal.Signals(signum).name)
            # The receiver goes first: closing it restores the default handlers, which would replace ours.
            self._close()
            arm(signal.Signals(signum))
            return


_armed = False


def arm(first: signal.Signals) -> None:
    """From now on a second SIGINT/SIGTERM exits at once, and the process ends :data:`STOP_DEADLINE_S`
    from now at the latest. Call it from the main thread; only the first call counts."""
    global _armed
    if _armed:
        return
    _armed = True
    for signum in SIGNALS:
        signal.signal(signum, _exit_now)
    watchdog = threading.Timer(STOP_DEADLINE_S, _deadline, args=(first,))
    watchdog.daemon = True
    watchdog.name = "edgecrab stop watchdog"
    watchdog.start()


def _exit_now(signum: int, frame: FrameType | None) -> None:
    name = signal.Signals(signum).name
    os.write(2, f"edgecrab: second {name}: exiting at once, without finishing the stop\n".encode())
    os._exit(128 + signum)


def _deadline(first: signal.Signals) -> None:
    log.error(
        "[gateway] still stopping %g s after %s (a hook, the agent or the store does not give way); "
        "exiting now",
        STOP_DEADLINE_S,
        first.name,
    )
    _flush()
    os._exit(1)


def leave(code: int) -> int:
    """``code``, after the graceful stop: threads still running get :data:`THREADS_GRACE_S` to end; if some
    do not (a synchronous hook blocked forever), the process exits with ``code`` now, without them."""
    me = threading.current_thread()
    deadline = time.monotonic() + THREADS_GRACE_S
    for thread in threading.enumerate():
        if thread is not me and not thread.daemon:
            thread.join(max(0.0, deadline - time.monotonic()))
    busy = [t.name for t in threading.enumerate() if t is not me and not t.daemon and t.is_alive()]
    if not busy:
        return code
    log.warning(
        "[gateway] stopped; %d thread(s) still busy (%s), most likely a synchronous hook that never "
        "returned: exiting without waiting for them",
        len(busy),
        ", ".join(sorted(set(busy))),
    )
    _flush()
    os._exit(code)


def _flush() -> None:
    for handler in logging.getLogger().handlers:
        try:
            handler.flush()
        except Exception:  # noqa: S110 - exiting: a handler that cannot flush must not stop the exit
            pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: S110
            pass


__all__ = ["STOP_DEADLINE_S", "THREADS_GRACE_S", "SignalStop", "arm", "leave"]
