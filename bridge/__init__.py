"""bridge: a telephony bridge daemon from phone calls (G.711) to realtime speech models."""

__version__ = "0.1.0"
