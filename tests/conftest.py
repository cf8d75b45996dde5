from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _restore_bridge_logging() -> Iterator[None]:
    """Commands under test call setup_logging(); give the next test pytest's own log capture."""
    logger = logging.getLogger("bridge")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved
