"""Fixtures shared by the end-to-end tests."""

import pytest

from running import RuntimeDir


@pytest.fixture
def rt():
    """A private runtime directory for monitors and the `ukdbg` commands that find them."""
    r = RuntimeDir()
    yield r
    r.cleanup()
