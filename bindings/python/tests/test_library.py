"""Finding the library, versions, the prototype table, the command line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import diffgentor
from diffgentor import _native
from conftest import DIGITS, HEADER, REPO


def test_every_header_function_has_a_prototype() -> None:
    if not HEADER.exists():
        pytest.skip("include/diffgentor.h not in this checkout")
    declared = set(re.findall(r"^(?:const\s+)?\w+\s*\**\s*(dg_\w+)\(", HEADER.read_text(), re.M))
    assert len(declared) > 40
    assert declared == set(_native.PROTOTYPES)


def test_versions() -> None:
    assert diffgentor.library_version() == diffgentor.__version__
    cargo = REPO / "Cargo.toml"
    if cargo.exists():
        version = re.search(r'^version = "(.*)"$', cargo.read_text(), re.M)
        assert version and version.group(1) == diffgentor.__version__
    assert os.path.basename(diffgentor.library_path()).startswith("libdiffgentor.so")


def _python(code: str, **env: str) -> "subprocess.CompletedProcess[str]":
    full = {**os.environ, **env}
    return subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, timeout=120)


def test_missing_library_raises_library_not_found(tmp_path: Path) -> None:
    code = (
        "import diffgentor\n"
        "try:\n"
        "    diffgentor.Runtime()\n"
        "except diffgentor.LibraryNotFoundError as e:\n"
        "    assert isinstance(e, diffgentor.Error) and e.code == diffgentor.ErrorCode.BACKEND\n"
        "    print('MESSAGE', e)\n"
        "    print('TRIED', e.tried)\n"
    )
    missing = tmp_path / "nowhere"
    run = _python(code, DG_LIBRARY_PATH=str(missing))
    assert run.returncode == 0, run.stderr
    assert "MESSAGE libdiffgentor not found" in run.stdout
    assert str(missing) in run.stdout and "DG_LIBRARY_PATH" in run.stdout
    not_a_library = tmp_path / "libdiffgentor.so.0"
    not_a_library.write_text("not a library")
    run = _python(code, DG_LIBRARY_PATH=str(tmp_path))
    assert run.returncode == 0, run.stderr
    assert str(not_a_library) in run.stdout


def test_discovery_order(tmp_path: Path) -> None:
    lib = Path(diffgentor.library_path())
    # DG_LIBRARY_PATH: a directory or a file, and then nothing else
    assert _native.candidates(str(lib.parent), "/bundled") == [
        (f"DG_LIBRARY_PATH={lib.parent}", [str(lib.parent / n) for n in _native.LIBRARY_NAMES])
    ]
    assert _native.candidates(str(lib), "/bundled")[0][1] == [str(lib)]
    # unset: the bundled copy first, then the system loader
    groups = _native.candidates(None, "/bundled")
    assert groups[0][1] == [os.path.join("/bundled", n) for n in _native.LIBRARY_NAMES]
    assert groups[1][1][0] == "libdiffgentor.so.0"
    # a bundled copy is found and loaded
    bundled = tmp_path / "lib"
    bundled.mkdir()
    (bundled / "libdiffgentor.so.0").symlink_to(lib)
    loaded, path = _native.load(None, str(bundled))
    assert path == str(bundled / "libdiffgentor.so.0")
    assert loaded.dg_version().decode() == diffgentor.__version__


def test_onnxruntime_package_discovery(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A stand-in for the pip-installed onnxruntime package (the platform wheel's dependency); it
    # is located, never imported. test.sh's wheel step runs the real one end to end.
    site = tmp_path / "site"
    capi = site / "onnxruntime" / "capi"
    capi.mkdir(parents=True)
    (site / "onnxruntime" / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    for name in ("libonnxruntime.so.1.31.1", "libonnxruntime_providers_shared.so"):
        (capi / name).write_bytes(b"")
    monkeypatch.delitem(sys.modules, "onnxruntime", raising=False)
    monkeypatch.syspath_prepend(str(site))
    found = str(capi / "libonnxruntime.so.1.31.1")
    assert _native.onnxruntime_package_library() == found
    diffgentor_dir = tmp_path / "lib"
    diffgentor_dir.mkdir()
    library = str(diffgentor_dir / "libdiffgentor.so.0")
    assert _native.default_ort_library(library, {}) == found
    assert _native.default_ort_library(library, {"DG_ORT_DYLIB_PATH": ""}) == found  # empty = unset, as in the library
    # the library's own rules keep precedence: the variables (even naming a missing file) ...
    assert _native.default_ort_library(library, {"DG_ORT_DYLIB_PATH": "/missing/libonnxruntime.so"}) is None
    assert _native.default_ort_library(library, {"ORT_DYLIB_PATH": "/opt/ort/libonnxruntime.so"}) is None
    # ... and a copy next to libdiffgentor
    (diffgentor_dir / "libonnxruntime.so.1").write_bytes(b"")
    assert _native.default_ort_library(library, {}) is None
    # a package without capi/libonnxruntime.so.*: nothing, the library then tries the system loader
    for name in os.listdir(capi):
        os.remove(capi / name)
    assert _native.onnxruntime_package_library() is None


def test_command_line(tmp_path: Path) -> None:
    help_run = subprocess.run([sys.executable, "-m", "diffgentor", "--help"], capture_output=True, text=True, timeout=60)
    assert help_run.returncode == 0 and "DG_LIBRARY_PATH" in help_run.stdout
    out = tmp_path / "seven.png"
    run = subprocess.run(
        [sys.executable, "-m", "diffgentor", str(DIGITS), "a handwritten digit 7", "--seed", "42",
         "--steps", "5", "--set", "guidance_scale=3.0", "-o", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "step 5/5" in run.stderr
    bad = subprocess.run([sys.executable, "-m", "diffgentor", str(tmp_path / "none"), "x"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "MODEL" in bad.stderr


def test_command_line_names_several_images_like_dg(tmp_path: Path) -> None:
    out = tmp_path / "seven.png"
    run = subprocess.run(
        [sys.executable, "-m", "diffgentor", str(DIGITS), "a handwritten digit 7", "--seed", "42",
         "--steps", "2", "--num-images", "2", "-q", "-o", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seven_00.png", "seven_01.png"]
    assert all((tmp_path / n).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for n in ("seven_00.png", "seven_01.png"))
