"""Proportion statistics for campaign readouts: z-tests, Wilson and Newcombe intervals, lift."""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy.stats import norm

SEED_RELATIVE_LIFT = 0.15  # the seed's bar: personalised beats non-personalised by at least 15%
CONFIDENCE = 0.95


@dataclass(frozen=True)
class ZTest:
    z: float
    p_value: float


@dataclass(frozen=True)
class Interval:
    low: float
    high: float


@dataclass(frozen=True)
class Comparison:
    """An arm (x successes of n) against a baseline arm."""

    absolute_lift: float
    absolute_ci: Interval  # Newcombe hybrid score
    relative_lift: float
    relative_ci: Interval  # delta method on log(p_arm / p_baseline)
    p_value: float  # two-sided pooled two-proportion z-test


NAN_INTERVAL = Interval(math.nan, math.nan)


def z_critical(confidence: float = CONFIDENCE) -> float:
    return float(norm.ppf(0.5 + confidence / 2.0))


def two_proportion_z_test(x1: int, n1: int, x2: int, n2: int) -> ZTest:
    """Two-sided z-test of p1 = p2 with the pooled standard error."""
    if n1 == 0 or n2 == 0:
        return ZTest(math.nan, math.nan)
    pooled = (x1 + x2) / (n1 + n2)
    se = math.sqrt(pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2))
    if se == 0.0:  # both arms all-zero or all-one: no evidence of a difference
        return ZTest(0.0, 1.0)
    z = (x1 / n1 - x2 / n2) / se
    return ZTest(z, float(2.0 * norm.sf(abs(z))))


def wilson_interval(x: int, n: int, confidence: float = CONFIDENCE) -> Interval:
    z = z_critical(confidence)
    p = x / n
    centre = (x + z**2 / 2.0) / (n + z**2)
    half = z * math.sqrt(n) / (n + z**2) * math.sqrt(p * (1.0 - p) + z**2 / (4.0 * n))
    return Interval(centre - half, centre + half)


def wald_difference_ci(x1: int, n1: int, x2: int, n2: int, confidence: float = CONFIDENCE) -> Interval:
    p1, p2 = x1 / n1, x2 / n2
    half = z_critical(confidence) * math.sqrt(p1 * (1.0 - p1) / n1 + p2 * (1.0 - p2) / n2)
    return Interval(p1 - p2 - half, p1 - p2 + half)


def newcombe_difference_ci(x1: int, n1: int, x2: int, n2: int, confidence: float = CONFIDENCE) -> Interval:
    """Newcombe's hybrid score interval for p1 - p2 (his method 10): well behaved near 0 and 1,
    where the Wald interval is too narrow, and it never leaves [-1, 1]."""
    p1, p2 = x1 / n1, x2 / n2
    w1, w2 = wilson_interval(x1, n1, confidence), wilson_interval(x2, n2, confidence)
    low = p1 - p2 - math.sqrt((p1 - w1.low) ** 2 + (w2.high - p2) ** 2)
    high = p1 - p2 + math.sqrt((w1.high - p1) ** 2 + (p2 - w2.low) ** 2)
    return Interval(low, high)


def relative_lift(x1: int, n1: int, x2: int, n2: int) -> float:
    """p1 / p2 - 1 (NaN when the baseline rate is 0)."""
    p2 = x2 / n2
    return (x1 / n1) / p2 - 1.0 if p2 > 0 else math.nan


def relative_lift_ci(x1: int, n1: int, x2: int, n2: int, confidence: float = CONFIDENCE) -> Interval:
    """CI of p1 / p2 - 1 by the delta method on the log risk ratio (Katz):
    Var(log p1/p2) = (1 - p1) / x1 + (1 - p2) / x2. Undefined (NaN) when either arm has no successes."""
    if x1 == 0 or x2 == 0:
        return NAN_INTERVAL
    log_ratio = math.log((x1 / n1) / (x2 / n2))
    se = math.sqrt((1.0 - x1 / n1) / x1 + (1.0 - x2 / n2) / x2)
    half = z_critical(confidence) * se
    return Interval(math.exp(log_ratio - half) - 1.0, math.exp(log_ratio + half) - 1.0)


def compare_proportions(x1: int, n1: int, x2: int, n2: int, confidence: float = CONFIDENCE) -> Comparison:
    """Arm (x1 of n1) against baseline (x2 of n2): absolute and relative lift, CIs, p-value."""
    if n1 == 0 or n2 == 0:
        return Comparison(math.nan, NAN_INTERVAL, math.nan, NAN_INTERVAL, math.nan)
    return Comparison(
        absolute_lift=x1 / n1 - x2 / n2,
        absolute_ci=newcombe_difference_ci(x1, n1, x2, n2, confidence),
        relative_lift=relative_lift(x1, n1, x2, n2),
        relative_ci=relative_lift_ci(x1, n1, x2, n2, confidence),
        p_value=two_proportion_z_test(x1, n1, x2, n2).p_value,
    )


def meets_seed_criterion(comparison: Comparison) -> bool | None:
    if math.isnan(comparison.relative_lift):
        return None
    return comparison.relative_lift >= SEED_RELATIVE_LIFT


def seed_criterion_significant(comparison: Comparison) -> bool | None:
    """True when the whole CI lies at or above the bar (a one-sided test of lift < 15% at 2.5%)."""
    if math.isnan(comparison.relative_ci.low):
        return None
    return comparison.relative_ci.low >= SEED_RELATIVE_LIFT
