"""Statistics of timed sessions: medians, their within-run and re-run intervals, the ratio
interval of a candidate to its baseline, and the verdict.

Statistics are computed over sessions, because that is where the variance lives:

* The objective is the median of the session medians; ``cv`` is the spread of the session medians;
  each model's own interval (``ci_ms``) comes from a hierarchical bootstrap (resample sessions, then
  runs). It is the *within-run* interval: where this run's median would fall if its sessions were
  drawn again in the same process and minute. It does not cover a re-run: on the shared 2-core
  machines here five fresh processes of one model spread 13-21% while ``ci_ms`` was about +-2%.
* ``rerun_ci_ms`` is the interval in which a re-run's median falls (95%): a prediction interval
  from a :class:`RerunCalibration`, the medians of several separate measurements of a reference
  model on the same device and settings (the baseline's A/A calibration runs, or repeated runs of
  a model measured alone). With ``n`` reference medians of log-spread ``s`` (geometric mean ``G``)
  and the model's ratio ``r`` to the reference in this window (log standard error ``v`` from the
  ratio interval), the interval is ``r * G * exp(+-t(n-1) * sqrt(s^2 (1 + 1/n) + v^2))``: the
  reference's level and spread across measurements, carried over by the ratio, which interleaving
  keeps stable (0.466-0.476 over five processes where the medians spread 17.7%). Without a
  calibration it is None.
* ``ratio_rerun_ci`` is the interval in which a re-run's *ratio* falls (95%). ``ratio_ci`` is a
  within-run interval too: over 20 fresh processes only 63% of the later ratios fell inside the
  first run's ``ratio_ci``, although they spread only 2%. The A/A calibration runs measure how far
  a whole measurement's ratio strays: each is a ratio whose true value is 1, so with ``n`` A/A log
  ratios of root mean square ``q`` (``n`` degrees of freedom: the mean is known to be 0), a
  re-run's log ratio differs from this run's by at most ``t(n) * sqrt(2) * q`` (two measurements'
  errors), and the interval is ``r * exp(+-t(n) sqrt(2) q)``, widened to contain ``ratio_ci``.
  Without A/A runs it is None.
* The ratio candidate/baseline is the ratio of the two medians of session medians. Its 95%
  interval is the union of two intervals over the paired rounds, each of which fails in a known
  way: a paired hierarchical bootstrap (no distributional assumption, but with three rounds it is
  little more than [smallest, largest] round ratio and covers far less than 95%) and a Student-t
  interval on the rounds' log ratios (right for few rounds, but assumes normal round-to-round
  noise). The union is conservative on purpose: an interval that is too narrow turns noise into a
  "faster" verdict, one that is too wide only costs a tie.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from lepton_search.errors import MeasurementError
from lepton_search.objectives.latency._settings import Verdict


@dataclass
class LatencyStats:
    """Statistics of one model's sessions; all times in milliseconds per batch."""

    median_ms: float
    #: 95% within-run interval of ``median_ms`` (hierarchical bootstrap over this run's sessions and
    #: runs). It does not cover a re-run in a fresh process; :attr:`rerun_ci_ms` does.
    ci_ms: tuple[float, float]
    session_medians_ms: list[float]
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    cv: float
    sessions: int
    iterations: list[int]
    #: Largest peak inference memory over the sessions, MiB (see the module docstring).
    peak_memory_mb: float | None = None
    #: Median time to open a session (graph optimisation, engine build), milliseconds.
    open_ms: float | None = None
    #: Median of the session medians of each run's CPU time on the measuring thread (one-thread CPU
    #: backends only). Unlike wall time it leaves out time spent waiting for a core, so it stays
    #: put when other processes load the machine; it is a diagnostic, not the objective.
    cpu_median_ms: float | None = None
    #: Share of the timed runs' wall time the measuring thread was on a core (one-thread CPU
    #: backends only). Well below 1 means the machine was busy and wall-clock latencies are inflated;
    #: interleaved ratios are not, since both models waited alike.
    cpu_share: float | None = None
    #: The interval (95%) in which a re-run's median falls, from a :class:`RerunCalibration` of this
    #: device and settings; None without one. ``ci_ms`` is only the within-run interval.
    rerun_ci_ms: tuple[float, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ci_ms"] = list(self.ci_ms)
        d["rerun_ci_ms"] = None if self.rerun_ci_ms is None else list(self.rerun_ci_ms)
        return d


@dataclass
class PairMeasurement:
    """A candidate measured interleaved with the baseline in one measurement window."""

    candidate: LatencyStats
    baseline: LatencyStats
    ratio: float
    ratio_ci: tuple[float, float]
    verdict: Verdict
    noise_band: float
    device: dict[str, Any] = field(default_factory=dict)
    #: The 95% interval of a re-run's ratio (module docstring); None without A/A calibration runs.
    #: ``ratio_ci`` stays the within-run interval the verdict is drawn from.
    ratio_rerun_ci: tuple[float, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "candidate": self.candidate.to_dict(),
            "baseline": self.baseline.to_dict(),
            "ratio": self.ratio,
            "ratio_ci": list(self.ratio_ci),
            "ratio_rerun_ci": None if self.ratio_rerun_ci is None else list(self.ratio_rerun_ci),
            "verdict": self.verdict,
            "noise_band": self.noise_band,
            "device": self.device,
        }


# Elements one bootstrap chunk may index at once (32 MiB of indices plus as much of samples). A
# long session of a fast model holds 10^5 samples; 1000 resamples of it at once would need GiBs.
_BOOTSTRAP_CHUNK_ELEMENTS = 1 << 22


def _bootstrap_medians(samples: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    n = len(samples)
    rows = max(1, _BOOTSTRAP_CHUNK_ELEMENTS // n)
    out = np.empty(resamples)
    for start in range(0, resamples, rows):
        stop = min(start + rows, resamples)
        idx = rng.integers(0, n, size=(stop - start, n))
        out[start:stop] = np.median(samples[idx], axis=1)
    return out


def _hierarchical(
    sessions: list[np.ndarray], resamples: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Per-session bootstrap medians, and which session each resample slot draws."""
    per_session = np.stack([_bootstrap_medians(s, resamples, rng) for s in sessions])
    picks = rng.integers(0, len(sessions), size=(resamples, len(sessions)))
    return per_session, picks


def _draw(per_session: np.ndarray, picks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    cols = rng.integers(0, per_session.shape[1], size=picks.shape)
    return np.median(per_session[picks, cols], axis=1)


def summarize(
    sessions: list[np.ndarray],
    resamples: int = 1000,
    seed: int = 0,
    *,
    peak_memory_mb: float | None = None,
    open_ms: float | None = None,
) -> LatencyStats:
    """Statistics of one model's sessions (see the module docstring)."""
    if not sessions or any(len(s) == 0 for s in sessions):
        raise MeasurementError("No latency samples were taken; check the measurement settings.")
    rng = np.random.default_rng(seed)
    medians = np.array([np.median(s) for s in sessions])
    per_session, picks = _hierarchical(sessions, resamples, rng)
    boot = _draw(per_session, picks, rng)
    pooled = np.concatenate(sessions)
    mean = float(medians.mean())
    return LatencyStats(
        median_ms=float(np.median(medians)),
        ci_ms=(float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))),
        session_medians_ms=[float(m) for m in medians],
        p50_ms=float(np.percentile(pooled, 50)),
        p90_ms=float(np.percentile(pooled, 90)),
        p95_ms=float(np.percentile(pooled, 95)),
        p99_ms=float(np.percentile(pooled, 99)),
        cv=float(medians.std(ddof=1) / mean) if len(medians) > 1 and mean > 0 else 0.0,
        sessions=len(sessions),
        iterations=[len(s) for s in sessions],
        peak_memory_mb=peak_memory_mb,
        open_ms=open_ms,
    )


def bootstrap_ratio_interval(
    candidate: list[np.ndarray], baseline: list[np.ndarray], resamples: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """95% paired hierarchical-bootstrap interval of the ratio of medians of session medians.

    Sessions are paired (they ran in the same round), so one draw of session indices serves both.
    """
    _check_paired(candidate, baseline)
    rng = np.random.default_rng(seed + 1)
    cand, picks = _hierarchical(candidate, resamples, rng)
    base = np.stack([_bootstrap_medians(s, resamples, rng) for s in baseline])
    ratios = _draw(cand, picks, rng) / _draw(base, picks, rng)
    return float(np.percentile(ratios, 2.5)), float(np.percentile(ratios, 97.5))


def paired_t_ratio_interval(
    candidate: list[np.ndarray], baseline: list[np.ndarray], confidence: float = 0.95
) -> tuple[float, float] | None:
    """Student-t interval of the mean log ratio of paired session medians, back-transformed.

    None with fewer than two rounds (no round-to-round spread to scale by).
    """
    _check_paired(candidate, baseline)
    k = len(candidate)
    if k < 2:
        return None
    c = np.array([np.median(s) for s in candidate])
    b = np.array([np.median(s) for s in baseline])
    if np.any(c <= 0) or np.any(b <= 0):
        return None
    from scipy.special import stdtrit  # the t quantile; scipy.stats takes seconds to import

    d = np.log(c / b)
    half = float(stdtrit(k - 1, 0.5 + confidence / 2.0)) * float(d.std(ddof=1)) / math.sqrt(k)
    return math.exp(float(d.mean()) - half), math.exp(float(d.mean()) + half)


def _check_paired(candidate: list[np.ndarray], baseline: list[np.ndarray]) -> None:
    if not candidate or len(candidate) != len(baseline) or any(len(s) == 0 for s in [*candidate, *baseline]):
        raise MeasurementError(
            f"A latency ratio needs the same number of non-empty paired sessions for candidate and baseline; "
            f"got {[len(s) for s in candidate]} and {[len(s) for s in baseline]} samples per session."
        )


def ratio_interval(
    candidate: list[np.ndarray], baseline: list[np.ndarray], resamples: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """95% interval of median-of-medians(candidate) / median-of-medians(baseline).

    The union of :func:`bootstrap_ratio_interval` and :func:`paired_t_ratio_interval` (see the
    module docstring for why both).
    """
    low, high = bootstrap_ratio_interval(candidate, baseline, resamples, seed)
    t_interval = paired_t_ratio_interval(candidate, baseline)
    if t_interval is not None:
        low, high = min(low, t_interval[0]), max(high, t_interval[1])
    return low, high


#: The fewest reference medians a re-run interval is computed from: with two, Student's t for one
#: degree of freedom (12.7) makes the interval uselessly wide.
MIN_RERUN_REFERENCES = 3
RERUN_CONFIDENCE = 0.95


@dataclass(frozen=True)
class RerunCalibration:
    """How a run's median moves between separate measurements on one device and setup.

    ``medians_ms`` are the medians of separate measurements of one reference model (each a full
    measurement with its own fresh sessions, taken one after another): the A/A calibration runs of
    a baseline, or repeated runs of a model measured alone. ``device_class`` is the device they were
    taken on; an interval is only carried to measurements on that class.
    """

    medians_ms: tuple[float, ...]
    device_class: str | None = None
    #: The A/A ratios of the same calibration runs (empty for runs of a model alone): how far a
    #: whole measurement's ratio strays, for :meth:`ratio_interval`.
    aa_ratios: tuple[float, ...] = ()

    def samples(self, reference_now_ms: float | None = None) -> np.ndarray:
        """The reference medians, with this window's reference median when given."""
        values = [*self.medians_ms, *([] if reference_now_ms is None else [reference_now_ms])]
        return np.asarray([v for v in values if v > 0 and math.isfinite(v)], dtype=float)

    def spread(self, reference_now_ms: float | None = None) -> float | None:
        """Standard deviation of the log reference medians (about the relative spread)."""
        logs = np.log(self.samples(reference_now_ms))
        return float(logs.std(ddof=1)) if len(logs) >= 2 else None

    def interval(
        self,
        reference_now_ms: float | None,
        ratio: float = 1.0,
        ratio_ci: tuple[float, float] | None = None,
        confidence: float = RERUN_CONFIDENCE,
    ) -> tuple[float, float] | None:
        """Where a re-run's median of a model falls (see the module docstring for the formula).

        Args:
            reference_now_ms: The reference model's median in this measurement (None: not measured
                now, e.g. a model measured alone whose calibration runs are of itself).
            ratio: The model's median over the reference's in this window (1: the reference).
            ratio_ci: The ratio's interval; its width adds the ratio's own uncertainty.

        Returns:
            ``(low, high)`` in milliseconds, or None with fewer than :data:`MIN_RERUN_REFERENCES`
            reference medians.
        """
        logs = np.log(self.samples(reference_now_ms))
        n = len(logs)
        if n < MIN_RERUN_REFERENCES or ratio <= 0 or not math.isfinite(ratio):
            return None
        from scipy.special import stdtrit  # the t quantile; scipy.stats takes seconds to import

        level = float(logs.mean()) + math.log(ratio)
        variance = float(logs.var(ddof=1)) * (1.0 + 1.0 / n)
        if ratio_ci is not None and ratio_ci[0] > 0:
            z = 1.959963984540054
            variance += (max(math.log(ratio_ci[1] / ratio), math.log(ratio / ratio_ci[0])) / z) ** 2
        half = float(stdtrit(n - 1, 0.5 + confidence / 2.0)) * math.sqrt(variance)
        return math.exp(level - half), math.exp(level + half)

    def ratio_interval(
        self, ratio: float, ratio_ci: tuple[float, float], confidence: float = RERUN_CONFIDENCE
    ) -> tuple[float, float] | None:
        """Where a re-run's ratio falls, given this run's ``ratio`` and ``ratio_ci`` (module
        docstring), or None with fewer than :data:`MIN_RERUN_REFERENCES` A/A ratios."""
        logs = np.log([r for r in self.aa_ratios if r > 0 and math.isfinite(r)])
        n = len(logs)
        if n < MIN_RERUN_REFERENCES or ratio <= 0 or not math.isfinite(ratio):
            return None
        from scipy.special import stdtrit

        rms = math.sqrt(float(np.mean(logs**2)))
        half = float(stdtrit(n, 0.5 + confidence / 2.0)) * math.sqrt(2.0) * rms
        return min(ratio * math.exp(-half), ratio_ci[0]), max(ratio * math.exp(half), ratio_ci[1])

    def to_dict(self) -> dict[str, Any]:
        return {
            "medians_ms": list(self.medians_ms),
            "spread": self.spread(),
            "device_class": self.device_class,
            "aa_ratios": list(self.aa_ratios),
        }


def with_rerun_interval(
    stats: LatencyStats,
    calibration: RerunCalibration | None,
    reference_now_ms: float | None,
    ratio: float = 1.0,
    ratio_ci: tuple[float, float] | None = None,
) -> LatencyStats:
    """``stats`` with :attr:`LatencyStats.rerun_ci_ms` from ``calibration`` (None without one)."""
    if calibration is not None:
        stats.rerun_ci_ms = calibration.interval(reference_now_ms, ratio, ratio_ci)
    return stats


def verdict_of(ratio_ci: tuple[float, float], noise_band: float) -> Verdict:
    """``faster`` only if the whole ratio interval lies below ``1 - noise_band``; ``slower`` only
    if it lies above ``1 + noise_band``; otherwise the two are tied within the noise."""
    low, high = ratio_ci
    if high < 1.0 - noise_band:
        return "faster"
    if low > 1.0 + noise_band:
        return "slower"
    return "tie"
