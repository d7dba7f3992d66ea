"""Deadline arithmetic: shares and caps of the time left."""

from __future__ import annotations

import math
import time

from verifier.deadline import Deadline


def test_share_is_a_fraction_of_the_time_left_and_never_later():
    d = Deadline.after(100.0)
    half = d.share(0.5)
    assert 49.0 < half.remaining() <= 50.0
    assert d.share(1.0) is d and d.share(2.0) is d
    assert d.share(0.0).expired()


def test_share_of_no_deadline_stays_unbounded_and_zero_share_is_now():
    d = Deadline()
    assert math.isinf(d.share(0.3).at)
    assert d.share(0.0).at <= time.monotonic()


def test_within_caps_at_the_earlier_point():
    d = Deadline.after(10.0)
    assert d.within(100.0).at == d.at
    assert 4.0 < d.within(5.0).remaining() <= 5.0
    assert d.within(-3.0).expired()
