"""Interpreter exit while a daemon thread is inside Pipeline.generate (issue 20): the binding's exit
hook cancels the request and waits for it, so the process exits cleanly instead of aborting in the
progress trampoline ("FATAL: exception not rethrown") or tearing ONNX Runtime down under a running
session ("GetElementType is not implemented")."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import List, Tuple

import pytest

from conftest import TINY

# The main thread returns while the worker is in the middle of a request that would take ~15 s
# (1000 steps at 256x256) if nothing stopped it.
SCRIPT = r"""
import atexit, os, sys, threading, time

outcome = []
steps = []

def report():
    # Registered before diffgentor is imported, so it runs after the binding's exit hook: by then
    # the request must have been cancelled and generate() have returned.
    worker.join(0 if mode == "blocked" else 5)
    what = type(outcome[0]).__name__ if outcome else "still running"
    print(f"worker: {what} after {len(steps)} steps", file=sys.stderr, flush=True)

atexit.register(report)

import diffgentor

model, mode = sys.argv[1], sys.argv[2]
diffgentor._inflight.EXIT_WAIT_SECONDS = 1.0
started = threading.Event()
pipe = diffgentor.Runtime(intra_threads=1).load(model)

def on_progress(p):
    steps.append(p.step)
    started.set()
    if mode == "blocked":  # a callback that never returns: the exit hook gives up waiting
        threading.Event().wait()

def work():
    try:
        pipe.generate("a red fox", seed=1, steps=1000, width=256, height=256, scheduler="euler",
                      progress=None if mode == "no-progress" else on_progress, output="raw")
    except BaseException as e:
        outcome.append(e)

worker = threading.Thread(target=work, daemon=True)
worker.start()
if mode != "no-progress":
    assert started.wait(60), "no progress"
else:
    time.sleep(0.5)  # no callback to tell when the request runs: let it get going
if mode == "fork":
    # The worker's call does not exist in a child: its exit hook must not wait for it. (Only the
    # hook runs there: ONNX Runtime's own teardown is not fork-safe.)
    pid = os.fork()
    if pid == 0:
        diffgentor._inflight._stop_running_calls()
        os._exit(0)
    os.waitpid(pid, 0)
"""


def _run(tmp_path: Path, mode: str, runs: int) -> List[Tuple[int, str]]:
    script = tmp_path / "daemon_exit.py"
    script.write_text(SCRIPT)
    # The runs overlap: the failure is a race, and several processes at once keep this quick.
    procs = [
        subprocess.Popen([sys.executable, str(script), str(TINY), mode], env=dict(os.environ),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(runs)
    ]
    results: List[Tuple[int, str]] = []
    for proc in procs:
        try:
            _, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
            err += "\n(killed: still running after 120 s)"
        results.append((proc.returncode, err))
    return results


@pytest.mark.parametrize("mode", ["progress", "no-progress"])
def test_exit_with_a_daemon_thread_generating(mode: str, tmp_path: Path) -> None:
    for code, err in _run(tmp_path, mode, runs=3):
        assert code == 0, f"exit status {code}, stderr:\n{err}"
        assert "FATAL" not in err, err
        assert "GetElementType" not in err, err
        assert "worker: CancelledError" in err, err


def test_exit_wait_is_bounded(tmp_path: Path) -> None:
    """A progress callback that never returns keeps its request running: the exit hook waits
    EXIT_WAIT_SECONDS (1 s here), says so, and lets the process exit."""
    ((_, err),) = _run(tmp_path, "blocked", runs=1)
    assert "1 library call(s) still running" in err, err
    assert "worker: still running after 1 steps" in err, err


def test_forked_child_does_not_wait_for_the_parents_calls(tmp_path: Path) -> None:
    ((code, err),) = _run(tmp_path, "fork", runs=1)
    assert "still running on other threads" not in err, err  # what a hook waiting for a ghost call says
    assert code == 0 and "worker: CancelledError" in err, err  # and the parent exits as usual
