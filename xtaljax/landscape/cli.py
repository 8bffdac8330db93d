"""``xtaljax landscape``: the loss-landscape study from the command line.

Wiring (in :mod:`xtaljax.cli`): ``add_parser(subparsers)`` registers the subcommand with
``func=run``; ``run(args)`` returns the exit status. Errors are ``ValueError`` with a one-line
message (``xtaljax.cli.main`` prints ``xtaljax: error: ...`` and returns 2); nothing is written
to ``--out`` unless the study finished (files are written atomically).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from ..refine.report import _atomic as _atomic_write


def add_parser(subparsers) -> argparse.ArgumentParser:
    lp = subparsers.add_parser(
        "landscape", help="XRD loss-landscape study: recover distorted structures by gradient descent",
        description="Distort each structure N times (seeded), recover it by gradient descent on an XRD "
                    "similarity in three parametrisations (free P1, crystal-family lattice, full Wyckoff), "
                    "match with pymatgen StructureMatcher, and report match rates and the mutual information "
                    "between structural distance and XRD similarity. Writes DIR/report.json and DIR/landscape.png.")
    lp.add_argument("structures", nargs="*", metavar="STRUCTURE", help="CIF (or any file pymatgen reads)")
    lp.add_argument("--mp20", type=int, metavar="N", help="also use the first N rows of the MP-20 subset CSV")
    lp.add_argument("--mp20-csv", metavar="CSV", help="CDVAE-format CSV for --mp20 (default: shared MP-20 subset)")
    lp.add_argument("--distortions", type=int, default=50, help="distortions per structure (default 50)")
    lp.add_argument("--sigma-lattice", type=float, default=0.03,
                    help="relative size of the random symmetric lattice strain (default 0.03)")
    lp.add_argument("--sigma-coords", type=float, default=0.3, help="coordinate noise per atom in Å (default 0.3)")
    lp.add_argument("--distortion-mode", default="both", choices=("lattice", "coords", "both"))
    lp.add_argument("--metrics", nargs="+", default=["cosine", "mse", "entropy"],
                    help="cosine pearson mse entropy wasserstein softdtw (default: cosine mse entropy)")
    lp.add_argument("--parametrisations", nargs="+", default=["free", "family", "wyckoff"],
                    help="free family wyckoff (default: all three)")
    lp.add_argument("--broaden", type=float, default=0.0, metavar="FWHM",
                    help="Gaussian smoothing of both patterns before the metric, FWHM in degrees (default 0)")
    lp.add_argument("--steps", type=int, default=500, help="Adam steps per run (default 500)")
    lp.add_argument("--lr", type=float, default=0.005, help="Adam learning rate (default 0.005)")
    lp.add_argument("--seed", type=int, default=0)
    lp.add_argument("--space-group", type=int, help="require this space group (error if a structure has another)")
    lp.add_argument("--symprec", type=float, default=0.1,
                    help="spglib tolerance in Å for the symmetry template (default 0.1, Materials Project's)")
    lp.add_argument("--range", nargs=2, type=float, metavar=("START", "STOP"), default=(10.0, 80.0),
                    help="2θ range in degrees (default 10 80)")
    lp.add_argument("--step", type=float, default=0.05, help="2θ step in degrees (default 0.05)")
    lp.add_argument("--match-workers", type=int, default=None, metavar="N",
                    help="processes for StructureMatcher, overlapping the next structure's optimisation "
                         "(default: cores - 1, at most 4; 0: match in this process)")
    lp.add_argument("--no-cache", action="store_true",
                    help="do not use the persistent compilation cache (a rerun of the same shapes, e.g. "
                         "another seed or sigma, otherwise skips compilation)")
    lp.add_argument("--no-plot", action="store_true")
    lp.add_argument("--out", required=True, help="output folder")
    lp.set_defaults(func=run)
    return lp


def _check(args) -> None:
    from .metrics import METRICS
    from .recover import PARAMETRISATIONS

    if not args.structures and not args.mp20:
        raise ValueError("no structures: give CIF paths and/or --mp20 N")
    if args.mp20 is not None and args.mp20 < 1:
        raise ValueError(f"--mp20 must be >= 1, got {args.mp20}")
    if args.distortions < 1:
        raise ValueError(f"--distortions must be >= 1, got {args.distortions}")
    if not args.symprec > 0:
        raise ValueError(f"--symprec must be > 0, got {args.symprec}")
    if args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    if args.match_workers is not None and args.match_workers < 0:
        raise ValueError(f"--match-workers must be >= 0, got {args.match_workers}")
    for name, v in (("--sigma-lattice", args.sigma_lattice), ("--sigma-coords", args.sigma_coords)):
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be > 0, got {v}")
    for m in args.metrics:
        if m not in METRICS:
            raise ValueError(f"unknown metric {m!r}; choose from {', '.join(METRICS)}")
    for p in args.parametrisations:
        if p not in PARAMETRISATIONS:
            raise ValueError(f"unknown parametrisation {p!r}; choose from {', '.join(PARAMETRISATIONS)}")
    lo, hi = args.range
    if not (0 < lo < hi < 180) or not args.step > 0 or (hi - lo) / args.step < 10:
        raise ValueError(f"bad 2theta grid: range {lo}-{hi} deg, step {args.step} deg")
    for s in args.structures:
        if not Path(s).is_file():
            raise ValueError(f"{s}: no such file")


def _jsonable(x):
    import numpy as np

    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def run(args) -> int:
    """Run the study for parsed ``args``; returns 0. Raises ``ValueError`` on bad input."""
    import warnings

    import numpy as np

    from .study import load_mp20, plot_report, run_study

    warnings.filterwarnings("ignore", module="pymatgen")
    _check(args)
    from .._cache import enable_compilation_cache
    from ..io.structures import load_structure

    if not args.no_cache:
        enable_compilation_cache()
    structures = [(str(p), load_structure(p)) for p in args.structures]
    if args.mp20:
        structures += load_mp20(args.mp20, args.mp20_csv)
    lo, hi = args.range
    tt = np.round(np.arange(lo, hi + args.step / 2, args.step), 10)
    report, results = run_study(
        structures, n_distortions=args.distortions, sigma_lattice=args.sigma_lattice, sigma_coords=args.sigma_coords,
        mode=args.distortion_mode, metrics=args.metrics, parametrisations=args.parametrisations, steps=args.steps,
        lr=args.lr, seed=args.seed, metric_options={"broaden_fwhm": args.broaden} if args.broaden > 0 else None,
        two_theta=tt, space_group=args.space_group, symprec=args.symprec, return_results=True,
        match_workers="auto" if args.match_workers is None else args.match_workers,
        progress=lambda line: print(line, file=sys.stderr, flush=True))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _atomic_write(out / "report.json", lambda p: Path(p).write_text(json.dumps(_jsonable(report), indent=1)))
    if not args.no_plot:
        _atomic_write(out / "landscape.png", lambda p: plot_report(report, results, p))
    for met in report["settings"]["metrics"]:
        rates = "  ".join(f"{m} {report['match_rate'][met][m]:.2f}" for m in report["settings"]["parametrisations"])
        print(f"{met:<12} match rate: {rates}")
    print(f"wrote {out / 'report.json'} ({report['timings']['total_s']:.1f} s)")
    return 0


def main(argv=None) -> int:
    """Stand-alone entry (``python -m xtaljax.landscape.cli``), same error convention as ``xtaljax``."""
    ap = argparse.ArgumentParser(prog="xtaljax")
    sub = ap.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = ap.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError, TypeError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"xtaljax: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
