from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.call.events import Codec
from bridge.proto.sip.sdp import (
    Direction,
    MediaDescription,
    NegotiatedAudio,
    OfferRejected,
    SdpError,
    SessionDescription,
    build_answer,
    build_offer,
    negotiate,
)

BOTH = (Codec.PCMU, Codec.PCMA)


def sdp(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode()


# protocols.md §7.1, the SIPp UAC scenario: telephone-event on PT 96, events 0-15.
SIPP_OFFER = sdp("""v=0
o=sipp 1 1 IN IP4 127.0.0.1
s=-
c=IN IP4 127.0.0.1
t=0 0
m=audio 6000 RTP/AVP 0 8 96
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:96 telephone-event/8000
a=fmtp:96 0-15
a=ptime:20
a=sendrecv
""")

# protocols.md §7.2, baresip 1.0.0's offer shape (no rtpmap for the static types).
BARESIP_OFFER = sdp("""v=0
o=- 1234567890 1234567890 IN IP4 127.0.0.1
s=-
c=IN IP4 127.0.0.1
t=0 0
m=audio 10000 RTP/AVP 0 8 101
b=AS:64
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-15
a=sendrecv
a=label:1
a=ssrc:2946785373 cname:6c5a0a76
a=rtcp-rsize
""")

# protocols.md §5.3, a trunk's offer with PCMA first.
CARRIER_OFFER = sdp("""v=0
o=gw 1 1 IN IP4 198.51.100.7
s=-
c=IN IP4 198.51.100.7
t=0 0
m=audio 30000 RTP/AVP 8 0 101
a=rtpmap:8 PCMA/8000
a=rtpmap:0 PCMU/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=ptime:20
a=sendrecv
""")

# protocols.md §5.3, the bridge's answer to CARRIER_OFFER.
CARRIER_ANSWER = sdp("""v=0
o=bridge 8241 1 IN IP4 203.0.113.10
s=-
c=IN IP4 203.0.113.10
t=0 0
m=audio 40000 RTP/AVP 8 101
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=ptime:20
a=sendrecv
""")


def offer(media: str, *, session: str = "c=IN IP4 192.0.2.1\n") -> SessionDescription:
    return SessionDescription.parse(
        sdp(f"v=0\no=peer 5 7 IN IP4 192.0.2.1\ns=-\n{session}t=0 0\n{media}")
    )


def answer_for(description: SessionDescription, negotiated: NegotiatedAudio) -> SessionDescription:
    return SessionDescription.parse(
        build_answer(
            description, negotiated, address="203.0.113.10", port=40000, session_id=9, version=3
        )
    )


# ---- parsing -----------------------------------------------------------------------------------


def test_parse_sipp_offer() -> None:
    description = SessionDescription.parse(SIPP_OFFER)
    assert description.origin == "sipp 1 1 IN IP4 127.0.0.1"
    assert description.origin_version == 1
    assert description.connection == "127.0.0.1"
    assert description.direction is None
    assert description.media == (
        MediaDescription(
            media="audio",
            port=6000,
            proto="RTP/AVP",
            formats=("0", "8", "96"),
            connection=None,
            rtpmap={0: "PCMU/8000", 8: "PCMA/8000", 96: "telephone-event/8000"},
            fmtp={96: "0-15"},
            direction=Direction.SENDRECV,
            ptime=20,
            attributes=(
                ("rtpmap", "0 PCMU/8000"),
                ("rtpmap", "8 PCMA/8000"),
                ("rtpmap", "96 telephone-event/8000"),
                ("fmtp", "96 0-15"),
                ("ptime", "20"),
                ("sendrecv", None),
            ),
        ),
    )
    assert description.media[0].attribute("fmtp") == "96 0-15"
    assert description.media[0].attribute("sendrecv") == ""


def test_negotiate_sipp_offer() -> None:
    assert negotiate(SessionDescription.parse(SIPP_OFFER), BOTH) == NegotiatedAudio(
        codec=Codec.PCMU,
        payload_type=0,
        dtmf_payload_type=96,
        remote_host="127.0.0.1",
        remote_port=6000,
        direction=Direction.SENDRECV,
        ptime=20,
        audio_index=0,
    )


def test_negotiate_baresip_offer_without_static_rtpmaps() -> None:
    negotiated = negotiate(SessionDescription.parse(BARESIP_OFFER), (Codec.PCMA,))
    assert (negotiated.codec, negotiated.payload_type) == (Codec.PCMA, 8)
    assert negotiated.dtmf_payload_type == 101
    assert (negotiated.remote_host, negotiated.remote_port) == ("127.0.0.1", 10000)
    assert negotiated.ptime == 20


def test_preference_decides_between_offered_codecs() -> None:
    carrier = SessionDescription.parse(CARRIER_OFFER)
    assert negotiate(carrier, (Codec.PCMU, Codec.PCMA)).codec is Codec.PCMU
    assert negotiate(carrier, (Codec.PCMA, Codec.PCMU)).codec is Codec.PCMA
    assert negotiate(carrier, (Codec.PCMU,)).payload_type == 0


def test_carrier_answer_is_the_reference_answer() -> None:
    carrier = SessionDescription.parse(CARRIER_OFFER)
    negotiated = negotiate(carrier, (Codec.PCMA, Codec.PCMU))
    answer = build_answer(
        carrier, negotiated, address="203.0.113.10", port=40000, session_id=8241, version=1
    )
    assert answer == CARRIER_ANSWER


def test_media_level_connection_wins_over_session_level() -> None:
    description = offer(
        "m=audio 4000 RTP/AVP 0\nc=IN IP4 198.51.100.9\n",
        session="c=IN IP4 192.0.2.1\n",
    )
    assert description.connection == "192.0.2.1"
    assert description.media[0].connection == "198.51.100.9"
    assert negotiate(description, BOTH).remote_host == "198.51.100.9"


def test_media_level_connection_only() -> None:
    description = offer("m=audio 4000 RTP/AVP 0\nc=IN IP4 198.51.100.9/127\n", session="")
    assert description.connection is None
    assert negotiate(description, BOTH).remote_host == "198.51.100.9"


def test_no_connection_at_all_is_rejected() -> None:
    with pytest.raises(OfferRejected) as caught:
        negotiate(offer("m=audio 4000 RTP/AVP 0\n", session=""), BOTH)
    assert caught.value.status == 488


def test_legacy_hold_with_zero_address_is_inactive() -> None:
    description = offer("m=audio 4000 RTP/AVP 0\na=sendrecv\n", session="c=IN IP4 0.0.0.0\n")
    negotiated = negotiate(description, BOTH)
    assert negotiated.direction is Direction.INACTIVE
    assert b"a=inactive\r\n" in build_answer(
        description, negotiated, address="203.0.113.10", port=40000, session_id=1, version=2
    )


@pytest.mark.parametrize(
    ("session_attribute", "media_attribute", "offered", "answered"),
    [
        ("", "", Direction.SENDRECV, Direction.SENDRECV),
        ("", "a=sendonly\n", Direction.SENDONLY, Direction.RECVONLY),
        ("", "a=recvonly\n", Direction.RECVONLY, Direction.SENDONLY),
        ("", "a=inactive\n", Direction.INACTIVE, Direction.INACTIVE),
        ("a=sendonly\n", "", Direction.SENDONLY, Direction.RECVONLY),
        ("a=inactive\n", "", Direction.INACTIVE, Direction.INACTIVE),
        ("a=recvonly\n", "a=sendrecv\n", Direction.SENDRECV, Direction.SENDRECV),
        ("a=sendrecv\n", "a=sendonly\n", Direction.SENDONLY, Direction.RECVONLY),
    ],
)
def test_direction_mapping(
    session_attribute: str, media_attribute: str, offered: Direction, answered: Direction
) -> None:
    description = offer(
        f"m=audio 4000 RTP/AVP 0\n{media_attribute}",
        session=f"c=IN IP4 192.0.2.1\n{session_attribute}",
    )
    assert description.media_direction(0) is offered
    negotiated = negotiate(description, BOTH)
    assert negotiated.direction is answered
    assert answer_for(description, negotiated).media[0].direction is answered


def test_direction_override_in_the_answer() -> None:
    description = SessionDescription.parse(SIPP_OFFER)
    negotiated = negotiate(description, BOTH)
    answer = build_answer(
        description,
        negotiated,
        address="203.0.113.10",
        port=40000,
        session_id=9,
        version=3,
        direction=Direction.SENDONLY,
    )
    assert SessionDescription.parse(answer).media[0].direction is Direction.SENDONLY


def test_video_and_image_are_refused_with_port_zero() -> None:
    description = offer(
        "m=video 5000 RTP/AVP 96 97\na=rtpmap:96 H264/90000\na=rtpmap:97 VP8/90000\n"
        "m=audio 4000 RTP/AVP 8 0 101\na=rtpmap:101 telephone-event/8000\n"
        "m=image 6000 udptl t38\na=T38FaxVersion:0\n"
    )
    negotiated = negotiate(description, BOTH)
    assert negotiated.audio_index == 1
    assert (negotiated.codec, negotiated.payload_type) == (Codec.PCMU, 0)
    answer = answer_for(description, negotiated)
    assert [(m.media, m.port, m.proto, m.formats) for m in answer.media] == [
        ("video", 0, "RTP/AVP", ("96", "97")),
        ("audio", 40000, "RTP/AVP", ("0", "101")),
        ("image", 0, "udptl", ("t38",)),
    ]


def test_srtp_only_is_488() -> None:
    description = offer(
        "m=audio 4000 RTP/SAVP 0 8\n"
        "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\n"
    )
    with pytest.raises(OfferRejected) as caught:
        negotiate(description, BOTH)
    assert caught.value.status == 488
    assert "SRTP" in caught.value.reason


def test_srtp_and_rtp_alternatives_take_the_rtp_one() -> None:
    description = offer("m=audio 4000 RTP/SAVP 0\nm=audio 4002 RTP/AVP 0\n")
    negotiated = negotiate(description, BOTH)
    assert (negotiated.audio_index, negotiated.remote_port) == (1, 4002)
    answer = answer_for(description, negotiated)
    assert [(m.port, m.proto) for m in answer.media] == [(0, "RTP/SAVP"), (40000, "RTP/AVP")]


def test_no_common_codec_is_488() -> None:
    description = offer(
        "m=audio 4000 RTP/AVP 9 111 101\na=rtpmap:9 G722/8000\na=rtpmap:111 opus/48000/2\n"
        "a=rtpmap:101 telephone-event/8000\n"
    )
    with pytest.raises(OfferRejected) as caught:
        negotiate(description, BOTH)
    assert (caught.value.status, caught.value.reason) == (488, "No common codec")


def test_no_audio_is_488() -> None:
    with pytest.raises(OfferRejected) as caught:
        negotiate(offer("m=video 5000 RTP/AVP 96\n"), BOTH)
    assert caught.value.status == 488
    with pytest.raises(OfferRejected):
        negotiate(offer("m=audio 0 RTP/AVP 0\n"), BOTH)


def test_dynamic_payload_type_for_pcmu() -> None:
    description = offer(
        "m=audio 4000 RTP/AVP 112 8 100\n"
        "a=rtpmap:112 PCMU/8000\n"
        "a=rtpmap:100 TELEPHONE-EVENT/8000\n"
    )
    negotiated = negotiate(description, (Codec.PCMU,))
    assert (negotiated.codec, negotiated.payload_type, negotiated.dtmf_payload_type) == (
        Codec.PCMU,
        112,
        100,
    )
    answer = answer_for(description, negotiated)
    assert answer.media[0].formats == ("112", "100")
    assert answer.media[0].rtpmap == {112: "PCMU/8000", 100: "telephone-event/8000"}


def test_static_payload_type_remapped_by_rtpmap_is_not_g711() -> None:
    description = offer("m=audio 4000 RTP/AVP 0\na=rtpmap:0 G722/8000\n")
    with pytest.raises(OfferRejected):
        negotiate(description, BOTH)


def test_wideband_telephone_event_is_not_ours() -> None:
    description = offer("m=audio 4000 RTP/AVP 0 102\na=rtpmap:102 telephone-event/16000\n")
    assert negotiate(description, BOTH).dtmf_payload_type is None
    answer = answer_for(description, negotiate(description, BOTH))
    assert answer.media[0].formats == ("0",)
    assert answer.media[0].fmtp == {}


def test_formats_above_127_are_not_payload_types() -> None:
    # RTP's PT field has 7 bits: an event on 200 could never be sent, so it is not negotiated
    description = offer("m=audio 4000 RTP/AVP 0 200\na=rtpmap:200 telephone-event/8000\n")
    negotiated = negotiate(description, BOTH)
    assert (negotiated.payload_type, negotiated.dtmf_payload_type) == (0, None)
    assert answer_for(description, negotiated).media[0].formats == ("0",)
    # a valid telephone-event after an invalid one is still found
    both = offer(
        "m=audio 4000 RTP/AVP 0 200 101\n"
        "a=rtpmap:200 telephone-event/8000\na=rtpmap:101 telephone-event/8000\n"
    )
    assert negotiate(both, BOTH).dtmf_payload_type == 101


@pytest.mark.parametrize("payload_type", ["128", "200", "999"])
def test_a_codec_only_above_127_is_no_common_codec(payload_type: str) -> None:
    description = offer(f"m=audio 4000 RTP/AVP {payload_type}\na=rtpmap:{payload_type} PCMU/8000\n")
    with pytest.raises(OfferRejected) as caught:
        negotiate(description, BOTH)
    assert (caught.value.status, caught.value.reason) == (488, "No common codec")
    # and a later audio m-line can still be chosen
    two_lines = offer(
        f"m=audio 4000 RTP/AVP {payload_type}\na=rtpmap:{payload_type} PCMU/8000\n"
        "m=audio 4002 RTP/AVP 127\na=rtpmap:127 PCMU/8000\n"
    )
    negotiated = negotiate(two_lines, BOTH)
    assert (negotiated.audio_index, negotiated.payload_type) == (1, 127)


def test_ptime_media_level_then_session_level() -> None:
    assert negotiate(offer("m=audio 4000 RTP/AVP 0\na=ptime:30\n"), BOTH).ptime == 30
    session_ptime = offer("m=audio 4000 RTP/AVP 0\n", session="c=IN IP4 192.0.2.1\na=ptime:40\n")
    assert negotiate(session_ptime, BOTH).ptime == 40
    assert negotiate(offer("m=audio 4000 RTP/AVP 0\na=ptime:bad\n"), BOTH).ptime == 20


def test_unknown_lines_are_tolerated() -> None:
    description = SessionDescription.parse(
        sdp("""v=0
o=- 3 3 IN IP4 192.0.2.7
s=call
i=information
u=http://example.com/
e=ops@example.com
b=CT:128
c=IN IP4 192.0.2.7
t=0 0
r=7d 1h 0 25h
z=2882844526 -1h
k=prompt
a=group:BUNDLE 0
a=ice-lite
m=audio 7000 RTP/AVPF 0 13
i=voice
b=AS:80
k=clear:secret
a=mid:0
a=candidate:1 1 UDP 2130706431 192.0.2.7 7000 typ host
a=rtcp:7001 IN IP4 192.0.2.7
a=rtcp-fb:* nack
a=rtpmap:13 CN/8000
a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level
this line is not SDP at all
""")
    )
    assert description.attribute("ice-lite") == ""
    media = description.media[0]
    assert (media.proto, media.rtpmap) == ("RTP/AVPF", {13: "CN/8000"})
    assert media.attribute("candidate") == "1 1 UDP 2130706431 192.0.2.7 7000 typ host"
    negotiated = negotiate(description, BOTH)
    assert (negotiated.payload_type, negotiated.remote_host) == (0, "192.0.2.7")
    assert answer_for(description, negotiated).media[0].proto == "RTP/AVPF"


def test_ipv6_offer_and_answer() -> None:
    description = offer("m=audio 4000 RTP/AVP 0\n", session="c=IN IP6 2001:db8::7\n")
    negotiated = negotiate(description, BOTH)
    assert negotiated.remote_host == "2001:db8::7"
    answer = build_answer(
        description, negotiated, address="2001:db8::1", port=40000, session_id=5, version=6
    )
    assert b"o=bridge 5 6 IN IP6 2001:db8::1\r\n" in answer
    assert b"c=IN IP6 2001:db8::1\r\n" in answer


def test_answer_keeps_the_given_origin_and_user() -> None:
    description = SessionDescription.parse(SIPP_OFFER)
    answer = build_answer(
        description,
        negotiate(description, BOTH),
        address="192.0.2.10",
        port=41000,
        session_id=77,
        version=12,
        user="ai",
    )
    assert answer.startswith(b"v=0\r\no=ai 77 12 IN IP4 192.0.2.10\r\ns=-\r\n")
    parsed = SessionDescription.parse(answer)
    assert parsed.origin_version == 12
    assert parsed.connection == "192.0.2.10"
    # telephone-event keeps the offer's PT 96 and is answered with events 0-16.
    assert parsed.media[0].formats == ("0", "96")
    assert parsed.media[0].fmtp == {96: "0-16"}
    assert parsed.media[0].ptime == 20
    assert answer.endswith(b"\r\n") and b"\n" not in answer.replace(b"\r\n", b"")


def test_build_offer() -> None:
    negotiated = NegotiatedAudio(
        codec=Codec.PCMA,
        payload_type=8,
        dtmf_payload_type=101,
        remote_host="198.51.100.7",
        remote_port=30000,
        direction=Direction.SENDRECV,
    )
    assert (
        build_offer(negotiated, address="203.0.113.10", port=40000, session_id=8241, version=1)
        == CARRIER_ANSWER
    )
    without_dtmf = NegotiatedAudio(Codec.PCMU, 0, None, "198.51.100.7", 30000, Direction.RECVONLY)
    parsed = SessionDescription.parse(
        build_offer(without_dtmf, address="::1", port=40002, session_id=1, version=2)
    )
    assert parsed.media[0].formats == ("0",)
    assert parsed.media[0].direction is Direction.RECVONLY
    assert parsed.connection == "::1"


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\r\n",
        b"hello",
        b"o=x 1 1 IN IP4 1.2.3.4\r\nv=0\r\n",
        b"v=1\r\n",
        b"v=0\r\nm=audio\r\n",
        b"v=0\r\nm=audio x RTP/AVP 0\r\n",
        b"v=0\r\nm=audio 70000 RTP/AVP 0\r\n",
        b"v=0\r\nc=IN\r\n",
        b"v=0\r\nc=XX IP4 1.2.3.4\r\n",
    ],
)
def test_hopeless_input_is_sdp_error(body: bytes) -> None:
    with pytest.raises(SdpError):
        SessionDescription.parse(body)


def test_bare_lf_and_non_utf8_are_tolerated() -> None:
    body = SIPP_OFFER.replace(b"\r\n", b"\n").replace(b"s=-", b"s=caf\xe9")
    assert negotiate(SessionDescription.parse(body), BOTH).payload_type == 0


# ---- Hypothesis --------------------------------------------------------------------------------


@given(st.text(max_size=400))
def test_parse_raises_only_sdp_error_on_random_text(text: str) -> None:
    try:
        SessionDescription.parse(text.encode("utf-8", "surrogatepass"))
    except SdpError:
        pass


SDP_LINE = st.one_of(
    st.from_regex(r"[a-z]=[ -~]{0,30}", fullmatch=True),
    st.from_regex(
        r"m=(audio|video|image) [0-9]{1,6}(/2)? (RTP/AVP|RTP/SAVP|udptl)( [0-9a-z]{1,3}){0,4}",
        fullmatch=True,
    ),
    st.from_regex(r"c=IN IP[46] [0-9a-f.:]{1,20}", fullmatch=True),
    st.from_regex(r"a=(rtpmap|fmtp|ptime|sendonly|recvonly|inactive):[ -~]{0,20}", fullmatch=True),
    st.from_regex(r"a=rtpmap:[0-9]{1,3} (PCMU|PCMA|telephone-event)/[0-9]{1,5}", fullmatch=True),
)


@given(st.lists(SDP_LINE, max_size=20))
def test_sdp_shaped_input_parses_or_raises_sdp_error_and_answers_keep_the_m_lines(
    lines: list[str],
) -> None:
    try:
        description = SessionDescription.parse(("v=0\r\n" + "\r\n".join(lines)).encode())
    except SdpError:
        return
    try:
        negotiated = negotiate(description, BOTH)
    except OfferRejected as rejected:
        assert rejected.status == 488
        return
    answer = answer_for(description, negotiated)
    assert len(answer.media) == len(description.media)
    for index, (ours, theirs) in enumerate(zip(answer.media, description.media, strict=True)):
        assert ours.media == theirs.media
        if index == negotiated.audio_index:
            assert ours.port == 40000
            assert ours.formats[0] == str(negotiated.payload_type)
            assert set(ours.formats) <= set(theirs.formats)
        else:
            assert (ours.port, ours.formats) == (0, theirs.formats)
