"""SIPp scenarios (XML) for tests/test_e2e_sip.py; no Python here."""
