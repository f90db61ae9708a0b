"""pytest fixtures for the SSH test host (import them in conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .testhost import TestHost


@pytest.fixture
def testhost(tmp_path: Path) -> Iterator[TestHost]:
    host = TestHost(tmp_path / "testhost")
    try:
        yield host
    finally:
        host.stop()


@pytest.fixture
def testhost_factory(tmp_path: Path) -> Iterator[object]:
    """Several test hosts in one test (e.g. a host and a bhyve guest)."""
    hosts: list[TestHost] = []

    def make(name: str) -> TestHost:
        host = TestHost(tmp_path / f"testhost-{name}")
        hosts.append(host)
        return host

    try:
        yield make
    finally:
        for host in hosts:
            host.stop()
