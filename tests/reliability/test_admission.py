"""The admission state machine of the server (xsell.server.interceptor.Admission), driven
directly: bursts are queued, a standing queue lowers the bound, idle arrivals raise it."""

from __future__ import annotations

import threading
import time

import pytest
from xsell.server.errors import DeadlineExpired
from xsell.server.interceptor import Admission


class Context:
    """The two ServicerContext methods Admission uses."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def time_remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())


def test_bursts_are_held_up_to_the_normal_bound():
    a = Admission(max_in_flight=6, threads=1, standing_after=10.0)
    tickets = [a.try_acquire() for _ in range(8)]
    assert [t is not None for t in tickets] == [True] * 6 + [False] * 2
    assert a.held == 6 and not a.overloaded
    for t in tickets[:6]:
        t.release()
        t.release()  # idempotent: the handler's finally and the GC finalizer may both call
    assert a.held == 0


def test_a_standing_queue_lowers_the_bound_and_idle_arrivals_raise_it():
    a = Admission(max_in_flight=10, threads=1, overload_in_flight=2, standing_after=0.05)
    running = a.try_acquire()
    a.take_slot(Context(5))  # idle arrival: takes the only slot
    assert not a.overloaded
    # Busy arrivals for longer than standing_after: each waits and gives up at its deadline.
    start = time.monotonic()
    while time.monotonic() - start < 0.2:
        t = a.try_acquire()
        if t is None:
            continue
        with pytest.raises(DeadlineExpired):
            a.take_slot(Context(0.01))
        t.release()
    assert a.overloaded
    held = [a.try_acquire() for _ in range(4)]  # one is running: room for one more
    assert sum(t is not None for t in held) == 1
    for t in held:
        if t is not None:
            t.release()
    # The load goes away: the running call ends, arrivals find the server idle again.
    a.slots.release()
    running.release()
    for _ in range(60):
        t = a.try_acquire()
        a.take_slot(Context(1))
        a.slots.release()
        t.release()
        if not a.overloaded:
            break
    assert not a.overloaded
    assert sum(a.try_acquire() is not None for _ in range(12)) == 10


def test_quiet_periods_are_not_overload():
    a = Admission(max_in_flight=4, threads=2, standing_after=0.02)
    time.sleep(0.05)  # nobody arrived for longer than standing_after: quiet, not standing
    tickets = [a.try_acquire() for _ in range(4)]
    assert all(t is not None for t in tickets) and not a.overloaded
    a.take_slot(Context(1))
    assert not a.overloaded


def test_waiters_are_served_in_arrival_order():
    a = Admission(max_in_flight=10, threads=1)
    a.take_slot(Context(5))
    order: list[int] = []

    def wait(k: int) -> None:
        a.take_slot(Context(5))
        order.append(k)
        a.slots.release()

    threads = []
    for k in range(5):
        t = threading.Thread(target=wait, args=(k,))
        t.start()
        threads.append(t)
        time.sleep(0.02)  # arrive one after the other
    a.slots.release()
    for t in threads:
        t.join(5)
    assert order == [0, 1, 2, 3, 4]
