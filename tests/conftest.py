"""Shared fixtures. Tests that need root are marked and skip elsewhere with the reason."""

import os

import pytest

IS_ROOT = os.geteuid() == 0

needs_root = pytest.mark.skipif(
    not IS_ROOT, reason="needs root: mounts, namespaces and cgroups (CI runs as root)"
)


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty store in a temporary directory, used through CONTAINED_HOME."""
    path = tmp_path / "home"
    monkeypatch.setenv("CONTAINED_HOME", str(path))
    return path
