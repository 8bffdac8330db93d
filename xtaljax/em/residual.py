"""Peaks left in the residual of a fit: what the given phases do not explain (an unlisted phase,
an impurity, a wavelength contamination line).

The residual r = y_obs − y_calc is correlated with a peak-shaped kernel of the local instrument
width (a matched filter). The signal-to-noise ratio at every point is

    SNR_j = Σ_i k_i r_{j+i} / √(Σ_i k_i² v_{j+i}),   v = s² · max(y_calc, 1),

plus a model-error term (ε·peaks_j)² when the modelled peak counts are given (a profile shape
that is 1–3 % off at a strong peak is not an unexplained peak). The noise factor s² is estimated
from the data themselves (robust spread of the residual's second differences against √y_calc:
lab data are often not Poisson — the Mn2O3 tutorial pattern scatters 3× more than √counts). A local maximum with SNR ≥ ``min_snr`` is reported with its 2θ,
d-spacing (first wavelength), height and approximate area (height × FWHM × 1.064, Gaussian), and
the nearest modelled peak (a residual within about one FWHM of a strong peak can also be a
profile-shape misfit of that peak: asymmetry, a wrong Lorentzian share).
"""

from __future__ import annotations

import numpy as np


def noise_factor(residual, y_calc) -> float:
    """s² in var(y_j) = s² · y_calc_j, from the median absolute second difference of the residual
    (a smooth misfit hardly enters a second difference; a Poisson pattern gives s² ≈ 1)."""
    r = np.asarray(residual, np.float64)
    scale = np.sqrt(np.maximum(np.asarray(y_calc, np.float64), 1.0))
    dd = (r[1:-1] - 0.5 * (r[:-2] + r[2:])) / scale[1:-1]
    return float((1.4826 * np.median(np.abs(dd))) ** 2 / 1.5)


def _local_maxima(v, height: float, half_window: int):
    """Indices where ``v`` ≥ ``height`` and is the maximum within ± ``half_window`` points (the
    first of equal neighbours). numpy only: ``scipy.signal.find_peaks`` would add 0.7 s of import
    to every ``decompose`` run."""
    from numpy.lib.stride_tricks import sliding_window_view

    pad = np.pad(v, half_window, constant_values=-np.inf)
    wmax = sliding_window_view(pad, 2 * half_window + 1).max(axis=1)
    idx = np.flatnonzero((v >= height) & (v >= wmax))
    keep, last = [], -half_window - 1
    for i in idx:  # equal maxima on a plateau: keep one per window
        if i - last > half_window:
            keep.append(i)
            last = i
    return np.asarray(keep, dtype=int)


def unexplained_peaks(two_theta, y_obs, y_calc, peak_positions, peak_fwhm, peak_areas, wavelengths, *,
                      min_snr: float = 5.0, labels=None, max_peaks: int = 50, peak_counts=None,
                      model_error: float = 0.03) -> dict:
    """Significant positive peaks of the residual.

    ``peak_positions``, ``peak_fwhm``, ``peak_areas``: every modelled peak (each emission line of
    each reflection), for the local kernel width (FWHM interpolated over 2θ) and the nearest-peak
    report; ``labels``: a name for each modelled peak (phase, hkl, line). The filter is a direct
    convolution, O(points × kernel) at six widths: fine for kernels of tens to hundreds of points. Returns ``{"noise_factor", "min_snr", "peaks": [...]}``
    with the peaks strongest first (at most ``max_peaks``)."""
    x = np.asarray(two_theta, np.float64)
    r = np.asarray(y_obs, np.float64) - np.asarray(y_calc, np.float64)
    pos = np.asarray(peak_positions, np.float64).ravel()
    fw = np.asarray(peak_fwhm, np.float64).ravel()
    area = np.asarray(peak_areas, np.float64).ravel()
    if x.size < 10 or pos.size == 0:
        return {"noise_factor": float("nan"), "min_snr": float(min_snr), "peaks": []}
    order = np.argsort(pos)
    local = np.interp(x, pos[order], fw[order])  # FWHM of a peak at every point
    step = float(np.median(np.diff(x)))
    s2 = noise_factor(r, y_calc)
    var = s2 * np.maximum(np.asarray(y_calc, np.float64), 1.0)
    if peak_counts is not None:
        var = var + (model_error * np.asarray(peak_counts, np.float64)) ** 2
    # matched filter at a few widths; every point takes the one nearest its local FWHM
    widths = np.geomspace(max(local.min(), 2 * step), max(local.max(), 2 * step), 6)
    snr = np.full(x.size, -np.inf)
    amp = np.zeros(x.size)
    pick = np.argmin(np.abs(np.log(local[:, None] / widths[None, :])), axis=1)
    for i, w in enumerate(widths):
        sel = pick == i
        if not sel.any():
            continue
        h = int(np.ceil(1.5 * w / step))
        t = np.arange(-h, h + 1) * step
        k = np.exp(-4 * np.log(2) * (t / w) ** 2)
        num = np.convolve(r, k[::-1], "same")
        den = np.sqrt(np.maximum(np.convolve(var, k[::-1] ** 2, "same"), 1e-300))
        snr[sel] = (num / den)[sel]
        amp[sel] = (num / np.sum(k * k))[sel]
    idx = _local_maxima(np.where(np.isfinite(snr), snr, -np.inf), min_snr, max(1, int(local.min() / step)))
    total = float(np.sum(np.maximum(area, 0.0)))
    strongest = float(np.max(area)) if area.size else 0.0
    lams = np.atleast_1d(np.asarray(wavelengths, np.float64))
    lam = float(lams[0])
    # a residual peak at the Kα2 (other line) position of a stronger one is that peak's partner
    order_idx = idx[np.argsort(-snr[idx])]
    kept = []
    for j in order_idx:
        partner = False
        for i in kept:
            s_i = np.sin(np.radians(x[i] / 2))
            others = 2 * np.degrees(np.arcsin(np.clip(s_i * lams[1:] / lam, 0, 1)))
            if np.any(np.abs(others - x[j]) < 0.5 * local[j]):
                partner = True
                break
        if not partner:
            kept.append(j)
    out = []
    for j in kept[:max_peaks]:
        tt = float(x[j])
        near = int(np.argmin(np.abs(pos - tt)))
        a = float(amp[j] * local[j] * 1.0645)
        out.append({"two_theta": tt, "d": lam / (2 * np.sin(np.radians(tt / 2))), "snr": float(snr[j]),
                    "height": float(amp[j]), "area": a,
                    "area_vs_strongest_peak": a / strongest if strongest > 0 else float("nan"),
                    "area_vs_all_peaks": a / total if total > 0 else float("nan"),
                    "nearest_peak": labels[near] if labels is not None else near,
                    "nearest_peak_distance_fwhm": float(abs(pos[near] - tt) / local[j]),
                    "nearest_peak_area_ratio": float(area[near] / a) if a > 0 else float("inf")})
    return {"noise_factor": s2, "min_snr": float(min_snr), "model_error": float(model_error) if peak_counts is not None
            else 0.0, "peaks": out}


def summary_line(found: dict, limit: int = 6) -> str | None:
    """One line naming the unexplained peaks (None when there are none)."""
    peaks = found["peaks"]
    if not peaks:
        return None
    shown = ", ".join(f"{p['two_theta']:.2f}° (d {p['d']:.4f} Å, SNR {p['snr']:.0f})" for p in peaks[:limit])
    more = f" and {len(peaks) - limit} more" if len(peaks) > limit else ""
    return (f"{len(peaks)} peak(s) in the residual not explained by the given phases (SNR ≥ {found['min_snr']:g}): "
            f"{shown}{more} — an unlisted phase or impurity? (see unexplained_peaks in result.json)")
