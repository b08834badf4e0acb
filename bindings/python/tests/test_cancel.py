"""Cancellation (progress returning False, CancelToken from another thread) and exceptions raised
inside the progress callback."""

from __future__ import annotations

import os
import signal
import threading
from typing import List

import pytest

import diffgentor
from conftest import FOX, FOX_PROMPT


def test_progress_returning_false_cancels(tiny: diffgentor.Pipeline) -> None:
    steps: List[int] = []

    def on_progress(p: diffgentor.Progress) -> bool:
        steps.append(p.step)
        return p.step < 2

    with pytest.raises(diffgentor.CancelledError) as info:
        tiny.generate(FOX_PROMPT, **FOX, progress=on_progress)
    assert info.value.code is diffgentor.ErrorCode.CANCELLED and int(info.value.code) == 7
    assert steps == [1, 2]  # no call after the one that returned False


def test_token_raised_before_the_request(tiny: diffgentor.Pipeline) -> None:
    steps: List[int] = []
    with diffgentor.CancelToken() as token:
        token.cancel()
        assert token.cancelled
        with pytest.raises(diffgentor.CancelledError):
            tiny.generate(FOX_PROMPT, **FOX, cancel=token, progress=lambda p: steps.append(p.step))
    assert steps == []
    assert token.closed
    token.cancel()  # a no-op once closed


def test_token_raised_from_another_thread(tiny: diffgentor.Pipeline) -> None:
    """The generating thread's step-1 callback waits until the main thread has raised the token
    (a handshake, no sleeps): the request must stop before step 2."""
    at_step_1 = threading.Event()
    raised = threading.Event()
    steps: List[int] = []
    outcome: List[BaseException] = []
    token = diffgentor.CancelToken()

    def on_progress(p: diffgentor.Progress) -> None:
        steps.append(p.step)
        if p.step == 1:
            at_step_1.set()
            assert raised.wait(60), "the main thread never raised the token"

    def work() -> None:
        try:
            tiny.generate(FOX_PROMPT, **FOX, progress=on_progress, cancel=token)
        except BaseException as e:
            outcome.append(e)

    worker = threading.Thread(target=work)
    worker.start()
    assert at_step_1.wait(60)
    token.cancel()
    raised.set()
    worker.join(60)
    assert not worker.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], diffgentor.CancelledError), outcome
    assert steps == [1]
    token.close()
    token.close()  # idempotent


class Boom(Exception):
    pass


def test_exception_in_progress_propagates(tiny: diffgentor.Pipeline) -> None:
    steps: List[int] = []

    def on_progress(p: diffgentor.Progress) -> None:
        steps.append(p.step)
        if p.step == 2:
            raise Boom("from the callback")

    with pytest.raises(Boom, match="from the callback") as info:
        tiny.generate(FOX_PROMPT, **FOX, progress=on_progress)
    assert steps == [1, 2]  # the request stopped there
    assert any(entry.name == "on_progress" for entry in info.traceback)
    # the pipeline is fine afterwards
    assert len(tiny.generate(FOX_PROMPT, **FOX, output="raw")) == 1


def test_exception_on_the_last_step_still_propagates(tiny: diffgentor.Pipeline) -> None:
    def on_progress(p: diffgentor.Progress) -> None:
        if p.step == p.total:
            raise Boom("last")

    with pytest.raises(Boom):
        tiny.generate(FOX_PROMPT, **FOX, progress=on_progress)


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals need the main thread")
@pytest.mark.parametrize("with_progress", [True, False])
def test_ctrl_c_stops_the_request(tiny: diffgentor.Pipeline, with_progress: bool) -> None:
    """SIGINT while the library computes: KeyboardInterrupt comes out of generate() (after the
    current step: the binding installs its own step callback on the main thread), never lost."""
    steps: List[int] = []
    total = 400  # ~seconds of work on two cores: far more than the signal needs to arrive
    # A shell that starts a job in the background (nohup, `&` in a script) leaves SIGINT ignored, and
    # Python then never raises KeyboardInterrupt: install the usual handler for this test.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    killer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT))
    killer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            tiny.generate(FOX_PROMPT, seed=1, steps=total, width=128, height=128,
                          progress=(lambda p: steps.append(p.step)) if with_progress else None)
    finally:
        killer.cancel()
        killer.join()
        signal.signal(signal.SIGINT, previous)
    if with_progress:
        assert 0 < len(steps) < total
