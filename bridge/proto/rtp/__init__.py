"""RTP media for SIP calls (protocols.md §4): packets, RFC 4733 DTMF, jitter buffer, session."""
