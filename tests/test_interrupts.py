"""Signals become exceptions, but never inside a protected block."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from batching import interrupts


@pytest.fixture
def installed() -> Iterator[None]:
    restore = interrupts.install()
    yield
    restore()


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_at_once_outside_a_protected_block(
    installed: None, signum: int, code: int
) -> None:
    with pytest.raises(interrupts.Interrupted) as caught:
        os.kill(os.getpid(), signum)
    assert caught.value.exit_code == code


def test_a_signal_inside_a_protected_block_waits_for_its_end(installed: None) -> None:
    finished = []
    with pytest.raises(interrupts.Interrupted), interrupts.protected():
        os.kill(os.getpid(), signal.SIGTERM)
        finished.append("the whole batch was written")
    assert finished == ["the whole batch was written"]


def test_install_is_undone() -> None:
    before = signal.getsignal(signal.SIGTERM)
    interrupts.install()()
    assert signal.getsignal(signal.SIGTERM) is before
