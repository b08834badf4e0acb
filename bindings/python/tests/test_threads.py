"""Threads: ctypes releases the GIL during dg_pipeline_generate, so requests on one pipeline run at
the same time, and each seed gives the same image as when run alone."""

from __future__ import annotations

import sys
import threading
import time
from typing import Dict, List

import diffgentor
from conftest import FOX_PROMPT, TINY

SEEDS = [0, 1, 2, 3]


def test_four_threads_on_one_pipeline_equal_sequential(tiny: diffgentor.Pipeline) -> None:
    sequential = {seed: tiny.generate(FOX_PROMPT, seed=seed, steps=3, output="raw")[0] for seed in SEEDS}
    # Every request waits at its step-1 callback until all four are there: they are in flight at once.
    barrier = threading.Barrier(len(SEEDS), timeout=60)
    results: Dict[int, diffgentor.RawImage] = {}
    errors: List[BaseException] = []

    def work(seed: int) -> None:
        try:
            def on_progress(p: diffgentor.Progress) -> None:
                if p.step == 1:
                    barrier.wait()

            results[seed] = tiny.generate(FOX_PROMPT, seed=seed, steps=3, output="raw", progress=on_progress)[0]
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in SEEDS]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert results == sequential


def test_gil_is_released_while_generating(runtime: diffgentor.Runtime) -> None:
    """The main thread keeps running Python while another thread is inside the library. With a
    switch interval of minutes, a foreign call that held the GIL would starve the main thread
    for the whole request; with the GIL released it wakes every millisecond."""
    with runtime.load(TINY) as pipe:
        started = threading.Event()
        done = threading.Event()
        marks: List[float] = []

        def on_progress(p: diffgentor.Progress) -> None:
            marks.append(time.perf_counter())
            started.set()

        def work() -> None:
            try:
                pipe.generate(FOX_PROMPT, seed=1, steps=30, scheduler="euler", width=128, height=128, output="raw", progress=on_progress)
            finally:
                started.set()
                done.set()

        ticks: List[float] = []
        old = sys.getswitchinterval()
        sys.setswitchinterval(300.0)
        try:
            worker = threading.Thread(target=work)
            worker.start()
            started.wait(60)
            while not done.is_set():
                ticks.append(time.perf_counter())
                time.sleep(0.001)  # lets the worker's callbacks take the GIL
            worker.join(60)
        finally:
            sys.setswitchinterval(old)
        assert len(marks) == 30
        during = [t for t in ticks if marks[0] < t < marks[-1]]
        assert len(during) >= 5, f"the main thread ran {len(during)} times during {marks[-1] - marks[0]:.3f}s"


def test_close_while_other_threads_generate(runtime: diffgentor.Runtime) -> None:
    """close() during a running request defers the free to the end of that request."""
    pipe = runtime.load(TINY)
    at_step_1 = threading.Event()
    closed = threading.Event()
    outcome: List[object] = []

    def on_progress(p: diffgentor.Progress) -> None:
        if p.step == 1:
            at_step_1.set()
            assert closed.wait(60)

    def work() -> None:
        try:
            outcome.append(pipe.generate(FOX_PROMPT, seed=3, steps=2, output="raw", progress=on_progress))
        except BaseException as e:
            outcome.append(e)

    worker = threading.Thread(target=work)
    worker.start()
    assert at_step_1.wait(60)
    pipe.close()
    assert pipe.closed
    try:
        pipe.generate(FOX_PROMPT, steps=1)
        raise AssertionError("generate on a closed pipeline succeeded")
    except diffgentor.NullArgError as e:
        assert "closed" in str(e)
    assert pipe._handle._ptr != 0  # still held by the running request
    closed.set()
    worker.join(60)
    assert isinstance(outcome[0], diffgentor.ImageList), outcome
    assert pipe._handle._ptr == 0  # freed when it ended
