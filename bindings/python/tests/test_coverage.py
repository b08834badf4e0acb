"""The binding reaches the whole C ABI: every function include/diffgentor.h declares is not only
given a ctypes prototype (_native.PROTOTYPES) but also used by the package's code.

"Used" follows the binding's convention, found with the ast module (so comments, docstrings and
the prototype table's string keys do not count): an attribute ``<library>.dg_name`` that is either
called (``lib.dg_images_count(images)``, ``l.dg_error_code(err)``) or handed as a callable to a
call that invokes it (``_new(lib.dg_params_new)``, ``self._own(ptr, lib.dg_pipeline_free, ...)``,
``functools.partial(lib.dg_cancel_token_cancel, token)``)."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Dict, Set

import pytest

import diffgentor
from diffgentor import _native
from conftest import HEADER

#: Header functions the package deliberately does not use, each with the reason. Empty: every
#: function of the C ABI is reachable from the Python API. (An entry here must name a function
#: the header declares and the package does not use; test_allow_list_is_current checks both.)
ALLOWED_UNUSED: Dict[str, str] = {}

PACKAGE = Path(diffgentor.__file__).resolve().parent


def _declared() -> Set[str]:
    if not HEADER.exists():
        pytest.skip("include/diffgentor.h not in this checkout")
    # Every `dg_*(` that starts a declaration (return type, name, parenthesis), as cbindgen writes them.
    names = set(re.findall(r"^(?:const\s+)?\w+\s*\**\s*(dg_\w+)\(", HEADER.read_text(), re.M))
    assert len(names) > 40, "the header parse found too few functions"
    return names


def _used() -> Dict[str, Set[str]]:
    """dg_* name -> the package's files that call it (or pass it to a call)."""
    used: Dict[str, Set[str]] = {}
    sources = sorted(PACKAGE.glob("*.py"))
    assert sources, f"no Python files in {PACKAGE}"
    for path in sources:
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            for candidate in [node.func, *node.args, *(k.value for k in node.keywords)]:
                if isinstance(candidate, ast.Attribute) and candidate.attr.startswith("dg_"):
                    used.setdefault(candidate.attr, set()).add(path.name)
    return used


def test_every_header_function_is_called_by_the_package() -> None:
    declared = _declared()
    assert declared == set(_native.PROTOTYPES), "prototype table and header disagree"
    used = _used()
    missing = sorted(declared - set(used) - set(ALLOWED_UNUSED))
    assert not missing, f"declared in include/diffgentor.h but never called by the package: {missing}"
    unknown = sorted(set(used) - declared)
    assert not unknown, f"the package calls functions the header does not declare: {unknown}"


def test_allow_list_is_current() -> None:
    declared, used = _declared(), _used()
    for name, reason in ALLOWED_UNUSED.items():
        assert name in declared, f"{name} is allowed to be unused but the header no longer declares it"
        assert name not in used, f"{name} is allowed to be unused but the package calls it: drop the entry"
        assert reason.strip(), f"{name} needs a reason"


def test_the_scan_sees_calls_and_callables() -> None:
    # The scanner itself: a direct call, a callable handed to a call, and the prototype table's
    # string keys (which must not count).
    used = _used()
    assert "_runtime.py" in used["dg_pipeline_generate"]  # lib.dg_pipeline_generate(...)
    assert "_runtime.py" in used["dg_runtime_free"]  # self._own(ptr, lib.dg_runtime_free, ...)
    assert "_native.py" in used["dg_error_free"]  # l.dg_error_free(err)
    assert all("_native.py" not in files for name, files in used.items()
               if name not in ("dg_abi_version", "dg_error_code", "dg_error_message", "dg_error_free"))
