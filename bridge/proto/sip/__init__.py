"""SIP for the bridge's UAS (RFC 3261): messages, header values, SDP offer/answer, transactions."""
