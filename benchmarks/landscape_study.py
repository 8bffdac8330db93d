"""The landscape study (issue 6) at a fixed size, timed, written to JSON.

    python benchmarks/landscape_study.py --size tiny|full [--out FILE] [--data CSV] [--steps K]
                                         [--offset K] [--skip ID ...]
    python benchmarks/landscape_study.py combine OUT.json PART1.json PART2.json ...

* ``tiny``: the first 2 MP-20 test-split rows of the shared subset, 4 distortions, 20 steps.
* ``full``: the first 10 MP-20 test-split rows (file order), 50 distortions, 500 Adam steps,
  3 parametrisations (free / family / wyckoff), 3 metrics (cosine / mse / entropy) — the size
  of Segal et al. 2026 (10 MP-20 structures × 50 distortions). Target: < 5 min on 2 CPU cores.

The JSON holds the report of :func:`xtaljax.landscape.study.run_study` (match rates, MI,
correlations, per structure), the device/versions, and the timings split into compilation,
optimisation and matching. It is rewritten after every structure (``"complete": false`` until
the end), so a long run that is stopped still leaves its finished structures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SIZES = {"tiny": dict(n_structures=2, n_distortions=4, steps=20),
         "full": dict(n_structures=10, n_distortions=50, steps=500)}
TARGET_S = 300.0


def _device() -> dict:
    import jax

    d = jax.devices()[0]
    return {"platform": d.platform, "device_kind": d.device_kind, "n_devices": jax.device_count(),
            "cpus_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "load_average_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def _versions() -> dict:
    import jax
    import jaxlib
    import numpy
    import optax
    import pymatgen.core
    import scipy

    return {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "optax": optax.__version__, "numpy": numpy.__version__,
            "scipy": scipy.__version__, "pymatgen": getattr(pymatgen.core, "__version__", "?"),
            "python": platform.python_version()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="tiny")
    ap.add_argument("--out", help="JSON path (default benchmarks/results/landscape_<size>_cpu.json)")
    ap.add_argument("--data", help="CDVAE-format CSV (default: the shared MP-20 subset)")
    ap.add_argument("--split", default="test", help="MP-20 split to take rows from (default test)")
    ap.add_argument("--steps", type=int, help="override the number of Adam steps")
    ap.add_argument("--distortions", type=int, help="override the number of distortions")
    ap.add_argument("--structures", type=int, help="override the number of structures")
    ap.add_argument("--offset", type=int, default=0, help="skip this many rows of the split first")
    ap.add_argument("--skip", nargs="*", default=[], metavar="ID", help="material ids to leave out")
    ap.add_argument("--sigma-lattice", type=float, default=0.03)
    ap.add_argument("--sigma-coords", type=float, default=0.3)
    ap.add_argument("--broaden", type=float, default=0.0, help="Gaussian smoothing FWHM (degrees) in the metrics")
    ap.add_argument("--metrics", nargs="+", default=["cosine", "mse", "entropy"])
    ap.add_argument("--lr", type=float, default=0.005)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from xtaljax.landscape.study import load_mp20, run_study

    size = dict(SIZES[args.size])
    for k, v in (("steps", args.steps), ("n_distortions", args.distortions), ("n_structures", args.structures)):
        if v is not None:
            size[k] = v
    out = Path(args.out) if args.out else REPO / "benchmarks" / "results" / f"landscape_{args.size}_cpu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    from xtaljax.bench import CpuMeter

    t_start = time.perf_counter()
    meter = CpuMeter()
    structures = load_mp20(size["n_structures"], args.data, split=args.split, offset=args.offset)
    structures = [(n, s) for n, s in structures if n not in set(args.skip)]
    kw = dict(n_distortions=size["n_distortions"], sigma_lattice=args.sigma_lattice, sigma_coords=args.sigma_coords,
              metrics=tuple(args.metrics), steps=size["steps"], lr=args.lr, seed=args.seed,
              metric_options={"broaden_fwhm": args.broaden} if args.broaden > 0 else None)
    base = {"benchmark": "landscape_study", "size": args.size, "workload": {**size, "split": args.split,
                                                                            "offset": args.offset, "skipped": args.skip,
                                                                            "structures": [n for n, _ in structures]},
            "device": _device(), "versions": _versions(), "dtype": "float32"}
    per, settings = [], None  # settings: from the finished study's report

    def write(complete: bool, report=None):
        doc = dict(base, complete=complete, per_structure=per, settings=settings)
        if report is not None:
            doc.update(report)
        doc["timings"] = {"wall_s": time.perf_counter() - t_start,
                          "compile_s": sum(p["timings"]["compile_s"] for p in per),
                          "optimise_s": sum(p["timings"]["optimise_s"] for p in per),
                          "match_s": sum(p["timings"]["match_s"] for p in per),
                          "load_s": sum(p["timings"]["load_s"] for p in per)}
        doc["targets"] = {"full_study_s": TARGET_S,
                          "met": bool(complete and args.size == "full" and size["steps"] <= 500
                                      and doc["timings"]["wall_s"] < TARGET_S)}
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(_clean(doc), indent=1))
        os.replace(tmp, out)

    t_prev = [time.perf_counter()]

    def on_structure(k, entry, r0):
        # raw per-run samples (structural distance, loss at the start and the best iterate), so that
        # statistics can be recomputed when files of several partial runs are pooled
        entry = dict(entry, samples={
            mode: {met: {"dist_start": r0.dist_start[i, j].tolist(), "dist_final": r0.dist_final[i, j].tolist(),
                         "start_loss": r0.start_loss[i, j].tolist(), "best_loss": r0.best_loss[i, j].tolist(),
                         "matched": r0.matched[i, j].tolist(), "start_matched": r0.start_matched[i, j].tolist(),
                         "overflow": r0.overflow[i, j].tolist()}
                   for j, met in enumerate(r0.metrics)} for i, mode in enumerate(r0.modes)})
        per.append(entry)
        rates = " ".join(f"{m}:" + ",".join(f"{r0.matched[i, j].mean():.2f}" for i in range(len(r0.modes)))
                         for j, m in enumerate(r0.metrics))
        now = time.perf_counter()
        print(f"[{k + 1}/{len(structures)}] {entry['name']} {entry['symbol']} n={entry['n_sites']} {rates} "
              f"({now - t_prev[0]:.1f} s; compile {entry['timings']['compile_s']:.1f} s)", flush=True)
        t_prev[0] = now
        write(False)

    report = run_study(structures, on_structure=on_structure, **kw)
    settings = report.pop("settings")
    report.pop("per_structure")
    report.pop("timings")
    base["device"]["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    # other_cpu_s well above 0 (or steal_s): the machine was shared, and the wall time is inflated
    base["device"]["cpu_accounting"] = meter.stop()
    write(True, report)
    print(f"wrote {out} ({time.perf_counter() - t_start:.1f} s)")
    return 0


def combine(paths, out) -> dict:
    """Pool the per-structure results of several (partial) runs of this script into one JSON:
    match rates from every structure's summary; MI/correlations from the structures that carry raw
    ``samples`` (runs made with this version of the script), with their count stated."""
    from xtaljax.landscape.metrics import similarity_from_loss
    from xtaljax.landscape.mi import binned_mi, correlations, ksg_mi

    import numpy as np

    docs = [json.loads(Path(p).read_text()) for p in paths]
    per = [s for d in docs for s in d["per_structure"]]
    modes = list(per[0]["summary"])
    metrics = list(per[0]["summary"][modes[0]])
    out_doc = {"benchmark": "landscape_study (combined)", "sources": [str(p) for p in paths],
               "n_structures": len(per), "structures": [s["name"] for s in per],
               "settings": docs[0]["settings"], "device": docs[0]["device"],
               "timings": {"wall_s_sum": sum(d["timings"]["wall_s"] for d in docs),
                           "optimise_s_sum": sum(d["timings"]["optimise_s"] for d in docs),
                           "compile_s_sum": sum(d["timings"]["compile_s"] for d in docs),
                           "match_s_sum": sum(d["timings"]["match_s"] for d in docs)},
               "match_rate": {}, "start_match_rate": {}, "overflow_fraction": {}, "mutual_information": {},
               "spearman": {}, "pearson": {}}
    with_samples = [s for s in per if "samples" in s]
    out_doc["statistics_structures"] = [s["name"] for s in with_samples]
    for met in metrics:
        for key in ("match_rate", "start_match_rate", "overflow_fraction", "mutual_information", "spearman", "pearson"):
            out_doc[key][met] = {}
        for mode in modes:
            for key in ("match_rate", "start_match_rate", "overflow_fraction"):
                out_doc[key][met][mode] = float(np.mean([s["summary"][mode][met][key] for s in per]))
            if not with_samples:
                continue
            smp = [s["samples"][mode][met] for s in with_samples]
            d = np.concatenate([np.r_[x["dist_start"], x["dist_final"]] for x in smp])
            loss = np.concatenate([np.r_[x["start_loss"], x["best_loss"]] for x in smp])
            sim = similarity_from_loss(met, loss)
            c = correlations(d, sim)
            out_doc["mutual_information"][met][mode] = {"ksg": ksg_mi(d, sim), "binned": binned_mi(d, sim), "n": c["n"]}
            out_doc["spearman"][met][mode] = c["spearman"]
            out_doc["pearson"][met][mode] = c["pearson"]
    Path(out).write_text(json.dumps(_clean(out_doc), indent=1))
    return out_doc


def _clean(x):
    import math

    import numpy as np

    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "combine":  # combine OUT IN1 IN2 ...
        combine(sys.argv[3:], sys.argv[2])
        sys.exit(0)
    sys.exit(main())
