"""Contract stub for the OpenAI Images client (used by tests/remote_openai.rs).

Validates every request against the OpenAI Images spec subset with openapi-core and answers
  400 with the violations (as an OpenAI error object) when the request breaks the spec, or
  200 with a fixed, spec-valid ImagesResponse (one 1x1 PNG as b64_json) when it conforms.

Usage: openai_proxy.py SPEC.yaml [PORT]      (PORT 0 or absent: any free port)
Prints "listening on PORT" once ready; serves until its stdin closes (the test ends or dies).

Multipart bodies: openapi-core 0.23 neither casts form fields to their schema types ("2" stays a
string against `n: integer`) nor accepts uploaded bytes as OAS 3.1 `type: string` (it rejects
`image` and `mask` whatever they hold). A real server parses the form first, so this stub does
too: text parts are cast to the property's scalar type where they parse as one, file parts reach
openapi-core as text, and what the schema says of files is checked here instead (binary
properties must be file parts, the mask a PNG, images PNG, JPEG or WebP).
"""

import base64
import json
import re
import struct
import sys
import threading
import zlib
from email.message import Message
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import yaml
from openapi_core import Config, OpenAPI
from openapi_core.testing import MockRequest
from werkzeug.datastructures import ImmutableMultiDict

IMAGE_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"RIFF")


def tiny_png() -> bytes:
    """A 1x1 RGB PNG, built by hand so the stub needs no imaging library."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00\x10\x20\x30")
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def resolve(spec: dict, schema: dict) -> dict:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def form_properties(spec: dict) -> tuple:
    """Scalar types and binary-ness of every multipart body property in the spec."""
    types, binary = {}, set()

    def walk(name: str, schema: dict) -> None:
        schema = resolve(spec, schema)
        if schema.get("format") == "binary":
            binary.add(name)
        kind = schema.get("type")
        for k in kind if isinstance(kind, list) else [kind]:
            if k in ("integer", "number", "boolean"):
                types.setdefault(name, set()).add(k)
        for key in ("anyOf", "oneOf", "allOf"):
            for sub in schema.get(key, []):
                walk(name, sub)
        if "items" in schema:
            walk(name, schema["items"])

    for path in spec["paths"].values():
        for operation in path.values():
            content = (operation.get("requestBody") or {}).get("content", {})
            form = content.get("multipart/form-data")
            if form:
                for name, prop in resolve(spec, form["schema"]).get("properties", {}).items():
                    walk(name, prop)
    return types, binary


def form_parts(body: bytes, content_type: str) -> list:
    """(name, filename or None, part content type, bytes) of each part."""
    message = BytesParser().parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    if not message.is_multipart():
        return []
    parts = []
    for part in message.get_payload():
        assert isinstance(part, Message)
        name = part.get_param("name", header="content-disposition")
        filename = part.get_param("filename", header="content-disposition")
        parts.append((name, filename, part.get_content_type(), part.get_payload(decode=True) or b""))
    return parts


def cast(text: str, kinds: set):
    """A form field's text as the property's scalar type; left as text when it does not parse."""
    if "integer" in kinds and re.fullmatch(r"-?\d+", text):
        return int(text)
    if "number" in kinds and re.fullmatch(r"-?\d+(\.\d+)?([eE][-+]?\d+)?", text):
        return float(text)
    if "boolean" in kinds and text in ("true", "false"):
        return text == "true"
    return text


def build(spec_path: str, base_url: str) -> tuple:
    with open(spec_path, encoding="utf-8") as f:
        spec = yaml.safe_load(f)
    # The subset names a fixed server; validate paths under the address actually served.
    spec["servers"] = [{"url": base_url}]
    types, binary = form_properties(spec)

    def form_loads(value: bytes, **parameters: str):
        boundary = parameters.get("boundary", "")
        items = []
        for name, filename, _, payload in form_parts(value, f'multipart/form-data; boundary="{boundary}"'):
            if filename is not None:
                items.append((name, payload.decode("latin-1")))
            else:
                items.append((name, cast(payload.decode("utf-8", "replace"), types.get(name, set()))))
        return ImmutableMultiDict(items)

    config = Config(extra_media_type_deserializers={"multipart/form-data": form_loads})
    return OpenAPI.from_dict(spec, config=config), binary


def file_errors(parts: list, binary: set) -> list:
    """What the spec says of uploads and openapi-core cannot check (see the module notes)."""
    errors = []
    for name, filename, _, payload in parts:
        base = name[:-2] if name.endswith("[]") else name
        if base in binary and filename is None:
            errors.append(f"{name}: must be a file part (with a filename)")
        if base not in binary and filename is not None:
            errors.append(f"{name}: is a file part but the schema wants a value")
        if base == "mask" and not payload.startswith(IMAGE_SIGNATURES[0]):
            errors.append("mask: must be a PNG")
        if base == "image" and not payload.startswith(IMAGE_SIGNATURES):
            errors.append(f"{name}: must be a PNG, JPEG or WebP image")
    return errors


def make_handler(openapi: OpenAPI, binary: set, host_url: str):
    image = base64.b64encode(tiny_png()).decode("ascii")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # keep test output quiet
            pass

        def answer(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode("utf-8")
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def handle_any(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            content_type = self.headers.get("content-type") or ""
            path, _, query = self.path.partition("?")
            request = MockRequest(
                host_url,
                self.command,
                path,
                args=dict(p.split("=", 1) for p in query.split("&") if "=" in p),
                headers=dict(self.headers.items()),
                data=body,
                content_type=content_type,
            )
            errors = []
            for error in openapi.iter_request_errors(request):
                # Schema errors hang below the wrapper; they say which field broke which rule.
                inner, cause = [], error
                while cause is not None:
                    inner += getattr(cause, "schema_errors", None) or []
                    cause = cause.__cause__
                if inner:
                    errors += [f"{'/'.join(map(str, e.path)) or '<body>'}: {e.message}" for e in inner]
                else:
                    errors.append(f"{type(error).__name__}: {error}")
            if content_type.startswith("multipart/form-data"):
                errors += file_errors(form_parts(body, content_type), binary)
            if errors:
                self.answer(
                    400,
                    {
                        "error": {
                            "message": "contract violation: " + "; ".join(errors),
                            "type": "invalid_request_error",
                            "param": None,
                            "code": "contract_violation",
                        }
                    },
                )
                return
            if path.endswith("/models"):
                self.answer(200, {"object": "list", "data": []})
                return
            self.answer(
                200,
                {
                    "created": 1767225600,
                    "data": [{"b64_json": image, "revised_prompt": "validated"}],
                    "output_format": "png",
                },
            )

        do_GET = handle_any
        do_POST = handle_any

    return Handler


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: openai_proxy.py SPEC.yaml [PORT]")
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    server = ThreadingHTTPServer(("127.0.0.1", port), BaseHTTPRequestHandler)
    host_url = f"http://127.0.0.1:{server.server_address[1]}"
    openapi, binary = build(sys.argv[1], host_url + "/v1")
    server.RequestHandlerClass = make_handler(openapi, binary, host_url)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"listening on {server.server_address[1]}", flush=True)
    sys.stdin.read()
    server.shutdown()


if __name__ == "__main__":
    main()
