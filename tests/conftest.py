from __future__ import annotations

import logging
from collections.abc import Iterator

import hypothesis
import pytest

# Every run tries the same examples (seeded from a digest of each test's source), so CI never fails
# on an example nobody has seen before; derandomize also turns the example database off. Per-test
# @settings (max_examples, deadline=None) still apply on top of the loaded profile. To hunt with
# fresh random examples locally: pytest --hypothesis-profile=explore (optionally with
# --hypothesis-seed=N to replay a run; the deterministic profile ignores that option).
# No per-example deadline either: a loaded CI machine must not turn a slow example into a failure.
hypothesis.settings.register_profile("deterministic", derandomize=True, deadline=None)
hypothesis.settings.register_profile("explore", derandomize=False)
hypothesis.settings.load_profile("deterministic")


@pytest.fixture(autouse=True)
def _restore_bridge_logging() -> Iterator[None]:
    """Commands under test call setup_logging(); give the next test pytest's own log capture."""
    logger = logging.getLogger("bridge")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved
