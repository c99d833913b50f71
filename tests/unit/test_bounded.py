"""bindha_rwx.bounded: calls a hung volume may block, with a deadline or with a voice."""

from __future__ import annotations

import threading

import pytest

from bindha_rwx.bounded import call_patiently, call_within


def test_call_within_gives_up_on_time_and_names_the_call():
    release = threading.Event()
    with pytest.raises(TimeoutError, match=r"reading the epoch did not finish within 0\.05s"):
        call_within(release.wait, 0.05, "reading the epoch")
    release.set()


def test_call_patiently_says_it_waits_each_tick_until_the_answer():
    answer = threading.Event()
    said: list[float] = []

    def waiting(seconds: float) -> None:
        said.append(seconds)
        if len(said) == 3:
            answer.set()

    def slow() -> str:
        answer.wait()
        return "done"

    assert call_patiently(slow, 0.01, waiting) == "done"
    assert len(said) >= 3 and said == sorted(said) and said[0] > 0


def test_call_patiently_raises_what_the_call_raised_and_says_nothing_when_quick():
    said: list[float] = []

    def broken() -> None:
        raise OSError(5, "Input/output error")

    with pytest.raises(OSError, match="Input/output error"):
        call_patiently(broken, 1.0, said.append)
    assert said == []
