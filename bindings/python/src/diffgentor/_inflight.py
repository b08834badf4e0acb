"""Interpreter exit with library calls still running on daemon threads.

Python does not join daemon threads at exit. One still inside ``dg_pipeline_generate`` then races
the interpreter's teardown, with two failures:

- with a progress callback, the ctypes trampoline asks for the GIL once Python is finalizing, and
  CPython ends such a thread with ``pthread_exit``: a forced unwind through Rust frames, which
  aborts the process ("FATAL: exception not rethrown", SIGABRT or SIGSEGV);
- without one, ``exit()`` runs ONNX Runtime's exit handlers and static destructors (seen in gdb:
  the main thread in ``__run_exit_handlers`` inside libonnxruntime) while that thread's session
  ``Run`` still uses what they tear down: ORT logs "GetElementType is not implemented" from a
  kernel, or worse.

So every long library call registers here, and an ``atexit`` hook (run after non-daemon threads
are joined, while the interpreter is still whole) raises the cancel token of every running
request, refuses new ones from other threads, and waits, bounded by :data:`EXIT_WAIT_SECONDS`, for
all of them to return. The wait releases the GIL, so a request's progress trampoline can run, see
:func:`stopping`, and return False without calling user code.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, Optional

from ._errors import CancelledError, ErrorCode

#: How long the exit hook waits for running calls; a cancelled request stops before its next
#: denoising step, so this bounds one step (or a model load, which cannot be cancelled).
EXIT_WAIT_SECONDS = 30.0


class Call:
    """One running library call: its thread, and how to cancel it (None: it cannot be)."""

    __slots__ = ("thread", "cancel")

    def __init__(self) -> None:
        self.thread = threading.current_thread()
        self.cancel: Optional[Callable[[], None]] = None


# Re-entrant: a garbage collection inside a locked block can run a finalizer that frees a handle,
# which registers here too.
_cond = threading.Condition(threading.RLock())
_calls: Dict[int, Call] = {}
_exiting = False


def stopping() -> bool:
    """True on a thread other than the main one once the interpreter is exiting: a progress
    trampoline there must cancel its request without calling user code. (The main thread runs
    the exit hooks itself, so its calls do not race the teardown.)"""
    return (_exiting or sys.is_finalizing()) and threading.current_thread() is not threading.main_thread()


@contextmanager
def running(refuse: bool = True) -> Iterator[Call]:
    """Registers a library call for the exit hook. Once exit has begun, a new call on a thread
    other than the main one raises CancelledError, unless ``refuse`` is False (freeing a handle)."""
    call = Call()
    with _cond:
        if refuse and _exiting and call.thread is not threading.main_thread():
            raise CancelledError("diffgentor: the interpreter is exiting", ErrorCode.CANCELLED)
        _calls[id(call)] = call
    try:
        yield call
    finally:
        with _cond:
            del _calls[id(call)]
            _cond.notify_all()


@contextmanager
def cancellable(call: Call, cancel: Callable[[], None]) -> Iterator[None]:
    """Lets the exit hook run ``cancel`` while the block runs. What it cancels (a token) must stay
    alive until the block ends: unregistering takes the lock the hook cancels under."""
    with _cond:
        call.cancel = cancel
        if _exiting:  # exit began between running() and here
            cancel()
    try:
        yield
    finally:
        with _cond:
            call.cancel = None


def _stop_running_calls() -> None:
    """The exit hook: cancels running requests, then waits for every call on another thread to
    return."""
    global _exiting
    me = threading.current_thread()
    with _cond:
        _exiting = True
        for call in list(_calls.values()):
            if call.cancel is not None:
                call.cancel()
        if not _cond.wait_for(lambda: all(c.thread is me for c in list(_calls.values())), EXIT_WAIT_SECONDS):
            left = sum(c.thread is not me for c in _calls.values())
            print(f"diffgentor: {left} library call(s) still running on other threads after "
                  f"{EXIT_WAIT_SECONDS:g} s at interpreter exit; the exit may crash", file=sys.stderr)


def _after_fork_in_child() -> None:
    # Only the forking thread lives on in the child: the other threads' calls are gone (the exit
    # hook must not wait for them), and one of them may have held the lock.
    global _cond
    me = threading.current_thread()
    _cond = threading.Condition(threading.RLock())
    for key in [key for key, call in _calls.items() if call.thread is not me]:
        del _calls[key]


atexit.register(_stop_running_calls)
os.register_at_fork(after_in_child=_after_fork_in_child)
