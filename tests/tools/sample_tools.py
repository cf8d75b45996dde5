"""Tool functions for tests, loaded by spec (``tests.tools.sample_tools:lookup_order``).

The end-to-end tests configure them as ``kind = "python"`` tools, so each follows the Python tool
contract: ``function(arguments, context)`` returns what the model is told.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import trio

ORDERS = {"A-42": {"status": "shipped", "eta": "Tuesday"}}


def lookup_order(arguments: Mapping[str, Any], context: Mapping[str, Any]) -> dict[str, Any]:
    """Sync: an order's status, with the caller it was looked up for."""
    number = str(arguments.get("order_number", ""))
    found = ORDERS.get(number, {"status": "unknown"})
    return {"order_number": number, **found, "caller": context.get("caller", "")}


async def slow_tool(arguments: Mapping[str, Any], context: Mapping[str, Any]) -> dict[str, Any]:
    """Async: sleeps ``arguments["seconds"]``, then says how long it took."""
    seconds = float(arguments.get("seconds", 1.0))
    await trio.sleep(seconds)
    return {"slept_s": seconds}


def broken_tool(arguments: Mapping[str, Any], context: Mapping[str, Any]) -> str:
    """Sync: always fails, as a tool whose backend is down does."""
    raise RuntimeError("database down")


def which_thread(arguments: Mapping[str, Any], context: Mapping[str, Any]) -> str:
    """Sync: the name of the thread it ran in."""
    return threading.current_thread().name


def wait_for_event(arguments: Mapping[str, Any], context: Mapping[str, Any]) -> str:
    """Sync and slow: blocks until ``context["release"]`` (a threading.Event) is set."""
    release: threading.Event = context["release"]
    release.wait(timeout=10)
    return "released"


def nothing(arguments: Mapping[str, Any], context: Mapping[str, Any]) -> None:
    return None


def echo(arguments: Mapping[str, Any], context: Mapping[str, Any]) -> str:
    return str(arguments.get("text", ""))


class Namespace:
    """For specs that reach through an attribute: ``sample_tools:Namespace.greet``."""

    @staticmethod
    def greet(arguments: Mapping[str, Any], context: Mapping[str, Any]) -> str:
        return f"hello {arguments.get('name', '')}"

    not_callable = 42


class AsyncCallable:
    """An object whose ``__call__`` is a coroutine function."""

    async def __call__(self, arguments: Mapping[str, Any], context: Mapping[str, Any]) -> str:
        await trio.lowlevel.checkpoint()
        return "called"


async_callable = AsyncCallable()
