"""Python tools: an operator's ``package.module:function`` called with the arguments and the call.

The spec string follows the entry-point object reference syntax of the packaging specifications
("Entry points specification": ``module:attr.attr``). The function is called as
``function(arguments, context)``. A coroutine function runs in the calling task, so cancelling the
tool (its timeout, the call ending) cancels it at its next checkpoint. A plain function runs in a
worker thread so a slow one never stalls the calls sharing the event loop; a thread cannot be
interrupted, so on cancellation it is abandoned to finish on its own and its result is dropped.
Those threads come from a limiter of their own, so runaway tools cannot starve trio's default
thread pool, which name resolution for every call's connections also uses.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import re
from collections.abc import Callable, Mapping
from typing import Any, Final

import trio

TOOL_THREADS: Final = 32
_SPEC: Final = re.compile(r"(?P<module>[\w.]+):(?P<attributes>[\w.]+)")
_limiter: trio.lowlevel.RunVar[trio.CapacityLimiter] = trio.lowlevel.RunVar("python_tool_threads")


def load_callable(spec: str) -> Callable[..., Any]:
    """Import ``package.module:function[.attr...]``; ValueError says what is wrong with `spec`."""
    match = _SPEC.fullmatch(spec.strip())
    if match is None or any(not part for part in re.split(r"[.:]", spec.strip())):
        raise ValueError(f"{spec!r} is not of the form 'package.module:function'")
    module_name, attributes = match["module"], match["attributes"]
    try:
        target: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        missing = error.name or ""
        if module_name == missing or module_name.startswith(f"{missing}."):
            raise ValueError(f"{spec}: there is no module named {missing!r}") from None
        raise ValueError(f"{spec}: importing {module_name} failed: {error}") from error
    except Exception as error:
        raise ValueError(
            f"{spec}: importing {module_name} raised {type(error).__name__}: {error}"
        ) from error
    path = module_name
    for attribute in attributes.split("."):
        if not hasattr(target, attribute):
            raise ValueError(f"{spec}: {path} has no attribute {attribute!r}")
        target = getattr(target, attribute)
        path = f"{path}.{attribute}"
    if not callable(target):
        raise ValueError(f"{spec}: {path} is a {type(target).__name__}, not a callable")
    function: Callable[..., Any] = target
    return function


def is_async_callable(function: Callable[..., Any]) -> bool:
    """Whether calling `function` gives a coroutine (coroutine functions and async __call__)."""
    return inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(
        type(function).__call__
    )


async def call_python(
    function: Callable[..., Any],
    arguments: Mapping[str, Any],
    context: Mapping[str, Any],
    *,
    limiter: trio.CapacityLimiter | None = None,
) -> str:
    """Run ``function(arguments, context)`` and give its result as text; its exceptions propagate.

    A str is returned as it is, None as "", anything else as JSON (unknown types as their str).
    Only ``async def`` functions and objects with an ``async def __call__`` are awaited; a plain
    function that returns a coroutine instead is refused by trio with a TypeError.
    """
    if is_async_callable(function):
        result = await function(arguments, context)
    else:
        result = await trio.to_thread.run_sync(
            functools.partial(function, arguments, context),
            abandon_on_cancel=True,
            limiter=limiter if limiter is not None else _tool_threads(),
        )
    return result_text(result)


def result_text(result: Any) -> str:
    """What the model is told a Python tool returned."""
    if result is None:
        return ""
    if isinstance(result, str):
        return result
    return json.dumps(result, ensure_ascii=False, default=str)


def _tool_threads() -> trio.CapacityLimiter:
    try:
        return _limiter.get()
    except LookupError:
        limiter = trio.CapacityLimiter(TOOL_THREADS)
        _limiter.set(limiter)
        return limiter


__all__ = ["TOOL_THREADS", "call_python", "is_async_callable", "load_callable", "result_text"]
