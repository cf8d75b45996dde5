"""Python tools: loading ``module:function`` specs and calling sync and async tool functions."""

from __future__ import annotations

import datetime
import decimal
import functools
import itertools
import threading
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from bridge.tools.python_tool import call_python, load_callable, result_text
from tests.tools import sample_tools

GUARD_S = 10.0
CONTEXT = {"call_id": "c-1", "caller": "+15550100001", "called": "+15550100002"}
_module_numbers = itertools.count()


def write_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str) -> str:
    """A fresh importable module holding `source`; its name (unique, so no import cache hits)."""
    name = f"bridge_test_tool_{next(_module_numbers)}"
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


# ---- load_callable ---------------------------------------------------------------------------


def test_a_spec_names_a_module_and_a_function() -> None:
    assert load_callable("tests.tools.sample_tools:lookup_order") is sample_tools.lookup_order


def test_a_spec_can_reach_through_attributes() -> None:
    greet = load_callable("tests.tools.sample_tools:Namespace.greet")
    assert greet({"name": "Ann"}, {}) == "hello Ann"


@pytest.mark.parametrize(
    "spec",
    ["tests.tools.sample_tools", "tests.tools.sample_tools:", ":lookup_order", "a..b:f", "a:b:c"],
)
def test_a_spec_without_a_module_and_a_function_is_refused(spec: str) -> None:
    with pytest.raises(ValueError, match=r"is not of the form 'package\.module:function'"):
        load_callable(spec)


def test_a_missing_module_is_named() -> None:
    with pytest.raises(ValueError) as caught:
        load_callable("no_such_package.tools:lookup")
    assert str(caught.value) == (
        "no_such_package.tools:lookup: there is no module named 'no_such_package'"
    )


def test_a_missing_submodule_is_named() -> None:
    with pytest.raises(ValueError) as caught:
        load_callable("tests.tools.no_such_module:lookup")
    assert str(caught.value) == (
        "tests.tools.no_such_module:lookup: there is no module named 'tests.tools.no_such_module'"
    )


def test_a_module_whose_own_import_fails_says_which_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = write_module(tmp_path, monkeypatch, "import crm_client_not_installed\n")
    with pytest.raises(ValueError) as caught:
        load_callable(f"{name}:lookup")
    assert str(caught.value) == (
        f"{name}:lookup: importing {name} failed: No module named 'crm_client_not_installed'"
    )


def test_a_module_that_raises_on_import_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = write_module(tmp_path, monkeypatch, "raise RuntimeError('no CRM_URL set')\n")
    with pytest.raises(ValueError) as caught:
        load_callable(f"{name}:lookup")
    assert (
        str(caught.value) == f"{name}:lookup: importing {name} raised RuntimeError: no CRM_URL set"
    )


def test_a_missing_attribute_is_named() -> None:
    with pytest.raises(ValueError) as caught:
        load_callable("tests.tools.sample_tools:Namespace.missing")
    assert str(caught.value) == (
        "tests.tools.sample_tools:Namespace.missing: "
        "tests.tools.sample_tools.Namespace has no attribute 'missing'"
    )


def test_something_not_callable_is_refused() -> None:
    with pytest.raises(ValueError) as caught:
        load_callable("tests.tools.sample_tools:Namespace.not_callable")
    assert str(caught.value) == (
        "tests.tools.sample_tools:Namespace.not_callable: "
        "tests.tools.sample_tools.Namespace.not_callable is a int, not a callable"
    )


# ---- call_python -----------------------------------------------------------------------------


async def test_a_sync_tool_gets_the_arguments_and_the_context() -> None:
    output = await call_python(sample_tools.lookup_order, {"order_number": "A-42"}, CONTEXT)
    assert output == (
        '{"order_number": "A-42", "status": "shipped", "eta": "Tuesday", "caller": "+15550100001"}'
    )


async def test_a_sync_tool_runs_in_a_worker_thread() -> None:
    thread = await call_python(sample_tools.which_thread, {}, CONTEXT)
    assert thread != threading.current_thread().name


async def test_a_sync_tool_does_not_hold_up_the_event_loop() -> None:
    release = threading.Event()
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while not release.is_set():
            ticks += 1
            if ticks == 5:
                release.set()  # the loop ran while the tool was blocked
            await trio.sleep(0.01)

    with trio.fail_after(GUARD_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(tick)
            output = await call_python(sample_tools.wait_for_event, {}, {"release": release})
    assert output == "released"
    assert ticks >= 5


async def test_an_async_tool_runs_in_the_calling_task(autojump_clock: trio.abc.Clock) -> None:
    started = trio.current_time()
    output = await call_python(sample_tools.slow_tool, {"seconds": 30}, CONTEXT)
    assert output == '{"slept_s": 30.0}'
    assert trio.current_time() - started == pytest.approx(30)


async def test_an_object_with_an_async_call_is_awaited() -> None:
    assert await call_python(sample_tools.async_callable, {}, CONTEXT) == "called"


async def test_cancelling_an_async_tool_stops_it(autojump_clock: trio.abc.Clock) -> None:
    with trio.move_on_after(5) as scope:
        await call_python(sample_tools.slow_tool, {"seconds": 3600}, CONTEXT)
    assert scope.cancelled_caught
    assert trio.current_time() == pytest.approx(5)


async def test_cancelling_a_sync_tool_abandons_its_thread() -> None:
    release = threading.Event()
    try:
        with trio.fail_after(GUARD_S), trio.move_on_after(0.1) as scope:
            await call_python(sample_tools.wait_for_event, {}, {"release": release})
        assert scope.cancelled_caught
        # The abandoned thread keeps a token of the tools' own limiter, not of trio's default
        # one, which name resolution needs.
        assert trio.to_thread.current_default_thread_limiter().borrowed_tokens == 0
    finally:
        release.set()


async def test_a_sync_tool_waits_for_a_thread_of_the_given_limiter() -> None:
    limiter = trio.CapacityLimiter(1)
    release = threading.Event()
    with trio.fail_after(GUARD_S):
        async with trio.open_nursery() as nursery:
            blocked = functools.partial(
                call_python, sample_tools.wait_for_event, {}, {"release": release}, limiter=limiter
            )
            nursery.start_soon(blocked)
            await trio.testing.wait_all_tasks_blocked()
            with trio.move_on_after(0.1) as waiting:
                await call_python(sample_tools.echo, {"text": "hi"}, {}, limiter=limiter)
            assert waiting.cancelled_caught  # the only thread was taken
            release.set()
        assert await call_python(sample_tools.echo, {"text": "hi"}, {}, limiter=limiter) == "hi"


async def test_a_sync_tool_exception_reaches_the_caller() -> None:
    with pytest.raises(RuntimeError, match="database down"):
        await call_python(sample_tools.broken_tool, {}, CONTEXT)


async def test_an_async_tool_exception_reaches_the_caller() -> None:
    with pytest.raises(ValueError, match="could not convert"):
        await call_python(sample_tools.slow_tool, {"seconds": "soon"}, CONTEXT)


# ---- results as text -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("result", "text"),
    [
        ("plain text, not JSON", "plain text, not JSON"),
        ("", ""),
        (None, ""),
        ({"eta": "Tuesday", "n": 2}, '{"eta": "Tuesday", "n": 2}'),
        ([1, 2.5, True, None], "[1, 2.5, true, null]"),
        (42, "42"),
        ({"name": "José"}, '{"name": "José"}'),
        ({"due": datetime.date(2026, 1, 2)}, '{"due": "2026-01-02"}'),
        (decimal.Decimal("9.99"), '"9.99"'),
    ],
)
def test_a_result_becomes_text(result: Any, text: str) -> None:
    assert result_text(result) == text


async def test_call_python_gives_the_result_as_text() -> None:
    assert await call_python(sample_tools.nothing, {}, CONTEXT) == ""
    assert await call_python(sample_tools.echo, {"text": "as is"}, CONTEXT) == "as is"
