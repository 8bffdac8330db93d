"""Scaling of ``simulate_batch(..., mesh=batch_mesh())`` with the number of (forced host) devices.

Each device count runs in its own subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=N``
and ``JAX_PLATFORMS=cpu`` (JAX fixes its devices at start-up). Every worker builds the same batch of
structures (cubic, hexagonal and triclinic cells with 2–5 sites), compares the sharded result
with the plain single-device ``simulate_batch`` (float32: bitwise equal or within rounding, since
XLA's CPU code may round a row differently for another per-call batch size), and times both
(first call = compile + run, then the median of steady calls). Efficiency =
t(1 device) / (N · t(N devices)), from the sharded timings; on a CPU the forced devices share the
host's cores, so no gain beyond the physical core count is to be expected (XLA already uses
several threads for one device).

Measured on the 2-core CPU (``--size small``, 64 structures × 4000 points, another job loading
the machine, load average ≈ 5): sharded 13.4 / 15.8 / 18.7 / 23.8 ms on 1 / 2 / 4 / 8 devices
(efficiency 1.0 / 0.43 / 0.18 / 0.07: no gain; the split only pays with real devices), results
bitwise equal to the plain call. Not measured on an accelerator (none was lent).

    python benchmarks/sharding_scaling.py --size small --out benchmarks/results/sharding_scaling_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

SIZES = {"tiny": dict(batch=16, stop=50.0, step=0.05, repeats=3, devices=(1, 2, 8)),
         "small": dict(batch=64, stop=90.0, step=0.02, repeats=5, devices=(1, 2, 4, 8))}


def worker(size: str) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from pymatgen.core import Lattice, Structure

    import xtaljax as xj
    from xtaljax.io import read_structure
    from xtaljax.parallel import batch_mesh

    cfg = SIZES[size]
    rng = np.random.default_rng(0)
    structs = []
    for k in range(cfg["batch"]):
        if k % 3 == 0:
            structs.append(Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.4 + 0.01 * k), ["Na", "Cl"],
                                                     [[0, 0, 0], [0.5, 0.5, 0.5]]))
        elif k % 3 == 1:
            structs.append(Structure(Lattice.hexagonal(3.2 + 0.005 * k, 5.2), ["Zn", "O"],
                                     [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.38]]))
        else:
            lat = Lattice.from_parameters(5.1, 6.3, 7.2, 84.0, 97.0, 95.0 + 0.1 * k)
            structs.append(Structure(lat, ["Ca", "Ti", "O", "O", "O"], rng.uniform(0, 1, (5, 3))))
    tt = np.arange(10.0, cfg["stop"], cfg["step"])
    inst = xj.Instrument.cu_kalpha()
    cb, rb, sc = xj.prepare_batch([read_structure(s) for s in structs], inst, tt)
    x = jnp.asarray(tt, jnp.float32)
    mesh = batch_mesh()

    def timed(fn):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        first = time.perf_counter() - t0
        steady = []
        for _ in range(cfg["repeats"]):
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            steady.append(time.perf_counter() - t0)
        return first, steady

    f_plain, s_plain = timed(lambda: xj.simulate_batch(cb, inst, x, rb, sc)[0])
    f_mesh, s_mesh = timed(lambda: xj.simulate_batch(cb, inst, x, rb, sc, mesh=mesh)[0])
    y1 = np.asarray(xj.simulate_batch(cb, inst, x, rb, sc)[0])
    y8 = xj.simulate_batch(cb, inst, x, rb, sc, mesh=mesh)[0]
    return {"n_devices": jax.device_count(), "mesh_devices": int(mesh.devices.size),
            "output_devices": len(y8.sharding.device_set),
            "identical_to_plain": bool(np.array_equal(np.asarray(y8), y1)),
            "max_abs_diff": float(np.max(np.abs(np.asarray(y8) - y1))),
            "max_diff_rel_to_row_max": float(np.max(np.abs(np.asarray(y8) - y1).max(1) / np.abs(y1).max(1))),
            "batch": cfg["batch"], "points": int(tt.size), "capacity": int(rb.capacity),
            "plain": {"first_s": f_plain, "steady_s": s_plain, "median_s": float(np.median(s_plain))},
            "sharded": {"first_s": f_mesh, "steady_s": s_mesh, "median_s": float(np.median(s_mesh))},
            "platform": jax.devices()[0].platform, "jax": jax.__version__}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=SIZES, default="small")
    ap.add_argument("--out")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(worker(args.size)))
        return 0

    t_wall = time.perf_counter()
    runs = []
    for n in SIZES[args.size]["devices"]:
        flags = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split()
                         if not f.startswith("--xla_force_host_platform_device_count"))
        env = dict(os.environ, JAX_PLATFORMS="cpu",
                   XLA_FLAGS=(flags + f" --xla_force_host_platform_device_count={n}").strip())
        proc = subprocess.run([sys.executable, __file__, "--size", args.size, "--worker"], env=env,
                              capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr[-4000:])
            raise SystemExit(f"worker with {n} devices failed")
        res = json.loads(next(line[7:] for line in proc.stdout.splitlines() if line.startswith("RESULT ")))
        assert res["n_devices"] == n, res
        runs.append(res)
        print(f"{n} device(s): sharded {res['sharded']['median_s'] * 1e3:.1f} ms, plain "
              f"{res['plain']['median_s'] * 1e3:.1f} ms, identical={res['identical_to_plain']} "
              f"(max diff {res['max_diff_rel_to_row_max']:.1e} of the row maximum)", flush=True)

    t1 = runs[0]["sharded"]["median_s"]
    for r in runs:
        r["speedup_vs_1"] = t1 / r["sharded"]["median_s"]
        r["efficiency"] = r["speedup_vs_1"] / r["n_devices"]
        r["speedup_vs_plain_same_process"] = r["plain"]["median_s"] / r["sharded"]["median_s"]
    out = {"benchmark": "sharding_scaling", "size": args.size, "config": {**SIZES[args.size],
                                                                         "devices": list(SIZES[args.size]["devices"])},
           "host": {"cpu_count": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
                    "load_average_1_5_15_at_end": list(os.getloadavg()),
                    "python": platform.python_version()},
           "note": "forced host devices (--xla_force_host_platform_device_count) share the physical cores; "
                   "efficiency = t(1 device) / (N t(N devices)), sharded path, steady-state medians",
           "runs": runs, "wall_s": time.perf_counter() - t_wall}
    print(json.dumps({r["n_devices"]: {"speedup": round(r["speedup_vs_1"], 3), "efficiency": round(r["efficiency"], 3)}
                      for r in runs}))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
