"""A sweep's worker process ends when the sweep's main process dies (it would otherwise go on
training and claiming cells beside the workers of a --resume), and when the sweep is interrupted
while it waits for them; a worker's exception reaches the sweep."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from retinassl.sweeps.workers import ORPHAN_EXIT_CODE, run_worker_processes

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX process semantics")


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie that no one has reaped yet counts as gone)."""
    status = Path(f"/proc/{pid}/status")
    if status.is_file():
        try:
            return "\nState:\tZ" not in status.read_text()
        except OSError:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_worker_whose_parent_is_not_the_expected_one_exits() -> None:
    code = "from retinassl.sweeps.workers import exit_with_parent\nimport os, time\n" \
           "exit_with_parent(parent=os.getppid() + 100000, interval=0.05)\ntime.sleep(30)\n"
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20)
    assert result.returncode == ORPHAN_EXIT_CODE and time.monotonic() - start < 10
    assert "has gone" in result.stderr


def test_the_worker_ends_when_its_parent_is_killed(tmp_path: Path) -> None:
    pid_file = tmp_path / "worker.pid"
    parent = textwrap.dedent(f"""
        import multiprocessing, os, signal, time
        from pathlib import Path

        def worker(path):
            from retinassl.sweeps.workers import exit_with_parent
            exit_with_parent(interval=0.1)
            Path(path).write_text(str(os.getpid()))
            time.sleep(60)

        if __name__ == "__main__":
            process = multiprocessing.get_context("spawn").Process(target=worker, args=({str(pid_file)!r},))
            process.start()
            while not Path({str(pid_file)!r}).is_file():
                time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGKILL)
        """)
    script = tmp_path / "parent.py"
    script.write_text(parent)
    result = subprocess.run([sys.executable, str(script)], timeout=60)
    assert result.returncode == -signal.SIGKILL
    worker = int(pid_file.read_text())
    deadline = time.monotonic() + 15
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(worker):
        os.kill(worker, signal.SIGKILL)
        pytest.fail("the worker outlived its killed parent")


def test_a_workers_exception_or_exit_code_reaches_the_sweep() -> None:
    import operator

    run_worker_processes(operator.add, [(1, 2), (3, 4)], "ok")            # both succeed
    with pytest.raises(ZeroDivisionError):
        run_worker_processes(operator.truediv, [(1, 1), (1, 0)], "divide")
    with pytest.raises(RuntimeError, match="exit-1 ended with exit code 5"):
        run_worker_processes(os._exit, [(0,), (5,)], "exit")
    # a worker that stops by SystemExit, even with code 0 (Lightning's on SIGTERM), has failed
    with pytest.raises(RuntimeError, match="worker 0 stopped by SystemExit"):
        run_worker_processes(sys.exit, [(None,)], "stopped")
    # an exception larger than a pipe's buffer reaches the parent (which reads while it waits)
    with pytest.raises(ValueError) as raised:
        run_worker_processes(exec, [("raise ValueError('x' * 200000)",)], "large")
    assert str(raised.value) == "x" * 200000, "the exception arrived changed"
    if sys.version_info >= (3, 11):
        assert "in worker 0" in "".join(raised.value.__notes__)          # the worker's traceback


def test_sigterm_while_waiting_stops_the_workers(tmp_path: Path) -> None:
    body = ("import os, sys, time; from pathlib import Path; "
            "Path(sys.argv[0]).parent.joinpath(f'worker-{os.getpid()}.pid').touch(); time.sleep(60)")
    parent = textwrap.dedent(f"""
        import signal, sys
        from retinassl.cli import _raise_terminated
        from retinassl.errors import Terminated
        from retinassl.sweeps.workers import run_worker_processes

        if __name__ == "__main__":
            signal.signal(signal.SIGTERM, _raise_terminated)
            try:
                run_worker_processes(exec, [({body!r},), ({body!r},)], "sleeper", grace=10)
            except Terminated:
                sys.exit(143)
        """)
    script = tmp_path / "parent.py"
    script.write_text(parent)
    process = subprocess.Popen([sys.executable, str(script)])
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while len(list(tmp_path.glob("worker-*.pid"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        workers = [int(p.stem.removeprefix("worker-")) for p in tmp_path.glob("worker-*.pid")]
        assert len(workers) == 2, "the workers did not start"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 143
        assert not [pid for pid in workers if _alive(pid)], "workers outlived the terminated sweep"
    finally:
        for pid in [process.pid, *workers]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        process.wait(timeout=10)


def test_terminated_is_not_caught_by_except_exception() -> None:
    from retinassl.errors import Terminated

    with pytest.raises(Terminated):
        try:
            raise Terminated("terminated by SIGTERM")
        except Exception:  # what library code and our own handlers catch
            pytest.fail("a SIGTERM was swallowed by 'except Exception'")
