"""Tests for igkd.experiments.stats against hand-computed and published values."""

import csv
import io
import itertools
import math
import statistics

import numpy as np
import pytest
from scipy.stats import nct, norm
from scipy.stats import t as t_dist

from igkd.experiments.stats import (
    VERDICT_RULE,
    compare,
    compare_pairs,
    compare_to_baseline,
    describe,
    equivalence,
    paired_samples,
    power,
    verdict,
)

# Student's (1908) sleep data: extra hours of sleep under two drugs, same 10 patients.
SLEEP_1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
SLEEP_2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]

A = [91.2, 90.8, 91.9, 90.5, 91.4, 92.0, 90.9]
B = [90.1, 90.9, 91.0, 89.8, 90.2, 91.1, 90.0]


def holm_by_hand(p: list[float]) -> list[float]:
    """Holm step-down: sort, multiply the i-th smallest by (m - i), running max, cap at 1."""
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    out, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, (m - rank) * p[i])
        out[i] = min(1.0, running)
    return out


def paired_t_by_hand(a, b):
    d = [x - y for x, y in zip(a, b)]
    n = len(d)
    t = statistics.mean(d) / (statistics.stdev(d) / math.sqrt(n))
    return t, n - 1, 2 * t_dist.cdf(-abs(t), n - 1)


def welch_by_hand(a, b):
    q1, q2 = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    t = (statistics.mean(a) - statistics.mean(b)) / math.sqrt(q1 + q2)
    df = (q1 + q2) ** 2 / (q1**2 / (len(a) - 1) + q2**2 / (len(b) - 1))
    return t, df, 2 * t_dist.cdf(-abs(t), df)


def mann_whitney_exact_by_hand(a, b):
    """U of ``a`` (pairs a > b) and exact two-sided p by enumerating all rank splits (no ties)."""
    u = sum(x > y for x in a for y in b)
    n1, n = len(a), len(a) + len(b)
    us = []
    for ranks in itertools.combinations(range(1, n + 1), n1):
        us.append(sum(ranks) - n1 * (n1 + 1) / 2)
    lower = sum(v <= u for v in us) / len(us)
    upper = sum(v >= u for v in us) / len(us)
    return u, min(1.0, 2 * min(lower, upper))


# --- describe ---------------------------------------------------------------------------------


def test_describe_by_hand_and_tabulated_t():
    d = describe(SLEEP_1)
    assert d["n"] == 10
    assert d["mean"] == pytest.approx(statistics.mean(SLEEP_1))
    assert d["sd"] == pytest.approx(statistics.stdev(SLEEP_1))
    assert d["sem"] == pytest.approx(statistics.stdev(SLEEP_1) / math.sqrt(10))
    # t_{0.975, 9} = 2.262 from printed tables.
    half = 2.262157 * d["sem"]
    assert d["ci_low"] == pytest.approx(d["mean"] - half, abs=1e-5)
    assert d["ci_high"] == pytest.approx(d["mean"] + half, abs=1e-5)
    assert d["ci_low"] < d["mean"] < d["ci_high"]
    assert (d["min"], d["median"], d["max"]) == pytest.approx((-1.6, 0.35, 3.7))


def test_describe_wider_ci_for_higher_confidence():
    d95, d99 = describe(A), describe(A, confidence=0.99)
    assert d99["ci_low"] < d95["ci_low"] < d95["mean"] < d95["ci_high"] < d99["ci_high"]


def test_describe_single_value_has_nan_spread():
    d = describe([91.5])
    assert d["n"] == 1 and d["mean"] == 91.5 and d["median"] == 91.5
    for k in ("sd", "sem", "ci_low", "ci_high"):
        assert math.isnan(d[k])


@pytest.mark.parametrize("bad", [[], [1.0, float("nan")], [1.0, float("inf")], ["x", 1.0]])
def test_describe_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        describe(bad)


@pytest.mark.parametrize("confidence", [0.0, 1.0, 95])
def test_describe_rejects_bad_confidence(confidence):
    with pytest.raises(ValueError, match="confidence"):
        describe(A, confidence=confidence)


# --- compare, paired ------------------------------------------------------------------------------


def test_paired_sleep_data_matches_published_result():
    # Published paired t-test for the two drugs: t = -4.062, df = 9, p = 0.002833,
    # 95% CI of the mean difference (-2.4598858, -0.7001142), mean difference -1.58.
    r = compare(SLEEP_1, SLEEP_2, paired=True)
    assert r["paired"] is True and r["test"] == "paired t-test"
    assert r["n_a"] == r["n_b"] == 10
    assert r["statistic"] == pytest.approx(-4.062, abs=5e-4)
    assert r["df"] == 9
    assert r["p"] == pytest.approx(0.002833, abs=5e-7)
    assert r["mean_diff"] == pytest.approx(-1.58)
    assert r["diff_ci_low"] == pytest.approx(-2.4598858, abs=1e-6)
    assert r["diff_ci_high"] == pytest.approx(-0.7001142, abs=1e-6)
    # All 9 non-zero differences are negative: W = 0 and the exact two-sided p is 2 / 2**9.
    assert r["nonparametric_test"] == "Wilcoxon signed-rank"
    assert r["nonparametric_statistic"] == 0
    assert r["nonparametric_p"] == pytest.approx(2 / 2**9)


def test_paired_by_hand():
    r = compare(A, B, paired=True)
    t, df, p = paired_t_by_hand(A, B)
    d = [x - y for x, y in zip(A, B)]
    assert r["statistic"] == pytest.approx(t)
    assert r["df"] == df
    assert r["p"] == pytest.approx(p)
    assert r["effect_name"] == "Cohen's d_z"
    assert r["effect"] == pytest.approx(statistics.mean(d) / statistics.stdev(d))
    assert r["mean_diff"] == pytest.approx(statistics.mean(d))
    assert r["diff_ci_low"] < r["mean_diff"] < r["diff_ci_high"]
    assert "paired" in r["why"] and "paired t-test" in r["why"]


def test_paired_direction_is_a_minus_b():
    ab, ba = compare(A, B, paired=True), compare(B, A, paired=True)
    assert ab["mean_diff"] > 0 and ab["statistic"] > 0 and ab["effect"] > 0
    assert ba["mean_diff"] == pytest.approx(-ab["mean_diff"])
    assert ba["p"] == pytest.approx(ab["p"])


def test_paired_identical_runs_give_no_evidence():
    r = compare(A, A, paired=True)
    assert r["mean_diff"] == 0
    assert r["p"] == 1.0 and r["statistic"] == 0
    assert r["nonparametric_p"] == 1.0 and r["nonparametric_statistic"] == 0
    assert r["normality_p"] is None


def test_wilcoxon_ties_survive_float_noise():
    # 91.3-90.1, 92.4-91.2 and 92.4-93.6 all are +-1.2 but differ in the last bits. With the
    # |1.2| ties averaged (ranks 3, 4, 5 -> 4) the only negative difference has rank 4: W = 4.
    a = [91.3, 92.4, 92.4, 90.5, 90.77]
    b = [90.1, 91.2, 93.6, 90.0, 90.1]
    assert len({abs(x - y) for x, y in zip(a[:3], b[:3])}) > 1  # the noise is really there
    assert compare(a, b, paired=True)["nonparametric_statistic"] == 4.0


def test_paired_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="equal lengths"):
        compare(A, B[:-1], paired=True)


@pytest.mark.parametrize("paired", [True, False])
def test_compare_rejects_nan_empty_and_single(paired):
    with pytest.raises(ValueError, match="NaN"):
        compare([1.0, float("nan"), 2.0], [1.0, 2.0, 3.0], paired=paired)
    with pytest.raises(ValueError, match="no values"):
        compare([], [1.0, 2.0], paired=paired)
    with pytest.raises(ValueError, match="at least 2"):
        compare([1.0], [1.0], paired=paired)


def test_normality_p_none_below_four_and_a_probability_otherwise():
    assert compare(A[:3], B[:3], paired=True)["normality_p"] is None
    assert compare(A, B[:3], paired=False)["normality_p"] is None
    for paired in (True, False):
        p = compare(A, B, paired=paired)["normality_p"]
        assert 0.0 <= p <= 1.0


def test_unpaired_normality_is_min_over_samples():
    skewed = [90.0] * 9 + [99.0, 91.0, 90.5]  # clearly not normal
    rng = np.random.default_rng(0)
    normal = list(90 + rng.standard_normal(12))
    both = compare(normal, skewed, paired=False)["normality_p"]
    assert both < 0.05
    assert both <= compare(normal, normal[::-1], paired=False)["normality_p"]


# --- compare, unpaired ------------------------------------------------------------------------------


def test_welch_sleep_data_matches_published_result():
    # Published Welch two-sample test on the sleep data: t = -1.8608, df = 17.776, p = 0.07939,
    # 95% CI (-3.3654832, 0.2054832).
    r = compare(SLEEP_1, SLEEP_2, paired=False)
    assert r["test"] == "Welch's t-test" and r["paired"] is False
    assert r["statistic"] == pytest.approx(-1.8608, abs=5e-5)
    assert r["df"] == pytest.approx(17.776, abs=5e-4)
    assert r["p"] == pytest.approx(0.07939, abs=5e-6)
    assert r["diff_ci_low"] == pytest.approx(-3.3654832, abs=1e-6)
    assert r["diff_ci_high"] == pytest.approx(0.2054832, abs=1e-6)


def test_welch_and_pooled_d_by_hand():
    a, b = A, B[:5] + [88.7, 89.1, 90.4, 91.6]  # unequal sizes and spreads
    r = compare(a, b, paired=False)
    t, df, p = welch_by_hand(a, b)
    assert (r["n_a"], r["n_b"]) == (7, 9)
    assert r["statistic"] == pytest.approx(t)
    assert r["df"] == pytest.approx(df)
    assert r["p"] == pytest.approx(p)
    n1, n2 = len(a), len(b)
    pooled = math.sqrt(
        ((n1 - 1) * statistics.variance(a) + (n2 - 1) * statistics.variance(b)) / (n1 + n2 - 2)
    )
    assert r["effect_name"] == "Cohen's d"
    assert r["effect"] == pytest.approx((statistics.mean(a) - statistics.mean(b)) / pooled)
    se = math.sqrt(statistics.variance(a) / n1 + statistics.variance(b) / n2)
    half = t_dist.ppf(0.975, df) * se
    assert r["diff_ci_low"] == pytest.approx(r["mean_diff"] - half)
    assert r["diff_ci_high"] == pytest.approx(r["mean_diff"] + half)
    assert "Welch" in r["why"] and "independent" in r["why"]


def test_mann_whitney_by_hand():
    a, b = [91.2, 90.8, 91.9, 92.3], [90.1, 90.9, 89.7, 90.6]  # no ties: exact test
    r = compare(a, b, paired=False)
    u, p = mann_whitney_exact_by_hand(a, b)
    assert r["nonparametric_test"] == "Mann-Whitney U"
    assert r["nonparametric_statistic"] == u
    assert r["nonparametric_p"] == pytest.approx(p)


def test_unpaired_constant_samples():
    same = compare([90.0, 90.0, 90.0], [90.0, 90.0], paired=False)
    assert same["p"] == 1.0 and same["statistic"] == 0 and same["mean_diff"] == 0
    apart = compare([91.0, 91.0, 91.0], [90.0, 90.0], paired=False)
    assert apart["p"] == 0.0 and apart["diff_ci_low"] == apart["diff_ci_high"] == 1.0


# --- compare_to_baseline ------------------------------------------------------------------------


def test_holm_by_hand_reference():
    assert holm_by_hand([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


def test_compare_to_baseline_holm_and_order():
    samples = {
        "ig_kd": A,
        "kd": B,
        "kd_plus": [b + 0.2 + 0.1 * (i % 3) for i, b in enumerate(B)],
        "noise": [b + (0.3 if i % 2 else -0.3) for i, b in enumerate(B)],
    }
    res = compare_to_baseline(samples, baseline="kd", paired=True)
    assert [r["method"] for r in res] == ["ig_kd", "kd_plus", "noise"]
    assert all(r["baseline"] == "kd" for r in res)
    raw = [paired_t_by_hand(samples[r["method"]], B)[2] for r in res]
    assert [r["p"] for r in res] == pytest.approx(raw)
    assert [r["p_holm"] for r in res] == pytest.approx(holm_by_hand(raw))
    np_raw = [r["nonparametric_p"] for r in res]
    assert [r["nonparametric_p_holm"] for r in res] == pytest.approx(holm_by_hand(np_raw))
    assert [r["significant"] for r in res] == [r["p_holm"] < 0.05 for r in res]
    assert res[0]["significant"] is True and res[2]["significant"] is False
    strict = compare_to_baseline(samples, baseline="kd", paired=True, alpha=1e-6)
    assert not any(r["significant"] for r in strict)


def test_compare_to_baseline_errors():
    with pytest.raises(ValueError, match="baseline"):
        compare_to_baseline({"a": A, "b": B}, baseline="kd", paired=True)
    with pytest.raises(ValueError, match="no method"):
        compare_to_baseline({"kd": B}, baseline="kd", paired=True)
    with pytest.raises(ValueError, match="ig_kd vs kd"):
        compare_to_baseline({"kd": B, "ig_kd": A[:-1]}, baseline="kd", paired=True)


def test_compare_pairs_planned_contrasts_holm_across_pairs():
    kd_plus = [b + 0.2 + 0.1 * (i % 3) for i, b in enumerate(B)]
    samples = {"ig_kd": A, "kd": B, "kd_plus": kd_plus}
    pairs = [("ig_kd", "kd"), ("ig_kd", "kd_plus"), ("kd_plus", "kd")]
    res = compare_pairs(samples, pairs, paired=True)
    assert [(r["method"], r["baseline"]) for r in res] == pairs
    raw = [paired_t_by_hand(samples[a], samples[b])[2] for a, b in pairs]
    assert [r["p"] for r in res] == pytest.approx(raw)
    assert [r["p_holm"] for r in res] == pytest.approx(holm_by_hand(raw))
    diffs = [np.mean(np.subtract(samples[a], samples[b])) for a, b in pairs]
    assert [r["mean_diff"] for r in res] == pytest.approx(diffs)
    # against one baseline, the same numbers as compare_to_baseline
    one = compare_pairs(samples, [("ig_kd", "kd"), ("kd_plus", "kd")], paired=True)
    base = compare_to_baseline(samples, baseline="kd", paired=True)
    assert [r["p_holm"] for r in one] == pytest.approx([r["p_holm"] for r in base])
    with pytest.raises(ValueError, match="gradcam"):
        compare_pairs(samples, [("ig_kd", "gradcam")], paired=True)
    with pytest.raises(ValueError, match="no comparison"):
        compare_pairs(samples, [], paired=True)


# --- paired_samples -------------------------------------------------------------------------------


def _csv_rows(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def test_paired_samples_drops_incomplete_runs_and_orders_numerically():
    rows = _csv_rows(
        "method,run,test_acc_last\n"
        "kd,10,90.10\n"
        "kd,2,90.02\n"
        "kd,1,90.01\n"
        "kd,3,90.03\n"
        "ig_kd,1,91.01\n"
        "ig_kd,10,91.10\n"
        "ig_kd,2,91.02\n"
        "ig_kd,4,91.04\n"
    )
    out = paired_samples(rows)
    assert list(out) == ["kd", "ig_kd"]
    # runs 3 and 4 are missing for one method; "10" sorts after "2".
    assert out == {"kd": [90.01, 90.02, 90.10], "ig_kd": [91.01, 91.02, 91.10]}


def test_paired_samples_custom_columns():
    rows = [
        {"m": "a", "seed": 1, "acc": 0.5},
        {"m": "b", "seed": 1, "acc": 0.7},
        {"m": "a", "seed": 0, "acc": 0.4},
        {"m": "b", "seed": 0, "acc": 0.6},
    ]
    assert paired_samples(rows, value="acc", key="seed", group="m") == {
        "a": [0.4, 0.5],
        "b": [0.6, 0.7],
    }


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("method,run,test_acc_last\n", "no rows"),
        ("method,run,test_acc_last\nkd,1,\n", "not a number"),
        ("method,run,test_acc_last\nkd,1,nan\n", "nan"),
        ("method,run,test_acc_last\nkd,1,90\nkd,1,91\n", "duplicate"),
        ("method,run\nkd,1\n", "missing column"),
        ("method,run,test_acc_last\nkd,1,90\nig_kd,2,91\n", "present for every"),
    ],
)
def test_paired_samples_errors(text, match):
    with pytest.raises(ValueError, match=match):
        paired_samples(_csv_rows(text))


def test_paired_difference_constant_up_to_float_noise_is_degenerate():
    b = [90.11, 91.25, 89.73, 90.5]
    a = [x + 1.2 for x in b]  # differences equal up to float rounding (sd ~ 1e-15)
    r = compare(a, b, paired=True)
    assert r["p"] == 0.0 and math.isinf(r["statistic"]) and r["mean_diff"] == pytest.approx(1.2)


# -- equivalence (TOST), power and verdicts: constructed data with a known answer ------------------


def _shifted(shift: float, spread: float, n: int = 10, seed: int = 0) -> tuple[list[float], list[float]]:
    """A baseline of n runs and a method whose run i differs from it by ``shift`` plus an exact +-spread
    pattern with mean 0 (so the mean difference is exactly ``shift``)."""
    rng = np.random.default_rng(seed)
    base = 83.0 + rng.normal(0.0, 0.5, n)
    pattern = np.tile([1.0, -1.0], n // 2)
    return list(base + shift + spread * pattern), list(base)


def test_tost_says_equivalent_only_when_the_90_ci_lies_inside_the_margin():
    a, b = _shifted(0.05, 0.1)  # differences 0.15 / -0.05: well inside +-0.40
    eq = equivalence(a, b, paired=True, margin=0.40)
    d = np.subtract(a, b)
    se = d.std(ddof=1) / math.sqrt(d.size)
    half = t_dist.ppf(0.95, d.size - 1) * se
    assert eq["tost_ci_low"] == pytest.approx(0.05 - half) and eq["tost_ci_high"] == pytest.approx(0.05 + half)
    # TOST p by hand: the larger one-sided p of H0: diff <= -m and H0: diff >= +m
    p_low = t_dist.sf((0.05 + 0.40) / se, d.size - 1)
    p_high = t_dist.cdf((0.05 - 0.40) / se, d.size - 1)
    assert eq["tost_p"] == pytest.approx(max(p_low, p_high)) and eq["equivalent"]
    # the same differences against a margin smaller than the CI's edge: not equivalent
    tight = equivalence(a, b, paired=True, margin=0.05 + half * 0.9)
    assert not tight["equivalent"] and tight["tost_p"] > 0.05
    # the CI inside +-m <=> TOST p < 0.05, on a grid of margins
    for m in np.linspace(0.06, 0.6, 28):
        r = equivalence(a, b, paired=True, margin=float(m))
        inside = -m < r["tost_ci_low"] and r["tost_ci_high"] < m
        assert r["equivalent"] == inside


def test_tost_unpaired_is_welch_style():
    rng = np.random.default_rng(3)
    a, b = list(83 + rng.normal(0, 0.2, 12)), list(83 + rng.normal(0, 0.6, 9))
    r = equivalence(a, b, paired=False, margin=0.8)
    q1, q2 = np.var(a, ddof=1) / 12, np.var(b, ddof=1) / 9
    df = (q1 + q2) ** 2 / (q1**2 / 11 + q2**2 / 8)
    se, diff = math.sqrt(q1 + q2), float(np.mean(a) - np.mean(b))
    expected = max(t_dist.sf((diff + 0.8) / se, df), t_dist.cdf((diff - 0.8) / se, df))
    assert r["tost_p"] == pytest.approx(expected, rel=1e-6)


def test_tost_with_no_spread_and_bad_margins():
    a, b = [1.0, 2.0, 3.0], [0.9, 1.9, 2.9]  # every difference exactly 0.1
    assert equivalence(a, b, paired=True, margin=0.4)["tost_p"] == 0.0
    assert equivalence(a, b, paired=True, margin=0.05)["tost_p"] == 1.0
    for bad in (0, -0.4, float("nan"), "0.4"):
        with pytest.raises(ValueError, match="margin"):
            equivalence(a, b, paired=True, margin=bad)


def test_mde_is_the_effect_a_paired_t_test_detects_80_percent_of_the_time():
    sd, n = 0.7, 10
    mde = power(sd, n, paired=True)["mde"]
    # exact power of the two-sided paired t-test at that effect: the noncentral t
    df, nc = n - 1, mde / sd * math.sqrt(n)
    crit = t_dist.ppf(0.975, df)
    exact = nct.sf(crit, df, nc) + nct.cdf(-crit, df, nc)
    assert exact == pytest.approx(0.80, abs=1e-4)
    # and by simulation: 20,000 studies of n pairs whose true difference is the MDE
    rng = np.random.default_rng(0)
    d = rng.normal(mde, sd, (20_000, n))
    t = d.mean(axis=1) / (d.std(axis=1, ddof=1) / math.sqrt(n))
    assert float(np.mean(np.abs(t) > crit)) == pytest.approx(0.80, abs=0.015)
    # half the effect is detected far less often: the number is not just "something"
    half = d - mde / 2
    t_half = half.mean(axis=1) / (half.std(axis=1, ddof=1) / math.sqrt(n))
    assert float(np.mean(np.abs(t_half) > crit)) < 0.4
    # large n: the normal approximation (z_0.975 + z_0.8) sd / sqrt(n)
    big = power(sd, 10_000, paired=True)["mde"]
    assert big == pytest.approx((norm.ppf(0.975) + norm.ppf(0.8)) * sd / 100, rel=2e-3)


def test_mde_unpaired_and_runs_needed_for_the_margin():
    sd = 0.5
    r = power(sd, 10, 10, paired=False, margin=0.4)
    df, nc = 18, r["mde"] / sd * math.sqrt(10 * 10 / 20)
    crit = t_dist.ppf(0.975, df)
    assert nct.sf(crit, df, nc) + nct.cdf(-crit, df, nc) == pytest.approx(0.80, abs=1e-4)
    # n for the margin: the smallest n whose exact power reaches 80 %
    for paired in (True, False):
        n = power(sd, 10, 10, paired=paired, margin=0.4)["n_for_margin"]

        def exact_power(k: int, paired: bool = paired) -> float:
            df, nc = (k - 1, 0.4 / sd * math.sqrt(k)) if paired else (2 * k - 2, 0.4 / sd * math.sqrt(k / 2))
            c = t_dist.ppf(0.975, df)
            return nct.sf(c, df, nc) + nct.cdf(-c, df, nc)

        assert exact_power(n) >= 0.8 > exact_power(n - 1)
    # ten runs that detect 0.40 only 80 % of the time need a paired sd of 0.40 / mde-per-sd
    assert power(0.7, 10, margin=0.4)["n_for_margin"] > 10 > power(0.2, 10, margin=0.4)["n_for_margin"]
    # a huge effect still gives a number (statsmodels' root finder gives up near n = 2)
    assert power(0.01, 10, margin=0.4)["n_for_margin"] in (2, 3)
    assert math.isnan(power(0.5, 1)["mde"]) and power(0.0, 10, margin=0.4)["mde"] == 0.0


def test_verdicts_on_constructed_studies():
    """Tight differences around 0 -> equivalent; +2 with small sd -> better; -2 -> worse; a large sd with
    few runs -> inconclusive. The verdict rule is stated, and applied after Holm."""
    cases = {"tight": _shifted(0.02, 0.05), "up": _shifted(2.0, 0.2), "down": _shifted(-2.0, 0.2),
             "noisy": _shifted(0.3, 3.0, n=4)}
    for name, (a, b) in cases.items():
        res = compare_pairs({"m": a, "b": b}, [("m", "b")], paired=True, margin=0.40)[0]
        assert res["verdict"] == {"tight": "equivalent", "up": "better", "down": "worse",
                                  "noisy": "inconclusive"}[name], name
        assert res["mde"] > 0 and res["n_for_margin"] >= 2 and res["margin"] == 0.40
    noisy = compare_pairs({"m": cases["noisy"][0], "b": cases["noisy"][1]}, [("m", "b")], True, margin=0.4)[0]
    assert noisy["mde"] > 3 and noisy["n_for_margin"] > 100  # four runs cannot see 0.40 through sd 3
    assert "TOST" in VERDICT_RULE and "Holm" in VERDICT_RULE
    # Holm decides "better": two contrasts each with raw p just below 0.05 are both "inconclusive" after it
    rng = np.random.default_rng(5)
    base = list(83 + rng.normal(0, 0.5, 8))
    spread = np.array([1.0, -1.0] * 4) * 0.6
    up = list(np.add(base, 0.55 + spread))
    single = compare_pairs({"m": up, "b": base}, [("m", "b")], True, margin=0.4)[0]
    assert single["p"] < 0.05 and single["verdict"] == "better"
    both = compare_pairs({"m": up, "m2": up, "b": base}, [("m", "b"), ("m2", "b")], True, margin=0.4)
    assert all(r["p_holm"] > 0.05 and r["verdict"] == "inconclusive" for r in both)
    # no margin: no verdict (the old fields only)
    assert "verdict" not in compare_pairs({"m": up, "b": base}, [("m", "b")], True)[0]


def test_verdict_precedence_significant_beats_equivalent():
    # a tiny but consistent +0.1: significant (better) and also within +-0.4; the rule says "better"
    r = {"significant": True, "mean_diff": 0.1, "equivalent": True}
    assert verdict(r) == "better" and verdict({**r, "mean_diff": -0.1}) == "worse"
    assert verdict({**r, "significant": False}) == "equivalent"
    assert verdict({**r, "significant": False, "equivalent": False}) == "inconclusive"
