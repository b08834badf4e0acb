"""Remote pipelines (diffgentor.Remote) against a local OpenAI-compatible server (fake_openai.py):
the request the server receives, the served pixels, metadata, best effort, retries, the remote
error classes, interpreter exit, and that the API key stays out of every error and repr."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator, List, Type

import pytest

import diffgentor
from diffgentor import ErrorCode
from fake_openai import HEIGHT, PIXELS, REVISED, WIDTH, FakeOpenAI, error, success

KEY = "sk-test-Remote-0123456789abcdef"
MODEL = "dg-test-image-model"  # not an OpenAI model: sizes are sent as WxH, unchanged
PROMPT = "a red fox in the snow"
SERVED = diffgentor.RawImage(WIDTH, HEIGHT, PIXELS)


@pytest.fixture(autouse=True)
def no_remote_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Options not given come from DG_OPENAI_* / DG_GEMINI_*: none may leak in from the caller."""
    for name in list(os.environ):
        if name.startswith(("DG_OPENAI_", "DG_GEMINI_")):
            monkeypatch.delenv(name)


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI()
    yield fake
    fake.close()


def remote(server: FakeOpenAI, **options: Any) -> diffgentor.Remote:
    args: Any = dict(base_url=server.url, api_key=KEY, model=MODEL, max_retries=0)
    args.update(options)
    return diffgentor.Remote("openai", **args)


def assert_no_key(*texts: str) -> None:
    for text in texts:
        assert KEY not in text, text


def assert_error_hides_key(e: BaseException) -> None:
    assert_no_key(str(e), repr(e), "".join(traceback.format_exception_only(type(e), e)))


def test_generate_from_a_compatible_server(server: FakeOpenAI) -> None:
    seen: List[diffgentor.Progress] = []
    with remote(server, quality="low") as pipe:
        assert pipe.kind == "openai" and isinstance(pipe, diffgentor.BasePipeline)
        images = pipe.generate(PROMPT, width=48, height=32, output="raw", progress=seen.append)
    assert list(images) == [SERVED]  # the served PNG's pixels, decoded by the library
    assert images.seed == 0  # a service takes no seed
    assert images.metadata["model"] == MODEL
    assert images.metadata["revised_prompts"] == [REVISED]
    assert "ignored" not in images.metadata
    assert [(p.step, p.total, p.stage, p.stages) for p in seen] == [(1, 1, 1, 1)]

    (request,) = server.received
    assert (request.method, request.path) == ("POST", "/v1/images/generations")
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["content-type"].startswith("application/json")
    body = request.json()
    assert (body["prompt"], body["model"], body["n"]) == (PROMPT, MODEL, 1)
    assert body["size"] == "48x32" and body["quality"] == "low"


def test_several_images_as_numpy(server: FakeOpenAI) -> None:
    np = pytest.importorskip("numpy")
    with remote(server) as pipe:
        images = pipe.generate(PROMPT, num_images=2, output="numpy")
    assert server.received[0].json()["n"] == 2
    assert len(images) == 2 and images.metadata["revised_prompts"] == [REVISED, REVISED]
    for image in images:
        assert np.array_equal(image, SERVED.to_numpy())


def test_a_field_the_service_cannot_honour(server: FakeOpenAI) -> None:
    with remote(server) as pipe:
        with pytest.raises(diffgentor.UnsupportedError, match="negative_prompt") as info:
            pipe.generate(PROMPT, negative_prompt="blurry", output="raw")
        assert info.value.code is ErrorCode.UNSUPPORTED
        assert server.received == []  # refused up front: nothing sent

        images = pipe.generate(PROMPT, negative_prompt="blurry", seed=42, best_effort=True, output="raw")
        assert sorted(images.metadata["ignored"]) == ["negative_prompt", "seed"]
        assert list(images) == [SERVED]
        body = server.received[0].json()
        assert "negative_prompt" not in body and "seed" not in body and body["prompt"] == PROMPT

        # the same through the long-tail parameters
        via_extra = pipe.generate(PROMPT, negative_prompt="blurry", extra={"best_effort": True}, output="raw")
        assert via_extra.metadata["ignored"] == ["negative_prompt"]
        with pytest.raises(TypeError, match="best_effort"):
            pipe.generate(PROMPT, best_effort="yes")  # type: ignore[call-overload]


def test_server_error_is_remote_error(server: FakeOpenAI) -> None:
    server.queue(error(500, "the image service broke", "server_error"))
    with remote(server, max_retries=0) as pipe, pytest.raises(diffgentor.RemoteError) as info:
        pipe.generate(PROMPT, output="raw")
    e = info.value
    assert e.code is ErrorCode.REMOTE and int(e.code) == 10
    assert "HTTP 500" in str(e) and "the image service broke" in str(e)
    assert len(server.received) == 1  # max_retries=0: no second attempt


def test_rate_limit_then_success_honours_retry_after_ms(server: FakeOpenAI) -> None:
    server.queue(error(429, "slow down", "requests", "rate_limit_exceeded", headers={"retry-after-ms": "50"}))
    # A 30 s backoff: only the server's 50 ms keeps this test quick.
    with remote(server, max_retries=1, backoff_s=30) as pipe:
        started = time.monotonic()
        images = pipe.generate(PROMPT, output="raw")
        took = time.monotonic() - started
    assert list(images) == [SERVED]
    first, second = server.received
    assert second.at - first.at >= 0.04 and took < 10
    assert first.body == second.body


def test_rate_limit_without_retries(server: FakeOpenAI) -> None:
    server.queue(error(429, "slow down", "requests", "rate_limit_exceeded"))
    with remote(server, max_retries=0) as pipe, pytest.raises(diffgentor.RateLimitedError) as info:
        pipe.generate(PROMPT, output="raw")
    assert info.value.code is ErrorCode.RATE_LIMITED and "429" in str(info.value)


def test_slow_server_is_a_timeout(server: FakeOpenAI) -> None:
    server.queue(success(delay=3.0))
    with remote(server, timeout_s=0.3, max_retries=0) as pipe, pytest.raises(diffgentor.RemoteTimeoutError) as info:
        started = time.monotonic()
        pipe.generate(PROMPT, output="raw")
    assert time.monotonic() - started < 2.5
    assert info.value.code is ErrorCode.TIMEOUT and int(info.value.code) == 12


def test_moderation_block_is_refused(server: FakeOpenAI) -> None:
    server.queue(error(400, "Your request was rejected by the safety system.", "image_generation_user_error",
                       "moderation_blocked"))
    with remote(server) as pipe, pytest.raises(diffgentor.RefusedError) as info:
        pipe.generate(PROMPT, output="raw")
    assert info.value.code is ErrorCode.REFUSED


def test_bad_backends_and_options_fail_at_creation(server: FakeOpenAI) -> None:
    with pytest.raises(diffgentor.InvalidArgError, match="dall-e-pipe") as info:
        diffgentor.Remote("dall-e-pipe", base_url=server.url)
    assert info.value.code is ErrorCode.INVALID_ARG
    with pytest.raises(diffgentor.InvalidArgError, match="qualty"):
        remote(server, qualty="high")
    with pytest.raises(diffgentor.InvalidArgError, match="timeout_s"):
        remote(server, timeout_s=-1)
    with pytest.raises(diffgentor.InvalidArgError, match="max_retries"):
        remote(server, max_retries=-1)
    with pytest.raises(diffgentor.InvalidArgError, match="http"):
        remote(server, base_url="ftp://example.com/v1")
    with pytest.raises(TypeError, match="quality"):
        remote(server, quality=["high"])
    with pytest.raises(TypeError, match="backend"):
        diffgentor.Remote(42)  # type: ignore[arg-type]
    assert server.received == []


def test_unset_options_come_from_the_environment(server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DG_OPENAI_BASE_URL", server.url)
    monkeypatch.setenv("DG_OPENAI_API_KEY", KEY)
    monkeypatch.setenv("DG_OPENAI_MODEL", "model-from-the-environment")
    with diffgentor.Remote("openai", model=MODEL) as pipe:  # a keyword wins over the environment
        assert pipe.generate(PROMPT, output="raw").metadata["model"] == MODEL
    (request,) = server.received
    assert request.headers["authorization"] == f"Bearer {KEY}" and request.json()["model"] == MODEL


def test_the_key_appears_in_no_error_or_repr(server: FakeOpenAI) -> None:
    errors: List[BaseException] = []

    def expect(cls: Type[BaseException], fn: Callable[[], object]) -> None:
        with pytest.raises(cls) as info:
            fn()
        errors.append(info.value)

    # OpenAI quotes a wrong key back in its 401; the library must redact it.
    server.queue(error(401, f"Incorrect API key provided: {KEY}. Find your key at ...", "invalid_request_error",
                       "invalid_api_key"),
                 error(500, f"echo {KEY}", "server_error"),
                 success(delay=3.0))
    pipe = remote(server, timeout_s=0.3)
    assert_no_key(repr(pipe), repr(vars(pipe)), str(pipe))
    expect(diffgentor.RemoteError, lambda: pipe.generate(PROMPT, output="raw"))
    expect(diffgentor.RemoteError, lambda: pipe.generate(PROMPT, output="raw"))
    expect(diffgentor.RemoteTimeoutError, lambda: pipe.generate(PROMPT, output="raw"))
    expect(diffgentor.UnsupportedError, lambda: pipe.generate(PROMPT, seed=1, output="raw"))
    images = pipe.generate(PROMPT, output="raw")
    assert_no_key(repr(images.metadata), repr(images))
    pipe.close()
    expect(diffgentor.NullArgError, lambda: pipe.generate(PROMPT, output="raw"))
    expect(diffgentor.InvalidArgError, lambda: remote(server, qualty="high"))
    expect(diffgentor.InvalidArgError, lambda: remote(server, base_url=f"http://{KEY}@127.0.0.1/v1"))
    # Keys the C API cannot take: the message says why without quoting the key's text.
    expect(diffgentor.InvalidArgError, lambda: remote(server, api_key=KEY + "\0"))
    expect(diffgentor.InvalidArgError, lambda: remote(server, api_key=KEY + "\udc80"))
    expect(TypeError, lambda: remote(server, api_key=KEY.encode()))
    assert "redacted" in str(errors[0]), errors[0]  # the server's text is kept, minus the key
    for e in errors:
        assert_error_hides_key(e)
    assert len(errors) == 10


def test_lifecycle_and_kind(server: FakeOpenAI) -> None:
    with remote(server) as pipe:
        assert "openai" in repr(pipe) and server.url in repr(pipe) and MODEL in repr(pipe)
    assert pipe.closed and "closed" in repr(pipe) and pipe.kind == "openai"
    pipe.close()  # idempotent
    with pytest.raises(diffgentor.NullArgError, match="Remote is closed"):
        pipe.generate(PROMPT)
    with diffgentor.Remote("gemini", api_key=KEY) as gemini:  # nothing is sent before a generate
        assert gemini.kind == "gemini"
    assert server.received == []


def test_cancellation(server: FakeOpenAI) -> None:
    with remote(server) as pipe:
        with diffgentor.CancelToken() as token:
            token.cancel()
            with pytest.raises(diffgentor.CancelledError):
                pipe.generate(PROMPT, cancel=token, output="raw")
        assert server.received == []  # a raised token stops the request before it is sent
        with pytest.raises(diffgentor.CancelledError):
            pipe.generate(PROMPT, progress=lambda p: False, output="raw")

        def broken(p: diffgentor.Progress) -> None:
            raise ZeroDivisionError("from the callback")

        with pytest.raises(ZeroDivisionError, match="from the callback"):  # re-raised after the call
            pipe.generate(PROMPT, progress=broken, output="raw")


def test_threads_generate_at_once(server: FakeOpenAI) -> None:
    # Each request waits in the server until both are there: they are in flight together, which
    # needs the GIL released during the call.
    server.gate = threading.Barrier(2, timeout=10)
    results: List[Any] = []
    with remote(server, max_in_flight=2) as pipe:
        def work() -> None:
            try:
                results.append(pipe.generate(PROMPT, output="raw")[0])
            except BaseException as e:
                results.append(e)

        threads = [threading.Thread(target=work) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert results == [SERVED, SERVED]


# The main thread returns while a daemon thread is inside a remote generate; the binding's exit
# hook must cancel it (a retry wait stops at once) or wait for it (an HTTP call runs to its end).
EXIT_SCRIPT = r"""
import atexit, sys, threading, time

outcome = []

def report():
    # Registered before diffgentor is imported, so it runs after the binding's exit hook.
    worker.join(5)
    what = type(outcome[0]).__name__ if outcome else "still running"
    print(f"worker: {what} after {time.monotonic() - exiting[0]:.1f} s", file=sys.stderr, flush=True)

atexit.register(report)

sys.path.insert(0, sys.argv[1])
import diffgentor
from fake_openai import FakeOpenAI, error, success

mode = sys.argv[2]
server = FakeOpenAI()
if mode == "retry-wait":  # the worker sleeps a minute before its retry
    server.queue(error(429, "slow down", "requests", "rate_limit_exceeded", headers={"retry-after": "60"}))
else:  # the worker is inside the HTTP call for 2 s
    server.queue(success(delay=2.0))
pipe = diffgentor.Remote("openai", base_url=server.url, api_key="sk-exit-test", model="m", max_retries=1)

def work():
    try:
        pipe.generate("a red fox", progress=lambda p: None, output="raw")
    except BaseException as e:
        outcome.append(e)

worker = threading.Thread(target=work, daemon=True)
worker.start()
deadline = time.monotonic() + 30
while not server.received and time.monotonic() < deadline:
    time.sleep(0.01)
assert server.received, "the request never arrived"
exiting = [time.monotonic()]
"""


@pytest.mark.parametrize("mode, least, most", [("retry-wait", 0.0, 10.0), ("in-call", 1.0, 20.0)])
def test_exit_with_a_daemon_thread_in_a_remote_call(mode: str, least: float, most: float, tmp_path: Path) -> None:
    script = tmp_path / "remote_exit.py"
    script.write_text(EXIT_SCRIPT)
    run = subprocess.run([sys.executable, str(script), str(Path(__file__).parent), mode],
                         env=dict(os.environ), capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "still running" not in run.stderr, run.stderr
    line = [l for l in run.stderr.splitlines() if l.startswith("worker: ")]
    assert line and line[0].startswith("worker: CancelledError after "), run.stderr
    waited = float(line[0].split()[-2])
    assert least <= waited <= most, run.stderr
