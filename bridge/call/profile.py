"""Per-call profiles: which `[[routes]]` entry a call takes, and what the model session becomes.

Routes are tried in the order written; the first whose every condition matches wins, and a call
no route matches gets the top-level `[session]`, `model.model` and all `[[tools]]`. Conditions
are shell-style patterns (:func:`fnmatch.fnmatchcase`, so case matters and `+1555*` means a
prefix): `called` is the dialled number (SIP Request-URI user, the media stream's `to`), `caller`
the calling number, and `variables` the call's variables (configured SIP headers, media-stream
custom parameters, and what the pre-call hook returned). A pre-call hook may also name a route
outright.
"""

from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatchcase

import attrs

from bridge.call.context import CallInfo
from bridge.config import Config, RouteConfig, SessionConfig, ToolConfig


@attrs.frozen(kw_only=True)
class CallProfile:
    """The settings one call runs with."""

    route: str  # the route's name; "" for the defaults
    session: SessionConfig
    model: str
    tools: tuple[ToolConfig, ...]


def _any_matches(value: str, patterns: Iterable[str]) -> bool:
    return any(fnmatchcase(value, pattern) for pattern in patterns)


def route_matches(route: RouteConfig, info: CallInfo) -> bool:
    if route.called and not _any_matches(info.called, route.called):
        return False
    if route.caller and not _any_matches(info.caller, route.caller):
        return False
    for name, pattern in route.variables.items():
        value = info.variables.get(name)
        if value is None or not fnmatchcase(value, pattern):
            return False
    return True


def choose_profile(config: Config, info: CallInfo, *, route_name: str = "") -> CallProfile:
    """The profile for `info`: the route called `route_name` if any, else the first match."""
    chosen = next((route for route in config.routes if route.name == route_name), None)
    if chosen is None:
        chosen = next((route for route in config.routes if route_matches(route, info)), None)
    if chosen is None:
        return CallProfile(
            route="", session=config.session, model=config.model.model, tools=config.tools
        )
    tools = config.tools
    if chosen.tools is not None:
        tools = tuple(tool for tool in config.tools if tool.name in chosen.tools)
    return CallProfile(
        route=chosen.name,
        session=chosen.session,
        model=chosen.model or config.model.model,
        tools=tools,
    )


__all__ = ["CallProfile", "choose_profile", "route_matches"]
