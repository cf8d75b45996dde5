"""Errors of the agent (model) side."""

from __future__ import annotations

from bridge.call.events import EndReason
from bridge.errors import BridgeError


class AgentLegFailed(BridgeError):
    """The model session never became ready; `reason` is the call's end reason."""

    def __init__(self, reason: EndReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
