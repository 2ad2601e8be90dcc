"""Lease owners on one machine: a killed local worker is recognised as gone."""

from __future__ import annotations

import os
import socket
import subprocess

import pytest

from promptdrop.usecases.context import default_owner, owner_is_dead_local_process


def _finished_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


@pytest.mark.parametrize(
    ("owner", "dead"),
    [
        pytest.param(
            lambda: f"{socket.gethostname()}-{_finished_pid()}-abcd1234", True, id="exited-local-process"
        ),
        pytest.param(default_owner, False, id="this-process"),
        pytest.param(lambda: f"{socket.gethostname()}-1-abcd1234", False, id="alive-pid-1"),
        pytest.param(lambda: f"some-other-host-{os.getpid() + 1}-abcd1234", False, id="other-host"),
        pytest.param(lambda: "garbage", False, id="not-an-owner-id"),
    ],
)
def test_owner_is_dead_local_process(owner: object, dead: bool) -> None:
    """Only a process of this host that no longer exists counts as dead; anything unsure counts as alive."""
    assert owner_is_dead_local_process(owner()) is dead  # type: ignore[operator]
