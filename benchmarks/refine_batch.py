"""Batch Rietveld refinement: many simulated FAP patterns refined at once (one vmapped LM).

Each pattern is simulated from the fluoroapatite model with its own lattice (±0.3 %), sample
displacement, B values and scale, plus Poisson noise; all are refined from the same nominal
start (scale/background → + lattice/displacement → + B). Compared with refining them one at a
time with :meth:`Problem.refine` (measured on a few, in the same run) and with GSAS-II's logged
3.15 s per cycle for the FAP tutorial (not run here: GSAS-II is not installable from PyPI).

    python benchmarks/refine_batch.py --size full --out benchmarks/results/refine_batch_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import jax
import numpy as np

REPO = Path(__file__).resolve().parents[1]
SIZES = {"tiny": dict(batch=4, stop=50.0, sequential=1), "small": dict(batch=20, stop=90.0, sequential=2),
         "full": dict(batch=100, stop=90.0, sequential=3)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=SIZES, default="small")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    cfg = SIZES[args.size]
    t_wall = time.perf_counter()

    from xtaljax.io import read_instrument
    from xtaljax.refine.rietveld import Problem

    inst = read_instrument(REPO / "xtaljax" / "data" / "INST_XRY.PRM").replace(x=0.03, y=0.03)
    tt = np.arange(15.0, cfg["stop"], 0.02)
    cif = str(REPO / "xtaljax" / "data" / "fap.cif")
    prob = Problem(tt, np.ones_like(tt), np.ones_like(tt), [("FAP", cif)], inst, n_background=4)
    rng = np.random.default_rng(args.seed)
    nominal = prob.values(prob.model0)
    truths, ys = [], []
    sim = jax.jit(lambda m: prob.calc(m)[0])
    with jax.enable_x64(True):
        y_unit = np.asarray(sim(prob.with_values(prob.model0, {"bkg0": 0.0})))
        for _ in range(cfg["batch"]):
            t = {"FAP:a": nominal["FAP:a"] * (1 + rng.uniform(-3e-3, 3e-3)),
                 "FAP:c": nominal["FAP:c"] * (1 + rng.uniform(-3e-3, 3e-3)),
                 "displacement": rng.uniform(-0.1, 0.1), "FAP:scale": 2e4 / y_unit.max() * rng.uniform(0.5, 1.5),
                 "bkg0": rng.uniform(50, 150), "bkg1": rng.uniform(-20, 20)}
            t.update({n: rng.uniform(0.3, 1.5) for n in nominal if n.endswith(".B")})
            truths.append(t)
            ys.append(rng.poisson(np.asarray(sim(prob.with_values(prob.model0, t)))).astype(float))
    y = np.stack(ys)
    data = Problem(tt, y[0], np.sqrt(np.maximum(y[0], 1)), [("FAP", cif)], inst, n_background=4)
    stages = [["scale", "background"], ["scale", "background", "lattice", "displacement"],
              ["scale", "background", "lattice", "displacement", "biso"]]
    start = data.with_values(data.model0, {"FAP:scale": 2e4 / y_unit.max()})

    t0 = time.perf_counter()
    z, names, chi2, cycles = data.refine_batch(y, strategy=stages, model=start)
    t_first = time.perf_counter() - t0
    t0 = time.perf_counter()
    z, names, chi2, cycles = data.refine_batch(y, strategy=stages, model=start)
    t_batch = time.perf_counter() - t0
    col = {n: i for i, n in enumerate(names)}
    da = np.array([z[i, col["FAP:a"]] - truths[i]["FAP:a"] for i in range(len(truths))])
    dc = np.array([z[i, col["FAP:c"]] - truths[i]["FAP:c"] for i in range(len(truths))])
    gof = np.sqrt(chi2 / (tt.size - len(names)))

    # one at a time (what a loop over Problem.refine costs), on the first few patterns
    seq, seq_rwp, seq_steady = [], [], []
    for i in range(cfg["sequential"]):
        p1 = Problem(tt, y[i], np.sqrt(np.maximum(y[i], 1)), [("FAP", cif)], inst, n_background=4)
        t0 = time.perf_counter()
        res = p1.refine(stages, model=p1.with_values(p1.model0, {"FAP:scale": 2e4 / y_unit.max()}), progress=False)
        seq.append(time.perf_counter() - t0)
        seq_rwp.append(res.rwp)
        h = [r["seconds"] for r in res.history]
        # without compilation: the cycles after the first (which includes it), times the count
        seq_steady.append((h[-1] - h[0]) / max(len(h) - 1, 1) * len(h))
    per_seq = float(np.median(seq_steady))

    out = {
        "benchmark": "refine_batch", "size": args.size,
        "device": {"platform": jax.devices()[0].platform, "device_kind": jax.devices()[0].device_kind,
                   "n_devices": jax.device_count(), "cpu": platform.processor() or platform.machine()},
        "versions": {"jax": jax.__version__, "python": platform.python_version()},
        "workload": {"structure": "fluoroapatite P6_3/m", "n_patterns": int(y.shape[0]), "n_points": int(tt.size),
                     "range": [float(tt[0]), float(tt[-1])], "parameters": names, "stages": stages,
                     "perturbation": "a, c ±0.3 %, displacement ±0.1 mm, B 0.3–1.5 Å², scale ×0.5–1.5, Poisson noise"},
        "results": {
            "batch_seconds_first_call_incl_compile": t_first, "batch_seconds_steady": t_batch,
            "batch_patterns_per_s": y.shape[0] / t_batch,
            "sequential_seconds_per_pattern_steady": per_seq,
            "sequential_note": "steady = (cycles) x (time per cycle after the first); each new Problem compiles "
                               "its own program (first-pattern time includes it)",
            "sequential_seconds_first_incl_compile": seq[0],
            "speedup_batch_vs_sequential": per_seq * y.shape[0] / t_batch,
            "cycles_median": float(np.median(cycles)), "cycles_max": int(np.max(cycles)),
            "gof_median": float(np.median(gof)), "gof_max": float(np.max(gof)),
            "abs_da_median_A": float(np.median(np.abs(da))), "abs_da_max_A": float(np.max(np.abs(da))),
            "abs_dc_median_A": float(np.median(np.abs(dc))), "abs_dc_max_A": float(np.max(np.abs(dc))),
            "recovered_fraction_a_c_within_1e-3_A": float(np.mean((np.abs(da) < 1e-3) & (np.abs(dc) < 1e-3))),
        },
        "peers": {"gsas2_fap_tutorial_seconds_per_cycle": 3.15,
                  "note": "GSAS-II's own log for the FAP tutorial (a single pattern, 2 cores not stated); not run here"},
        "wall_seconds": time.perf_counter() - t_wall,
    }
    r = out["results"]
    print(f"refine_batch ({args.size}): {y.shape[0]} patterns x {tt.size} points on {out['device']['platform']}: "
          f"batch {t_batch:.2f} s ({r['batch_patterns_per_s']:.2f} patterns/s, first call {t_first:.1f} s), "
          f"sequential {per_seq:.2f} s/pattern -> x{r['speedup_batch_vs_sequential']:.1f}; "
          f"median |da| {r['abs_da_median_A']:.2e} A, GOF median {r['gof_median']:.2f}, "
          f"recovered {100 * r['recovered_fraction_a_c_within_1e-3_A']:.0f} %")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
