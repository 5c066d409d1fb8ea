"""Running the matrix's boots: in this process, on local worker processes, or on a Dask cluster.

A boot costs tens of milliseconds in-process, far less than starting Python and importing the model, so
workers are started once (a forkserver that imported the model forks them) and fed *batches* of
configurations; results come back per batch and are put in grid order, so the outcome never depends on
how many workers ran or in which order they finished. ``--dask ADDRESS`` sends the same batches to an
existing Dask scheduler through ``dask.distributed.Client`` (its workers need earlymm installed).
"""

from __future__ import annotations

import math
import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

Task = tuple[int, list[str]]  # (grid index, earlymm boot arguments)
Record = dict[str, Any]
BatchFn = Callable[[list[Task]], list[Record]]
Done = Callable[[int], None]  # called with the number of configurations just finished


class DaskUnavailable(Exception):
    """``--dask`` without the optional dependency, or a scheduler that cannot be reached (one line)."""


def batches(tasks: Sequence[Task], workers: int, per_worker: int = 8, largest: int = 32) -> list[list[Task]]:
    """Tasks in grid order, cut into batches: several per worker (so a slow batch does not leave the others
    idle), none so large that the progress bar stalls."""
    size = max(1, min(largest, math.ceil(len(tasks) / max(1, workers * per_worker))))
    return [list(tasks[i:i + size]) for i in range(0, len(tasks), size)]


def run_inline(fn: BatchFn, tasks: Sequence[Task], done: Done) -> list[Record]:
    out: list[Record] = []
    for batch in batches(tasks, 1, per_worker=len(tasks) or 1, largest=1):
        got = fn(batch)
        out += got
        done(len(got))
    return out


def run_local(fn: BatchFn, tasks: Sequence[Task], workers: int, done: Done) -> list[Record]:
    """``workers`` processes forked from a forkserver that has imported ``fn``'s module (and so the model) once."""
    if workers <= 1:
        return run_inline(fn, tasks, done)
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    if "forkserver" in methods:
        ctx.set_forkserver_preload([fn.__module__])
    out: list[Record] = []
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures = [pool.submit(fn, b) for b in batches(tasks, workers)]
        for fut in as_completed(futures):
            got = fut.result()
            out += got
            done(len(got))
    return out


def run_dask(fn: BatchFn, tasks: Sequence[Task], address: str, done: Done, *, workers: int = 0,
             timeout: float = 30.0) -> list[Record]:
    """The same batches on the Dask cluster whose scheduler is at ``address``."""
    try:
        from distributed import Client
        from distributed import as_completed as dask_completed
    except ImportError:
        raise DaskUnavailable("--dask needs Dask's distributed scheduler: pip install 'earlymm[matrix]'") from None
    try:
        client = Client(address, timeout=timeout, set_as_default=False)  # type: ignore[no-untyped-call]
    except (OSError, TimeoutError, ValueError) as e:
        raise DaskUnavailable(f"cannot reach the Dask scheduler at {address}: {e}") from None
    out: list[Record] = []
    try:
        n = workers or max(1, sum(client.nthreads().values()))  # type: ignore[no-untyped-call]
        futures = client.map(fn, batches(tasks, n), pure=False)
        for fut in dask_completed(futures, loop=client.loop):  # type: ignore[no-untyped-call]
            got: list[Record] = fut.result()
            out += got
            done(len(got))
    finally:
        client.close()  # type: ignore[no-untyped-call]
    return out
