"""Statistics for Monte Carlo studies that compare distillation methods.

Each method is run several times (one test accuracy in percent per run). ``describe`` summarises
one method, ``compare`` tests one method against a baseline (paired when run ``i`` of both methods
shared its seed, data subset and initialisation, unpaired otherwise), ``compare_to_baseline`` does
that for every method with a Holm correction across the comparisons, and ``paired_samples`` turns
result rows (e.g. from ``csv.DictReader``) into aligned per-method samples; ``runs_by_group`` keeps each
method's runs by run key, so that each paired comparison uses the runs its two methods share (a study
extended with more runs of some methods).

With a ``margin`` (percentage points) every comparison also carries an equivalence test (TOST:
``equivalence``), its power (``power``: the smallest difference the study could detect, and the runs
needed to detect the margin) and a verdict in words (``verdict``).

The tests themselves come from scipy and statsmodels; this module only chooses them, computes
effect sizes and t confidence intervals, and validates the input.
"""

from __future__ import annotations

import gc
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats
from statsmodels.stats.diagnostic import lilliefors
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestIndPower, TTestPower
from statsmodels.stats.weightstats import ttost_ind, ttost_paired

__all__ = ["DEFAULT_MARGIN", "VERDICT_RULE", "VERDICTS", "compare", "compare_pairs", "compare_to_baseline", "describe",
           "equivalence", "paired_samples", "power", "runs_by_group", "verdict"]

# The paper's KD+IG - KD (92.02 - 91.62 %): the effect a study should be able to confirm or exclude.
DEFAULT_MARGIN = 0.40
VERDICTS = ("better", "worse", "equivalent", "inconclusive")
VERDICT_RULE = (
    "better: the difference is significant after Holm's correction (p (Holm) < alpha, so its 95 % CI "
    "excludes 0) and positive; worse: significant and negative; equivalent within ±m: not significant, "
    "and the two one-sided tests (TOST) reject a difference of -m or less and of +m or more (TOST p < "
    "alpha, i.e. the 90 % CI lies inside ±m); inconclusive: neither"
)

_NAN = float("nan")
# Lilliefors' tables start at n = 4; below that the test is not defined.
_MIN_NORMALITY_N = 4
# Accuracies are percentages; differences below 1e-9 points are float noise, not a difference.
_RANK_DECIMALS = 9


def _as_sample(values: Sequence[float], name: str, min_n: int = 1) -> np.ndarray:
    """Return ``values`` as a 1-D float array, or raise ValueError saying what is wrong."""
    try:
        x = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: values must be numbers ({exc})") from None
    if x.ndim != 1:
        raise ValueError(f"{name}: expected a flat sequence of numbers, got shape {x.shape}")
    if x.size == 0:
        raise ValueError(f"{name}: no values")
    if not np.all(np.isfinite(x)):
        bad = [i for i, v in enumerate(x) if not math.isfinite(v)]
        raise ValueError(f"{name}: NaN or infinite value at position(s) {bad}")
    if x.size < min_n:
        raise ValueError(f"{name}: needs at least {min_n} values, got {x.size}")
    return x


def _check_level(level: float, name: str) -> float:
    if not (isinstance(level, (int, float)) and 0.0 < float(level) < 1.0):
        raise ValueError(f"{name} must be strictly between 0 and 1, got {level!r}")
    return float(level)


def _t_interval(centre: float, se: float, df: float, confidence: float) -> tuple[float, float]:
    """Two-sided t interval ``centre ± t_{(1+c)/2, df} * se`` (nan when df is undefined)."""
    if not math.isfinite(df) or df <= 0:
        return _NAN, _NAN
    half = float(stats.t.ppf((1.0 + confidence) / 2.0, df)) * se
    return centre - half, centre + half


def _normality_p(*samples: np.ndarray) -> float | None:
    """Smallest Lilliefors p over ``samples``; None when any is too small or constant to test."""
    ps = []
    for x in samples:
        if x.size < _MIN_NORMALITY_N or np.ptp(x) == 0.0:
            return None
        ps.append(float(lilliefors(x, dist="norm")[1]))
    return min(ps)


def _degenerate_test(mean_diff: float) -> tuple[float, float, float]:
    """(statistic, p, effect) when the relevant spread is exactly zero and t is undefined.

    Why: scipy returns nan/inf with warnings here; the limits are clear - no difference at all
    gives no evidence (t = 0, p = 1), a constant non-zero difference is as strong as it gets.
    """
    if mean_diff == 0.0:
        return 0.0, 1.0, 0.0
    inf = math.copysign(math.inf, mean_diff)
    return inf, 0.0, inf


def describe(values: Sequence[float], confidence: float = 0.95) -> dict:
    """Summary of one method's runs: n, mean, sd (ddof=1), sem, t CI of the mean, min/median/max.

    ``sd``, ``sem`` and the CI are nan for a single value.
    """
    confidence = _check_level(confidence, "confidence")
    x = _as_sample(values, "values")
    n = int(x.size)
    mean = float(np.mean(x))
    sd = float(np.std(x, ddof=1)) if n >= 2 else _NAN
    sem = sd / math.sqrt(n) if n >= 2 else _NAN
    ci_low, ci_high = _t_interval(mean, sem, n - 1, confidence) if n >= 2 else (_NAN, _NAN)
    return {
        "n": n,
        "mean": mean,
        "sd": sd,
        "sem": sem,
        "ci_low": ci_low,
        "ci_high": ci_high,
        "min": float(np.min(x)),
        "median": float(np.median(x)),
        "max": float(np.max(x)),
    }


def _compare_paired(a: np.ndarray, b: np.ndarray, confidence: float) -> dict:
    d = a - b
    n = int(d.size)
    mean_diff = float(np.mean(d))
    sd_d = float(np.std(d, ddof=1))
    df = float(n - 1)
    ci_low, ci_high = _t_interval(mean_diff, sd_d / math.sqrt(n), df, confidence)
    # Rank rounded differences: float noise (91.31 - 90.11 vs 92.45 - 91.25) must not break the
    # ties and zeros that the signed-rank test treats specially, nor turn a constant difference
    # into a t statistic of 1e14.
    d_rank = np.round(d, _RANK_DECIMALS)
    if sd_d == 0.0 or np.all(d_rank == d_rank[0]):
        statistic, p, effect = _degenerate_test(mean_diff)
    else:
        res = stats.ttest_rel(a, b)
        statistic, p = float(res.statistic), float(res.pvalue)
        effect = mean_diff / sd_d
    if np.all(d_rank == 0.0):
        # Wilcoxon drops zero differences; with none left there is no evidence of a difference.
        w_stat, w_p = 0.0, 1.0
    else:
        w = stats.wilcoxon(d_rank)
        w_stat, w_p = float(w.statistic), float(w.pvalue)
    normality = _normality_p(d)
    why = (
        "paired t-test (Wilcoxon signed-rank as the distribution-free check): run i of both "
        "methods shared its seed, data subset and initialisation, so differences are tested "
        "within pairs"
    )
    if normality is not None and normality < 0.05:
        why += f", and Lilliefors doubts their normality (p = {normality:.3g}), so prefer Wilcoxon"
    return {
        "paired": True,
        "n_a": n,
        "n_b": n,
        "mean_diff": mean_diff,
        "diff_ci_low": ci_low,
        "diff_ci_high": ci_high,
        "test": "paired t-test",
        "statistic": statistic,
        "p": p,
        "df": df,
        "nonparametric_test": "Wilcoxon signed-rank",
        "nonparametric_statistic": w_stat,
        "nonparametric_p": w_p,
        "effect_name": "Cohen's d_z",
        "effect": effect,
        "sd": sd_d,
        "normality_p": normality,
        "why": why + ".",
    }


def _compare_unpaired(a: np.ndarray, b: np.ndarray, confidence: float) -> dict:
    n1, n2 = int(a.size), int(b.size)
    v1, v2 = float(np.var(a, ddof=1)), float(np.var(b, ddof=1))
    mean_diff = float(np.mean(a) - np.mean(b))
    q1, q2 = v1 / n1, v2 / n2
    se = math.sqrt(q1 + q2)
    # Welch–Satterthwaite degrees of freedom (undefined when both samples are constant).
    df = (q1 + q2) ** 2 / (q1**2 / (n1 - 1) + q2**2 / (n2 - 1)) if se > 0 else _NAN
    ci_low, ci_high = _t_interval(mean_diff, se, df, confidence)
    pooled_sd = math.sqrt(((n1 - 1) * v1 + (n2 - 1) * v2) / (n1 + n2 - 2))
    if se == 0.0:
        # Both samples constant: the difference is known exactly.
        ci_low = ci_high = mean_diff
        statistic, p, effect = _degenerate_test(mean_diff)
    else:
        res = stats.ttest_ind(a, b, equal_var=False)
        statistic, p = float(res.statistic), float(res.pvalue)
        effect = mean_diff / pooled_sd
    u = stats.mannwhitneyu(a, b, alternative="two-sided")
    normality = _normality_p(a, b)
    why = (
        "Welch's t-test (Mann-Whitney U as the distribution-free check): the runs of the two "
        "methods are independent, so the samples are compared as groups without assuming equal "
        "variances"
    )
    if normality is not None and normality < 0.05:
        why += f", and Lilliefors doubts normality (p = {normality:.3g}), so prefer Mann-Whitney"
    return {
        "paired": False,
        "n_a": n1,
        "n_b": n2,
        "mean_diff": mean_diff,
        "diff_ci_low": ci_low,
        "diff_ci_high": ci_high,
        "test": "Welch's t-test",
        "statistic": statistic,
        "p": p,
        "df": float(df),
        "nonparametric_test": "Mann-Whitney U",
        "nonparametric_statistic": float(u.statistic),
        "nonparametric_p": float(u.pvalue),
        "effect_name": "Cohen's d",
        "effect": effect,
        "sd": pooled_sd,
        "normality_p": normality,
        "why": why + ".",
    }


def compare(a: Sequence[float], b: Sequence[float], paired: bool, confidence: float = 0.95) -> dict:
    """Test method ``a`` against baseline ``b``; the difference is ``a - b``.

    Paired: paired t-test, Wilcoxon signed-rank, Cohen's d_z; unpaired: Welch's t-test,
    Mann-Whitney U, Cohen's d with pooled sd (``sd``: the sd of the differences when paired, the
    pooled sd otherwise). Both need at least two runs per sample. When the
    relevant sd is exactly zero, t is reported as 0 (p = 1) for no difference and as +-inf
    (p = 0) otherwise; Wilcoxon ranks the differences rounded to 1e-9.
    """
    confidence = _check_level(confidence, "confidence")
    xa = _as_sample(a, "a", min_n=2)
    xb = _as_sample(b, "b", min_n=2)
    if paired:
        if xa.size != xb.size:
            raise ValueError(
                f"paired comparison needs equal lengths, got {xa.size} (a) and {xb.size} (b)"
            )
        return _compare_paired(xa, xb, confidence)
    return _compare_unpaired(xa, xb, confidence)


def compare_to_baseline(
    samples: Mapping[str, Sequence[float]],
    baseline: str,
    paired: bool,
    confidence: float = 0.95,
    alpha: float = 0.05,
    margin: float | None = None,
) -> list[dict]:
    """``compare`` every method with ``baseline`` and Holm-correct the p-values across methods.

    Each result also carries ``method``, ``baseline``, ``p_holm``, ``nonparametric_p_holm`` and
    ``significant`` (``p_holm < alpha``); with a ``margin``, those of ``compare_pairs``.
    """
    if baseline not in samples:
        raise ValueError(f"baseline {baseline!r} not among the methods {list(samples)}")
    methods = [m for m in samples if m != baseline]
    if not methods:
        raise ValueError("no method other than the baseline to compare")
    return compare_pairs(samples, [(m, baseline) for m in methods], paired, confidence, alpha, margin)


def compare_pairs(
    samples: Mapping[str, Sequence[float]],
    pairs: Sequence[tuple[str, str]],
    paired: bool,
    confidence: float = 0.95,
    alpha: float = 0.05,
    margin: float | None = None,
) -> list[dict]:
    """``compare`` each ``(method, baseline)`` pair (planned contrasts: difference = method - baseline)
    and Holm-correct the p-values across the pairs. Each result carries the fields of
    ``compare_to_baseline``'s. A sample is a sequence, or a mapping of run key to value
    (:func:`runs_by_group`): two mappings are compared on the runs both have, in run order.

    With a ``margin`` (percentage points) each result also carries ``equivalence``'s fields (TOST at
    ``alpha``, not adjusted: each equivalence claim is an intersection of two tests that needs no
    correction), ``power``'s (``mde``, ``n_for_margin``: 80 % power, two-sided ``alpha``) and
    ``verdict`` (:func:`verdict`, by :data:`VERDICT_RULE`)."""
    alpha = _check_level(alpha, "alpha")
    if margin is not None:
        margin = _check_margin(margin)
    if not pairs:
        raise ValueError("no comparison asked for")
    absent = sorted({m for pair in pairs for m in pair if m not in samples})
    if absent:
        raise ValueError(f"{', '.join(absent)} not among the methods with runs ({', '.join(samples)})")
    results = []
    for method, baseline in pairs:
        a, b = _aligned(samples[method], samples[baseline])
        try:
            res = compare(a, b, paired=paired, confidence=confidence)
        except ValueError as exc:
            raise ValueError(f"{method} vs {baseline}: {exc}") from None
        if margin is not None:
            res.update(equivalence(a, b, paired, margin, alpha))
            res.update(power(res["sd"], res["n_a"], res["n_b"], paired, margin, alpha))
        results.append({"method": method, "baseline": baseline, **res})
    p_holm = _holm([r["p"] for r in results], alpha)
    np_holm = _holm([r["nonparametric_p"] for r in results], alpha)
    for r, ph, nph in zip(results, p_holm, np_holm):
        r["p_holm"] = float(ph)
        r["nonparametric_p_holm"] = float(nph)
        r["significant"] = bool(ph < alpha)
        if margin is not None:
            r["verdict"] = verdict(r)
    return results


def equivalence(a: Sequence[float], b: Sequence[float], paired: bool, margin: float,
                alpha: float = 0.05) -> dict:
    """Two one-sided tests (TOST) of ``a - b`` against the margin ``±margin`` (statsmodels'
    ``ttost_paired``, or ``ttost_ind`` with unequal variances, as Welch's test).

    Returns ``margin``, ``tost_p`` (the larger of the two one-sided p-values), ``equivalent``
    (``tost_p < alpha``) and the ``1 - 2 alpha`` (90 %) CI of the difference, ``tost_ci_low`` /
    ``tost_ci_high``: equivalence at level alpha is that CI lying inside ``±margin``. When the spread
    is exactly zero the difference is known: p is 0 inside the margin and 1 outside.
    """
    alpha = _check_level(alpha, "alpha")
    margin = _check_margin(margin)
    xa, xb = _as_sample(a, "a", min_n=2), _as_sample(b, "b", min_n=2)
    if paired and xa.size != xb.size:
        raise ValueError(f"paired comparison needs equal lengths, got {xa.size} (a) and {xb.size} (b)")
    if paired:
        d = xa - xb
        mean_diff, se, df = float(np.mean(d)), float(np.std(d, ddof=1)) / math.sqrt(d.size), float(d.size - 1)
    else:
        q1, q2 = float(np.var(xa, ddof=1)) / xa.size, float(np.var(xb, ddof=1)) / xb.size
        mean_diff, se = float(np.mean(xa) - np.mean(xb)), math.sqrt(q1 + q2)
        df = (q1 + q2) ** 2 / (q1**2 / (xa.size - 1) + q2**2 / (xb.size - 1)) if se > 0 else _NAN
    exact = se == 0.0 or (paired and np.ptp(np.round(xa - xb, _RANK_DECIMALS)) == 0.0)
    if exact:  # t is undefined (or float noise): the difference is known
        p = 0.0 if abs(mean_diff) < margin else 1.0
        low = high = mean_diff
    else:
        if paired:
            p = float(ttost_paired(xa, xb, -margin, margin)[0])
        else:
            p = float(ttost_ind(xa, xb, -margin, margin, usevar="unequal")[0])
        low, high = _t_interval(mean_diff, se, df, 1.0 - 2.0 * alpha)
    return {"margin": margin, "tost_p": p, "equivalent": bool(p < alpha), "tost_ci_low": low,
            "tost_ci_high": high, "tost_confidence": 1.0 - 2.0 * alpha}


def power(sd: float, n_a: int, n_b: int | None = None, paired: bool = True, margin: float | None = None,
          alpha: float = 0.05, target: float = 0.8) -> dict:
    """What a two-sided t-test at ``alpha`` detects with probability ``target`` (80 %).

    Paired: ``sd`` is the standard deviation of the paired differences and ``n_a`` the number of pairs
    (statsmodels' ``TTestPower``, a one-sample t-test on the differences). Unpaired: ``sd`` is the
    pooled standard deviation of two groups of ``n_a`` and ``n_b`` runs (``TTestIndPower``). Returns
    ``mde``, the minimum detectable effect in the units of ``sd`` (the effect size solved for, times
    ``sd``), and with a ``margin``, ``n_for_margin``: the runs (pairs; per group when unpaired) at which
    a true difference of ``margin`` is detected with that power. nan where undefined (fewer than 2 runs,
    no spread: a zero spread detects any difference, ``mde`` 0 and ``n_for_margin`` 2).
    """
    alpha, target = _check_level(alpha, "alpha"), _check_level(target, "power")
    n_b = n_a if n_b is None else n_b
    out = {"power": target, "power_alpha": alpha, "mde": _NAN, "n_for_margin": _NAN}
    if not (finite_number(sd) and sd >= 0) or n_a < 2 or n_b < 2:
        return out
    if sd == 0.0:
        return {**out, "mde": 0.0, "n_for_margin": 2 if margin is not None else _NAN}
    analysis = TTestPower() if paired else TTestIndPower()
    size = {"nobs": n_a} if paired else {"nobs1": n_a, "ratio": n_b / n_a}
    kw = {"alpha": alpha, "power": target, "alternative": "two-sided"}
    with warnings.catch_warnings():  # statsmodels' root finder warns (and gives nan) where it fails
        warnings.simplefilter("ignore")
        out["mde"] = float(analysis.solve_power(effect_size=None, **size, **kw)) * sd
    if margin is not None:
        margin = _check_margin(margin)
        effect = margin / sd

        def enough(n: int) -> bool:
            at = {"nobs": n} if paired else {"nobs1": n, "ratio": 1.0}
            return analysis.power(effect_size=effect, alpha=alpha, alternative="two-sided", **at) >= target

        nobs = {"nobs": None} if paired else {"nobs1": None, "ratio": 1.0}
        with warnings.catch_warnings():  # statsmodels' root finder warns and gives nan near n = 2
            warnings.simplefilter("ignore")
            n = float(analysis.solve_power(effect_size=effect, **nobs, **kw))
        if math.isfinite(n):  # the real root, made the smallest whole n that reaches the power
            k = max(2, math.ceil(n))
            while k > 2 and enough(k - 1):
                k -= 1
            while not enough(k) and k < n + 10:  # (power is nan at one degree of freedom)
                k += 1
            out["n_for_margin"] = k
        else:  # a very large effect: the first n from 2 up that reaches the power
            out["n_for_margin"] = next((k for k in range(2, 64) if enough(k)), _NAN)
    return out


def verdict(result: Mapping[str, Any]) -> str:
    """One of :data:`VERDICTS` for a comparison with ``significant``, ``mean_diff`` and ``equivalent``
    (``compare_pairs`` with a margin): the rule is :data:`VERDICT_RULE`. A significant difference is
    "better" or "worse" even when it is also smaller than the margin."""
    if result["significant"]:
        return "better" if result["mean_diff"] > 0 else "worse"
    return "equivalent" if result["equivalent"] else "inconclusive"


def finite_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _check_margin(margin: float) -> float:
    if not (finite_number(margin) and margin > 0):
        raise ValueError(f"margin must be a positive number of percentage points, got {margin!r}")
    return float(margin)


def _holm(p: list[float], alpha: float) -> np.ndarray:
    """Holm-adjusted p-values (statsmodels' ``multipletests``). Its Holm branch calls ``gc.collect()``, which
    takes about half a second in a process that holds many objects (torch's, pytest's); frozen objects are
    not collected, so the call costs only what it computes."""
    gc.freeze()
    try:
        return multipletests(p, alpha=alpha, method="holm")[1]
    finally:
        gc.unfreeze()


def _run_order(run: str) -> tuple[int, float, str]:
    """Sort key: numeric runs numerically (so "10" follows "9"), any others after, by text."""
    try:
        return 0, float(run), run
    except ValueError:
        return 1, 0.0, run


def _aligned(a: Sequence[float] | Mapping[str, float], b: Sequence[float] | Mapping[str, float]):
    """Two samples as lists; two mappings of run key to value keep the runs both have, in run order."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        common = sorted(set(a) & set(b), key=_run_order)
        return [a[r] for r in common], [b[r] for r in common]
    return (list(a.values()) if isinstance(a, Mapping) else a), (list(b.values()) if isinstance(b, Mapping) else b)


def paired_samples(
    rows: Iterable[Mapping[str, Any]],
    value: str = "test_acc_last",
    key: str = "run",
    group: str = "method",
) -> dict[str, list[float]]:
    """Build ``{method: [value per run, ordered by run]}`` from result rows.

    Only runs present for every method are kept, so position ``i`` of every list is the same
    run. Run keys are matched as text (csv rows give strings) and ordered numerically when they
    are numbers. Methods keep the order in which they first appear.
    """
    by_group = runs_by_group(rows, value, key, group)
    common = set.intersection(*(set(runs) for runs in by_group.values()))
    if not common:
        raise ValueError(f"no {key} is present for every {group} ({list(by_group)})")
    order = sorted(common, key=_run_order)
    return {method: [runs[r] for r in order] for method, runs in by_group.items()}


def runs_by_group(
    rows: Iterable[Mapping[str, Any]],
    value: str = "test_acc_last",
    key: str = "run",
    group: str = "method",
) -> dict[str, dict[str, float]]:
    """Build ``{method: {run: value}}`` from result rows (runs in run order; methods in the order in which
    they first appear); ``compare_pairs`` pairs two such samples on the runs they share."""
    by_group: dict[str, dict[str, float]] = {}
    for i, row in enumerate(rows):
        missing = [c for c in (value, key, group) if c not in row]
        if missing:
            raise ValueError(f"row {i}: missing column(s) {missing}")
        method, run, raw = str(row[group]), str(row[key]), row[value]
        try:
            v = float(raw)
        except (TypeError, ValueError):
            where = f"row {i} ({method}, run {run})"
            raise ValueError(f"{where}: {value}={raw!r} is not a number") from None
        if not math.isfinite(v):
            raise ValueError(f"row {i} ({method}, run {run}): {value} is {raw!r}")
        runs = by_group.setdefault(method, {})
        if run in runs:
            raise ValueError(f"row {i}: duplicate run {run!r} for method {method!r}")
        runs[run] = v
    if not by_group:
        raise ValueError("no rows")
    return {method: dict(sorted(runs.items(), key=lambda item: _run_order(item[0])))
            for method, runs in by_group.items()}
