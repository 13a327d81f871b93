"""How many intra-op threads a training process uses (``engine.num_threads``).

PyTorch starts one OpenMP thread per core whatever else runs. Two trainings sharing two cores then
each start two threads and spin against each other (OpenMP oversubscription): a vessel training
that took 6 minutes alone ran at 1/30 of its speed beside another one. With ``engine.num_threads: 0``
(the default) the count is taken from the cores that are actually free -- the cores minus those other
processes keep busy, measured over a quarter of a second (:func:`other_load`) -- and at least one; an
explicit ``engine.num_threads: N`` is used as given. Either way, when the threads asked for plus the other
load exceed the cores, the log says the machine is oversubscribed (and how to avoid it).

The count a run started with is recorded in its ``run.json`` (``intra_op_threads``) and a resumed run
with ``num_threads: 0`` keeps it: float sums depend on the thread count, so a killed and resumed run
computes exactly as an uninterrupted one whatever the load at resume time.
"""

from __future__ import annotations

import logging
import os
import time

log = logging.getLogger(__name__)


SAMPLE_SECONDS = 0.25
REMEMBER_SECONDS = 30.0  # one process's fits in a row (a sweep's cells) measure once
_last: tuple[float, float] | None = None  # (monotonic time, other load) of the last measurement
PROC_STAT = "/proc/stat"
SHARING_ENV = "RETINASSL_PROCESSES_SHARING_CORES"  # set by whoever starts processes together (a sweep's workers)


def allowed_cpus() -> set[int] | None:
    """The CPUs this process may run on (its affinity: a cpuset, ``taskset``), or None where unknown."""
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:
        return None


def busy_seconds(cpus: set[int] | None = None) -> float | None:
    """CPU seconds the CPUs ``cpus`` (default: those this process may run on) have spent running (user,
    nice, system, interrupts) since boot, from Linux's per-CPU lines of ``/proc/stat``; None elsewhere.
    Per CPU, so that on a node shared through cpusets only this job's CPUs count."""
    cpus = allowed_cpus() if cpus is None else cpus
    try:
        total, seen = 0, 0
        with open(PROC_STAT) as f:
            for line in f:
                name, *fields = line.split()
                if not (name.startswith("cpu") and name[3:].isdigit()):
                    continue
                if cpus is not None and int(name[3:]) not in cpus:
                    continue
                ticks = [int(x) for x in fields[:7]]  # user nice system idle iowait irq softirq
                total += sum(ticks) - ticks[3] - ticks[4]
                seen += 1
        return total / os.sysconf("SC_CLK_TCK") if seen else None
    except (OSError, ValueError, IndexError):
        return None


def own_seconds() -> float:
    t = os.times()
    return t.user + t.system


def other_load(sample: float = SAMPLE_SECONDS) -> float:
    """How many cores other processes keep busy now: the machine's busy CPU time over ``sample``
    seconds minus this process's own. Where the platform does not say (no ``/proc/stat``), the
    one-minute load average minus this process's share (about one runnable thread while it prepares
    data), or 0 without one.

    A sample, not the load average, where it can: the average trails by about a minute, so a job
    started right after another ended took the ended one's cores as busy and ran on half the cores
    (trainings run back to back alternated between 2 and 1 threads on a 2-core machine)."""
    global _last
    start = time.monotonic()
    if _last is not None and start - _last[0] < REMEMBER_SECONDS:
        return _last[1]
    busy, own = busy_seconds(), own_seconds()
    if busy is not None:
        time.sleep(sample)
        busy_after = busy_seconds()
        if busy_after is not None:
            load = max(0.0, (busy_after - busy - (own_seconds() - own)) / (time.monotonic() - start))
            _last = (time.monotonic(), load)
            return load
    try:
        return max(0.0, os.getloadavg()[0] - 1.0)
    except (AttributeError, OSError):
        return 0.0


def cores() -> int:
    """The cores this process may run on."""
    cpus = allowed_cpus()
    return max(1, len(cpus)) if cpus is not None else max(1, os.cpu_count() or 1)


def sharing_processes(devices: int | str = 1) -> int:
    """How many processes start together to share this machine's cores: the ``devices`` of a
    multi-process (DDP) run on this node, or the workers of a sweep (:data:`SHARING_ENV`)."""
    try:
        workers = int(os.environ.get(SHARING_ENV, "1"))
    except ValueError:
        workers = 1
    return max(1, workers, devices if isinstance(devices, int) else 1)


def choose_threads(requested: int, n_cores: int | None = None, load: float | None = None,
                   sharing: int = 1) -> int:
    """The intra-op thread count for ``engine.num_threads = requested`` (0: from the free cores)
    on ``n_cores`` cores with ``load`` cores kept busy by other processes (default: measured). When
    ``sharing`` processes start together (DDP ranks, a sweep's workers), 0 gives each its share of the
    cores instead: measured at the same moment, they would each see the others idle."""
    n_cores = cores() if n_cores is None else n_cores
    if requested == 0 and sharing > 1:
        return max(1, n_cores // sharing)
    load = other_load() if load is None else load
    threads = requested if requested > 0 else max(1, min(n_cores, int(round(n_cores - load))))
    if threads + load > n_cores + 0.5:
        log.warning("the machine is oversubscribed: %d thread(s) for this run while other processes "
                    "keep %.1f of the %d cores busy; runs sharing cores slow each other down many "
                    "times over (set engine.num_threads to the cores you can have, or run one at a "
                    "time)", threads, load, n_cores)
    return threads


THREADS_KEY = "intra_op_threads"


def apply_threads(requested: int, recorded: int | None = None, sharing: int = 1) -> int:
    """Set torch's intra-op threads from :func:`choose_threads` (``sharing``: processes started
    together), or to ``recorded`` (the count a resumed run started with) when ``requested`` is 0;
    returns the count (logged)."""
    import torch  # here, not at the top: a sweep's worker reads this module's names before it needs torch

    if requested == 0 and recorded:
        threads = int(recorded)
        torch.set_num_threads(threads)
        log.info("using %d intra-op thread(s) (engine.num_threads=0: the count this run started with, "
                 "so that the resumed part computes as the first did)", threads)
        return threads
    threads = choose_threads(requested, sharing=sharing)
    torch.set_num_threads(threads)
    how = "" if requested else (f": a share of the cores for {sharing} processes" if sharing > 1
                                else ": from the free cores")
    log.info("using %d intra-op thread(s) (engine.num_threads=%d%s)", threads, requested, how)
    return threads
