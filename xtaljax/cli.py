"""The ``xtaljax`` command.

Every error is reported as one line on stderr (``xtaljax: error: ...``) with exit status 2, and
output files are written atomically (temporary file, then rename), so a failed run leaves no
partial file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np


class CliError(Exception):
    pass


def _atomic_write(path: Path, writer) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        writer(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _instrument(args, single_line_sticks: bool = False):
    import xtaljax as xj
    from xtaljax.io import read_instrument

    if args.instrument:
        return read_instrument(args.instrument)
    name = args.wavelength
    anode = name[:2] if isinstance(name, str) and len(name) >= 4 and name[2:] == "Ka" else None
    if anode in xj.core.ANODES and not single_line_sticks:
        return xj.Instrument.lab(anode)  # Kα1 + Kα2 doublet for a profile
    return xj.Instrument.from_wavelength(name)


def _sticks_json(structure, wavelength, rng) -> list[dict]:
    """Sticks in pymatgen's format: families from ``get_unique_families``, hexagonal 4-index."""
    import xtaljax as xj
    from pymatgen.analysis.diffraction.core import get_unique_families

    table = xj.sticks(structure, wavelength, rng)
    is_hex = structure.lattice.is_hexagonal()
    out = []
    for i in range(len(table)):
        hkls = []
        for h in table.members[i]:
            for v in (h, -h):
                t = tuple(int(x) for x in v)
                hkls.append((t[0], t[1], -t[0] - t[1], t[2]) if is_hex else t)
        fam = get_unique_families(hkls)
        families = [{"hkl": list(k), "multiplicity": int(m)} for k, m in fam.items()]
        out.append({"two_theta": float(table.two_theta[i]), "intensity": float(table.intensity[i]),
                    "hkl": families[0]["hkl"], "multiplicity": families[0]["multiplicity"],
                    "d_spacing": float(table.d_spacing[i]), "families": families})
    return out


def cmd_simulate(args) -> int:
    import xtaljax as xj
    from xtaljax.io import load_structure, read_structure

    structure = load_structure(args.structure)
    if args.sticks:
        rng = tuple(args.range) if args.range else (0.0, 90.0)
        if args.instrument:
            raise CliError("--sticks uses --wavelength, not --instrument")
        data = _sticks_json(structure, xj.core.resolve_wavelength(args.wavelength), rng)
        text = json.dumps(data, indent=1)
        if args.out:
            if Path(args.out).suffix.lower() != ".json":
                raise CliError("--sticks writes JSON: give --out FILE.json")
            _atomic_write(Path(args.out), lambda p: Path(p).write_text(text))
            print(f"wrote {len(data)} peaks to {args.out}")
        else:
            print(text)
        if args.plot:
            raise CliError("--plot needs a profile (omit --sticks)")
        return 0
    rng = tuple(args.range) if args.range else (5.0, 90.0)
    if args.step <= 0:
        raise CliError(f"--step must be positive, got {args.step}")
    if not 0 <= rng[0] < rng[1] < 180:
        raise CliError(f"--range must satisfy 0 <= START < STOP < 180, got {rng[0]} {rng[1]}")
    tt = np.arange(rng[0], rng[1] + args.step / 2, args.step)
    inst = _instrument(args)
    crystal = read_structure(structure)
    y = np.asarray(xj.simulate(crystal, inst, tt), np.float64)
    if not np.all(np.isfinite(y)):
        raise CliError("simulation produced non-finite values")
    if args.out:
        from xtaljax.io import write_pattern

        suffix = Path(args.out).suffix.lower()
        if suffix not in (".xy", ".csv", ".xye", ".dat", ".txt"):
            raise CliError("--out must end in .xy or .csv for a profile (or use --sticks with .json)")
        _atomic_write(Path(args.out), lambda p: write_pattern((tt, y), p, fmt="csv" if suffix == ".csv" else "xy"))
        print(f"wrote {tt.size} points to {args.out}")
    if args.plot:
        from xtaljax.plotting import plot_pattern

        _atomic_write(Path(args.plot), lambda p: plot_pattern(tt, y, p, title=Path(args.structure).name))
        print(f"wrote plot to {args.plot}")
    if not args.out and not args.plot:
        for a, b in zip(tt, y):
            print(f"{a:.4f} {b:.6g}")
    return 0


def cmd_demo(args) -> int:
    """Simulate the shipped fluoroapatite model with the shipped lab instrument on the range of
    the shipped measured pattern; fit scale and background; write the pattern, a plot, a JSON."""
    from importlib import resources

    import xtaljax as xj
    from xtaljax.io import read_instrument, read_pattern, read_structure, write_pattern
    from xtaljax.plotting import plot_fit
    from xtaljax.refine import fit_scale_background

    data = resources.files("xtaljax.data")
    out = Path(args.out)
    with resources.as_file(data / "fap.cif") as cif, resources.as_file(data / "INST_XRY.PRM") as prm, \
            resources.as_file(data / "FAP.XRA") as xra:
        crystal = read_structure(cif)
        inst = read_instrument(prm)
        pat = read_pattern(xra)
    keep = pat.intensity > 0  # GSAS STD files pad the last fields with zeros
    tt, yo, sig = pat.two_theta[keep], pat.intensity[keep], pat.sigma[keep]
    sticks = xj.sticks(crystal, float(np.asarray(inst.wavelengths)[0]), (float(tt[0]), float(tt[-1])), scaled=False)
    fit = fit_scale_background(crystal, inst, tt, yo, sig, n_background=args.background_terms)
    # diagnostic only: how much of the misfit is the zero offset (the EXP file shows GSAS refined
    # a sample shift, LX and LY; INST_XRY.PRM holds the tutorial's starting values)
    scan = []
    for z in np.arange(-0.10, 0.1001, 0.01):
        f = fit_scale_background(crystal, inst.replace(zero=float(z)), tt, yo, sig, n_background=args.background_terms)
        scan.append((float(z), f["rwp"]))
    z_best, rwp_best = min(scan, key=lambda t: t[1])
    summary = {
        "structure": "fluoroapatite Ca5(PO4)3F, P6_3/m (FAP.EXP starting model)",
        "pattern": "FAP.XRA (GSAS-II tutorial LabData), lab Cu Ka1/Ka2",
        "instrument": "INST_XRY.PRM", "range": [float(tt[0]), float(tt[-1])], "n_points": int(tt.size),
        "fitted": ["scale", f"{args.background_terms} Chebyshev background terms"],
        "rwp_gsas2": fit["rwp"], "rp": fit["rp"], "gof": fit["gof"], "rwp_wpem": fit["rwp_wpem"],
        "diagnostic_zero_scan": {"best_zero_deg": z_best, "rwp_gsas2": rwp_best,
                                 "note": "scale + background refit at each zero on a 0.01 deg grid; not part of the headline number"},
        "n_reflections_in_range": int(len(sticks)), "note": "scale and background only; no structural, "
        "lattice or profile refinement (GSAS-II's final Rietveld wR for this data is 10.38 %)",
    }
    _atomic_write(out / "fap_simulated.xy", lambda p: write_pattern((tt, fit["y_calc"]), p, fmt="xy"))
    _atomic_write(out / "fap_fit.png", lambda p: plot_fit(
        tt, yo, fit["y_calc"], p, ticks=sticks.two_theta,
        title=f"FAP, scale + background only: Rwp {fit['rwp']:.2f} % (GSAS-II wR)"))
    _atomic_write(out / "fap_demo.json", lambda p: Path(p).write_text(json.dumps(summary, indent=1)))
    print(f"FAP simulated on {tt.size} points ({tt[0]:.2f}-{tt[-1]:.2f} deg 2theta), "
          f"scale + background fitted: Rwp = {fit['rwp']:.2f} % (GSAS-II wR), Rp = {fit['rp']:.2f} %, GoF = {fit['gof']:.2f}")
    print(f"  diagnostic: with a zero shift of {z_best:+.2f} deg (scanned) Rwp = {rwp_best:.2f} %; "
          "the rest is the starting profile terms and the model's high-angle intensity (refinement issue)")
    for name in ("fap_simulated.xy", "fap_fit.png", "fap_demo.json"):
        print(f"  wrote {out / name}")
    # Rietveld refinement from the starting model (what `xtaljax refine` does)
    with resources.as_file(data / "fap.cif") as cif, resources.as_file(data / "INST_XRY.PRM") as prm, \
            resources.as_file(data / "FAP.XRA") as xra:
        print("Rietveld refinement of FAP (strategy 'default'; GSAS-II tutorial's final wR is 10.38 %):")
        ns = argparse.Namespace(pattern=str(xra), phase=[f"FAP={cif}"], instrument=str(prm), wavelength=None,
                                range=None, strategy="default", background=12, max_cycles=20, format=None,
                                no_cache=False, out=str(out / "refine"))
        rc = cmd_refine(ns)
    if rc or args.no_solve:
        return rc
    return _demo_solve(data, out / "solve")


def _demo_solve(data, out: Path) -> int:
    """`xtaljax solve` on the shipped LaAlO3 pattern (a perov-5 *test* structure, not seen in
    training) with the shipped perov-5 generator; reports whether the best candidate is the
    structure the pattern was simulated from."""
    from importlib import resources

    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.core import Structure

    from .generate.cli import cmd_solve

    print("Structure solution from the pattern and the composition (xtaljax solve, shipped perov-5 generator):")
    with resources.as_file(data / "perov_example.xy") as xy, resources.as_file(data / "perov_example_truth.cif") as cif:
        ns = argparse.Namespace(pattern=str(xy), composition="LaAlO3", lattice=None, samples=8, wavelength="CuKa",
                                instrument=None, format=None, checkpoint=None, steps=200, solver="euler", guidance=0.0,
                                polish_steps=30, swap_rounds=2, refine_top=3, seed=0, out=str(out))
        rc = cmd_solve(ns)
        truth = Structure.from_file(cif)
    best = json.loads((out / "result.json").read_text())["candidates"][0]
    cand = Structure.from_file(out / best["cif"])
    rms = StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3).get_rms_dist(cand, truth)
    print("  best candidate vs the structure the pattern was simulated from: "
          + ("match, normalised RMS %.3f" % rms[0] if rms else "no match"))
    return rc


def _trim_zero_ends(pat):
    """Drop leading/trailing runs of exactly-zero counts (scan padding, e.g. the last fields of a
    GSAS STD record): a detector does not count 0 where the background is ~100."""
    y = pat.intensity
    nz = np.flatnonzero(y != 0)
    if nz.size == 0:
        raise CliError(f"{pat.source}: every intensity is zero")
    lo, hi = int(nz[0]), int(nz[-1])
    if lo == 0 and hi == y.size - 1:
        return pat, 0
    return pat.restrict(pat.two_theta[lo], pat.two_theta[hi]), int(y.size - (hi - lo + 1))


def refine_instrument(args, pattern):
    """The instrument for a refinement: a file, or a wavelength (lab anode names give the
    Kα1/Kα2 doublet); checked against a wavelength stated in the pattern file."""
    import xtaljax as xj
    from xtaljax.io import read_instrument

    if bool(args.instrument) == bool(args.wavelength):
        raise CliError("give exactly one of --instrument PRM or --wavelength W")
    if args.instrument:
        inst = read_instrument(args.instrument)
    else:
        name = args.wavelength
        anode = name[:2] if len(name) >= 4 and name[2:] == "Ka" else None
        inst = xj.Instrument.lab(anode) if anode in xj.core.ANODES else xj.Instrument.from_wavelength(name)
    lam = float(np.asarray(inst.wavelengths)[0])
    if pattern.wavelength is not None and abs(pattern.wavelength - lam) > 0.005 * lam:
        raise CliError(f"wavelength mismatch: the pattern file states {pattern.wavelength:g} Å, "
                       f"the instrument has {lam:g} Å")
    return inst


def cmd_refine(args) -> int:
    from xtaljax._cache import enable_compilation_cache
    from xtaljax.io import read_pattern
    from xtaljax.refine.report import write_outputs
    from xtaljax.refine.rietveld import Problem

    if not args.no_cache:
        enable_compilation_cache()
    pat = read_pattern(args.pattern, fmt=args.format)
    pat, n_trim = _trim_zero_ends(pat)
    if n_trim:
        print(f"  dropped {n_trim} zero-count points at the ends of the scan (padding)", file=sys.stderr)
    if args.range:
        pat = pat.restrict(*args.range)
    inst = refine_instrument(args, pat)
    phases = []
    for spec in args.phase:
        name, _, path = spec.rpartition("=") if "=" in spec else ("", "", spec)
        phases.append((name or Path(path).stem, path))
    print(f"refining {Path(args.pattern).name}: {len(pat)} points, 2θ {pat.two_theta[0]:g}-{pat.two_theta[-1]:g}°, "
          f"phases {', '.join(n for n, _ in phases)}, strategy {args.strategy}", file=sys.stderr)
    prob = Problem(pat.two_theta, pat.intensity, pat.sigma, phases, inst, n_background=args.background,
                   lebail=getattr(args, "lebail", False))
    result = prob.refine(args.strategy, max_cycles=args.max_cycles)
    files = write_outputs(result, args.out, source=str(args.pattern), strategy=args.strategy)
    st = result.stats
    print(f"wR = {st['rwp']:.3f} % (GSAS-II), Rp = {st['rp']:.3f} %, GOF = {st['gof']:.3f}, "
          f"{len(result.names)} parameters, {len(result.history)} cycles, {result.seconds:.1f} s")
    for i, pm in enumerate(prob.phases):
        six, esd = result.lattice(i)
        print(f"  {pm.name}: " + " ".join(f"{k}={v:.5f}({e:.1e})" for k, v, e in zip("abc", six[:3], esd[:3]))
              + ("" if prob.lebail else f"  weight fraction {result.weight_fractions()[i]:.4f}"))
    if result.at_bounds:
        print(f"  held at a bound (no esd): {', '.join(result.at_bounds)}")
    if result.singular:
        print(f"  not determined by the data (normal matrix singular): {', '.join(result.singular)}")
    for f in files:
        print(f"  wrote {f}")
    return 0


STANDARDS = {"lab6": ("lab6.cif", "LaB6 NIST SRM 660a, a = 4.1569162 Å")}


def cmd_calibrate(args) -> int:
    """Fit the instrument terms on a standard of known cell (lattice fixed) and write a GSAS-II
    ``.instprm`` that later refinements read with ``--instrument``."""
    from importlib import resources

    from xtaljax._cache import enable_compilation_cache
    from xtaljax.io import read_pattern
    from xtaljax.io.instruments import write_instprm
    from xtaljax.refine.report import write_outputs
    from xtaljax.refine.rietveld import Problem

    if not args.no_cache:
        enable_compilation_cache()
    pat, n_trim = _trim_zero_ends(read_pattern(args.pattern, fmt=args.format))
    if args.range:
        pat = pat.restrict(*args.range)
    inst = refine_instrument(args, pat)
    if args.standard in STANDARDS:
        fname, label = STANDARDS[args.standard]
        ctx = resources.as_file(resources.files("xtaljax.data") / fname)
    else:
        import contextlib
        ctx, label = contextlib.nullcontext(Path(args.standard)), str(args.standard)
    with ctx as cif:
        prob = Problem(pat.two_theta, pat.intensity, pat.sigma, [("standard", str(cif))], inst,
                       n_background=args.background)
    if args.lattice:
        pm = prob.phases[0]
        if pm.template.n_lattice != 1:
            raise CliError("--lattice needs a cubic standard")
        prob.model0 = prob.with_values(prob.model0, {"standard:a": float(args.lattice)})
    print(f"calibrating on {Path(args.pattern).name} with {label} (lattice fixed): {len(pat)} points, "
          f"2θ {pat.two_theta[0]:g}-{pat.two_theta[-1]:g}°", file=sys.stderr)
    result = prob.refine("calibration", model=prob.model0, max_cycles=args.max_cycles)
    files = write_outputs(result, args.out, source=str(args.pattern), strategy="calibration")
    inst_out = Path(args.out) / "instrument.instprm"
    refined = result.model["instrument"]
    _atomic_write(inst_out, lambda p: write_instprm(refined, p))
    st = result.stats
    g = lambda n: float(np.asarray(getattr(refined, n)))  # noqa: E731
    print(f"wR = {st['rwp']:.3f} % (GSAS-II), Rp = {st['rp']:.3f} %, GOF = {st['gof']:.3f}")
    print(f"  U V W = {g('u'):.4g} {g('v'):.4g} {g('w'):.4g} deg^2, X Y = {g('x'):.4g} {g('y'):.4g} deg, "
          f"SH/L = {g('asym_sl') + g('asym_hl'):.4g}, zero = {g('zero'):.4f} deg, displacement = {g('displacement'):.4f} mm")
    for f in [*files, inst_out]:
        print(f"  wrote {f}")
    return 0


def _background_on_grid(path, two_theta):
    """A background curve (any pattern format: 2θ, counts) interpolated onto ``two_theta``; it
    must cover the range (a ``DecompositionError`` otherwise: in a series only that pattern is
    skipped)."""
    from xtaljax.em import DecompositionError
    from xtaljax.io import read_pattern

    b = read_pattern(path)
    lo, hi = float(b.two_theta[0]), float(b.two_theta[-1])
    step = float(np.median(np.diff(two_theta))) if len(two_theta) > 1 else 0.0
    if lo > two_theta[0] + step or hi < two_theta[-1] - step:
        raise DecompositionError(f"--background-file {Path(path).name} covers 2θ {lo:g}–{hi:g}°, the pattern "
                       f"{two_theta[0]:g}–{two_theta[-1]:g}°")
    return np.interp(two_theta, b.two_theta, b.intensity)


def cmd_decompose(args) -> int:
    """WPEM decomposition of one pattern or a series (warm-started in the given order)."""
    from xtaljax._cache import enable_compilation_cache
    from xtaljax.em import DecompositionError, decompose
    from xtaljax.em.report import decomposition_dict, write_decomposition, write_series
    from xtaljax.em.residual import summary_line
    from xtaljax.io import read_pattern

    if not args.no_cache:
        enable_compilation_cache()
    phases = []
    for spec in args.phase:
        name, _, path = spec.rpartition("=") if "=" in spec else ("", "", spec)
        phases.append((name or Path(path).stem, path))
    out = Path(args.out)
    results, init, inst, grid = [], None, None, None
    for k, f in enumerate(args.patterns):
        try:
            pat, _ = _trim_zero_ends(read_pattern(f, fmt=args.format))
            if args.range:
                pat = pat.restrict(*args.range)
            if inst is None:
                inst = refine_instrument(args, pat)
            if grid is not None and (grid.shape != pat.two_theta.shape or not np.allclose(grid, pat.two_theta)):
                raise DecompositionError(f"{Path(f).name}: its 2θ grid differs from the first pattern's "
                                         "(a series needs one grid; use --range to cut them alike)")
            print(f"decomposing {Path(f).name} ({k + 1}/{len(args.patterns)}): {len(pat)} points", file=sys.stderr)
            d = decompose(pat.two_theta, pat.intensity, phases, inst, n_background=args.background,
                          max_iter=args.max_iter, widths=args.widths, refine_zero=not args.fix_zero, init=init,
                          sigma=pat.sigma, search=args.search, asymmetry=args.asymmetry,
                          refine_displacement=args.displacement,
                          fixed_background=_background_on_grid(args.background_file, pat.two_theta)
                          if args.background_file else None)
            grid = pat.two_theta
            init = (d.problem, d.state)
            target = out if len(args.patterns) == 1 else out / f"{k:03d}_{Path(f).stem}"
            r = decomposition_dict(d, inst, str(f))
            files = write_decomposition(d, inst, target, source=str(f), result=r)
            results.append((str(f), r, None))
            lat = ", ".join(f"{p['name']} a={p['lattice']['a']:.5f}({p['lattice_esd']['a']:.1e})" for p in r["phases"])
            print(f"  Rwp {r['rwp_wpem']:.3f} % (PyWPEM weights), Rp {r['rp']:.3f} %, {r['n_iterations']} iterations, {lat}")
            note = summary_line(r["unexplained_peaks"])
            if note:
                print(f"  warning: {note}", file=sys.stderr)
            for p in files:
                print(f"  wrote {p}")
        except (DecompositionError, ValueError) as exc:
            if len(args.patterns) == 1:
                raise
            print(f"  {Path(f).name}: {str(exc).splitlines()[0]} (skipped; the others are kept)", file=sys.stderr)
            results.append((str(f), None, str(exc).splitlines()[0]))
    if len(args.patterns) > 1:
        for p in write_series(results, out):
            print(f"  wrote {p}")
        if all(r is None for _, r, _ in results):
            raise CliError("no pattern of the series could be decomposed")
    return 0


def cmd_bench(args) -> int:
    from xtaljax.bench import SUITES, BenchError, format_table, run

    suites = [k for k in SUITES if k != "grad"] if "all" in args.suite else args.suite
    try:
        report = run(suites, args.size, args.out)
    except BenchError as exc:
        raise CliError(str(exc)) from None
    print(format_table(report))
    if args.out:
        print(f"  wrote {args.out}")
    return 0 if all(e["returncode"] == 0 for e in report["suites"].values()) else 1


def cmd_symmetry(args) -> int:
    from xtaljax.io import load_structure
    from xtaljax.io.spacegroups import symmetrize

    structure = load_structure(args.structure)
    _, _, info = symmetrize(structure, symprec=args.symprec, return_info=True)
    d = info.to_dict()
    if args.json:
        print(json.dumps(d, indent=1))
        return 0
    lat = d["lattice"]
    print(f"space group   {info.symbol} (No. {info.space_group}), {info.crystal_system}")
    print("lattice       a={a:.5f} b={b:.5f} c={c:.5f} alpha={alpha:.3f} beta={beta:.3f} gamma={gamma:.3f}".format(**lat))
    print(f"free params   {d['free_parameters']} = {info.n_lattice} lattice + {info.n_free_coords} coordinates")
    print("sites         element  Wyckoff  site sym.  free coordinates")
    for s in info.sites:
        print(f"              {s.element:<8} {s.multiplicity}{s.wyckoff:<7} {s.site_symmetry:<10} ({', '.join(s.free)})  dof={s.dof}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="xtaljax", description="Differentiable powder X-ray diffraction in JAX")
    sub = ap.add_subparsers(dest="command", required=True)
    sp = sub.add_parser("simulate", help="simulate a powder pattern (profile or sticks) from a structure file")
    sp.add_argument("structure", help="CIF/POSCAR (anything pymatgen reads)")
    sp.add_argument("--wavelength", default="CuKa",
                    help="CuKa, CuKa1, MoKa, ... or Å. Profile: 'XxKa' is the Kα1+Kα2 doublet; "
                         "sticks: pymatgen's single weighted-mean line (default CuKa)")
    sp.add_argument("--range", nargs=2, type=float, metavar=("START", "STOP"), help="2θ range in degrees")
    sp.add_argument("--step", type=float, default=0.01, help="2θ step in degrees (profile)")
    sp.add_argument("--instrument", help="GSAS .prm or GSAS-II .instprm (profile)")
    sp.add_argument("--sticks", action="store_true", help="stick pattern (pymatgen-compatible JSON)")
    sp.add_argument("--out", help="output file: .xy/.csv (profile) or .json (sticks)")
    sp.add_argument("--plot", help="PNG plot of the profile")
    sp.set_defaults(func=cmd_simulate)
    yp = sub.add_parser("symmetry", help="space group, Wyckoff positions and free parameters of a structure")
    yp.add_argument("structure")
    yp.add_argument("--symprec", type=float, default=0.01, help="spglib tolerance (Å)")
    yp.add_argument("--json", action="store_true")
    yp.set_defaults(func=cmd_symmetry)
    rp = sub.add_parser("refine", help="Rietveld refinement of a measured pattern")
    rp.add_argument("pattern", help="xy/xye/csv, GSAS STD/ESD/FXYE, Bruker RAW, XRDML")
    rp.add_argument("--phase", action="append", required=True, metavar="[NAME=]CIF",
                    help="starting structure (repeat for several phases)")
    rp.add_argument("--instrument", help="GSAS .prm or GSAS-II .instprm")
    rp.add_argument("--wavelength", help="CuKa (Kα1+Kα2), CuKa1, MoKa, ... or Å")
    rp.add_argument("--range", nargs=2, type=float, metavar=("START", "STOP"), help="2θ fit range (degrees)")
    rp.add_argument("--strategy", default="default",
                    help="default, full, lattice, profile, scale, calibration, lebail")
    rp.add_argument("--lebail", action="store_true",
                    help="Le Bail fit: free reflection intensities, the phases give only their cells")
    rp.add_argument("--background", type=int, default=12, help="number of Chebyshev background terms")
    rp.add_argument("--max-cycles", type=int, default=20, help="cycles per stage at most")
    rp.add_argument("--format", help="pattern format if the extension is ambiguous")
    rp.add_argument("--no-cache", action="store_true", help="do not use the persistent compilation cache")
    rp.add_argument("--out", required=True, help="output folder")
    rp.set_defaults(func=cmd_refine)
    ep = sub.add_parser("decompose", help="whole-pattern EM decomposition (WPEM) of one pattern or a series")
    ep.add_argument("patterns", nargs="+", help="one pattern, or a series in order (same 2θ grid)")
    ep.add_argument("--phase", action="append", required=True, metavar="[NAME=]CIF")
    ep.add_argument("--instrument", help="GSAS .prm or GSAS-II .instprm (starting widths, lines)")
    ep.add_argument("--wavelength", help="CuKa (Kα1+Kα2), CuKa1, MoKa, ... or Å")
    ep.add_argument("--range", nargs=2, type=float, metavar=("START", "STOP"))
    ep.add_argument("--background", type=int, default=12, help="Chebyshev background terms")
    ep.add_argument("--widths", default="caglioti", choices=("caglioti", "free"))
    ep.add_argument("--fix-zero", action="store_true", help="keep the zero shift fixed")
    ep.add_argument("--background-file", metavar="FILE",
                    help="a background curve (2θ, counts; any pattern format) held fixed instead of the "
                         "refined Chebyshev background")
    ep.add_argument("--displacement", action="store_true",
                    help="also refine the sample displacement (Bragg-Brentano: shift -2 (s/R) cos(theta), "
                         "R = goniometer radius of the instrument, 240 mm unless the instrument file says)")
    ep.add_argument("--max-iter", type=int, default=300)
    ep.add_argument("--asymmetry", action="store_true",
                    help="FCJ axial-divergence asymmetry in the components (S/L = H/L refined)")
    ep.add_argument("--search", type=float, default=0.0, metavar="STRAIN",
                    help="scan each phase's cell isotropically within ±STRAIN (e.g. 0.02) before the EM "
                         "(a CIF cell from another temperature or composition)")
    ep.add_argument("--format")
    ep.add_argument("--no-cache", action="store_true", help="do not use the persistent compilation cache")
    ep.add_argument("--out", required=True)
    ep.set_defaults(func=cmd_decompose)
    cp = sub.add_parser("calibrate", help="fit instrument profile terms on a standard (LaB6) and write .instprm")
    cp.add_argument("pattern")
    cp.add_argument("--standard", default="lab6", help="'lab6' (shipped SRM 660a model) or a CIF of the standard")
    cp.add_argument("--lattice", type=float, help="certified cubic lattice parameter (Å), overrides the CIF's")
    cp.add_argument("--instrument", help="starting GSAS .prm or GSAS-II .instprm")
    cp.add_argument("--wavelength", help="CuKa (Kα1+Kα2), CuKa1, MoKa, ... or Å")
    cp.add_argument("--range", nargs=2, type=float, metavar=("START", "STOP"))
    cp.add_argument("--background", type=int, default=8)
    cp.add_argument("--max-cycles", type=int, default=30)
    cp.add_argument("--format")
    cp.add_argument("--no-cache", action="store_true")
    cp.add_argument("--out", required=True)
    cp.set_defaults(func=cmd_calibrate)
    dp = sub.add_parser("demo", help="the shipped fluoroapatite example, then structure solution of a shipped LaAlO3 pattern")
    dp.add_argument("--out", default="out/demo", help="output folder")
    dp.add_argument("--background-terms", type=int, default=6)
    dp.add_argument("--no-solve", action="store_true", help="skip the structure-solution part")
    dp.set_defaults(func=cmd_demo)
    bp = sub.add_parser("bench", help="run benchmark suites (from a repository checkout) and print one table")
    bp.add_argument("--suite", nargs="+", default=["all"],
                    help="simulate grad refine em landscape sharding pywpem, or all (all runs grad inside simulate)")
    bp.add_argument("--size", choices=("tiny", "small", "full"), default="small")
    bp.add_argument("--out", help="JSON with every suite's own JSON and the headline numbers")
    bp.set_defaults(func=cmd_bench)
    from .landscape.cli import add_parser as _landscape_parser

    _landscape_parser(sub)
    from .generate.cli import add_parsers as _generator_parsers

    _generator_parsers(sub)
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    warnings.filterwarnings("ignore", module="pymatgen")
    try:
        return args.func(args)
    except (CliError, ValueError, OSError, TypeError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"xtaljax: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
