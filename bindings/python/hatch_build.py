"""Hatchling build hook: the platform wheel (`make wheel`, docs/bindings.md).

Without DG_WHEEL_LIBRARY this does nothing: `pip install ./bindings/python` stays the pure
`py3-none-any` binding that finds libdiffgentor through DG_LIBRARY_PATH or the system loader.

With it, the wheel bundles that file as diffgentor/lib/libdiffgentor.so.0 (the name the binding
loads first, its SONAME; wheels cannot hold symlinks), is tagged `py3-none-DG_WHEEL_PLATFORM`
(the binding is ctypes, not a CPython extension, so any Python 3 but only that platform) and
requires `onnxruntime==DG_WHEEL_ORT_VERSION`, whose capi/libonnxruntime.so.* the binding then
uses when no other ONNX Runtime is named. The Makefile derives the platform tag from the glibc
symbol versions the library needs; nothing here guesses it.
"""

from __future__ import annotations

import os
import re
from typing import Any, Dict

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

BUNDLED_NAME = "diffgentor/lib/libdiffgentor.so.0"


class WheelBuildHook(BuildHookInterface):  # type: ignore[type-arg]  # generic only in newer hatchling
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: Dict[str, Any]) -> None:
        if self.target_name != "wheel" or version == "editable":
            return
        library = os.environ.get("DG_WHEEL_LIBRARY")
        if not library:
            return
        platform = os.environ.get("DG_WHEEL_PLATFORM", "")
        ort_version = os.environ.get("DG_WHEEL_ORT_VERSION", "")
        if not os.path.isfile(library):
            raise RuntimeError(
                f"DG_WHEEL_LIBRARY={library}: no such file; build it first (`make c-lib`), "
                "or use `make wheel`, which does")
        if not re.fullmatch(r"(manylinux_\d+_\d+|musllinux_\d+_\d+|linux)_[a-z0-9_]+", platform):
            raise RuntimeError(f"DG_WHEEL_PLATFORM={platform!r} is not a Linux platform tag "
                               "such as manylinux_2_34_x86_64")
        if not re.fullmatch(r"\d+\.\d+\.\d+", ort_version):
            raise RuntimeError(f"DG_WHEEL_ORT_VERSION={ort_version!r} is not a version like 1.31.1")
        build_data["force_include"][os.path.abspath(library)] = BUNDLED_NAME
        build_data["pure_python"] = False
        build_data["tag"] = f"py3-none-{platform}"
        build_data["dependencies"].append(f"onnxruntime=={ort_version}")
