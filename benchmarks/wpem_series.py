"""WPEM on a series: many patterns with a drifting lattice decomposed in one batched call.

A two-phase mixture (Si + GaP, overlapping peaks) is simulated through the EM model itself with
Poisson noise; Si's lattice contracts linearly by 0.3 % over the series and the weight fractions
swing from 0.2 to 0.8 (an operando-like series). ``decompose_batch(track=True)`` runs a fixed
number of EM iterations on every pattern of a chunk at once (vmap), each chunk starting from the
cell its predecessor reached; the per-pattern loop (``decompose``) is timed on a few patterns in
the same run. (Si contracts, away from GaP's cell: a drift of +0.3 % would bring Si to 0.06 % of
GaP's cell, where the two lattices are not separable on a 20–60° pattern even from the true start.)

    python benchmarks/wpem_series.py --size full --out benchmarks/results/wpem_series_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

SIZES = {"tiny": dict(n=6, stop=60.0, iters=40, loop=1, chunk=2),
         "small": dict(n=40, stop=100.0, iters=80, loop=2, chunk=8),
         "full": dict(n=200, stop=100.0, iters=80, loop=3, chunk=16)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=SIZES, default="small")
    ap.add_argument("--chunk", type=int, help="patterns per vmapped chunk (default by size; larger on accelerators)")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    cfg = dict(SIZES[args.size])
    if args.chunk is not None:
        if args.chunk < 1:
            ap.error("--chunk must be >= 1")
        cfg["chunk"] = args.chunk
    t_wall = time.perf_counter()

    from pymatgen.core import Lattice, Structure

    import xtaljax as xj
    from xtaljax.em import build_problem, decompose, decompose_batch
    from xtaljax.em.wpem import _cheb_basis, calculated_intensities, model_counts

    si = Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.4310), ["Si"], [[0, 0, 0]])
    gap = Structure.from_spacegroup("F-43m", Lattice.cubic(5.4505), ["Ga", "P"], [[0, 0, 0], [0.25, 0.25, 0.25]])
    phases = [("Si", si), ("GaP", gap)]
    tt = np.arange(20.0, cfg["stop"], 0.01)
    inst = xj.Instrument.cu_kalpha(u=1e-4, v=-1e-4, w=6e-4, x=0.02, y=0.01)
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        prob, st0 = build_problem(tt, phases, inst, n_background=4)
        x = jnp.asarray(tt)
        dx = jnp.asarray(np.gradient(tt))
        basis = _cheb_basis(x, 4)
        ys, a_true, w_true = [], [], []
        for k in range(cfg["n"]):
            f = k / max(cfg["n"] - 1, 1)
            lat = np.asarray(st0.lattice).copy()
            lat[0, 0] *= 1 - 3e-3 * f
            calc, _, zmv = calculated_intensities(prob, inst, lat)
            w = np.array([0.2 + 0.6 * f, 0.8 - 0.6 * f])
            inten = calc * (w / zmv)[prob.comp_phase]
            inten *= 3e3 / 0.05 / inten.max()
            st = st0._replace(lattice=jnp.asarray(lat), intensity=jnp.asarray(inten), eta=jnp.full(prob.n_reflections, 0.4),
                              background=jnp.asarray([200.0, -30.0, 10.0, 0.0]))
            ys.append(rng.poisson(np.asarray(model_counts(prob, st, x, dx, basis)[0])).astype(float))
            a_true.append(lat[0, 0])
            w_true.append(w[0])
    y = np.stack(ys)

    setup = build_problem(tt, phases, inst, n_background=4, widths="free")
    t0 = time.perf_counter()  # compile (and run) once on the first chunk
    chunk = cfg["chunk"]
    _, states = decompose_batch(tt, y[:chunk], phases, inst, n_iter=cfg["iters"], problem=setup, chunk=chunk)
    jax.block_until_ready(states.intensity)
    t_first = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, states = decompose_batch(tt, y, phases, inst, n_iter=cfg["iters"], problem=setup, chunk=chunk, track=True)
    jax.block_until_ready(states.intensity)
    t_batch = time.perf_counter() - t0
    a_err = np.abs(np.asarray(states.lattice)[:, 0, 0] - np.asarray(a_true))

    loop = []
    for k in range(cfg["loop"] + 1):  # the first call compiles; the others reuse the set-up
        t0 = time.perf_counter()
        decompose(tt, y[k], phases, inst, max_iter=cfg["iters"], tol=0.0, progress=False, problem=setup,
                  accelerate=False)  # the same plain EM iterations as the batch
        loop.append(time.perf_counter() - t0)
    per_loop = float(np.median(loop[1:]))

    out = {
        "benchmark": "wpem_series", "size": args.size,
        "device": {"platform": jax.devices()[0].platform, "device_kind": jax.devices()[0].device_kind,
                   "n_devices": jax.device_count(), "cpu": platform.processor() or platform.machine()},
        "versions": {"jax": jax.__version__, "python": platform.python_version()},
        "workload": {"phases": ["Si Fd-3m", "GaP F-43m"], "n_patterns": int(y.shape[0]), "n_points": int(tt.size),
                     "n_reflections": int(prob.members()[0].shape[0]), "n_components": int(prob.n_reflections),
                     "em_iterations": cfg["iters"],
                     "drift": "Si a -0.3 % linearly, weight fraction 0.2 -> 0.8, Poisson noise"},
        "results": {"first_chunk_seconds_incl_compile": t_first, "chunk": chunk, "track": True, "batch_seconds_steady": t_batch,
                    "batch_patterns_per_s": y.shape[0] / t_batch,
                    "loop_seconds_per_pattern_steady_median": per_loop, "loop_seconds_first_incl_compile": loop[0],
                    "speedup_batch_vs_loop": per_loop * y.shape[0] / t_batch,
                    "a_abs_error_median_A": float(np.median(a_err)), "a_abs_error_max_A": float(np.max(a_err))},
        "wall_seconds": time.perf_counter() - t_wall,
    }
    r = out["results"]
    print(f"wpem_series ({args.size}): {y.shape[0]} patterns x {tt.size} points, {prob.members()[0].shape[0]} reflections in {prob.n_reflections} components: "
          f"batch {t_batch:.2f} s ({r['batch_patterns_per_s']:.1f} patterns/s; first call {t_first:.1f} s), "
          f"loop {per_loop:.2f} s/pattern -> x{r['speedup_batch_vs_loop']:.1f}; |Δa| median {r['a_abs_error_median_A']:.1e} Å")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
