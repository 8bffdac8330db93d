"""Overhead of the symmetry expansion: jit(simulate(expand(params))) vs jit(simulate(crystal)).

Batched over many parameter sets of one template (the multi-start use case), forward and
value_and_grad, compile and steady state timed separately. Writes JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import xtaljax as xj
from xtaljax.io.spacegroups import symmetrize

ROOT = Path(__file__).resolve().parents[1]


def timeit(fn, *args, repeats=5):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    compile_s = time.perf_counter() - t0
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t0)
    return compile_s, float(np.median(ts))


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--structure", default=str(ROOT / "xtaljax" / "data" / "fap.cif"))
    ap.add_argument("--step", type=float, default=0.02)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "symmetry_overhead.json"))
    args = ap.parse_args(argv)
    t, p = symmetrize(args.structure)
    inst = xj.Instrument.cu_kalpha()
    tt = np.arange(10.0, 90.0, args.step)
    ttj = jnp.asarray(tt, jnp.float32)
    c0 = t.expand(p)
    cfg = xj.resolve_config(None, inst, tt)
    refl = xj.reflections_for(c0, inst, tt, cfg)
    keys = jax.random.split(jax.random.PRNGKey(0), args.batch)
    ps = jax.vmap(lambda k: dataclasses.replace(p, coords=p.coords + 0.01 * jax.random.normal(k, p.coords.shape)))(keys)
    cs = jax.vmap(t.expand)(ps)
    target = xj.simulate(c0, inst, tt, refl, cfg)

    sim_c = jax.jit(jax.vmap(lambda c: xj.simulate(c, inst, ttj, refl, cfg)))
    sim_p = jax.jit(jax.vmap(lambda q: xj.simulate(t.expand(q), inst, ttj, refl, cfg)))
    loss_c = lambda c: jnp.mean((xj.simulate(c, inst, ttj, refl, cfg) - target) ** 2)  # noqa: E731
    loss_p = lambda q: loss_c(t.expand(q))  # noqa: E731
    fields = ("lattice", "frac", "occupancy", "b_iso")  # the same quantities expand() makes differentiable
    vg_c = jax.jit(jax.vmap(jax.value_and_grad(lambda d, c: loss_c(dataclasses.replace(c, **d)))))
    vg_p = jax.jit(jax.vmap(jax.value_and_grad(loss_p)))
    res = {}
    for name, fn, arg in (("simulate_crystal", sim_c, (cs,)), ("simulate_expand", sim_p, (ps,)),
                          ("value_and_grad_crystal", vg_c, ({f: getattr(cs, f) for f in fields}, cs)), ("value_and_grad_expand", vg_p, (ps,))):
        comp, steady = timeit(fn, *arg)
        res[name] = {"compile_s": comp, "steady_s": steady, "patterns_per_s": args.batch / steady}
    res["overhead_forward"] = res["simulate_expand"]["steady_s"] / res["simulate_crystal"]["steady_s"]
    res["overhead_value_and_grad"] = res["value_and_grad_expand"]["steady_s"] / res["value_and_grad_crystal"]["steady_s"]
    out = {"device": jax.devices()[0].device_kind, "jax": jax.__version__, "platform": platform.platform(),
           "structure": Path(args.structure).name, "space_group": int(t.space_group), "sites": int(c0.mask.sum()),
           "batch": args.batch, "grid_points": int(tt.size), "capacity": refl.capacity, "window": cfg.window,
           "results": res, "target": "expand+simulate <= 1.2x simulate of the expanded crystal"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(res, indent=1))
    return 0 if res["overhead_forward"] <= 1.2 else 1


if __name__ == "__main__":
    raise SystemExit(main())
