"""How the studies report numbers: mean ± sd over seeds, binomial standard errors of test errors,
and the ordering claims that those numbers can carry. One place, so that every README states its
spread the same way."""
from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any


def binomial_se_pct(error_pct: float, n: int) -> float:
    """Standard error (percentage points) of an error rate measured on ``n`` independent images."""
    p = error_pct / 100.0
    return 100.0 * math.sqrt(max(p * (1.0 - p), 0.0) / n)


def mean_binomial_se_pct(errors_pct: Sequence[float], n: int) -> float:
    """Binomial SE (points) of the mean of independent test errors, each measured on ``n`` images:
    the test set's sampling only, not the seed-to-seed spread."""
    return math.sqrt(sum(binomial_se_pct(e, n) ** 2 for e in errors_pct)) / len(errors_pct)


def error_diff_se(a_pct: float, n_a: int, b_pct: float, n_b: int) -> tuple[float, float]:
    """a - b (points) and the SE of that difference, the two errors' binomial SEs in quadrature. This
    treats the two test errors as independent; on one shared test set the models tend to miss the
    same hard images, so the paired SE is smaller and this one errs on the cautious side."""
    return a_pct - b_pct, math.hypot(binomial_se_pct(a_pct, n_a), binomial_se_pct(b_pct, n_b))


def fmt_error_se(error_pct: float, n: int | None) -> str:
    """A test error with its binomial SE ("0.67 ± 0.08%"); the bare error when the test-set size is unknown."""
    return f"{error_pct:.2f}%" if not n else f"{error_pct:.2f} ± {binomial_se_pct(error_pct, n):.2f}%"


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """(mean, sample standard deviation); the sd of a single value is NaN (no spread measured)."""
    values = list(values)
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def fmt_mean_sd(values: Sequence[float], digits: int = 2, unit: str = "") -> str:
    """"1.23 ± 0.05% (n=3)", or "1.23% (n=1)" where no spread was measured."""
    m, sd = mean_sd(values)
    spread = "" if math.isnan(sd) else f" ± {sd:.{digits}f}"
    return f"{m:.{digits}f}{spread}{unit} (n={len(values)})"


def clearly_above(high: Sequence[float], low: Sequence[float]) -> bool:
    """Whether every value of ``high`` exceeds every value of ``low`` and the gap of the means is
    more than twice the larger seed sd: an order that the seed-to-seed spread cannot explain."""
    (mh, sh), (ml, sl) = mean_sd(high), mean_sd(low)
    spread = max((s for s in (sh, sl) if not math.isnan(s)), default=0.0)
    return min(high) > max(low) and mh - ml > 2 * spread


def final_train_error(record: dict[str, Any]) -> float:
    """The training error a study compares: eval mode on the fixed training subset when the run
    measured it (the cpu tier), else the last epoch's running average in train mode."""
    last = record["history"][-1]
    return last.get("train_error_eval", last["train_error"])


def final_train_loss(record: dict[str, Any]) -> float:
    """The training loss a study reports, measured like :func:`final_train_error` (eval mode on the fixed
    training subset when the run measured it, else the last epoch's running average)."""
    last = record["history"][-1]
    return last.get("train_loss_eval", last["train_loss"])


def last_epoch_loss_change(record: dict[str, Any]) -> float:
    """Relative change (%) of the training loss over the last epoch (eval mode on the fixed subset
    when measured, else the running train-mode loss): how close to a plateau a net stopped."""
    if len(record["history"]) < 2:
        return math.nan
    key = "train_loss_eval" if "train_loss_eval" in record["history"][-1] else "train_loss"
    before, last = record["history"][-2][key], record["history"][-1][key]
    return 100.0 * (last - before) / before


def mean_diff_se(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """(mean(a) - mean(b), its standard error sqrt(sd_a²/n_a + sd_b²/n_b)) over independent seeds
    (Welch): how far apart two settings are, beside the uncertainty of that distance."""
    (ma, sa), (mb, sb) = mean_sd(a), mean_sd(b)
    return ma - mb, math.sqrt(sa ** 2 / len(a) + sb ** 2 / len(b))


def fmt_diff_se(a: Sequence[float], b: Sequence[float]) -> str:
    """:func:`mean_diff_se` as text, "+0.44 ± 0.06"; the bare difference where one seed gives no SE."""
    diff, se = mean_diff_se(a, b)
    return f"{diff:+.2f}" + ("" if math.isnan(se) else f" ± {se:.2f}")
