"""The pre-call hook: ask the operator's HTTP endpoint for per-call variables before the model.

The hook is POSTed ``{"call": {call_id, ingress, caller, called, variables, external_ids}}`` and
answers a JSON object: ``{"variables": {"name": "value", ...}, "route": "route-name"}``, both
optional. Values that are not strings are sent on as their JSON text. Whatever goes wrong (no
answer within the timeout, an error status, a body that is not such an object) is logged, and the
call goes on with what it had: a CRM that is down must not stop the phones.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import attrs
import httpx2

from bridge.call.context import CallInfo
from bridge.config import PrecallHookConfig
from bridge.tools.http_client import ToolFailure, post_json
from bridge.tools.runner import call_context, request_headers

Log = logging.LoggerAdapter[logging.Logger] | logging.Logger


@attrs.frozen
class PrecallResult:
    variables: Mapping[str, str] = attrs.field(factory=dict)
    route: str = ""
    problem: str = ""  # why the defaults were kept; "" when the hook answered


def parse_precall_reply(body: str) -> PrecallResult:
    """The hook's reply; ValueError says what is wrong with it."""
    try:
        reply = json.loads(body) if body.strip() else {}
    except ValueError as error:
        raise ValueError(f"the reply is not JSON ({error})") from None
    except RecursionError:
        raise ValueError("the reply is nested too deeply") from None
    if not isinstance(reply, dict):
        raise ValueError("the reply is not a JSON object")
    variables = reply.get("variables", {})
    if not isinstance(variables, dict):
        raise ValueError('"variables" is not an object')
    route = reply.get("route", "")
    if not isinstance(route, str):
        raise ValueError('"route" is not a string')
    return PrecallResult(
        variables={
            str(name): value if isinstance(value, str) else json.dumps(value)
            for name, value in variables.items()
        },
        route=route,
    )


async def run_precall_hook(
    hook: PrecallHookConfig,
    info: CallInfo,
    *,
    environ: Mapping[str, str],
    log: Log,
    client: httpx2.AsyncClient | None = None,
) -> PrecallResult:
    """Ask the hook about `info`; never raises, a failure keeps the defaults."""
    payload: dict[str, Any] = {"call": call_context(info)}
    try:
        headers = request_headers(hook.headers, hook.secret_headers(), environ)
        body = await post_json(
            hook.url, payload, headers=headers, timeout_s=hook.timeout_s, client=client
        )
        result = parse_precall_reply(body)
    except ToolFailure as failure:
        problem = f"{failure.code}: {failure.message}"
    except ValueError as error:
        problem = str(error)
    else:
        log.info(
            "pre-call hook answered",
            extra={"variables": len(result.variables), "route": result.route or "-"},
        )
        return result
    log.warning(
        "pre-call hook failed; the call goes on with the defaults", extra={"detail": problem}
    )
    return PrecallResult(problem=problem)


__all__ = ["PrecallResult", "parse_precall_reply", "run_precall_hook"]
