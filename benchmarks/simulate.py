"""Throughput benchmark: batched, profiled powder patterns (and their gradients) vs stick peers.

Workload (from the issue): MP-20-subset structures, 2θ = 5–80° at 0.01° (7,501 points),
Cu Kα1 + Kα2 (``Instrument.cu_kalpha()``), TCH pseudo-Voigt, window rendering, batched with
``xtaljax.prepare_batch`` / ``xtaljax.simulate_batch``. Measured in one run:

* compile time (first call minus a steady-state call) and steady-state profiled patterns/s
  (``block_until_ready``, several repeats, median; every repeat is a full pass over the data);
* ``value_and_grad``/s of ``Σ (y − target)²`` w.r.t. the whole ``Crystal`` batch and the
  ``Instrument``;
* with the structures bucketed by reflection capacity (one compiled shape per bucket, sites
  padded to the bucket's largest structure) and without (one common capacity and site padding
  for all, what ``prepare_batch`` does for a plain list);
* peers on the same structures: pymatgen ``XRDCalculator("CuKa").get_pattern`` sticks/s and
  ``xtaljax.sticks`` sticks/s (BraggCalculator: see ``peers`` in the JSON);
* a roofline-style estimate (pseudo-Voigt evaluations, flops and bytes per pattern, achieved
  GFLOP/s).

Usage::

    python benchmarks/simulate.py --size small            # 256 structures
    python benchmarks/simulate.py --size full --out benchmarks/results/simulate_cpu.json
    python benchmarks/simulate.py --size tiny --out /tmp/t.json   # CI smoke test (< 30 s)

Options: ``--batch N|auto`` (patterns per compiled call; ``auto`` sizes each bucket's batch to
about ``--peaks-per-call`` rendered peaks), ``--dtype float32|float64``, ``--repeats``,
``--bucketing both|on|off``, ``--peers all|none|N`` (number of structures the stick peers run
on), ``--tune-malloc`` (glibc ``mallopt``: keep freed memory instead of returning it to the
OS; see the README of the results), ``--data`` (CSV path), ``--replicate R`` (every structure R
times per pass; ``auto``: 1 on a CPU, 32 on an accelerator, whose calls must be large to be
timed: the H200 run renders 38,816 patterns per pass). ``--peaks-per-call`` is ``auto`` too
(8,192 on a CPU, 2,097,152 on an accelerator).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CSV_CANDIDATES = (
    REPO.parent / "shared" / "data" / "structures" / "mp_20_subset" / "mp_20_subset.csv",
    REPO / "shared" / "data" / "structures" / "mp_20_subset" / "mp_20_subset.csv",
)
DEFAULT_OUT = REPO / "benchmarks" / "results" / "simulate_cpu.json"

#: size -> (number of structures, 2θ start, stop, step)
SIZES = {
    "tiny": (8, 20.0, 50.0, 0.02),
    "small": (256, 5.0, 80.0, 0.01),
    "full": (None, 5.0, 80.0, 0.01),
}

#: flop model of one pseudo-Voigt evaluation (sub, 2 mul, fma, reciprocal, exp ≈ 15, 2 fma,
#: window gather/scatter index arithmetic not counted) and of one (reflection, site) term of
#: the structure factor (4 form-factor exps + Debye–Waller exp ≈ 75, sincos ≈ 30, ~15 fma).
FLOP_PER_PV = 25
FLOP_PER_SF_TERM = 120
#: bytes moved per pV evaluation: grid value read, update written and read back by the
#: scatter, read-modify-write of the output point (4 words).
WORDS_PER_PV = 4


def find_csv(path: str | None) -> Path:
    if path:
        p = Path(path)
        if not p.is_file():
            sys.exit(f"error: {p}: no such file")
        return p
    for p in CSV_CANDIDATES:
        if p.is_file():
            return p
    sys.exit("error: MP-20 subset CSV not found (looked in "
             + ", ".join(str(p) for p in CSV_CANDIDATES) + "); pass --data")


def load_structures(path: Path, n: int | None):
    from pymatgen.core import Structure

    csv.field_size_limit(10**8)
    out, ids = [], []
    with open(path, newline="") as f, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for row in csv.DictReader(f):
            out.append(Structure.from_str(row["cif"], fmt="cif"))
            ids.append(row.get("material_id", str(len(ids))))
            if n is not None and len(out) >= n:
                break
    return out, ids


def tune_malloc() -> bool:
    """glibc: never return freed heap memory to the OS and serve blocks up to 32 MiB from the
    heap, so that XLA's large per-call temporaries do not page-fault on every call."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
        return bool(libc.mallopt(m_mmap_threshold, 32 * 1024 * 1024)
                    and libc.mallopt(m_trim_threshold, 2**31 - 1)
                    and libc.mallopt(m_top_pad, 256 * 1024 * 1024))
    except (OSError, AttributeError):
        return False


def cpu_info() -> dict:
    info = {"machine": platform.machine(), "processor": platform.processor() or None,
            "cpu_count": os.cpu_count()}
    try:
        info["cpus_available"] = len(os.sched_getaffinity(0))
    except AttributeError:
        info["cpus_available"] = os.cpu_count()
    try:
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            key, _, val = line.partition(":")
            key = key.strip()
            if key == "model name" and "model_name" not in info:
                info["model_name"] = val.strip()
            elif key == "cpu MHz" and "mhz" not in info:
                info["mhz"] = float(val)
            elif key == "flags" and "simd" not in info:
                flags = set(val.split())
                info["simd"] = [f for f in ("sse4_2", "avx", "avx2", "fma", "avx512f") if f in flags]
    except OSError:
        pass
    try:
        info["loadavg_start"] = list(os.getloadavg())
    except OSError:
        pass
    return info


def nominal_peak_gflops(info: dict, itemsize: int) -> float | None:
    """cores × clock × SIMD lanes × 2 (FMA) × 2 (FMA ports): a nominal upper bound."""
    mhz = info.get("mhz")
    simd = info.get("simd", [])
    if not mhz:
        return None
    width = 512 if "avx512f" in simd else 256 if "avx" in simd else 128
    lanes = width // (8 * itemsize)
    fma = 2 if "fma" in simd else 1
    return info["cpus_available"] * mhz * 1e-3 * lanes * 2 * fma


#: datasheet peaks of accelerators (dense fp32 without tensor cores, GFLOP/s; HBM GB/s), by a
#: substring of ``device_kind``: NVIDIA's H100 SXM and H200 datasheets
GPU_PEAKS = {"H200": (66_900.0, 4_800.0), "H100": (66_900.0, 3_350.0), "A100": (19_500.0, 2_039.0)}


def accelerator_peaks(device_kind: str) -> tuple[float, float] | None:
    for key, val in GPU_PEAKS.items():
        if key in device_kind:
            return val
    return None


def pick_batch(arg: str, capacity: int, n_lines: int, peaks_per_call: int) -> int:
    if arg != "auto":
        return max(int(arg), 1)
    b = max(peaks_per_call // (n_lines * capacity), 1)
    return 1 << (b.bit_length() - 1)  # power of two <= b


def make_groups(crystals, refls, bucketing: bool):
    """Index groups sharing a compiled shape: by reflection capacity (bucketed) or one group."""
    if not bucketing:
        return [list(range(len(crystals)))]
    by_cap: dict[int, list[int]] = {}
    for i, r in enumerate(refls):
        by_cap.setdefault(r.capacity, []).append(i)
    return [by_cap[c] for c in sorted(by_cap)]


def timed(fn, repeats: int):
    """First call (compile + run) and ``repeats`` steady-state calls; returns seconds."""
    import jax

    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    steady = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        steady.append(time.perf_counter() - t0)
    return first, steady


def run_mode(name, crystals, refls, instrument, grid, config, args, dtype):
    """Prepare the batches of one bucketing mode, then time forward and value_and_grad."""
    import jax
    import jax.numpy as jnp

    import xtaljax
    from xtaljax.core.crystal import bucket, stack
    from xtaljax.core.reflections import stack_reflections

    jax.clear_caches()  # each mode pays its own compilations
    n_lines = int(np.asarray(instrument.wavelengths).shape[0])
    x = jnp.asarray(grid, dtype)
    t_prep = time.perf_counter()
    groups = make_groups(crystals, refls, name == "bucketed")
    rep = args.replicate
    groups = [idx * rep for idx in groups]  # --replicate: each structure R times (same values)
    batches, meta = [], []
    for idx in groups:
        cap = max(refls[i].capacity for i in idx)
        sites = bucket(max(int(np.asarray(crystals[i].mask).sum()) for i in idx))
        bsz = min(pick_batch(args.batch, cap, n_lines, args.peaks_per_call), len(idx))
        n_pad = (-len(idx)) % bsz
        padded = idx + [idx[-1]] * n_pad  # repeat the last structure: one shape per group
        # stack the group's distinct structures once, then gather each batch on the device
        uniq = sorted(set(idx))
        pos_of = {i: k for k, i in enumerate(uniq)}
        cb_g = stack([crystals[i] for i in uniq], pad_to=sites)
        rb_g = stack_reflections([refls[i] for i in uniq], cap)
        for k in range(0, len(padded), bsz):
            take = jnp.asarray([pos_of[i] for i in padded[k:k + bsz]])
            cb = jax.tree_util.tree_map(lambda a: a[take], cb_g)
            rb = jax.tree_util.tree_map(lambda a: a[take], rb_g)
            batches.append((cb, rb, sum(1 for j in range(k, k + bsz) if j < len(idx))))
        meta.append({"capacity": cap, "site_padding": sites, "structures": len(idx), "batch": bsz,
                     "calls": len(padded) // bsz, "padded_patterns": n_pad,
                     "mean_enumerated_reflections": float(np.mean([float(np.asarray(refls[i].mask).sum()) for i in idx]))})
    t_prep = time.perf_counter() - t_prep

    sim = xtaljax.simulate_batch

    def forward_all():
        return [sim(cb, instrument, x, rb, config)[0] for cb, rb, _ in batches]

    # compile: first call of each distinct shape (one batch per group), then steady passes
    compile_fwd, compile_vg = [], []
    first_of_group = []
    k = 0
    for m in meta:
        first_of_group.append(k)
        k += m["calls"]
    for gi in first_of_group:
        cb, rb, _ = batches[gi]
        first, steady = timed(lambda: sim(cb, instrument, x, rb, config)[0], 1)
        compile_fwd.append(max(first - steady[0], 0.0))

    targets = [0.9 * y for y in jax.block_until_ready(forward_all())]

    # gradient w.r.t. every floating-point field of the Crystal batch and the whole Instrument;
    # the integer species go in separately (``allow_int`` would return float0 leaves, which
    # keep the jitted call off JAX's C++ fast path: ~1 ms of Python per call)
    def split(cb):
        fields = {f.name: getattr(cb, f.name) for f in dataclasses.fields(cb)}
        floats = {k: v for k, v in fields.items() if jnp.issubdtype(v.dtype, jnp.inexact)}
        return floats, {k: v for k, v in fields.items() if k not in floats}

    def loss(floats, ints, ins, rb, target):
        y, _ = sim(type(batches[0][0])(**floats, **ints), ins, x, rb, config)
        return jnp.sum((y - target) ** 2)

    vg = jax.jit(jax.value_and_grad(loss, argnums=(0, 2)))
    split_batches = [split(cb) for cb, _, _ in batches]

    def vg_all():
        return [vg(fl, it, instrument, rb, t) for (fl, it), (_, rb, _), t in zip(split_batches, batches, targets)]

    for gi in first_of_group:
        (fl, it), (_, rb, _) = split_batches[gi], batches[gi]
        t = targets[gi]
        first, steady = timed(lambda: vg(fl, it, instrument, rb, t), 1)
        compile_vg.append(max(first - steady[0], 0.0))
    for cm, cf, cv in zip(meta, compile_fwd, compile_vg):
        cm["compile_forward_s"] = cf
        cm["compile_value_and_grad_s"] = cv

    _, fwd_times = timed(forward_all, args.repeats)
    _, vg_times = timed(vg_all, args.repeats)
    full = jax.block_until_ready([sim(cb, instrument, x, rb, config) for cb, rb, _ in batches])
    ys = [y for y, _ in full]
    overflow = int(sum(int(np.sum(np.asarray(info["overflow"]))) for _, info in full))
    outs = np.zeros((len(crystals), len(grid)), np.float64)  # one row per distinct structure
    # map outputs back to structure order
    pos = 0
    for g, m in zip(groups, meta):
        padded = g + [g[-1]] * m["padded_patterns"]
        for c in range(m["calls"]):
            y = np.asarray(ys[pos + c], np.float64)
            for j, i in enumerate(padded[c * m["batch"]:(c + 1) * m["batch"]]):
                outs[i] = y[j]
        pos += m["calls"]

    n = sum(len(g) for g in groups)  # patterns per pass (replicas counted)
    total_rendered = sum(m["calls"] * m["batch"] for m in meta)
    # work executed per structure: padding rows, padded sites and repeated (batch-filling)
    # patterns included
    pv_per_pattern = sum(m["calls"] * m["batch"] * n_lines * m["capacity"] for m in meta) / n * config.window
    useful_pv = sum(m["structures"] * m["mean_enumerated_reflections"] for m in meta) / n * n_lines * config.window
    sf_terms = sum(m["calls"] * m["batch"] * m["capacity"] * m["site_padding"] for m in meta) / n
    fwd_med = float(np.median(fwd_times))
    vg_med = float(np.median(vg_times))
    flops = pv_per_pattern * FLOP_PER_PV + sf_terms * FLOP_PER_SF_TERM
    itemsize = np.dtype(dtype).itemsize
    return outs, {
        "groups": meta,
        "n_structures": n,
        "patterns_computed_per_pass": total_rendered,
        "overflow_flags": overflow,
        "prepare_s": t_prep,
        "compile_forward_s": float(sum(compile_fwd)),
        "compile_value_and_grad_s": float(sum(compile_vg)),
        "compiled_shapes": len(meta),
        "forward": {"seconds_per_pass": fwd_times, "median_s": fwd_med, "patterns_per_s": n / fwd_med,
                    "best_patterns_per_s": n / min(fwd_times)},
        "value_and_grad": {"seconds_per_pass": vg_times, "median_s": vg_med, "per_s": n / vg_med,
                           "best_per_s": n / min(vg_times), "ratio_to_forward": vg_med / fwd_med},
        "roofline": {
            "pv_evaluations_per_pattern": pv_per_pattern,
            "non_padding_pv_evaluations_per_pattern": useful_pv,
            "structure_factor_terms_per_pattern": sf_terms,
            "flops_per_pattern": flops,
            "bytes_per_pattern": pv_per_pattern * WORDS_PER_PV * itemsize,
            "achieved_gflops": flops * n / fwd_med / 1e9,
            "achieved_gbytes_per_s": pv_per_pattern * WORDS_PER_PV * itemsize * n / fwd_med / 1e9,
        },
    }


def run_peers(structures, limit, two_theta_range):
    import xtaljax

    peers = {}
    sel = structures if limit is None else structures[:limit]
    try:
        from pymatgen.analysis.diffraction.xrd import XRDCalculator

        calc = XRDCalculator("CuKa")
        calc.get_pattern(sel[0], two_theta_range=two_theta_range)
        t0 = time.perf_counter()
        for s in sel:
            calc.get_pattern(s, two_theta_range=two_theta_range)
        dt = time.perf_counter() - t0
        peers["pymatgen_sticks"] = {"structures": len(sel), "seconds": dt, "per_s": len(sel) / dt,
                                    "call": 'XRDCalculator("CuKa").get_pattern(s, two_theta_range=%r)'
                                            % (tuple(two_theta_range),)}
    except ImportError as exc:  # pragma: no cover
        peers["pymatgen_sticks"] = {"skipped": f"pymatgen not importable: {exc}"}

    # xtaljax.sticks compiles once per capacity bucket: a warm-up pass, then a timed pass
    t0 = time.perf_counter()
    for s in sel:
        xtaljax.sticks(s, "CuKa", two_theta_range)
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    for s in sel:
        xtaljax.sticks(s, "CuKa", two_theta_range)
    dt = time.perf_counter() - t0
    peers["xtaljax_sticks"] = {"structures": len(sel), "seconds": dt, "per_s": len(sel) / dt,
                               "first_pass_seconds": warm,
                               "call": 'xtaljax.sticks(structure, "CuKa", %r)' % (tuple(two_theta_range),)}
    peers["braggcalculator"] = braggcalculator_status()
    return peers


def braggcalculator_status() -> dict:
    try:
        import braggcalculator  # noqa: F401
    except ImportError:
        py = ".".join(map(str, sys.version_info[:3]))
        return {"skipped": "not installed: the PyPI package braggcalculator (0.1.0-0.4.1) requires "
                           f"Python >=3.12,<3.14 and this interpreter is {py}"}
    return {"skipped": "installed, but no adapter is written for it in this benchmark"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="small")
    ap.add_argument("--batch", default="auto", help="patterns per compiled call, or 'auto' (default)")
    ap.add_argument("--peaks-per-call", default="auto",
                    help="with --batch auto: rendered peaks (lines x capacity x batch) per call "
                         "(auto: 8192 on a CPU, 2097152 on an accelerator)")
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--bucketing", choices=("both", "on", "off"), default="both")
    ap.add_argument("--peers", default="all", help="'all', 'none' or the number of structures")
    ap.add_argument("--tune-malloc", action="store_true", help="glibc mallopt before JAX starts")
    ap.add_argument("--data", default=None, help="MP-20 subset CSV (default: shared/data/...)")
    ap.add_argument("--replicate", default="auto",
                    help="render each structure R times per pass, so that an accelerator gets batches "
                         "large enough to time (auto: 1 on a CPU, 32 on an accelerator)")
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    args = ap.parse_args(argv)
    for name in ("replicate", "peaks_per_call"):
        v = getattr(args, name)
        if v != "auto" and (not v.isdigit() or int(v) < 1):
            ap.error(f"--{name.replace('_', '-')} must be a positive integer or 'auto'")
    if args.batch != "auto" and not args.batch.isdigit():
        ap.error("--batch must be a positive integer or 'auto'")

    malloc_tuned = tune_malloc() if args.tune_malloc else False
    import jax

    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import jaxlib

    accel = jax.default_backend() != "cpu"
    args.replicate = (32 if accel else 1) if args.replicate == "auto" else int(args.replicate)
    args.peaks_per_call = (2_097_152 if accel else 8192) if args.peaks_per_call == "auto" else int(args.peaks_per_call)

    import xtaljax
    from xtaljax.io import read_structure

    t_start = time.perf_counter()
    info = cpu_info()  # load average at the start
    n_struct, lo, hi, step = SIZES[args.size]
    grid = np.round(np.linspace(lo, hi, int(round((hi - lo) / step)) + 1), 10)
    dtype = jnp.float64 if args.dtype == "float64" else jnp.float32
    csv_path = find_csv(args.data)
    t0 = time.perf_counter()
    structures, ids = load_structures(csv_path, n_struct)
    t_load = time.perf_counter() - t0

    instrument = xtaljax.Instrument.cu_kalpha(dtype=dtype)
    config = xtaljax.resolve_config(xtaljax.SimConfig(), instrument, grid)
    t0 = time.perf_counter()
    crystals = [read_structure(s, dtype=dtype) for s in structures]
    refls = [xtaljax.reflections_for(c, instrument, grid, config) for c in crystals]
    t_convert = time.perf_counter() - t0

    modes = {"both": ["bucketed", "unbucketed"], "on": ["bucketed"], "off": ["unbucketed"]}[args.bucketing]
    results, outputs = {}, {}
    for mode in modes:
        outputs[mode], results[mode] = run_mode(mode, crystals, refls, instrument, grid, config, args, dtype)
    if len(outputs) == 2:
        a, b = outputs["bucketed"], outputs["unbucketed"]
        results["bucketed_vs_unbucketed_max_rel_diff"] = float(np.max(np.abs(a - b)) / np.max(np.abs(b)))

    n_peer = None if args.peers == "all" else (0 if args.peers == "none" else int(args.peers))
    peers = run_peers(structures, n_peer, (float(lo), float(hi))) if n_peer != 0 else {}

    try:
        info["loadavg_end"] = list(os.getloadavg())
    except OSError:
        pass
    dev = jax.devices()[0]
    best = results.get("bucketed", results.get("unbucketed"))
    peak, peak_bw = nominal_peak_gflops(info, np.dtype(dtype).itemsize), None
    if dev.platform != "cpu":
        peak, peak_bw = accelerator_peaks(dev.device_kind) or (None, None)
    for r in results.values():
        if isinstance(r, dict) and peak:
            r["roofline"]["nominal_peak_gflops"] = peak
            r["roofline"]["fraction_of_nominal_peak"] = r["roofline"]["achieved_gflops"] / peak
        if isinstance(r, dict) and peak_bw:
            r["roofline"]["nominal_peak_gbytes_per_s"] = peak_bw
            r["roofline"]["fraction_of_nominal_bandwidth"] = r["roofline"]["achieved_gbytes_per_s"] / peak_bw
    report = {
        "benchmark": "simulate",
        "argv": sys.argv[1:] if argv is None else list(argv),
        "size": args.size,
        "dtype": args.dtype,
        "device": {"platform": dev.platform, "device_kind": dev.device_kind, "n_devices": jax.device_count(),
                   **info},
        "versions": {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "xtaljax": xtaljax.__version__,
                     "numpy": np.__version__, "python": platform.python_version(),
                     "pymatgen": _version("pymatgen.core", "pymatgen")},
        "env": {"XLA_FLAGS": os.environ.get("XLA_FLAGS", ""), "malloc_tuned": malloc_tuned},
        "workload": {
            "data": str(csv_path), "n_structures": len(structures), "first_id": ids[0], "last_id": ids[-1],
            "two_theta": {"start": float(grid[0]), "stop": float(grid[-1]), "step": step, "points": int(grid.size)},
            "instrument": "Instrument.cu_kalpha() (Kα1 + Kα2, TCH defaults)",
            "wavelengths": np.asarray(instrument.wavelengths).tolist(),
            "config": dataclasses.asdict(config),
            "lines": int(np.asarray(instrument.wavelengths).shape[0]),
            "batch": args.batch, "peaks_per_call": args.peaks_per_call, "repeats": args.repeats,
            "replicate": args.replicate,
            "loss": "sum((y - target)**2), grad w.r.t. the whole Crystal batch and the Instrument",
        },
        "host_seconds": {"load_cifs": t_load, "convert_and_enumerate": t_convert},
        "results": results,
        "peers": peers,
        "targets": {
            "patterns_per_s_min": 2000.0,
            "patterns_per_s": best["forward"]["patterns_per_s"],
            "patterns_per_s_met": best["forward"]["patterns_per_s"] >= 2000.0,
            "gpu_patterns_per_s_min": 100000.0 if dev.platform == "gpu" else None,
            "gpu_patterns_per_s_met": (best["forward"]["patterns_per_s"] >= 100000.0) if dev.platform == "gpu" else None,
            "value_and_grad_ratio_max": 3.0,
            "value_and_grad_ratio": best["value_and_grad"]["ratio_to_forward"],
            "value_and_grad_ratio_met": best["value_and_grad"]["ratio_to_forward"] <= 3.0,
        },
        "models": {"flop_per_pv": FLOP_PER_PV, "flop_per_sf_term": FLOP_PER_SF_TERM,
                   "words_per_pv": WORDS_PER_PV,
                   "note": "pV evaluations = lines x capacity x window per pattern (padding included); "
                           "SF terms = capacity x site padding"},
        "wall_seconds": time.perf_counter() - t_start,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=_json_default) + "\n")
    _summary(report)
    return 0


def _version(mod, dist):
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:  # noqa: BLE001
        return None


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o).__name__)


def _summary(r):
    print(f"simulate benchmark ({r['size']}, {r['dtype']}, {r['workload']['n_structures']} structures, "
          f"{r['workload']['two_theta']['points']} points, window {r['workload']['config']['window']}) "
          f"on {r['device']['device_kind']} x{r['device'].get('cpus_available')} / jax {r['versions']['jax']}")
    for mode in ("bucketed", "unbucketed"):
        m = r["results"].get(mode)
        if not m:
            continue
        print(f"  {mode:10s}: {m['forward']['patterns_per_s']:8.0f} patterns/s  "
              f"{m['value_and_grad']['per_s']:8.0f} value_and_grad/s (x{m['value_and_grad']['ratio_to_forward']:.2f})  "
              f"compile {m['compile_forward_s']:.1f} s + {m['compile_value_and_grad_s']:.1f} s  "
              f"({m['compiled_shapes']} shapes, {m['roofline']['achieved_gflops']:.1f} GFLOP/s)")
    for k, v in r["peers"].items():
        print(f"  {k:17s}: " + (f"{v['per_s']:8.1f} /s" if "per_s" in v else v.get("skipped", "")))


if __name__ == "__main__":
    sys.exit(main())
