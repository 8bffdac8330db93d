"""The landscape study: structures × distortions × parametrisations × metrics → one report dict.

For every structure (:func:`.recover.load_target`) the same seeded distortions are recovered by
gradient descent in each parametrisation and for each metric (:func:`.recover.recover`); the
report aggregates

* ``match_rate[metric][parametrisation]``: fraction of runs whose best iterate matches the truth
  (StructureMatcher, tolerances in ``settings["matcher"]``), pooled over structures and
  distortions; ``start_match_rate`` the same for the starts (how many starts already matched);
* ``mutual_information[metric][parametrisation]`` (``{"ksg", "binned"}``, nats),
  ``spearman`` and ``pearson``: between the structural distance to the truth (known-correspondence
  RMS displacement, Å, :func:`.distort.displacement_rms`) and the XRD similarity to the target
  pattern (the metric's ``similarity``). Samples: the starts and the best iterates of every run,
  pooled over structures (2 × structures × distortions points per cell). A landscape in which
  XRD similarity tells structural distance has a large MI and a strongly negative correlation.
* ``per_structure``: each structure's summary; ``timings``; ``settings``.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np

from .distort import DistortionSpec
from .metrics import similarity_from_loss
from .mi import binned_mi, correlations, ksg_mi
from .recover import MATCHER_DEFAULTS, PARAMETRISATIONS, load_target, recover

#: where the MP-20 subset lives relative to the repository root (shared data, not shipped)
MP20_SUBSET = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "structures" / "mp_20_subset" / "mp_20_subset.csv"


def load_mp20(n: int = 10, path=None, *, offset: int = 0, ids=None, split: str | None = None):
    """``[(material_id, pymatgen Structure), ...]``: ``n`` rows (from ``offset``, in file order) of a
    CDVAE-format CSV (column ``cif``; default: the shared MP-20 subset), only those of ``split``
    (``"train"``/``"val"``/``"test"``, column ``split``) if given; or the rows whose
    ``material_id`` is in ``ids`` (in that order)."""
    import warnings

    from pymatgen.core import Structure

    path = Path(path) if path else MP20_SUBSET
    if not path.is_file():
        raise ValueError(f"{path}: no such file (the MP-20 subset CSV)")
    if n < 1 and ids is None:
        raise ValueError(f"number of structures must be >= 1, got {n}")
    csv.field_size_limit(1 << 30)
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if rows and "cif" not in rows[0]:
        raise ValueError(f"{path}: no 'cif' column")
    if split is not None:
        if rows and "split" not in rows[0]:
            raise ValueError(f"{path}: no 'split' column")
        rows = [r for r in rows if r["split"] == split]
    if ids is not None:
        by_id = {r.get("material_id"): r for r in rows}
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise ValueError(f"{path}: material ids not found: {', '.join(missing)}")
        rows = [by_id[i] for i in ids]
    else:
        rows = rows[offset: offset + n]
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for r in rows:
            out.append((r.get("material_id") or f"row{len(out)}", Structure.from_str(r["cif"], fmt="cif")))
    return out


def match_pool(workers="auto", n_structures: int = 2):
    """A spawn-context process pool for the StructureMatcher work of :func:`.recover.recover`, or
    None. ``"auto"``: one worker per core beyond the first (at least 1, at most 4) when there is
    more than one structure; 0 or None: match in this process."""
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    if workers == "auto":
        workers = max(1, min(4, (os.cpu_count() or 2) - 1)) if n_structures > 1 else 0
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 0:
        raise ValueError(f"match_workers must be a non-negative integer or 'auto', got {workers!r}")
    if not workers:
        return None
    return ProcessPoolExecutor(max_workers=int(workers), mp_context=multiprocessing.get_context("spawn"))


def run_study(structures, *, n_distortions: int = 50, sigma_lattice: float = 0.03, sigma_coords: float = 0.3,
              mode: str = "both", coords_unit: str = "angstrom", metrics=("cosine", "mse", "entropy"),
              parametrisations=PARAMETRISATIONS, steps: int = 500, lr: float = 0.005, seed: int = 0,
              metric_options: dict | None = None, two_theta=None, instrument=None, matcher: dict | None = None,
              ksg_k: int = 3, space_group: int | None = None, symprec: float = 0.1, progress=None,
              return_results: bool = False, match_workers="auto", on_structure=None):
    """Run the study and return the report dict (see the module docstring).

    ``structures``: a list of CIF paths, pymatgen ``Structure`` objects or ``(name, structure)``
    pairs. ``progress``: optional callable receiving one line per structure. Every structure uses
    the same distortion seeds (``seed``), so rows are comparable across structures.
    ``space_group``: required space group of every structure (``ValueError`` naming the structure
    if spglib finds another). ``symprec``: spglib tolerance in Å (0.1, Materials Project's, by
    default, so that MP-20's space-group labels are reproduced; the truth is the primitive cell
    of the symmetrised standard cell, see :func:`.recover.load_target`).
    ``match_workers``: see :func:`match_pool`; each structure's matching then runs in a worker
    process while the next structure compiles and optimises. ``on_structure(k, entry, result)``:
    called as each structure completes (its ``per_structure`` entry and ``RecoveryResult``).
    """
    spec = DistortionSpec(sigma_lattice, sigma_coords, mode, coords_unit).validate()
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    if not structures:
        raise ValueError("no structures given")
    metrics, parametrisations = tuple(metrics), tuple(parametrisations)
    t_all = time.perf_counter()
    results, per = [], []
    pool = match_pool(match_workers, len(structures))

    def finish(k):
        r, tg, t_load, t0 = results[k]
        r.wait()
        entry = {"name": tg.name, "formula": tg.structure.composition.reduced_formula,
                 "space_group": tg.info.space_group, "symbol": tg.info.symbol, "n_sites": tg.n_sites,
                 "free_parameters": {"free": 6 + 3 * tg.n_sites, "family": tg.info.n_lattice + 3 * tg.n_sites,
                                     "wyckoff": tg.info.n_lattice + tg.info.n_free_coords},
                 "timings": {"load_s": t_load, **r.timings}, "summary": r.summary()}
        per.append(entry)
        if progress:
            rates = " ".join(f"{p}={r.matched[i].mean():.2f}" for i, p in enumerate(parametrisations))
            progress(f"[{k + 1}/{len(structures)}] {tg.name} {tg.info.symbol} n={tg.n_sites}: match {rates} "
                     f"({time.perf_counter() - t0:.1f} s)")
        if on_structure:
            on_structure(k, entry, r)

    try:
        for k, item in enumerate(structures):
            name, s = item if isinstance(item, tuple) else (None, item)
            t0 = time.perf_counter()
            tg = load_target(s, name=name, two_theta=two_theta, instrument=instrument, space_group=space_group,
                             symprec=symprec, margin=0.05 + 4 * sigma_lattice)
            t_load = time.perf_counter() - t0
            r = recover(tg, n_distortions, spec, modes=parametrisations, metrics=metrics, metric_options=metric_options,
                        steps=steps, lr=lr, seed=seed, matcher=matcher, executor=pool)
            results.append((r, tg, t_load, t0))
            if k > 0:  # the previous structure matched while this one compiled and optimised
                finish(k - 1)
        finish(len(results) - 1)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    results = [r for r, *_ in results]
    report = aggregate(results, metrics, parametrisations, ksg_k=ksg_k)
    report["per_structure"] = per
    report["settings"] = {"n_structures": len(results), "n_distortions": int(n_distortions),
                          "sigma_lattice": float(sigma_lattice), "sigma_coords": float(sigma_coords),
                          "distortion_mode": mode, "coords_unit": coords_unit, "metrics": list(metrics),
                          "parametrisations": list(parametrisations), "steps": int(steps), "lr": float(lr),
                          "optimizer": "optax.adam, cosine-decay schedule to 5 % of lr; best iterate reported",
                          "seed": int(seed), "metric_options": dict(metric_options or {}), "symprec": float(symprec),
                          "matcher": {**MATCHER_DEFAULTS, **(matcher or {})}, "ksg_k": int(ksg_k),
                          "two_theta": _grid_desc(two_theta), "structural_distance":
                              "known-correspondence RMS displacement to the truth (A), see distort.displacement_rms",
                          "mi_samples": "starts and best iterates of all runs, pooled over structures"}
    report["timings"] = {"total_s": time.perf_counter() - t_all,
                         "compile_s": float(sum(r.timings["compile_s"] for r in results)),
                         "optimise_s": float(sum(r.timings["optimise_s"] for r in results)),
                         "match_s": float(sum(r.timings["match_s"] for r in results))}
    return (report, results) if return_results else report


def _grid_desc(two_theta):
    from .recover import default_grid

    tt = default_grid() if two_theta is None else np.asarray(two_theta, float)
    return {"start": float(tt[0]), "stop": float(tt[-1]), "n": int(tt.size)}


def aggregate(results, metrics, parametrisations, *, ksg_k: int = 3) -> dict:
    """Pool :class:`.recover.RecoveryResult` objects into the report's statistics."""
    out = {"match_rate": {}, "start_match_rate": {}, "mutual_information": {}, "spearman": {}, "pearson": {},
           "median_rms": {}, "improved_fraction": {}}
    for j, met in enumerate(metrics):
        for key in out:
            out[key][met] = {}
        for i, mode in enumerate(parametrisations):
            matched = np.concatenate([r.matched[i, j] for r in results])
            out["match_rate"][met][mode] = float(matched.mean())
            out["start_match_rate"][met][mode] = float(np.concatenate([r.start_matched[i, j] for r in results]).mean())
            rms = np.concatenate([r.rms[i, j] for r in results])
            out["median_rms"][met][mode] = float(np.nanmedian(rms)) if np.any(np.isfinite(rms)) else None
            out["improved_fraction"][met][mode] = float(np.mean(np.concatenate(
                [r.best_loss[i, j] < r.start_loss[i, j] for r in results])))
            d = np.concatenate([np.concatenate([r.dist_start[i, j], r.dist_final[i, j]]) for r in results])
            loss = np.concatenate([np.concatenate([r.start_loss[i, j], r.best_loss[i, j]]) for r in results])
            sim = similarity_from_loss(met, loss)
            c = correlations(d, sim) if d.size >= 3 else {"pearson": None, "spearman": None, "n": int(d.size)}
            enough = d.size >= ksg_k + 2
            out["mutual_information"][met][mode] = {"ksg": ksg_mi(d, sim, k=ksg_k) if enough else None,
                                                    "binned": binned_mi(d, sim) if enough else None, "n": c["n"]}
            out["spearman"][met][mode] = c["spearman"]
            out["pearson"][met][mode] = c["pearson"]
    return out


def plot_report(report: dict, results, path) -> str:
    """Two rows: match rate per metric and parametrisation (bars; starts hatched), and the
    structural distance vs XRD similarity scatter (starts and best iterates) per metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = report["settings"]["metrics"]
    modes = report["settings"]["parametrisations"]
    fig, axes = plt.subplots(2, len(metrics), figsize=(4.2 * len(metrics), 7.5), squeeze=False)
    colors = {"free": "tab:red", "family": "tab:orange", "wyckoff": "tab:blue"}
    for j, met in enumerate(metrics):
        ax = axes[0, j]
        x = np.arange(len(modes))
        ax.bar(x, [report["match_rate"][met][m] for m in modes], color=[colors.get(m, "grey") for m in modes])
        ax.bar(x, [report["start_match_rate"][met][m] for m in modes], fill=False, hatch="//", edgecolor="k",
               label="start already matched")
        ax.set_xticks(x, modes)
        ax.set_ylim(0, 1)
        ax.set_title(f"{met}: match rate")
        if j == 0:
            ax.legend(fontsize=8)
        ax = axes[1, j]
        for i, mode in enumerate(modes):
            d = np.concatenate([np.concatenate([r.dist_start[i, j], r.dist_final[i, j]]) for r in results])
            loss = np.concatenate([np.concatenate([r.start_loss[i, j], r.best_loss[i, j]]) for r in results])
            mi = report["mutual_information"][met][mode]["ksg"]
            ax.scatter(d, similarity_from_loss(met, loss), s=6, alpha=0.5, color=colors.get(mode, "grey"),
                       label=f"{mode} (MI {mi:.2f})" if mi is not None else mode)
        ax.set_xlabel("RMS displacement to truth (Å)")
        ax.set_ylabel(f"{met} similarity")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)
