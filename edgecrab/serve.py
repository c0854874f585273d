"""The process that runs the gateway: ``edgecrab gateway start`` (:func:`run_gateway`), which runs
:func:`serve` (the :class:`~edgecrab.gateway.Gateway` until SIGINT/SIGTERM) or, with ``--sandbox``, the
gateway and the built-in DingTalk emulator (:func:`edgecrab.sandbox.serve_with_sandbox`).

It also owns the process-wide garbage-collection policy (:func:`_tune_gc`): a program that embeds a
:class:`~edgecrab.gateway.Gateway` runs it itself (``await gateway.run()``) and keeps its own.
"""

from __future__ import annotations

import gc
import logging
import os
import resource
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio

from edgecrab.config import Config
from edgecrab.gateway import Gateway
from edgecrab.shutdown import SignalStop, leave

log = logging.getLogger("edgecrab.serve")

FULL_COLLECTION_EVERY_S = 60.0
YOUNG_COLLECTION_EVERY_S = 0.01
QUIET_COLLECTION_EVERY_S = 0.1
"""The longest wait between young collections, reached when the process is quiet (see :func:`_next_wait`)."""
QUIET_CPU_SHARE = 0.05
"""Below this share of a core over a wait, the process is quiet (the collections themselves: about 2.5 %)."""
QUIET_NEW_OBJECTS = 1000
"""Below this many new objects (allocations less deallocations) since the last collection, it is quiet."""
FD_RESERVE = 4096
"""File descriptors the process makes room for at start (see :func:`_prepare_fds`)."""


def run_gateway(config: Config, *, sandbox: bool = False, port: int | None = None) -> int:
    """Entry point of ``edgecrab gateway start``; returns the process exit code (0 after SIGINT/SIGTERM;
    :mod:`edgecrab.shutdown` for a stop that does not finish)."""
    if sandbox:
        from edgecrab.sandbox import serve_with_sandbox

        anyio.run(serve_with_sandbox, config, port)
    else:
        anyio.run(serve, config)
    return leave(0)


async def serve(config: Config, *, ready: Any = None) -> None:
    """Run the gateway until SIGINT/SIGTERM; SIGHUP reloads its config (:meth:`Gateway.reload`)."""
    _prepare_fds()
    gateway = Gateway(config)
    _tune_gc()
    # The signals are ours before the gateway starts (and logs "started"): a SIGTERM during start-up
    # stops it, and a SIGHUP that follows "started" at once waits for the start instead of killing the
    # process with the default action.
    with SignalStop() as signals, anyio.open_signal_receiver(signal.SIGHUP) as hangups:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_stop_on_signal, signals, tg.cancel_scope)
            tg.start_soon(_collections)
            await tg.start(gateway.run)
            if ready is not None:
                ready(gateway)
            tg.start_soon(_reload_on_hangup, gateway, hangups)


async def _stop_on_signal(signals: SignalStop, scope: anyio.CancelScope) -> None:
    await signals.wait()
    scope.cancel()


async def _reload_on_hangup(gateway: Gateway, hangups: AsyncIterator[signal.Signals]) -> None:
    """SIGHUP: :meth:`Gateway.reload` (the config file and hooks again; errors logged, old config kept)."""
    async for _ in hangups:
        log.info("[gateway] SIGHUP received; reloading the config")
        await gateway.reload()


def _prepare_fds(reserve: int = FD_RESERVE) -> int:
    """Room for many sockets, made before any thread starts; returns the descriptor table's size.

    Every agent run holds a connection (1,000 runs in flight: 1,000 sockets), so the soft ``RLIMIT_NOFILE``
    (often 1,024) is raised to the hard one. And the kernel grows a process's descriptor table by doubling
    it; once the process has a second thread (the store's checkpoints run in one) each growth waits for an
    RCU grace period, 10-15 ms during which the event loop stood still in ``socket()`` (acks too:
    BENCHMARKS.md, fix 9). Opening, then closing, a descriptor near ``reserve`` grows the table once, now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError) as exc:
            log.warning("[gateway] could not raise the open-files limit from %d: %s", soft, exc)
    top = min(soft, reserve) - 1
    if top > 2 and not _is_open(top):  # open already: the table is that big (and dup2 would close it)
        try:
            spare = os.open(os.devnull, os.O_RDONLY)
            try:
                os.close(os.dup2(spare, top))
            finally:
                os.close(spare)
        except OSError as exc:
            log.warning("[gateway] could not reserve %d file descriptors: %s", top + 1, exc)
            return 0
    return top + 1


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _tune_gc() -> None:
    """Garbage collection for a process that is the gateway (the CLI; process-wide, so not for one that
    embeds it). A collection holds the GIL while it walks the objects of its generations, which stalls the
    acks as well, so the collector runs on a clock (:func:`_collections`) instead of on allocation counts:

    * full collections under load came every second or so, 50-135 ms each (BENCHMARKS.md, fix 4);
    * young ones (on CPython's count of allocations *minus* deallocations) came late exactly when the
      gateway was busiest: while runs finish, old objects die as fast as new ones are made, the count
      stays low and the young generations grew to 45,000-50,000 objects, a 14-20 ms pause each
      (BENCHMARKS.md, fix 13).

    What start-up allocated (modules, classes, config, hooks) is frozen out of collections for good."""
    gc.collect()
    gc.freeze()
    gc.disable()


async def _collections() -> None:
    """The young generations every :data:`YOUNG_COLLECTION_EVERY_S` while the process works (under load
    about 5,000 objects, under a millisecond), less often while it is quiet (:func:`_next_wait`);
    everything every :data:`FULL_COLLECTION_EVERY_S`."""
    next_full = time.monotonic() + FULL_COLLECTION_EVERY_S
    wait = YOUNG_COLLECTION_EVERY_S
    while True:
        cpu = time.process_time()
        await anyio.sleep(wait)
        new_objects = gc.get_count()[0]
        if time.monotonic() >= next_full:
            gc.collect()
            next_full = time.monotonic() + FULL_COLLECTION_EVERY_S
        else:
            gc.collect(1)
        wait = _next_wait(wait, time.process_time() - cpu, new_objects)


def _next_wait(wait: float, cpu_s: float, new_objects: int) -> float:
    """The wait before the next young collection, after one of ``wait`` seconds in which the process used
    ``cpu_s`` of CPU and made ``new_objects`` (CPython's count: allocations less deallocations).

    A collection's pause grows with the objects made since the last one, so the wait stays
    :data:`YOUNG_COLLECTION_EVERY_S` while the process works: :data:`QUIET_CPU_SHARE` of a core or more
    (the count alone misses work that frees old objects as fast as it makes new ones), or
    :data:`QUIET_NEW_OBJECTS` or more (acks alone, every message's objects alive until its agent answers,
    use little CPU). A quiet process waits twice as long each time, up to :data:`QUIET_COLLECTION_EVERY_S`:
    an idle gateway woke a hundred times a second for nothing, 2.5 % of a core. The first collection of a
    burst comes at most a tenth of a second into it."""
    if cpu_s >= wait * QUIET_CPU_SHARE or new_objects >= QUIET_NEW_OBJECTS:
        return YOUNG_COLLECTION_EVERY_S
    return min(wait * 2, QUIET_COLLECTION_EVERY_S)


__all__ = ["run_gateway", "serve"]
