"""LoRA stacks for the C API: ``Pipeline.load_lora`` and friends (``dg_pipeline_lora_*``) and the
``loras=`` argument of ``generate`` (``dg_params_clear_loras`` + ``dg_params_add_lora``)."""

from __future__ import annotations

import ctypes
import json
from typing import Any, Dict, List, Sequence, Tuple, Union

from . import _native
from ._errors import ErrorCode, InvalidArgError

#: One adapter of a stack: its name (strength 1.0) or ``(name, strength)``.
LoraSpec = Union[str, Tuple[str, float]]
#: A LoRA stack, in order: ``[("style", 0.8), ("hero", -0.4)]`` or ``["style"]``.
LoraStack = Sequence[LoraSpec]


def normalize(stack: Any, what: str) -> List[Tuple[str, float]]:
    """``stack`` as (name, strength) pairs; TypeError for anything that is not a stack."""
    if isinstance(stack, (str, bytes)) or not isinstance(stack, Sequence):
        raise TypeError(f"{what} must be a sequence of names or (name, strength) pairs, "
                        f"not {type(stack).__name__}")
    pairs: List[Tuple[str, float]] = []
    for item in stack:
        if isinstance(item, str):
            name, strength = item, 1.0
        elif isinstance(item, tuple) and len(item) == 2:
            name, strength = item
        else:
            raise TypeError(f"{what}: each item must be a name or a (name, strength) pair, not {item!r}")
        if not isinstance(name, str):
            raise TypeError(f"{what}: a LoRA name must be a str, not {type(name).__name__}")
        if isinstance(strength, bool) or not isinstance(strength, (int, float)):
            raise TypeError(f"{what}: the strength of {name!r} must be a number, not {type(strength).__name__}")
        pairs.append((name, float(strength)))
    return pairs


def apply(lib: Any, params: int, stack: LoraStack) -> None:
    """Makes ``stack`` the request's whole stack (empty: no LoRA, whatever the default stack)."""
    pairs = normalize(stack, "loras")
    _native.check(lib.dg_params_clear_loras(params))
    for name, strength in pairs:
        _native.check(lib.dg_params_add_lora(params, _native.encode(name, "LoRA name"), strength))


def load(lib: Any, pipeline: int, name: str, path: Any, allow_partial: bool) -> None:
    if not isinstance(allow_partial, bool):
        raise TypeError(f"allow_partial must be a bool, not {type(allow_partial).__name__}")
    flags = _native.LORA_ALLOW_PARTIAL if allow_partial else 0
    _native.check(lib.dg_pipeline_lora_load(
        pipeline, _native.encode(name, "LoRA name"), _native.encode(path, "LoRA path"), flags))


def unload(lib: Any, pipeline: int, name: str) -> None:
    _native.check(lib.dg_pipeline_lora_unload(pipeline, _native.encode(name, "LoRA name")))


def listing(lib: Any, pipeline: int) -> Dict[str, Any]:
    """``dg_pipeline_lora_list``'s JSON object, parsed (the C string is freed here)."""
    out = ctypes.c_void_p()
    _native.check(lib.dg_pipeline_lora_list(pipeline, ctypes.byref(out)))
    try:
        text = ctypes.string_at(out.value) if out.value else b"{}"
    finally:
        lib.dg_string_free(out)
    parsed = json.loads(text.decode("utf-8"))
    assert isinstance(parsed, dict), "dg_pipeline_lora_list returned no JSON object"
    return parsed


def set_default(lib: Any, pipeline: int, stack: LoraStack) -> None:
    items = []
    for name, strength in normalize(stack, "stack"):
        if not name or any(c in name for c in ":;,"):
            raise InvalidArgError(f"LoRA name {name!r} must be 1 to 128 letters, digits, '_', '-' or '.'",
                                  ErrorCode.INVALID_ARG)
        items.append(f"{name}:{strength!r}")
    _native.check(lib.dg_pipeline_lora_set_default(pipeline, _native.encode(";".join(items), "stack")))
