"""raise_fd_limit lifts the soft limit on open files towards what is asked, never past the hard."""

from __future__ import annotations

import resource
from collections.abc import Iterator

import pytest

from broker._rlimit import UNLIMITED_TARGET, raise_fd_limit

#: The soft limit each test starts from; the hard limit must leave room above it.
LOW = 256


@pytest.fixture
def hard() -> Iterator[int]:
    """Start at a soft limit of `LOW`; put the process's limits back afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4 * LOW:
        pytest.skip(f"the hard RLIMIT_NOFILE ({hard}) leaves no room to raise the soft one")
    resource.setrlimit(resource.RLIMIT_NOFILE, (LOW, hard))
    try:
        yield hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def soft_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def test_lifts_the_soft_limit_to_what_is_wanted(hard: int) -> None:
    assert raise_fd_limit(LOW + 1) == LOW + 1 == soft_limit()
    assert raise_fd_limit(2 * LOW) == 2 * LOW == soft_limit()


def test_leaves_a_limit_that_is_already_enough(hard: int) -> None:
    assert raise_fd_limit(LOW) == LOW == soft_limit()
    assert raise_fd_limit(LOW - 1) == LOW == soft_limit(), "it never lowers the limit"
    assert raise_fd_limit(0) == LOW == soft_limit()


def test_stops_at_the_hard_limit(hard: int) -> None:
    if hard == resource.RLIM_INFINITY:
        pytest.skip("the hard limit is unlimited")
    assert raise_fd_limit(hard + 1) == hard == soft_limit()


def test_without_a_number_lifts_to_the_hard_limit(hard: int) -> None:
    expected = UNLIMITED_TARGET if hard == resource.RLIM_INFINITY else hard
    assert raise_fd_limit() == expected == soft_limit()
