"""How many intra-op threads a training process uses (``engine.num_threads``).

PyTorch starts one OpenMP thread per core whatever else runs. Two trainings sharing two cores then
each start two threads and spin against each other (OpenMP oversubscription): a vessel training
that took 6 minutes alone ran at 1/30 of its speed beside another one. With ``engine.num_threads: 0``
(the default) the count is taken from the cores that are actually free -- the cores minus the
one-minute load average that is not this process's own -- and at least one; an explicit
``engine.num_threads: N`` is used as given. Either way, when the threads asked for plus the other
load exceed the cores, the log says the machine is oversubscribed (and how to avoid it).

The count a run started with is recorded in its ``run.json`` (``intra_op_threads``) and a resumed run
with ``num_threads: 0`` keeps it: float sums depend on the thread count, so a killed and resumed run
computes exactly as an uninterrupted one whatever the load at resume time.
"""

from __future__ import annotations

import logging
import os

import torch

log = logging.getLogger(__name__)


def other_load() -> float:
    """The one-minute load average minus this process's own share (about one runnable thread
    while it prepares data); 0 where the platform has no load average."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0
    return max(0.0, load - 1.0)


def cores() -> int:
    """The cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def choose_threads(requested: int, n_cores: int | None = None, load: float | None = None) -> int:
    """The intra-op thread count for ``engine.num_threads = requested`` (0: from the free cores)
    on ``n_cores`` cores with ``load`` runnable threads of other processes (default: measured)."""
    n_cores = cores() if n_cores is None else n_cores
    load = other_load() if load is None else load
    threads = requested if requested > 0 else max(1, min(n_cores, int(round(n_cores - load))))
    if threads + load > n_cores + 0.5:
        log.warning("the machine is oversubscribed: %d thread(s) for this run while other processes "
                    "keep %.1f of the %d cores busy; runs sharing cores slow each other down many "
                    "times over (set engine.num_threads to the cores you can have, or run one at a "
                    "time)", threads, load, n_cores)
    return threads


THREADS_KEY = "intra_op_threads"


def apply_threads(requested: int, recorded: int | None = None) -> int:
    """Set torch's intra-op threads from :func:`choose_threads`, or to ``recorded`` (the count a
    resumed run started with) when ``requested`` is 0; returns the count (logged)."""
    if requested == 0 and recorded:
        threads = int(recorded)
        torch.set_num_threads(threads)
        log.info("using %d intra-op thread(s) (engine.num_threads=0: the count this run started with, "
                 "so that the resumed part computes as the first did)", threads)
        return threads
    threads = choose_threads(requested)
    torch.set_num_threads(threads)
    log.info("using %d intra-op thread(s) (engine.num_threads=%d%s)", threads, requested,
             ": from the free cores" if requested == 0 else "")
    return threads
