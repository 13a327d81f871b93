"""How many threads a training takes with ``engine.num_threads: 0``: the cores other processes keep
busy now, from a short sample of the machine's CPU time (not the one-minute load average, which
trails: a job started right after another ended ran on half the cores)."""

from __future__ import annotations

import pytest

from retinassl.engine import threads


class Machine:
    """A fake clock and CPU counters: ``others`` cores busy with other processes, ``own`` with us."""

    def __init__(self, others: float, own: float = 0.0, load_average: float = 2.0) -> None:
        self.t, self.busy, self.mine = 100.0, 5000.0, 10.0
        self.others, self.own, self.load_average = others, own, load_average
        self.sleeps = 0

    def monotonic(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        self.t += seconds
        self.busy += (self.others + self.own) * seconds
        self.mine += self.own * seconds


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch):
    def install(**kwargs) -> Machine:
        m = Machine(**kwargs)
        monkeypatch.setattr(threads, "time", m)
        monkeypatch.setattr(threads, "busy_seconds", lambda: m.busy)
        monkeypatch.setattr(threads, "own_seconds", lambda: m.mine)
        monkeypatch.setattr(threads.os, "getloadavg", lambda: (m.load_average, 0.0, 0.0))
        monkeypatch.setattr(threads, "_last", None)
        return m
    return install


def test_a_job_right_after_another_takes_every_core_though_the_load_average_trails(machine) -> None:
    machine(others=0.0, load_average=2.0)  # the last job just ended: the 1-minute average still says 2
    assert threads.other_load() == pytest.approx(0.0)
    assert threads.choose_threads(0, n_cores=2) == 2


def test_a_job_beside_a_running_one_takes_the_free_core_only(machine) -> None:
    machine(others=1.0, own=0.5, load_average=0.1)  # another training just started; our own work not counted
    assert threads.other_load() == pytest.approx(1.0)
    assert threads.choose_threads(0, n_cores=2) == 1
    assert threads.choose_threads(3, n_cores=2) == 3  # an explicit count is used as given


def test_one_process_measures_once_for_fits_in_a_row(machine) -> None:
    m = machine(others=1.0)
    assert threads.other_load() == pytest.approx(1.0)
    m.others = 0.0
    m.t += 10  # a sweep's next cell, 10 s later: the measurement is kept
    assert threads.other_load() == pytest.approx(1.0) and m.sleeps == 1
    m.t += threads.REMEMBER_SECONDS
    assert threads.other_load() == pytest.approx(0.0) and m.sleeps == 2


def test_without_cpu_counters_the_load_average_minus_our_share(machine, monkeypatch: pytest.MonkeyPatch) -> None:
    m = machine(others=0.0, load_average=2.5)
    monkeypatch.setattr(threads, "busy_seconds", lambda: None)
    assert threads.other_load() == pytest.approx(1.5) and m.sleeps == 0


def test_the_machine_counters_read_on_linux() -> None:
    busy = threads.busy_seconds()
    if busy is None or threads.allowed_cpus() is None:
        pytest.skip("no /proc/stat on this platform")
    assert busy > 0 and threads.busy_seconds() >= busy


def test_processes_started_together_take_their_share_without_measuring(machine, monkeypatch) -> None:
    """DDP ranks and a sweep's workers start at the same moment: each would see the others idle."""
    m = machine(others=0.0)
    monkeypatch.delenv(threads.SHARING_ENV, raising=False)
    assert threads.sharing_processes(devices=1) == 1 and threads.sharing_processes(devices="auto") == 1
    assert threads.choose_threads(0, n_cores=8, sharing=threads.sharing_processes(devices=4)) == 2
    monkeypatch.setenv(threads.SHARING_ENV, "2")  # set by the sweep's worker processes
    assert threads.choose_threads(0, n_cores=2, sharing=threads.sharing_processes()) == 1
    assert threads.choose_threads(0, n_cores=2, sharing=5) == 1  # at least one
    assert m.sleeps == 0
    assert threads.choose_threads(2, n_cores=2, sharing=2) == 2  # an explicit count wins


def test_only_the_cpus_this_process_may_use_are_counted(tmp_path, monkeypatch) -> None:
    """On a node shared through cpusets, another job busy on other CPUs leaves ours free."""
    stat = tmp_path / "stat"
    stat.write_text("cpu  900 0 100 50 0 0 0 0 0 0\n"
                    "cpu0 100 0 0 25 0 0 0 0 0 0\n"      # ours: 1 s busy at 100 ticks/s
                    "cpu1 800 0 100 25 5 0 0 0 0 0\n"    # another job's: 9 s busy, iowait not busy
                    "intr 12345\n")
    monkeypatch.setattr(threads, "PROC_STAT", str(stat))
    monkeypatch.setattr(threads.os, "sysconf", lambda name: 100)
    assert threads.busy_seconds({0}) == pytest.approx(1.0)
    assert threads.busy_seconds({0, 1}) == pytest.approx(10.0)
    assert threads.busy_seconds({7}) is None  # none of ours listed: unknown, not idle
