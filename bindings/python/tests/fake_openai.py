"""A scripted OpenAI-compatible Images server for the remote tests: the standard library's
http.server on a thread, listening on 127.0.0.1 (a port the system picks). It records every request
and answers them in the order queued (then with :func:`success`), in the documented shapes:
``{"created": 1, "data": [{"b64_json": ..., "revised_prompt": ...}]}`` and
``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Deque, Dict, List, Optional

from diffgentor._images import encode_png

#: The served image: 3x2, every pixel different, so a swapped row or channel shows.
WIDTH, HEIGHT = 3, 2
PIXELS = bytes([255, 0, 0, 0, 255, 0, 0, 0, 255, 10, 20, 30, 200, 100, 50, 1, 2, 254])
PNG = encode_png(WIDTH, HEIGHT, PIXELS)
REVISED = "A red fox standing in fresh snow, as the server rewrote it"


class Answer:
    """One scripted answer: status, JSON body (or raw bytes; None: the served PNG once per image
    the request asks for, with ``revised`` as each revised prompt), headers, a delay before it."""

    def __init__(self, status: int, body: Any = None, headers: Optional[Dict[str, str]] = None,
                 delay: float = 0.0, revised: str = REVISED) -> None:
        self.status = status
        self.body = body
        self.headers = headers or {}
        self.delay = delay
        self.revised = revised


def success(revised: str = REVISED, delay: float = 0.0) -> Answer:
    return Answer(200, None, delay=delay, revised=revised)


def error(status: int, message: str, kind: str, code: Optional[str] = None,
          headers: Optional[Dict[str, str]] = None) -> Answer:
    return Answer(status, {"error": {"message": message, "type": kind, "param": None, "code": code}}, headers)


class Received:
    """A request as the server saw it."""

    def __init__(self, method: str, path: str, headers: Dict[str, str], body: bytes) -> None:
        self.at = time.monotonic()
        self.method = method
        self.path = path
        self.headers = headers  # names in lower case
        self.body = body

    def json(self) -> Dict[str, Any]:
        value = json.loads(self.body)
        assert isinstance(value, dict), value
        return value


class FakeOpenAI:
    def __init__(self) -> None:
        self.received: List[Received] = []
        self._answers: Deque[Answer] = deque()
        self._lock = threading.Lock()
        #: When set, every request waits here before it is answered (requests in flight together).
        self.gate: Optional[threading.Barrier] = None
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                seen = Received("POST", self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                with fake._lock:
                    fake.received.append(seen)
                    answer = fake._answers.popleft() if fake._answers else success()
                gate = fake.gate
                if gate is not None:
                    try:
                        gate.wait()
                    except threading.BrokenBarrierError:
                        answer = error(500, "the requests did not arrive together", "test_error")
                time.sleep(answer.delay)
                payload = fake._payload(answer, seen)
                try:
                    self.send_response(answer.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    for name, value in answer.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:  # the client gave up (a timeout test): nothing to answer
                    pass

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: pytest shows the assertions

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.block_on_close = False  # close() must not wait for a deliberately slow answer
        # A short poll interval: shutdown() waits up to one, at the end of every test.
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="fake-openai",
                                        daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """The base URL to give the client: requests go to URL/images/generations."""
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def queue(self, *answers: Answer) -> None:
        with self._lock:
            self._answers.extend(answers)

    @staticmethod
    def _payload(answer: Answer, seen: Received) -> bytes:
        if isinstance(answer.body, bytes):
            return answer.body
        body = answer.body
        if body is None:
            try:
                n = int(seen.json().get("n", 1))
            except ValueError:  # not JSON: answer one image, and let the test's checks say why
                n = 1
            item = {"b64_json": base64.b64encode(PNG).decode("ascii"), "revised_prompt": answer.revised}
            body = {"created": 1, "data": [item] * n}
        return json.dumps(body).encode("utf-8")

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
