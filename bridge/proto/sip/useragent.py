"""The SIP user agent server core: transactions, dialogs and timers, without I/O.

Implements the UAS side of RFC 3261: §8.2 (UAS behaviour: method, Require and body checks, merged
requests), §12 (dialogs, target refresh, CSeq order), §13.3 (answering INVITE; §13.3.1.4 2xx
retransmission until the ACK), §14.2 (re-INVITE), §15 (BYE both ways), §9.2 (CANCEL), §17.1.2 and
§17.2 (non-INVITE client, INVITE and non-INVITE server transactions, timers E F G H I J K), §18.2.2
(responses go to the request's source; Via ``received``), RFC 3581 (``rport``), RFC 6026 (the
INVITE server transaction's Accepted state, Timer L), RFC 3311 (UPDATE), RFC 3264 (offer/answer,
via :mod:`bridge.proto.sip.sdp`), and the transferor's side of a blind transfer: RFC 3515 (REFER
and its implicit ``refer`` subscription, NOTIFY with message/sipfrag), RFC 3892 (Referred-By),
RFC 5589 §6 (the call flow). Interop rules: protocols.md §5.

How it is used (DESIGN.md rules 2 and 3)
----------------------------------------
The adapter feeds each UDP datagram to :meth:`SipUserAgent.receive_datagram` (or each framed TCP
message to :meth:`SipUserAgent.receive_message`, and a framer's SipParseError to
:meth:`SipUserAgent.receive_malformed`) with the packet's source :class:`Peer` and `now`, sends
whatever :meth:`~SipUserAgent.messages_to_send` returns, hands the events of
:meth:`~SipUserAgent.next_event` to the call legs, and calls :meth:`~SipUserAgent.handle_timeout`
at :meth:`~SipUserAgent.next_deadline`. A call leg drives its call with :meth:`~SipUserAgent.ring`,
:meth:`~SipUserAgent.answer`, :meth:`~SipUserAgent.reject`, :meth:`~SipUserAgent.hang_up` and
:meth:`~SipUserAgent.refer` (blind transfer). One
core serves every call of a listener; nothing here looks up DNS, so every destination is an IP
literal or the address a request came from.

Every response goes to the `source` of the request it answers (the packet's address: right behind
NAT and proxies, protocols.md §5.6.1), never to the Via sent-by. Commands on a call that has ended
meanwhile (a CANCEL or BYE crossed the leg's decision) are no-ops: the leg learns the end from the
:class:`CallTerminated` already queued.

Theory of operation: transactions
---------------------------------
A server transaction is keyed by the top Via's branch and sent-by and the method, ACK counting as
INVITE (§17.2.3); a retransmitted request finds its transaction and gets the last response again,
so it never creates a second call. Peers without the ``z9hG4bK`` cookie (RFC 2543) are keyed by
branch, Call-ID, CSeq and From tag as well, which is enough for retransmissions.

INVITE server transaction (§17.2.1 as amended by RFC 6026 §7.1), initial INVITEs and re-INVITEs.
Each row: state, input -> action -> next state.

==========  ===========================================================================  ==========
state       input -> action                                                              next
==========  ===========================================================================  ==========
(new)       INVITE -> 100 Trying (initial INVITEs only)                                  PROCEEDING
PROCEEDING  INVITE retransmission -> resend the last response (100 or 180)               PROCEEDING
PROCEEDING  ring() -> 180 Ringing with our To-tag                                        PROCEEDING
PROCEEDING  answer(), a re-INVITE we accept -> 2xx; 2xx timer T1; Timer L 64*T1          ACCEPTED
PROCEEDING  reject(), hang_up(), CANCEL, a failed check -> non-2xx; G (UDP) T1; H 64*T1  COMPLETED
ACCEPTED    INVITE retransmission -> resend the 2xx                                      ACCEPTED
ACCEPTED    2xx timer and no ACK yet -> resend the 2xx; interval doubles up to T2        ACCEPTED
ACCEPTED    ACK (matched by dialog and CSeq number, not branch) -> stop the 2xx timer    ACCEPTED
ACCEPTED    Timer L after the ACK came -> forget the transaction                         (gone)
ACCEPTED    Timer L without ACK -> BYE; CallTerminated(ACK_TIMEOUT) unless hung up       (gone)
COMPLETED   INVITE retransmission or Timer G -> resend the final; G doubles up to T2     COMPLETED
COMPLETED   ACK (same branch as the INVITE) -> Timer I: T4 on UDP, 0 on TCP              CONFIRMED
COMPLETED   Timer H (the ACK never came) -> forget the transaction                       (gone)
CONFIRMED   ACK or INVITE retransmission -> absorbed                                     CONFIRMED
CONFIRMED   Timer I -> forget the transaction                                            (gone)
==========  ===========================================================================  ==========

The 2xx is the UAS core's to retransmit (§13.3.1.4), on every transport, so its timer lives with
the transaction that sent it; Timer L and the "no ACK after 64*T1" rule of §13.3.1.4 coincide.
Non-2xx finals are retransmitted only over UDP (§17.2.1: TCP is reliable).

Non-INVITE server transaction (§17.2.2): every non-INVITE request is answered at once, so the
transaction is born COMPLETED holding its response; over UDP it resends that response to each
retransmission until Timer J (64*T1) forgets it; over TCP (Timer J = 0) nothing is kept.

Non-INVITE client transaction (§17.1.2), our BYE and REFER:

==========  ===========================================================================  ==========
state       input -> action                                                              next
==========  ===========================================================================  ==========
TRYING      Timer E (UDP only) -> resend; interval doubles up to T2                      TRYING
TRYING      1xx -> Timer E interval becomes T2                                           PROCEEDING
TRY, PROC   final response (2xx, also 481/408) -> stop E and F; Timer K: T4 UDP, 0 TCP   COMPLETED
TRY, PROC   Timer F (64*T1) -> give up (a REFER: ReferTimedOut)                         (gone)
COMPLETED   response retransmission -> absorbed                                          COMPLETED
COMPLETED   Timer K -> forget the transaction (a BYE's: and its dialog)                  (gone)
==========  ===========================================================================  ==========

Theory of operation: dialogs
----------------------------
A dialog is keyed by Call-ID, our tag (the To-tag we chose, random) and the peer's From tag. It is
created together with :class:`IncomingCall` and holds the route set (the INVITE's Record-Route in
order — a UAS does not reverse it), the remote target (the peer's Contact, refreshed by re-INVITE
and UPDATE), both CSeq counters, the negotiated audio and our SDP origin (session id random, the
version bumped only when our SDP changes).

===========  =========================================================================  ===========
state        input -> action                                                            next
===========  =========================================================================  ===========
EARLY        answer() -> 200 OK + SDP answer                                            ACCEPTED
EARLY        reject(), hang_up() -> the final (hang_up: 480)                            (gone)
EARLY        CANCEL -> 200 to it, 487 to the INVITE, CallTerminated(CANCEL)             (gone)
EARLY        BYE (a caller may end an early dialog, §15) -> 200, 487, CallTerminated    (gone)
ACCEPTED     ACK of the 200 -> CallConfirmed                                            CONFIRMED
ACC, CONF    BYE -> 200, CallTerminated(BYE)                                            (gone)
ACC, CONF    hang_up(), every 2xx acknowledged -> BYE                                   TERMINATING
ACC, CONF    hang_up() while a 2xx awaits its ACK -> `bye_pending`; the 2xx goes on     TERMINATING
ACC, CONF    no ACK for a 2xx within 64*T1 -> BYE, CallTerminated(ACK_TIMEOUT)          TERMINATING
ACC, CONF    re-INVITE, UPDATE -> answer keeping the codec (MediaUpdated), or 488       (same)
ACC, CONF    INFO -> 200 (InfoDtmf); NOTIFY, OPTIONS -> 200                             (same)
TERMINATING  BYE, INFO, NOTIFY, OPTIONS -> 200, no event; re-INVITE, UPDATE -> 481      TERMINATING
TERMINATING  `bye_pending`: the last awaited ACK (no event, its SDP ignored) -> BYE     TERMINATING
TERMINATING  `bye_pending`: no ACK for a 2xx within 64*T1 -> BYE, no event              TERMINATING
TERMINATING  `bye_pending`: BYE from the peer -> 200, no event, no BYE of ours          (gone)
TERMINATING  our BYE's transaction ends (a final and Timer K, or Timer F)               (gone)
===========  =========================================================================  ===========

RFC 3261 §15: the callee "MUST NOT send a BYE on a confirmed dialog until it has received an
ACK for its 2xx response or until the server transaction times out" (over UDP a BYE can overtake
the 2xx and reach a caller that has no dialog to match it with yet). So a hang_up() while a 2xx
(the answer's, or a re-INVITE's) still waits for its ACK only marks the dialog
`bye_pending`: the 2xx is still resent on its schedule, and the BYE goes when the last awaited
ACK arrives, or at once when a 2xx times out without one. The leg asked for the end, so it gets no
event for it, not even CallTerminated(ACK_TIMEOUT).

Theory of operation: blind transfer (REFER)
-------------------------------------------
:meth:`~SipUserAgent.refer` sends an in-dialog REFER (RFC 3515 §2.4, RFC 5589 §6) built like our
BYE (remote target, route set, swapped From/To, our next CSeq) plus Contact, ``Refer-To`` and
``Referred-By`` (RFC 3892), as a non-INVITE client transaction (Timer E on UDP, Timer F). The
peer answers 202 and then reports how its new call goes in NOTIFYs of the implicit ``refer``
subscription: ``Event: refer`` (``;id=`` the REFER's CSeq number, RFC 3515 §2.4.6, when given),
``Subscription-State``, and a message/sipfrag body whose status line is the new call's. Every
NOTIFY gets 200, readable or not, before the dialog ends and while we hang up (a 405 there
was a real interop bug, protocols.md §5.5); once the dialog is gone, 481.

One REFER at a time per call. Each row: state, input -> event -> next state.

==========  ===========================================================================  ==========
state       input -> event                                                               next
==========  ===========================================================================  ==========
(none)      refer() on a confirmed call -> the REFER goes out                            SENT
SENT        1xx -> none (Timer E slows to T2)                                            SENT
SENT        2xx (202; 200 from old stacks) -> ReferAnswered; notify timer 64*T1          ACCEPTED
SENT        3xx-6xx -> ReferAnswered (the transfer failed)                               (none)
SENT        Timer F, no NOTIFY either -> ReferTimedOut                                   (none)
SENT, ACC   NOTIFY, sipfrag 1xx, subscription active -> ReferProgress(final=False)       ACCEPTED
SENT, ACC   NOTIFY, sipfrag >= 200 or subscription terminated -> ReferProgress(final)    (none)
ACCEPTED    notify timer (no final NOTIFY 64*T1 after the 2xx) -> ReferTimedOut          (none)
any         hang_up(), BYE from the peer, no ACK (the call ends) -> none                 (none)
==========  ===========================================================================  ==========

A NOTIFY may overtake the 202 over UDP: it counts (and starts the notify timer) all the same, and
a 2xx arriving after the final NOTIFY raises nothing. An unreadable sipfrag is ReferProgress with
status 0, final when the subscription is terminated. NOTIFYs of another package, with another
``id`` or without a REFER in progress only get their 200. The transfer succeeded exactly when the
final ReferProgress carries a 2xx status; the leg decides that, and then hangs up (BYE) itself —
or the peer sends BYE, which is served as always. A 481 or 408 to the REFER is reported like any
failure and leaves the call up (the peer may still be there; an RTP timeout ends a dead call).

New INVITEs are checked in this order, each failure a final response after the 100 Trying (and
counted in `calls_rejected`): not `accepting` -> 503 + Retry-After; a Require option tag -> 420 +
Unsupported (we support none: no 100rel, no timer); no body -> 488 + Warning (we need an offer);
a body that is not application/sdp -> 415 + Accept; SDP we cannot read -> 400; no usable audio
-> 488; the same Call-ID, From tag and CSeq as a live INVITE transaction under another branch (a
forked copy, §8.2.2.2) -> 482; no usable sip: Contact (§8.1.1.8; we could never send the BYE) ->
400. In-dialog requests with a CSeq below the last one get 500 (§12.2.2), except BYE: refusing a
BYE could leave up a call the peer thinks is over.

A call's codec cannot change mid-call (the model session's audio format is fixed), so a re-INVITE
or UPDATE offer is negotiated against that one codec (any payload type): still offered gives a
200 and the answer, gone gives 488 and the dialog stays as it was. A re-INVITE without SDP gets
our current description as an offer in the 200; the answer comes in the ACK. A second offer
while one is unanswered (our 200 not yet sent, or our offer awaiting its ACK) gets 500 with
Retry-After (§14.2, RFC 3311 §5.2).

Timers
------
All timers sit in one heap of (deadline, sequence number); cancelling only forgets the action,
and stale entries are dropped as they reach the top (lazy deletion), so :meth:`next_deadline` is
O(1) amortised and scheduling O(log n) at any number of calls. When every timer has run, the
transaction and dialog tables are empty again.
"""

from __future__ import annotations

import enum
import heapq
import ipaddress
import itertools
import math
import random
from collections import deque
from collections.abc import Callable, Sequence

import attrs

from bridge.call.events import Codec
from bridge.errors import LocalProtocolError
from bridge.proto.sip.headers import (
    CSeq,
    NameAddr,
    SipUri,
    Via,
    find_param,
    format_host,
    parse_params,
)
from bridge.proto.sip.message import (
    Headers,
    SipMessage,
    SipParseError,
    SipRequest,
    SipResponse,
    parse_message,
    serialize,
    split_list,
)
from bridge.proto.sip.sdp import (
    Direction,
    NegotiatedAudio,
    OfferRejected,
    SdpError,
    SessionDescription,
    build_answer,
    build_offer,
    negotiate,
)

__all__ = [
    "CallConfirmed",
    "CallTerminated",
    "IncomingCall",
    "InfoDtmf",
    "MediaUpdated",
    "Peer",
    "ReferAnswered",
    "ReferProgress",
    "ReferTimedOut",
    "SipUserAgent",
    "Termination",
    "Transport",
    "UserAgentEvent",
    "UserAgentSettings",
    "UserAgentStatistics",
    "reason_phrase",
]

MAGIC_COOKIE = "z9hG4bK"
"""RFC 3261 §8.1.1.7: branches starting with it are unique per transaction."""

ALLOWED_METHODS = ("INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "UPDATE", "INFO", "NOTIFY")
ALLOW = ", ".join(ALLOWED_METHODS)
NOT_ALLOWED_METHODS = frozenset({"REGISTER", "SUBSCRIBE", "MESSAGE", "PUBLISH", "PRACK", "REFER"})
"""Methods we know but do not serve (405 + Allow); any other unknown method gets 501."""

SUPPORTED_OPTION_TAGS: frozenset[str] = frozenset()
"""No 100rel, no timer, no replaces: a Require of any option tag gets 420 (RFC 3261 §8.2.2.3)."""

SDP = "application/sdp"
DTMF_DIGITS = frozenset("0123456789*#ABCD")
# RFC 4733 event codes some INFO senders use instead of the symbols
_DTMF_EVENT_CODES = {"10": "*", "11": "#", "12": "A", "13": "B", "14": "C", "15": "D"}

_REASONS = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    200: "OK",
    202: "Accepted",
    300: "Multiple Choices",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    305: "Use Proxy",
    380: "Alternative Service",
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    410: "Gone",
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    421: "Extension Required",
    423: "Interval Too Brief",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    484: "Address Incomplete",
    485: "Ambiguous",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    491: "Request Pending",
    493: "Undecipherable",
    500: "Server Internal Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    600: "Busy Everywhere",
    603: "Decline",
    604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
}
_CLASS_REASONS = {
    1: "Trying",
    2: "OK",
    3: "Redirection",
    4: "Request Failure",
    5: "Server Failure",
    6: "Global Failure",
}


def reason_phrase(status: int) -> str:
    """The RFC 3261 §21 reason phrase of `status` (a generic one for its class if unlisted)."""
    return _REASONS.get(status) or _CLASS_REASONS.get(status // 100, "Unknown")


# ---- public data -------------------------------------------------------------------------------


class Transport(enum.Enum):
    UDP = "UDP"
    TCP = "TCP"


@attrs.frozen
class Peer:
    """Where a message came from or goes to; `host` is an IP literal, IPv6 without brackets."""

    transport: Transport
    host: str
    port: int


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@attrs.frozen(kw_only=True)
class UserAgentSettings:
    """What the core needs to know about itself.

    `contact_host`/`contact_port` are advertised (Contact, our Via sent-by, SDP o=/c=), so they
    must be reachable by the peers (protocols.md §5.6.3). `allow_from` empty lets everyone in.
    `t1`, `t2`, `t4` are RFC 3261's timer bases (§17.1.1.1)."""

    contact_host: str
    contact_port: int
    user: str = "bridge"
    codecs: tuple[Codec, ...] = (Codec.PCMU, Codec.PCMA)
    allow_from: tuple[Network, ...] = ()
    server: str = "bridge"
    retry_after_s: int = 10
    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0


@attrs.frozen(kw_only=True)
class UserAgentStatistics:
    """Counters since start, and the current sizes of the tables.

    `retransmissions` counts messages we sent again (timer-driven, or in answer to a retransmitted
    request). `unmatched`: responses and ACKs that matched nothing. `calls_rejected`: new INVITEs
    that got a non-2xx final other than 487 (by our checks, reject() or hang_up() before answer).
    `timers` is the number of live timers."""

    requests_in: int
    responses_in: int
    messages_out: int
    retransmissions: int
    malformed: int
    refused_sources: int
    unmatched: int
    calls_offered: int
    calls_rejected: int
    dialogs: int
    transactions: int
    timers: int


class Termination(enum.Enum):
    BYE = "bye"
    CANCEL = "cancel"
    ACK_TIMEOUT = "ack_timeout"


@attrs.frozen
class IncomingCall:
    """A new INVITE passed every check; answer it with ring()/answer()/reject() using `call`."""

    call: str
    call_id: str
    request_uri: str
    from_addr: NameAddr
    to_addr: NameAddr
    headers: Headers
    source: Peer
    audio: NegotiatedAudio


@attrs.frozen
class CallConfirmed:
    """The ACK for our 200 arrived: the call is fully set up."""

    call: str


@attrs.frozen
class MediaUpdated:
    """A re-INVITE, UPDATE or ACK answer changed the call's audio (remote address, direction...)."""

    call: str
    audio: NegotiatedAudio


@attrs.frozen
class InfoDtmf:
    """A keypad digit sent by SIP INFO (application/dtmf-relay or application/dtmf)."""

    call: str
    digit: str


@attrs.frozen
class CallTerminated:
    """The call ended by the peer (BYE, CANCEL) or because our 2xx was never acknowledged."""

    call: str
    reason: Termination
    detail: str


@attrs.frozen
class ReferAnswered:
    """The final response to our REFER: a 2xx (202 Accepted, or 200 from older stacks) means the
    peer took the transfer on and NOTIFYs follow; any other status ends the transfer, failed."""

    call: str
    status: int
    reason: str


@attrs.frozen
class ReferProgress:
    """A NOTIFY about our REFER: the status line of its message/sipfrag body (`status` 0 when the
    body is unreadable). `final`: the outcome is known (a status of 200 or more, or the
    subscription terminated); the transfer succeeded exactly when a final one has a 2xx."""

    call: str
    status: int
    reason: str
    final: bool


@attrs.frozen
class ReferTimedOut:
    """Our REFER got no answer within Timer F, or no final NOTIFY within 64*T1 after its 2xx."""

    call: str
    detail: str


@attrs.frozen
class InviteRefused:
    """A new INVITE failed a check and got this final status (503 when not `accepting`); not
    reported for a merged request (482), which is a copy of a call already here."""

    call_id: str
    status: int
    source: Peer


UserAgentEvent = (
    IncomingCall
    | InviteRefused
    | CallConfirmed
    | MediaUpdated
    | InfoDtmf
    | CallTerminated
    | ReferAnswered
    | ReferProgress
    | ReferTimedOut
)


# ---- internal state ----------------------------------------------------------------------------

# (branch, sent-by host, sent-by port, method with ACK as INVITE)
_TransactionKey = tuple[str, str, int, str]
# (Call-ID, our tag, their tag)
_DialogKey = tuple[str, str, str]


class _InviteState(enum.Enum):
    PROCEEDING = "proceeding"
    ACCEPTED = "accepted"
    COMPLETED = "completed"
    CONFIRMED = "confirmed"


class _DialogState(enum.Enum):
    EARLY = "early"
    ACCEPTED = "accepted"
    CONFIRMED = "confirmed"
    TERMINATING = "terminating"


class _ClientState(enum.Enum):
    TRYING = "trying"
    PROCEEDING = "proceeding"
    COMPLETED = "completed"


@attrs.frozen
class _Request:
    """An incoming request with the fields every handler needs, read once."""

    message: SipRequest
    source: Peer
    vias: tuple[str, ...]  # for the response: the top one with received/rport
    cseq: CSeq
    call_id: str
    from_raw: str
    to_raw: str
    cseq_raw: str
    from_tag: str
    to_tag: str | None
    key: _TransactionKey

    @property
    def method(self) -> str:
        return self.message.method

    @property
    def headers(self) -> Headers:
        return self.message.headers


@attrs.define(eq=False)
class _InviteTransaction:
    key: _TransactionKey
    request: _Request
    to_tag: str
    initial: bool
    dialog: _Dialog | None = None
    state: _InviteState = _InviteState.PROCEEDING
    last_response: bytes = b""
    interval: float = 0.0
    retransmit_timer: int | None = None
    end_timer: int | None = None
    acked: bool = False
    offer_in_2xx: bool = False  # a re-INVITE without SDP: our offer went out, the ACK answers
    merge_key: tuple[str, str, int] | None = None


@attrs.define(eq=False)
class _NonInviteTransaction:
    key: _TransactionKey
    peer: Peer
    response: bytes
    end_timer: int | None = None


@attrs.define(eq=False)
class _ClientTransaction:
    method: str
    branch: str
    data: bytes
    peer: Peer
    dialog: _Dialog
    state: _ClientState = _ClientState.TRYING
    interval: float = 0.0
    retransmit_timer: int | None = None
    end_timer: int | None = None


@attrs.define(eq=False)
class _Refer:
    """Our REFER in progress on a dialog, until its outcome is known (or the call ends)."""

    cseq: int
    client: _ClientTransaction
    heard: bool = False  # a 2xx or a NOTIFY came: the notify timer runs
    notify_timer: int | None = None


@attrs.define(eq=False)
class _Dialog:
    call: str
    key: _DialogKey
    call_id: str
    local_tag: str
    local_uri: str  # the INVITE's To with our tag: From of our requests
    remote_uri: str  # the INVITE's From: To of our requests
    remote_target: str
    route_set: tuple[str, ...]
    source: Peer
    invite: _InviteTransaction
    offer: SessionDescription
    audio: NegotiatedAudio
    session_id: int
    sdp_version: int
    remote_cseq: int
    state: _DialogState = _DialogState.EARLY
    media_port: int = 0
    last_sdp: bytes = b""
    local_cseq: int = 0
    awaiting_ack: dict[int, _InviteTransaction] = attrs.Factory(dict)
    bye: _ClientTransaction | None = None
    bye_pending: bool = False  # hang_up() came while a 2xx awaited its ACK (§15)
    refer: _Refer | None = None

    @property
    def transport(self) -> Transport:
        return self.source.transport


class _Refusal(Exception):
    """A request we answer with an error status (raised inside the handlers, answered once)."""

    def __init__(self, status: int, *extra: tuple[str, str]) -> None:
        super().__init__(status)
        self.status = status
        self.extra = extra


# ---- the core ----------------------------------------------------------------------------------


class SipUserAgent:
    """The UAS of every SIP call on one listener, without I/O (see the module docstring)."""

    def __init__(self, settings: UserAgentSettings, *, rng: random.Random) -> None:
        self.settings = settings
        self.accepting = True
        self._rng = rng
        self._networks = settings.allow_from
        self._outbox: list[tuple[bytes, Peer]] = []
        self._events: deque[UserAgentEvent] = deque()
        self._heap: list[tuple[float, int]] = []
        self._timer_actions: dict[int, Callable[[float], None]] = {}
        self._timer_numbers = itertools.count()
        self._invites: dict[_TransactionKey, _InviteTransaction] = {}
        self._non_invites: dict[_TransactionKey, _NonInviteTransaction] = {}
        self._clients: dict[str, _ClientTransaction] = {}
        self._merge_index: dict[tuple[str, str, int], _TransactionKey] = {}
        self._dialogs: dict[_DialogKey, _Dialog] = {}
        self._calls: dict[str, _Dialog] = {}
        self._via_host = format_host(settings.contact_host)
        # counters
        self._requests_in = 0
        self._responses_in = 0
        self._messages_out = 0
        self._retransmissions = 0
        self._malformed = 0
        self._refused_sources = 0
        self._unmatched = 0
        self._calls_offered = 0
        self._calls_rejected = 0

    # ---- input ---------------------------------------------------------------------------------

    def receive_datagram(self, data: bytes, source: Peer, now: float) -> None:
        """One UDP datagram as received from `source`."""
        if not self._allowed(source.host):
            self._refused_sources += 1
            return
        if not data.strip(b"\r\n"):
            return  # a CRLF keep-alive that keeps a NAT binding open: nothing to answer
        try:
            message = parse_message(data)
        except SipParseError as error:
            self._malformed += 1
            if error.status is not None:
                if error.partial is not None:
                    if isinstance(error.partial, SipRequest):
                        self._answer_broken(
                            error.partial.method, error.partial.headers, error, source
                        )
                else:
                    self._answer_unparsable(data, error, source)
            return
        self._dispatch(message, source, now)

    def receive_message(self, message: SipMessage, source: Peer, now: float) -> None:
        """One message framed from a stream (TCP) by SipStreamFramer."""
        if not self._allowed(source.host):
            self._refused_sources += 1
            return
        self._dispatch(message, source, now)

    def receive_malformed(self, error: SipParseError, source: Peer, now: float) -> None:
        """A message SipStreamFramer could not parse: counted, and answered with the error's
        status when its `partial` request still has the headers a response needs."""
        if not self._allowed(source.host):
            self._refused_sources += 1
            return
        self._malformed += 1
        if error.status is not None and isinstance(error.partial, SipRequest):
            self._answer_broken(error.partial.method, error.partial.headers, error, source)

    # ---- output --------------------------------------------------------------------------------

    def messages_to_send(self) -> list[tuple[bytes, Peer]]:
        """Everything to send, serialized, in order; the buffer is emptied."""
        messages, self._outbox = self._outbox, []
        return messages

    def next_event(self) -> UserAgentEvent | None:
        return self._events.popleft() if self._events else None

    def next_deadline(self) -> float:
        """When handle_timeout() wants to run next; math.inf without timers."""
        heap = self._heap
        while heap and heap[0][1] not in self._timer_actions:
            heapq.heappop(heap)
        return heap[0][0] if heap else math.inf

    def handle_timeout(self, now: float) -> None:
        """Run every timer due at `now`."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, number = heapq.heappop(heap)
            action = self._timer_actions.pop(number, None)
            if action is not None:
                action(now)

    def statistics(self) -> UserAgentStatistics:
        return UserAgentStatistics(
            requests_in=self._requests_in,
            responses_in=self._responses_in,
            messages_out=self._messages_out,
            retransmissions=self._retransmissions,
            malformed=self._malformed,
            refused_sources=self._refused_sources,
            unmatched=self._unmatched,
            calls_offered=self._calls_offered,
            calls_rejected=self._calls_rejected,
            dialogs=len(self._dialogs),
            transactions=len(self._invites) + len(self._non_invites) + len(self._clients),
            timers=len(self._timer_actions),
        )

    # ---- commands ------------------------------------------------------------------------------

    def ring(self, call: str, now: float) -> None:
        """180 Ringing (our To-tag, Contact, Record-Route); a no-op once the INVITE is answered."""
        dialog = self._calls.get(call)
        if dialog is None or dialog.state is not _DialogState.EARLY:
            return
        transaction = dialog.invite
        self._send_invite_response(
            transaction, 180, extra=[("Contact", self._contact(dialog.transport))]
        )

    def answer(self, call: str, *, media_port: int, now: float) -> None:
        """200 OK with our SDP answer (RTP on `media_port`); a no-op once the INVITE is answered."""
        dialog = self._calls.get(call)
        if dialog is None or dialog.state is not _DialogState.EARLY:
            return
        if not 0 < media_port < 65536:
            raise LocalProtocolError(f"media port {media_port} out of range")
        dialog.media_port = media_port
        body = self._answer_body(dialog, dialog.offer, dialog.audio)
        dialog.state = _DialogState.ACCEPTED
        self._accept(dialog.invite, body, now)

    def reject(self, call: str, status: int, now: float, *, retry_after: int | None = None) -> None:
        """A final non-2xx (3xx-6xx) to the unanswered INVITE; a no-op once it is answered."""
        if not 300 <= status <= 699:
            raise LocalProtocolError(f"reject() takes a 3xx-6xx status, not {status}")
        dialog = self._calls.get(call)
        if dialog is None or dialog.state is not _DialogState.EARLY:
            return
        extra = [] if retry_after is None else [("Retry-After", str(retry_after))]
        self._calls_rejected += 1
        self._forget_dialog(dialog)
        self._complete_invite(dialog.invite, status, now, extra=extra)

    def hang_up(self, call: str, now: float) -> None:
        """End the call: BYE once answered, 480 before. Idempotent; an unknown call is a no-op.

        While a 2xx awaits its ACK the BYE waits for it (or for its timeout, RFC 3261 §15); the
        call raises no event either way."""
        dialog = self._calls.get(call)
        if dialog is None:
            return
        if dialog.state is _DialogState.EARLY:
            self.reject(call, 480, now)
        elif dialog.state is _DialogState.TERMINATING:
            return
        elif dialog.awaiting_ack:
            self._end_refer(dialog)
            dialog.state = _DialogState.TERMINATING
            dialog.bye_pending = True
        else:
            self._send_bye(dialog, now)

    def refer(self, call: str, refer_to: str, *, referred_by: str, now: float) -> bool:
        """Blind transfer: an in-dialog REFER to `refer_to` (RFC 3515, RFC 5589 §6).

        `refer_to` and `referred_by` are URIs (``sip:2001@pbx.example``) or name-addrs
        (``"Desk" <sip:2001@pbx.example>``); an empty `referred_by` leaves Referred-By out. The
        outcome comes as ReferAnswered, ReferProgress and ReferTimedOut events (see the module
        docstring); the call stays up either way.

        Returns False, sending nothing, when the call cannot be transferred now: unknown, ended
        or ending, or not yet confirmed by the ACK of our 200 (the peer might not know the
        dialog yet). Raises LocalProtocolError while a REFER of this call is still in progress
        (one at a time: the leg waits for the outcome), or for an address that is no usable
        sip:, sips: or tel: URI.
        """
        target = _address_header(refer_to)
        referrer = _address_header(referred_by) if referred_by else None
        dialog = self._calls.get(call)
        if dialog is None or dialog.state is not _DialogState.CONFIRMED:
            return False
        if dialog.refer is not None:
            raise LocalProtocolError(f"a REFER of call {call} is still in progress")
        extra = [("Contact", self._contact(dialog.transport)), ("Refer-To", target)]
        if referrer is not None:
            extra.append(("Referred-By", referrer))
        client = self._send_request(dialog, "REFER", now, extra=extra)
        dialog.refer = _Refer(cseq=dialog.local_cseq, client=client)
        return True

    # ---- dispatch ------------------------------------------------------------------------------

    def _allowed(self, host: str) -> bool:
        if not self._networks:
            return True
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        candidates: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [address]
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            # a dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d
            candidates.append(address.ipv4_mapped)
        return any(candidate in network for candidate in candidates for network in self._networks)

    def _dispatch(self, message: SipMessage, source: Peer, now: float) -> None:
        if isinstance(message, SipResponse):
            self._responses_in += 1
            self._receive_response(message, now)
            return
        self._requests_in += 1
        try:
            request = self._read_request(message, source)
        except SipParseError as error:
            self._malformed += 1
            self._answer_broken(message.method, message.headers, error, source)
            return
        self._receive_request(request, now)

    def _read_request(self, message: SipRequest, source: Peer) -> _Request:
        """The fields of `message` every handler needs; SipParseError when one is unreadable."""
        headers = message.headers
        vias = headers.get_all("Via")
        from_raw = headers.get("From")
        to_raw = headers.get("To")
        call_id = headers.get("Call-ID")
        cseq_raw = headers.get("CSeq")
        if not vias or from_raw is None or to_raw is None or call_id is None or cseq_raw is None:
            raise SipParseError("Missing mandatory header")
        top = Via.parse(vias[0])
        cseq = CSeq.parse(cseq_raw)
        from_tag = NameAddr.parse(from_raw).tag or ""
        to_tag = NameAddr.parse(to_raw).tag or None
        method = "INVITE" if message.method == "ACK" else message.method
        branch = top.branch or ""
        if not branch.startswith(MAGIC_COOKIE):
            # RFC 2543 peers do not make branches unique; these fields stand in (§17.2.3).
            branch = f"{branch}|{call_id}|{cseq.number}|{from_tag}"
        key = (branch, top.host.lower(), top.port or 0, method)
        response_vias = (str(self._stamped_via(top, source)), *vias[1:])
        return _Request(
            message=message,
            source=source,
            vias=response_vias,
            cseq=cseq,
            call_id=call_id,
            from_raw=from_raw,
            to_raw=to_raw,
            cseq_raw=cseq_raw,
            from_tag=from_tag,
            to_tag=to_tag,
            key=key,
        )

    @staticmethod
    def _stamped_via(top: Via, source: Peer) -> Via:
        """The top Via with `received` (§18.2.1) and `rport` (RFC 3581 §4, which also wants
        `received` whenever rport was asked for) set from the packet's source."""
        updates: dict[str, str | None] = {}
        rport = top.has_param("rport")
        if rport or not _same_host(top.host, source.host):
            updates["received"] = source.host
        if rport:
            updates["rport"] = str(source.port)
        return top.with_params(**updates) if updates else top

    def _receive_request(self, request: _Request, now: float) -> None:
        method = request.method
        if method == "ACK":
            self._receive_ack(request, now)
            return
        if method == "INVITE":
            invite = self._invites.get(request.key)
            if invite is not None:
                self._invite_retransmitted(invite)
                return
        else:
            done = self._non_invites.get(request.key)
            if done is not None:
                self._resend(done.response, done.peer)
                return
        if method == "CANCEL":
            self._receive_cancel(request, now)
            return
        if method not in ALLOWED_METHODS:
            status = 405 if method in NOT_ALLOWED_METHODS else 501
            self._respond(request, status, now, extra=[("Allow", ALLOW)])
            return
        if request.to_tag is None:
            self._out_of_dialog(request, now)
            return
        dialog = self._dialogs.get((request.call_id, request.to_tag, request.from_tag))
        if dialog is None:
            if method == "OPTIONS":
                self._out_of_dialog(request, now)
            elif method == "INVITE":
                self._complete_invite(self._new_invite_transaction(request, False), 481, now)
            else:
                self._respond(request, 481, now)
            return
        self._in_dialog(dialog, request, now)

    # ---- out of dialog -------------------------------------------------------------------------

    def _out_of_dialog(self, request: _Request, now: float) -> None:
        method = request.method
        if method == "INVITE":
            self._new_invite(request, now)
        elif method == "OPTIONS":
            if self.accepting:
                self._respond(request, 200, now, extra=self._capabilities())
            else:
                self._respond(
                    request, 503, now, extra=[("Retry-After", str(self.settings.retry_after_s))]
                )
        else:  # BYE, INFO, NOTIFY, UPDATE need a dialog
            self._respond(request, 481, now)

    def _new_invite(self, request: _Request, now: float) -> None:
        transaction = self._new_invite_transaction(request, True)
        self._send_invite_response(transaction, 100)
        merge_key = (request.call_id, request.from_tag, request.cseq.number)
        merged = merge_key in self._merge_index
        if not merged:
            transaction.merge_key = merge_key
            self._merge_index[merge_key] = transaction.key
        try:
            if not self.accepting:
                raise _Refusal(503, ("Retry-After", str(self.settings.retry_after_s)))
            self._check_require(request)
            body = request.message.body
            if not body.strip():
                raise _Refusal(488, self._warning("SDP offer required"))
            offer = self._read_offer(request)
            try:
                audio = negotiate(offer, self.settings.codecs)
            except OfferRejected as rejection:
                raise _Refusal(rejection.status, self._warning(rejection.reason)) from None
            if merged:
                raise _Refusal(482)
            remote_target = self._remote_target(request)
            if remote_target is None:
                # §8.1.1.8: without a Contact we could never send the BYE
                raise _Refusal(400, self._warning("Missing or unusable Contact"))
        except (_Refusal, SipParseError) as refusal:
            status = refusal.status if isinstance(refusal, _Refusal) else 400
            extra = refusal.extra if isinstance(refusal, _Refusal) else ()
            self._calls_rejected += 1
            self._complete_invite(transaction, status or 400, now, extra=extra)
            if status != 482:
                # (482: a copy of a call we already have, reached by another path: no new call)
                self._events.append(InviteRefused(request.call_id, status or 400, request.source))
            return
        call = f"{request.call_id}/{transaction.to_tag}"
        dialog = _Dialog(
            call=call,
            key=(request.call_id, transaction.to_tag, request.from_tag),
            call_id=request.call_id,
            local_tag=transaction.to_tag,
            local_uri=f"{request.to_raw};tag={transaction.to_tag}",
            remote_uri=request.from_raw,
            remote_target=remote_target,
            route_set=tuple(request.headers.get_all("Record-Route")),
            source=request.source,
            invite=transaction,
            offer=offer,
            audio=audio,
            session_id=self._rng.getrandbits(32),
            sdp_version=self._rng.randrange(1, 1 << 16),
            remote_cseq=request.cseq.number,
        )
        transaction.dialog = dialog
        self._dialogs[dialog.key] = dialog
        self._calls[call] = dialog
        self._calls_offered += 1
        self._events.append(
            IncomingCall(
                call=call,
                call_id=request.call_id,
                request_uri=request.message.uri,
                from_addr=NameAddr.parse(request.from_raw),
                to_addr=NameAddr.parse(request.to_raw),
                headers=request.headers,
                source=request.source,
                audio=audio,
            )
        )

    def _receive_cancel(self, request: _Request, now: float) -> None:
        """§9.2: the CANCEL matches the INVITE by branch; 487 only if no final went out yet."""
        invite = self._invites.get((*request.key[:3], "INVITE"))
        if invite is None:
            self._respond(request, 481, now)
            return
        self._respond(request, 200, now, to_tag=invite.to_tag)
        if invite.state is not _InviteState.PROCEEDING:
            return
        dialog = invite.dialog
        if dialog is not None:
            self._forget_dialog(dialog)
            self._events.append(CallTerminated(dialog.call, Termination.CANCEL, "CANCEL"))
        self._complete_invite(invite, 487, now)

    # ---- in dialog -----------------------------------------------------------------------------

    def _in_dialog(self, dialog: _Dialog, request: _Request, now: float) -> None:
        method = request.method
        if request.cseq.number < dialog.remote_cseq and method != "BYE":
            # §12.2.2: out of order (a retransmission would have matched its transaction). A BYE
            # is taken anyway: refusing it could leave a call up that the peer thinks is over.
            extra = [("Retry-After", str(self._rng.randrange(0, 11)))]
            if method == "INVITE":
                transaction = self._new_invite_transaction(request, False)
                self._complete_invite(transaction, 500, now, extra=extra)
            else:
                self._respond(request, 500, now, extra=extra)
            return
        dialog.remote_cseq = max(dialog.remote_cseq, request.cseq.number)
        terminating = dialog.state is _DialogState.TERMINATING
        if method == "INVITE":
            self._reinvite(dialog, request, now)
        elif method == "UPDATE":
            self._update(dialog, request, now)
        elif method == "BYE":
            self._respond(request, 200, now)
            if not terminating:
                self._peer_hung_up(dialog, now)
            elif dialog.bye_pending:
                # both sides hung up; ours never went out, and now it need not
                dialog.bye_pending = False
                self._forget_dialog(dialog)
        elif method == "INFO":
            self._respond(request, 200, now)
            digit = _dtmf_digit(request.headers.get("Content-Type"), request.message.body)
            if digit is not None and not terminating:
                self._events.append(InfoDtmf(dialog.call, digit))
        elif method == "NOTIFY":
            self._respond(request, 200, now)
            self._refer_notified(dialog, request, now)
        else:  # OPTIONS: a keep-alive of this call, answered even while we refuse new calls
            self._respond(request, 200, now, extra=self._capabilities())

    def _peer_hung_up(self, dialog: _Dialog, now: float) -> None:
        self._forget_dialog(dialog)
        if dialog.state is _DialogState.EARLY:
            # §15.1.2: the pending INVITE gets 487
            self._complete_invite(dialog.invite, 487, now)
        self._events.append(CallTerminated(dialog.call, Termination.BYE, "BYE"))

    def _reinvite(self, dialog: _Dialog, request: _Request, now: float) -> None:
        transaction = self._new_invite_transaction(request, False)
        transaction.to_tag = dialog.local_tag
        try:
            if dialog.state is _DialogState.TERMINATING:
                raise _Refusal(481)
            self._check_offer_allowed(dialog)
            self._check_require(request)
            target = self._remote_target(request)
            if request.message.body.strip():
                offer = self._read_offer(request)
                audio = self._renegotiate(dialog, offer)
                body = self._answer_body(dialog, offer, audio)
            else:
                offer = None
                audio = dialog.audio
                body = self._offer_body(dialog)
        except (_Refusal, SipParseError) as refusal:
            status = refusal.status if isinstance(refusal, _Refusal) else 400
            extra = refusal.extra if isinstance(refusal, _Refusal) else ()
            self._complete_invite(transaction, status or 400, now, extra=extra)
            return
        transaction.dialog = dialog
        if target is not None:
            dialog.remote_target = target
        transaction.offer_in_2xx = offer is None
        self._accept(transaction, body, now)
        self._set_audio(dialog, audio, offer)

    def _update(self, dialog: _Dialog, request: _Request, now: float) -> None:
        """RFC 3311: answer an offer like a re-INVITE would; without one just refresh."""
        offer: SessionDescription | None = None
        audio = dialog.audio
        extra = [("Contact", self._contact(dialog.transport))]
        body = b""
        try:
            if dialog.state is _DialogState.TERMINATING:
                raise _Refusal(481)
            self._check_require(request)
            target = self._remote_target(request)
            if request.message.body.strip():
                self._check_offer_allowed(dialog)
                offer = self._read_offer(request)
                audio = self._renegotiate(dialog, offer)
                body = self._answer_body(dialog, offer, audio)
                extra.append(("Content-Type", SDP))
        except (_Refusal, SipParseError) as refusal:
            status = refusal.status if isinstance(refusal, _Refusal) else 400
            refusal_extra = refusal.extra if isinstance(refusal, _Refusal) else ()
            self._respond(request, status or 400, now, extra=refusal_extra)
            return
        if target is not None:
            dialog.remote_target = target
        self._respond(request, 200, now, extra=extra, body=body)
        if offer is not None:
            self._set_audio(dialog, audio, offer)

    def _check_offer_allowed(self, dialog: _Dialog) -> None:
        """§14.2 / RFC 3311 §5.2: no new offer while the previous offer/answer is incomplete."""
        pending = dialog.state is _DialogState.EARLY or any(
            transaction.offer_in_2xx for transaction in dialog.awaiting_ack.values()
        )
        if pending:
            raise _Refusal(500, ("Retry-After", str(self._rng.randrange(0, 11))))

    def _renegotiate(self, dialog: _Dialog, offer: SessionDescription) -> NegotiatedAudio:
        """The call keeps its codec: the new offer must still list it, under any payload type."""
        try:
            return negotiate(offer, (dialog.audio.codec,))
        except OfferRejected as rejection:
            raise _Refusal(rejection.status, self._warning(rejection.reason)) from None

    def _set_audio(
        self, dialog: _Dialog, audio: NegotiatedAudio, offer: SessionDescription | None
    ) -> None:
        if offer is not None:
            dialog.offer = offer
        if audio != dialog.audio:
            dialog.audio = audio
            self._events.append(MediaUpdated(dialog.call, audio))

    # ---- ACK -----------------------------------------------------------------------------------

    def _receive_ack(self, request: _Request, now: float) -> None:
        invite = self._invites.get(request.key)
        if invite is not None and invite.state is _InviteState.COMPLETED:
            # the ACK of a non-2xx final: same branch as the INVITE (§17.2.1)
            invite.state = _InviteState.CONFIRMED
            self._cancel(invite.retransmit_timer)
            self._cancel(invite.end_timer)
            invite.retransmit_timer = None
            if invite.request.source.transport is Transport.UDP:
                invite.end_timer = self._schedule(
                    now + self.settings.t4, lambda now: self._drop_invite(invite)
                )
            else:
                self._drop_invite(invite)  # Timer I is 0 on reliable transports
            return
        if invite is not None and invite.state is _InviteState.CONFIRMED:
            return
        dialog = None
        if request.to_tag is not None:
            dialog = self._dialogs.get((request.call_id, request.to_tag, request.from_tag))
        if dialog is None:
            self._unmatched += 1
            return
        # the ACK of a 2xx is its own transaction: matched by dialog and CSeq number (§13.3.1.4)
        acked = dialog.awaiting_ack.pop(request.cseq.number, None)
        if acked is None:
            return  # a retransmitted ACK, or one crossing our BYE
        acked.acked = True
        self._cancel(acked.retransmit_timer)
        acked.retransmit_timer = None
        if dialog.bye_pending:
            # the leg has hung up: no event, and the answer in the ACK no longer matters
            if not dialog.awaiting_ack:
                self._send_bye(dialog, now)
            return
        if acked.initial and dialog.state is _DialogState.ACCEPTED:
            dialog.state = _DialogState.CONFIRMED
            self._events.append(CallConfirmed(dialog.call))
        if acked.offer_in_2xx:
            self._take_ack_answer(dialog, request)

    def _take_ack_answer(self, dialog: _Dialog, request: _Request) -> None:
        """The answer to the offer we put in a 2xx; a missing or unusable one leaves the call as
        it was (counted as malformed)."""
        content_type = request.headers.get("Content-Type")
        body = request.message.body
        if not body.strip() or not _is_sdp(content_type):
            self._malformed += 1
            return
        try:
            answer = SessionDescription.parse(body)
            audio = negotiate(answer, (dialog.audio.codec,))
        except (SdpError, OfferRejected):
            self._malformed += 1
            return
        self._set_audio(dialog, audio, None)

    # ---- responses to our requests -------------------------------------------------------------

    def _receive_response(self, response: SipResponse, now: float) -> None:
        vias = response.headers.get_all("Via")
        cseq_raw = response.headers.get("CSeq")
        try:
            branch = Via.parse(vias[0]).branch if vias else None
            cseq = CSeq.parse(cseq_raw) if cseq_raw is not None else None
        except SipParseError:
            self._malformed += 1
            return
        client = self._clients.get(branch or "")
        if client is None or cseq is None or cseq.method != client.method:
            self._unmatched += 1
            return
        if client.state is _ClientState.COMPLETED:
            return  # a retransmitted final, absorbed during Timer K
        if response.status < 200:
            client.state = _ClientState.PROCEEDING
            client.interval = self.settings.t2
            return
        # a final to our BYE ends the dialog: 2xx, and 481/408 too (protocols.md §5.5)
        client.state = _ClientState.COMPLETED
        self._cancel(client.retransmit_timer)
        self._cancel(client.end_timer)
        client.retransmit_timer = None
        if client.peer.transport is Transport.UDP:
            client.end_timer = self._schedule(
                now + self.settings.t4, lambda now: self._drop_client(client)
            )
        else:
            self._drop_client(client)  # Timer K is 0 on reliable transports
        if client.method == "REFER":
            self._refer_answered(client, response, now)

    # ---- INVITE server transactions ------------------------------------------------------------

    def _new_invite_transaction(self, request: _Request, initial: bool) -> _InviteTransaction:
        transaction = _InviteTransaction(
            key=request.key, request=request, to_tag=self._token(), initial=initial
        )
        self._invites[request.key] = transaction
        return transaction

    def _invite_retransmitted(self, invite: _InviteTransaction) -> None:
        if invite.state is not _InviteState.CONFIRMED and invite.last_response:
            self._resend(invite.last_response, invite.request.source)

    def _send_invite_response(
        self,
        transaction: _InviteTransaction,
        status: int,
        *,
        extra: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> None:
        request = transaction.request
        data = self._response(
            request,
            status,
            to_tag=None if status == 100 else transaction.to_tag,
            record_route=101 <= status < 300,
            extra=extra,
            body=body,
        )
        transaction.last_response = data
        self._send(data, request.source)

    def _accept(self, transaction: _InviteTransaction, body: bytes, now: float) -> None:
        """Send the 2xx and retransmit it until the ACK, whatever the transport (§13.3.1.4)."""
        dialog = transaction.dialog
        assert dialog is not None
        extra = [
            ("Contact", self._contact(dialog.transport)),
            ("Allow", ALLOW),
            ("Content-Type", SDP),
        ]
        self._send_invite_response(transaction, 200, extra=extra, body=body)
        transaction.state = _InviteState.ACCEPTED
        dialog.awaiting_ack[transaction.request.cseq.number] = transaction
        transaction.interval = self.settings.t1
        transaction.retransmit_timer = self._schedule(
            now + self.settings.t1, lambda now: self._retransmit_2xx(transaction, now)
        )
        transaction.end_timer = self._schedule(
            now + 64 * self.settings.t1, lambda now: self._timer_l(transaction, now)
        )

    def _retransmit_2xx(self, transaction: _InviteTransaction, now: float) -> None:
        transaction.retransmit_timer = None
        if transaction.acked:
            return
        self._resend(transaction.last_response, transaction.request.source)
        transaction.interval = min(2 * transaction.interval, self.settings.t2)
        transaction.retransmit_timer = self._schedule(
            now + transaction.interval, lambda now: self._retransmit_2xx(transaction, now)
        )

    def _timer_l(self, transaction: _InviteTransaction, now: float) -> None:
        transaction.end_timer = None
        dialog = transaction.dialog
        self._drop_invite(transaction)
        if transaction.acked or dialog is None:
            return
        if dialog.awaiting_ack.pop(transaction.request.cseq.number, None) is None:
            return  # the dialog ended meanwhile (BYE either way clears awaiting_ack)
        # §13.3.1.4: no ACK within 64*T1 -> the session is over; end it with a BYE
        if dialog.bye_pending:
            self._send_bye(dialog, now)  # §15: the timeout frees the BYE the leg asked for
            return
        seconds = 64 * self.settings.t1
        self._events.append(
            CallTerminated(
                dialog.call, Termination.ACK_TIMEOUT, f"no ACK for the 2xx within {seconds:g} s"
            )
        )
        self._send_bye(dialog, now)

    def _complete_invite(
        self,
        transaction: _InviteTransaction,
        status: int,
        now: float,
        *,
        extra: Sequence[tuple[str, str]] = (),
    ) -> None:
        """Send a non-2xx final and wait for its ACK (Timers G and H, §17.2.1)."""
        self._send_invite_response(transaction, status, extra=extra)
        transaction.state = _InviteState.COMPLETED
        if transaction.request.source.transport is Transport.UDP:
            transaction.interval = self.settings.t1
            transaction.retransmit_timer = self._schedule(
                now + self.settings.t1, lambda now: self._timer_g(transaction, now)
            )
        transaction.end_timer = self._schedule(
            now + 64 * self.settings.t1, lambda now: self._drop_invite(transaction)
        )

    def _timer_g(self, transaction: _InviteTransaction, now: float) -> None:
        transaction.retransmit_timer = None
        if transaction.state is not _InviteState.COMPLETED:
            return
        self._resend(transaction.last_response, transaction.request.source)
        transaction.interval = min(2 * transaction.interval, self.settings.t2)
        transaction.retransmit_timer = self._schedule(
            now + transaction.interval, lambda now: self._timer_g(transaction, now)
        )

    def _drop_invite(self, transaction: _InviteTransaction) -> None:
        self._cancel(transaction.retransmit_timer)
        self._cancel(transaction.end_timer)
        transaction.retransmit_timer = transaction.end_timer = None
        if self._invites.get(transaction.key) is transaction:
            del self._invites[transaction.key]
        if transaction.merge_key is not None:
            if self._merge_index.get(transaction.merge_key) == transaction.key:
                del self._merge_index[transaction.merge_key]
            transaction.merge_key = None

    # ---- non-INVITE server transactions --------------------------------------------------------

    def _respond(
        self,
        request: _Request,
        status: int,
        now: float,
        *,
        extra: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
        to_tag: str | None = None,
    ) -> None:
        """Answer a non-INVITE request and keep the answer for its retransmissions (Timer J)."""
        if request.to_tag is None and to_tag is None:
            to_tag = self._token()  # §8.2.6.2: a final response carries a To-tag
        data = self._response(request, status, to_tag=to_tag, extra=extra, body=body)
        self._send(data, request.source)
        if request.source.transport is not Transport.UDP:
            return  # Timer J is 0 on reliable transports
        done = _NonInviteTransaction(request.key, request.source, data)
        self._non_invites[request.key] = done
        done.end_timer = self._schedule(
            now + 64 * self.settings.t1, lambda now: self._drop_non_invite(done)
        )

    def _drop_non_invite(self, done: _NonInviteTransaction) -> None:
        if self._non_invites.get(done.key) is done:
            del self._non_invites[done.key]

    # ---- our BYE -------------------------------------------------------------------------------

    def _send_bye(self, dialog: _Dialog, now: float) -> None:
        """§15.1.1: the call is over for us; the dialog lives until the BYE's transaction ends."""
        self._stop_2xx_retransmissions(dialog)
        self._end_refer(dialog)
        dialog.state = _DialogState.TERMINATING
        dialog.bye_pending = False
        dialog.bye = self._send_request(dialog, "BYE", now)

    def _send_request(
        self,
        dialog: _Dialog,
        method: str,
        now: float,
        *,
        extra: Sequence[tuple[str, str]] = (),
    ) -> _ClientTransaction:
        """An in-dialog request as a non-INVITE client transaction (§12.2.1.1, §17.1.2; protocols.md
        §5.5): From/To swapped, our next CSeq, the route set as Route, a new branch."""
        dialog.local_cseq += 1
        branch = MAGIC_COOKIE + self._token()
        transport = dialog.transport.value
        request_uri, routes, next_hops = self._request_target(dialog)
        fields: list[tuple[str, str]] = [
            (
                "Via",
                f"SIP/2.0/{transport} {self._via_host}:{self.settings.contact_port}"
                f";branch={branch};rport",
            ),
            *(("Route", route) for route in routes),
            ("Max-Forwards", "70"),
            ("From", dialog.local_uri),
            ("To", dialog.remote_uri),
            ("Call-ID", dialog.call_id),
            ("CSeq", f"{dialog.local_cseq} {method}"),
            *extra,
            ("User-Agent", self.settings.server),
        ]
        data = serialize(SipRequest(method, request_uri, Headers(tuple(fields))))
        peer = self._destination(dialog, next_hops)
        client = _ClientTransaction(
            method=method, branch=branch, data=data, peer=peer, dialog=dialog
        )
        self._clients[branch] = client
        self._send(data, peer)
        if peer.transport is Transport.UDP:
            client.interval = self.settings.t1
            client.retransmit_timer = self._schedule(
                now + self.settings.t1, lambda now: self._timer_e(client, now)
            )
        client.end_timer = self._schedule(
            now + 64 * self.settings.t1, lambda now: self._timer_f(client)
        )
        return client

    def _request_target(self, dialog: _Dialog) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
        """Request-URI, Route headers and the next hops to try (§12.2.1.1): loose routing puts
        the remote target in the Request-URI and sends to the first Route; a strict router (no
        ;lr) gets the Request-URI itself, and the remote target goes last in Route."""
        routes = dialog.route_set
        target = dialog.remote_target
        if not routes:
            return target, routes, (target,)
        try:
            first = SipUri.parse(NameAddr.parse(routes[0]).uri)
        except SipParseError:
            return target, routes, (routes[0], target)
        strict_uri = str(attrs.evolve(first, headers=""))
        if first.has_param("lr") or not _usable_request_uri(strict_uri):
            return target, routes, (routes[0], target)
        return strict_uri, (*routes[1:], f"<{target}>"), (strict_uri,)

    def _destination(self, dialog: _Dialog, next_hops: Sequence[str]) -> Peer:
        """The first next hop whose host is an IP literal, else where the INVITE came from (the
        core resolves no names)."""
        for text in next_hops:
            try:
                uri = SipUri.parse(NameAddr.parse(text).uri)
                ipaddress.ip_address(uri.host)
            except ValueError:  # SipParseError too
                continue
            default_port = 5061 if uri.scheme == "sips" else 5060
            return Peer(dialog.transport, uri.host, uri.port or default_port)
        return dialog.source

    def _timer_e(self, client: _ClientTransaction, now: float) -> None:
        client.retransmit_timer = None
        if client.state is _ClientState.COMPLETED:
            return
        self._resend(client.data, client.peer)
        if client.state is _ClientState.PROCEEDING:
            client.interval = self.settings.t2
        else:
            client.interval = min(2 * client.interval, self.settings.t2)
        client.retransmit_timer = self._schedule(
            now + client.interval, lambda now: self._timer_e(client, now)
        )

    def _timer_f(self, client: _ClientTransaction) -> None:
        """No final response within 64*T1: the transaction gives up (§17.1.2.2)."""
        client.end_timer = None
        refer = client.dialog.refer
        if refer is not None and refer.client is client and not refer.heard:
            seconds = 64 * self.settings.t1
            self._finish_refer(
                client.dialog,
                ReferTimedOut(client.dialog.call, f"no answer to the REFER within {seconds:g} s"),
            )
        self._drop_client(client)

    def _drop_client(self, client: _ClientTransaction) -> None:
        """Timer K or F: the request is done (answered or given up); a BYE's dialog too."""
        self._cancel(client.retransmit_timer)
        self._cancel(client.end_timer)
        client.retransmit_timer = client.end_timer = None
        if self._clients.get(client.branch) is client:
            del self._clients[client.branch]
        dialog = client.dialog
        if dialog.bye is client:
            dialog.bye = None
            self._forget_dialog(dialog)

    # ---- our REFER -----------------------------------------------------------------------------

    def _refer_answered(
        self, client: _ClientTransaction, response: SipResponse, now: float
    ) -> None:
        dialog = client.dialog
        refer = dialog.refer
        if refer is None or refer.client is not client:
            return  # the transfer is over already (a final NOTIFY overtook this, the call ended)
        event = ReferAnswered(dialog.call, response.status, response.reason)
        if response.status >= 300:
            self._finish_refer(dialog, event)
            return
        self._events.append(event)
        self._refer_heard(dialog, refer, now)

    def _refer_notified(self, dialog: _Dialog, request: _Request, now: float) -> None:
        """A NOTIFY already answered 200: the progress of our REFER, if it is about that."""
        refer = dialog.refer
        if refer is None or dialog.state is _DialogState.TERMINATING:
            return
        package, _, param_text = (request.headers.get("Event") or "").partition(";")
        if package.strip().lower() != "refer":
            return
        try:
            subscription_id = find_param(parse_params(param_text), "id")
        except SipParseError:
            subscription_id = None
        if subscription_id is not None and subscription_id != str(refer.cseq):
            return  # about an earlier REFER of this dialog (RFC 3515 §2.4.6)
        state = (request.headers.get("Subscription-State") or "").partition(";")[0]
        terminated = state.strip().lower() == "terminated"
        status, reason = _sipfrag_status(request.message.body)
        final = terminated or status >= 200
        progress = ReferProgress(dialog.call, status, reason, final)
        if final:
            self._finish_refer(dialog, progress)
            return
        self._events.append(progress)
        self._refer_heard(dialog, refer, now)

    def _refer_heard(self, dialog: _Dialog, refer: _Refer, now: float) -> None:
        """The peer has the REFER: from now on the final NOTIFY has 64*T1 to come."""
        if refer.heard:
            return
        refer.heard = True
        seconds = 64 * self.settings.t1

        def give_up(now: float) -> None:
            refer.notify_timer = None
            if dialog.refer is refer:
                detail = f"no final NOTIFY within {seconds:g} s of the REFER's acceptance"
                self._finish_refer(dialog, ReferTimedOut(dialog.call, detail))

        refer.notify_timer = self._schedule(now + seconds, give_up)

    def _finish_refer(
        self, dialog: _Dialog, event: ReferAnswered | ReferProgress | ReferTimedOut
    ) -> None:
        self._end_refer(dialog)
        self._events.append(event)

    def _end_refer(self, dialog: _Dialog) -> None:
        """Forget the REFER in progress, if any (its transaction runs on; answers raise nothing)."""
        refer = dialog.refer
        if refer is not None:
            self._cancel(refer.notify_timer)
            refer.notify_timer = None
            dialog.refer = None

    # ---- dialogs -------------------------------------------------------------------------------

    def _stop_2xx_retransmissions(self, dialog: _Dialog) -> None:
        for transaction in dialog.awaiting_ack.values():
            self._cancel(transaction.retransmit_timer)
            transaction.retransmit_timer = None
        dialog.awaiting_ack.clear()

    def _forget_dialog(self, dialog: _Dialog) -> None:
        self._stop_2xx_retransmissions(dialog)
        self._end_refer(dialog)
        if self._dialogs.get(dialog.key) is dialog:
            del self._dialogs[dialog.key]
        if self._calls.get(dialog.call) is dialog:
            del self._calls[dialog.call]

    # ---- SDP -----------------------------------------------------------------------------------

    def _read_offer(self, request: _Request) -> SessionDescription:
        if not _is_sdp(request.headers.get("Content-Type")):
            raise _Refusal(415, ("Accept", SDP))
        try:
            return SessionDescription.parse(request.message.body)
        except SdpError as error:
            raise _Refusal(400, self._warning(f"Unreadable SDP: {error}")) from None

    def _answer_body(
        self, dialog: _Dialog, offer: SessionDescription, audio: NegotiatedAudio
    ) -> bytes:
        return self._versioned(
            dialog,
            lambda version: build_answer(
                offer,
                audio,
                address=self.settings.contact_host,
                port=dialog.media_port,
                session_id=dialog.session_id,
                version=version,
                user=self.settings.user,
            ),
        )

    def _offer_body(self, dialog: _Dialog) -> bytes:
        # We offer sendrecv even while held: a re-INVITE without SDP is how a PBX or a third
        # party resumes a call (RFC 6337 §5.3), and the answer in the ACK says what they want.
        audio = attrs.evolve(dialog.audio, direction=Direction.SENDRECV)
        return self._versioned(
            dialog,
            lambda version: build_offer(
                audio,
                address=self.settings.contact_host,
                port=dialog.media_port,
                session_id=dialog.session_id,
                version=version,
                user=self.settings.user,
            ),
        )

    @staticmethod
    def _versioned(dialog: _Dialog, build: Callable[[int], bytes]) -> bytes:
        """RFC 3264 §8: the o= version goes up exactly when our description changes."""
        body = build(dialog.sdp_version)
        if dialog.last_sdp and body != dialog.last_sdp:
            dialog.sdp_version += 1
            body = build(dialog.sdp_version)
        dialog.last_sdp = body
        return body

    # ---- building messages ---------------------------------------------------------------------

    def _response(
        self,
        request: _Request,
        status: int,
        *,
        to_tag: str | None,
        record_route: bool = False,
        extra: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> bytes:
        """§8.2.6.2: Vias, From, To (+ our tag), Call-ID and CSeq copied from the request."""
        fields = [("Via", via) for via in request.vias]
        if record_route:
            fields += [("Record-Route", route) for route in request.headers.get_all("Record-Route")]
        to = request.to_raw
        if to_tag is not None and request.to_tag is None:
            to = f"{to};tag={to_tag}"
        fields += [
            ("From", request.from_raw),
            ("To", to),
            ("Call-ID", request.call_id),
            ("CSeq", request.cseq_raw),
            *extra,
            ("Server", self.settings.server),
        ]
        response = SipResponse(status, reason_phrase(status), Headers(tuple(fields)), body)
        return serialize(response)

    def _contact(self, transport: Transport) -> str:
        suffix = ";transport=tcp" if transport is Transport.TCP else ""
        user = self.settings.user
        return f"<sip:{user}@{self._via_host}:{self.settings.contact_port}{suffix}>"

    def _capabilities(self) -> list[tuple[str, str]]:
        return [("Allow", ALLOW), ("Accept", SDP)]

    def _warning(self, text: str) -> tuple[str, str]:
        cleaned = "".join(c for c in text if c.isprintable() and c not in '"\\')
        return ("Warning", f'399 {self._via_host} "{cleaned}"')

    def _check_require(self, request: _Request) -> None:
        unsupported = [
            tag
            for tag in request.headers.get_all("Require")
            if tag.lower() not in SUPPORTED_OPTION_TAGS
        ]
        if unsupported:
            raise _Refusal(420, ("Unsupported", ", ".join(unsupported)))

    @staticmethod
    def _remote_target(request: _Request) -> str | None:
        """The URI of the request's Contact (the dialog's remote target), if it has a usable one."""
        contacts = request.headers.get_all("Contact")
        if not contacts:
            return None
        try:
            uri = NameAddr.parse(contacts[0]).uri
        except SipParseError:
            return None
        return uri if _usable_request_uri(uri) else None

    def _token(self) -> str:
        return f"{self._rng.getrandbits(64):016x}"

    # ---- sending -------------------------------------------------------------------------------

    def _send(self, data: bytes, peer: Peer) -> None:
        self._outbox.append((data, peer))
        self._messages_out += 1

    def _resend(self, data: bytes, peer: Peer) -> None:
        self._send(data, peer)
        self._retransmissions += 1

    # ---- timers --------------------------------------------------------------------------------

    def _schedule(self, deadline: float, action: Callable[[float], None]) -> int:
        number = next(self._timer_numbers)
        self._timer_actions[number] = action
        heapq.heappush(self._heap, (deadline, number))
        return number

    def _cancel(self, number: int | None) -> None:
        if number is not None:
            self._timer_actions.pop(number, None)

    # ---- requests we cannot read ---------------------------------------------------------------

    def _answer_broken(
        self, method: str, headers: Headers, error: SipParseError, source: Peer
    ) -> None:
        """A stateless error response to a request we could read only partly, if its Via, From,
        To, Call-ID and CSeq are there to copy; never to an ACK (§17.1.1.3)."""
        if method == "ACK" or error.status is None:
            return
        self._answer_fields(list(headers.fields), error.status, error.reason, source)

    def _answer_unparsable(self, data: bytes, error: SipParseError, source: Peer) -> None:
        """The head itself did not parse (e.g. SIP/3.0 -> 505): salvage the five headers needed
        to answer by a plain line scan."""
        text = data.decode("utf-8", "surrogateescape").lstrip("\r\n")
        head = text.replace("\r\n", "\n").split("\n\n", 1)[0]
        lines = head.split("\n")
        start = lines[0].split()
        if not start or start[0].upper().startswith("SIP/") or start[0] == "ACK":
            return
        fields = []
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if colon:
                fields.append((_SALVAGE_NAMES.get(name.strip().lower(), ""), value.strip()))
        assert error.status is not None
        self._answer_fields(fields, error.status, error.reason, source)

    def _answer_fields(
        self, fields: list[tuple[str, str]], status: int, detail: str, source: Peer
    ) -> None:
        def values(name: str) -> list[str]:
            return [value for field, value in fields if field.lower() == name.lower()]

        vias = [via for value in values("Via") for via in split_list(value)]
        copied = [values(name) for name in ("From", "To", "Call-ID", "CSeq")]
        if not vias or not all(copied):
            return  # nothing to address the response to: drop it
        from_raw, to_raw, call_id, cseq_raw = (found[0] for found in copied)
        try:
            vias[0] = str(self._stamped_via(Via.parse(vias[0]), source))
            CSeq.parse(cseq_raw)
        except ValueError:
            return  # the peer could not match our answer to its request
        if "tag=" not in to_raw.lower():
            to_raw = f"{to_raw};tag={self._token()}"
        response_fields = [
            *(("Via", via) for via in vias),
            ("From", from_raw),
            ("To", to_raw),
            ("Call-ID", call_id),
            ("CSeq", cseq_raw),
            self._warning(detail),
            ("Server", self.settings.server),
        ]
        response = SipResponse(status, reason_phrase(status), Headers(tuple(response_fields)))
        self._send(serialize(response), source)


_SALVAGE_NAMES = {
    "via": "Via",
    "v": "Via",
    "from": "From",
    "f": "From",
    "to": "To",
    "t": "To",
    "call-id": "Call-ID",
    "i": "Call-ID",
    "cseq": "CSeq",
}


def _same_host(via_host: str, source_host: str) -> bool:
    try:
        return ipaddress.ip_address(via_host) == ipaddress.ip_address(source_host)
    except ValueError:
        return via_host.lower() == source_host.lower()


def _usable_request_uri(text: str) -> bool:
    """A sip: or sips: URI that can stand in a request line (no white space or controls)."""
    if any(ord(char) <= 0x20 or ord(char) == 0x7F for char in text):
        return False
    try:
        return SipUri.parse(text).scheme in ("sip", "sips")
    except SipParseError:
        return False


def _is_sdp(content_type: str | None) -> bool:
    """A body without Content-Type is taken as SDP (tolerance: SIP bodies are SDP in practice)."""
    if content_type is None:
        return True
    return content_type.split(";", 1)[0].strip().lower() == SDP


def _dtmf_digit(content_type: str | None, body: bytes) -> str | None:
    """The digit of an INFO body: application/dtmf-relay ``Signal=5`` or application/dtmf ``5``."""
    if content_type is None:
        return None
    kind = content_type.split(";", 1)[0].strip().lower()
    text = body.decode("ascii", "replace")
    value: str | None = None
    if kind == "application/dtmf-relay":
        for line in text.splitlines():
            name, equals, found = line.partition("=")
            if equals and name.strip().lower() == "signal":
                value = found.strip()
                break
    elif kind == "application/dtmf":
        value = text.strip()
    if not value:
        return None
    digit = _DTMF_EVENT_CODES.get(value, value.upper())
    return digit if digit in DTMF_DIGITS else None


def _address_header(text: str) -> str:
    """A Refer-To or Referred-By value: a URI in <brackets> (display name and header parameters
    kept); LocalProtocolError for anything that is no sip:, sips: or tel: URI, or could break
    the message (line breaks, controls)."""
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in text):
        raise LocalProtocolError(f"{text!r} holds control characters")
    stripped = text.strip()
    # A bare URI is bracketed whole: its ;params and ?headers belong to the URI, not the header.
    candidate = stripped if "<" in stripped else f"<{stripped}>"
    try:
        address = NameAddr.parse(candidate)
        SipUri.parse(address.uri)
    except SipParseError as error:
        raise LocalProtocolError(f"{text!r} is not a usable address: {error.reason}") from None
    if any(char in address.uri for char in ' \t"<>'):
        raise LocalProtocolError(f"{text!r} is not a usable address")
    return str(address)


def _sipfrag_status(body: bytes) -> tuple[int, str]:
    """The status of a message/sipfrag body's start line (RFC 3420): ``SIP/2.0 200 OK`` gives
    (200, "OK"); (0, why) when there is none to read."""
    text = body.decode("utf-8", "replace").lstrip("\r\n \t")
    line = text.splitlines()[0].strip() if text else ""
    version, _, rest = line.partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.upper().startswith("SIP/") or len(code) != 3 or not code.isdigit():
        return 0, "unreadable sipfrag"
    status = int(code)
    if not 100 <= status <= 699:
        return 0, "unreadable sipfrag"
    return status, reason.strip() or reason_phrase(status)
