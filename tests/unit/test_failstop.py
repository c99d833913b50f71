"""Fail-stop threads (bindha_rwx.failstop): death and stalls reach on_death; a frozen
process is not a stalled thread. Pure logic with a fake clock, plus one real thread."""

from __future__ import annotations

import threading

from bindha_rwx.failstop import Threads


def _threads(now: list[float]) -> tuple[Threads, list[tuple[str, str]], threading.Event]:
    deaths: list[tuple[str, str]] = []
    stopping = threading.Event()
    return Threads(lambda n, why: deaths.append((n, why)), stopping,
                   clock=lambda: now[0]), deaths, stopping


def test_an_exception_or_an_early_return_is_a_death():
    now = [0.0]
    threads, deaths, stopping = _threads(now)

    def boom() -> None:
        raise OSError(22, "sleep failed")

    threads.start("guard", boom).join(5)
    threads.start("elector", lambda: None).join(5)
    stopping.set()
    threads.start("watcher", lambda: None).join(5)  # returning while stopping is fine
    assert [d[0] for d in deaths] == ["guard", "elector"]
    assert "OSError" in deaths[0][1]


def test_a_thread_past_its_budget_is_stalled_but_a_frozen_process_is_not():
    now = [0.0]
    threads, _, stopping = _threads(now)
    hold = threading.Event()
    threads.start("controller", hold.wait, budget=7.0)
    threads.start("guard", hold.wait, budget=1.0)
    for _ in range(400):  # the guard ticks every 20 ms; the controller is stuck
        now[0] += 0.02
        stalled = threads.watchdog("guard", freeze_gap=0.5)
        if stalled:
            break
    assert stalled and "controller" in stalled and 7.0 < now[0] < 7.1
    # The whole process stood still for 30 s (SIGSTOP): budgets start again.
    now[0] += 30
    assert threads.watchdog("guard", freeze_gap=0.5) is None
    now[0] += 0.02
    assert threads.watchdog("guard", freeze_gap=0.5) is None
    stopping.set()
    now[0] += 100
    assert threads.stalled() is None  # the shutdown path has deadlines of its own
    hold.set()
