"""Entropy targets: hand-computed schedule values and argument validation."""

import math

import pytest

from epr_lightning.callbacks import FixedEntropy, InitialEntropy, ScheduledEntropy
from epr_lightning.callbacks.targets import schedule_value


def test_initial_entropy_scales_the_iteration0_entropy():
    assert InitialEntropy().value(0, 2.5) == 2.5
    assert InitialEntropy(scale=0.8).value(17, 2.5) == pytest.approx(2.0)  # 0.8 * 2.5


def test_fixed_entropy_ignores_the_initial_entropy():
    t = FixedEntropy(1.25)
    assert t.value(0, 9.0) == 1.25 and t.value(1000, 0.1) == 1.25


def test_linear_schedule_hand_values():
    # start 2, end 1 over 4 iterations: 2, 1.75, 1.5, 1.25, 1, then held at 1
    t = ScheduledEntropy(start=2.0, end=1.0, num_iterations=4, kind="linear")
    assert [t.value(i, 123.0) for i in range(6)] == pytest.approx([2.0, 1.75, 1.5, 1.25, 1.0, 1.0])


def test_cosine_schedule_hand_values():
    # end + (start-end)(1+cos(pi t))/2: t=0 -> 2; t=.5 -> 1.5; t=.25 -> 1 + (1+cos(pi/4))/2 = 1.853553
    t = ScheduledEntropy(start=2.0, end=1.0, num_iterations=4, kind="cosine")
    assert t.value(0, 0.0) == pytest.approx(2.0)
    assert t.value(1, 0.0) == pytest.approx(1 + (1 + math.cos(math.pi / 4)) / 2)
    assert t.value(2, 0.0) == pytest.approx(1.5)
    assert t.value(4, 0.0) == pytest.approx(1.0) and t.value(99, 0.0) == pytest.approx(1.0)


def test_constant_and_relative_schedules():
    assert ScheduledEntropy(start=0.7, end=0.1, num_iterations=3, kind="constant").value(5, 1.0) == 0.7
    # relative: multiples of the initial entropy 3.0; linear 1.0 -> 0.5 over 2: iteration 1 -> 0.75 * 3 = 2.25
    t = ScheduledEntropy(start=1.0, end=0.5, num_iterations=2, relative=True)
    assert t.value(1, 3.0) == pytest.approx(2.25)
    assert t.value(2, 3.0) == pytest.approx(1.5)


def test_schedule_value_rejects_unknown_kind():
    with pytest.raises(ValueError, match="kind"):
        schedule_value(1.0, 0.0, 2, "exponential", 0)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: InitialEntropy(scale=0.0), "scale"),
        (lambda: InitialEntropy(scale=float("nan")), "scale"),
        (lambda: FixedEntropy(-1.0), "FixedEntropy.value"),
        (lambda: ScheduledEntropy(start=-0.1, end=1.0, num_iterations=2), "start"),
        (lambda: ScheduledEntropy(start=1.0, end=float("inf"), num_iterations=2), "end"),
        (lambda: ScheduledEntropy(start=1.0, end=0.5, num_iterations=0), "num_iterations"),
        (lambda: ScheduledEntropy(start=1.0, end=0.5, num_iterations=2.5), "num_iterations"),
        (lambda: ScheduledEntropy(start=1.0, end=0.5, num_iterations=2, kind="step"), "kind"),
    ],
)
def test_bad_arguments_raise_clear_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()
