"""Matplotlib figures (Agg backend; files only)."""

from __future__ import annotations

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_pattern(two_theta, y, path, *, sticks=None, title: str = "", wavelength_label: str = "") -> str:
    """Simulated profile (and optional stick positions/intensities) to a PNG."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 4), dpi=110)
    ax.plot(two_theta, y, lw=0.8, color="C0", label="simulated")
    if sticks is not None:
        ymax = float(np.max(y)) if np.size(y) else 1.0
        ax.vlines(sticks.two_theta, 0, sticks.intensity / 100 * ymax, color="C3", lw=0.8, label="sticks")
    ax.set_xlabel(f"2θ (degrees){wavelength_label}")
    ax.set_ylabel("intensity")
    ax.set_title(title)
    ax.legend(frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return str(path)


def plot_fit(two_theta, y_obs, y_calc, path, *, ticks=None, title: str = "", components=None, marks=None) -> str:
    """Observed, calculated, difference and reflection ticks (a Rietveld-style plot). ``ticks``:
    an array of positions, or ``{phase name: positions}`` for one row per phase.
    ``components``: ``{phase name: [(x, y), ...]}`` curves drawn thin in the colour of the
    phase's ticks (a decomposition's components on the background); ``marks``: 2θ of peaks the
    model leaves unexplained (triangles above the data)."""
    plt = _plt()
    fig, (ax, axd) = plt.subplots(2, 1, figsize=(10, 5.5), dpi=110, sharex=True, gridspec_kw={"height_ratios": [4, 1]})
    ax.plot(two_theta, y_obs, ".", ms=1.5, color="k", label="observed")
    ax.plot(two_theta, y_calc, lw=0.8, color="C3", label="calculated")
    rows = ticks if isinstance(ticks, dict) else ({"reflections": ticks} if ticks is not None else {})
    colour = {name: f"C{2 + k}" for k, name in enumerate(rows)}
    for k, (name, curves) in enumerate((components or {}).items()):
        for j, (cx, cy) in enumerate(curves):
            ax.plot(cx, cy, lw=0.5, alpha=0.7, color=colour.get(name, f"C{2 + k}"),
                    label=f"{name} components" if j == 0 else None)
    lo = float(np.min(y_obs))
    span = float(np.max(y_obs)) - lo
    for k, (name, pos) in enumerate(rows.items()):
        if len(pos):
            ax.plot(pos, np.full(len(pos), lo - (0.03 + 0.04 * k) * span), "|", color=colour[name], ms=6, label=name)
    if marks is not None and len(marks):
        top = np.interp(marks, two_theta, y_obs) + 0.05 * span
        ax.plot(marks, top, "v", ms=4, color="C1", label="unexplained peaks")
    ax.set_ylabel("counts")
    ax.set_title(title)
    ax.legend(frameon=False, fontsize=8)
    axd.plot(two_theta, np.asarray(y_obs) - np.asarray(y_calc), lw=0.6, color="C0")
    axd.set_ylabel("obs − calc")
    axd.set_xlabel("2θ (degrees)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return str(path)
