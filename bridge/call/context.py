"""What the daemon knows about a call before the model hears it: ids, codec, parties, variables."""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from bridge.call.events import Capability, Codec


@attrs.frozen(kw_only=True)
class CallInfo:
    """One call as an ingress announced it.

    `variables` are strings the session may use: media-stream custom parameters today, SIP headers
    later. `external_ids` are the gateway's own ids (Twilio `streamSid`, `callSid`, ...), kept for
    the call record and for call control.
    """

    call_id: str
    ingress: str
    codec: Codec
    caller: str = ""
    called: str = ""
    variables: Mapping[str, str] = attrs.field(factory=dict)
    external_ids: Mapping[str, str] = attrs.field(factory=dict)
    # Call control the telephony leg can carry out (transfer, sending DTMF).
    capabilities: frozenset[Capability] = frozenset()

    def template_values(self) -> dict[str, str]:
        """The names an instructions template may use: custom variables, then the fixed ones."""
        values = dict(self.variables)
        values.update(call_id=self.call_id, caller=self.caller, called=self.called)
        return values
