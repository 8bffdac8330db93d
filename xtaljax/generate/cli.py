"""Command-line front ends of the generator: ``xtaljax solve`` (pattern + composition ->
ranked, refined candidate structures) and ``xtaljax generator train|evaluate|export``.

Wiring (in :mod:`xtaljax.cli`): ``add_parsers(subparsers)``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np


def add_parsers(sub) -> None:
    sp = sub.add_parser(
        "solve", help="solve a structure from a powder pattern and a composition (generate, refine, rank)",
        description="Generate K candidate structures with the flow-matching generator conditioned on the pattern "
                    "and the composition of the cell (and the lattice, if known), polish all of them in one batched "
                    "gradient run against the pattern, Rietveld-refine the best N (symmetry detected and "
                    "constrained) and rank them by Rwp. Writes DIR/candidates/NN.cif (01 = best) and DIR/result.json.")
    sp.add_argument("pattern", help="measured pattern (any format `xtaljax refine` reads)")
    sp.add_argument("--composition", required=True, metavar="FORMULA", help="formula of the unit cell, e.g. SrTiO3")
    sp.add_argument("--lattice", type=float, nargs=6, metavar=("A", "B", "C", "ALPHA", "BETA", "GAMMA"),
                    help="known lattice (Å, degrees), e.g. from indexing")
    sp.add_argument("--samples", type=int, default=20, metavar="K", help="candidates to generate (default 20)")
    g = sp.add_mutually_exclusive_group()
    g.add_argument("--wavelength", help="Å or an anode line name (CuKa, MoKa, ...)")
    g.add_argument("--instrument", metavar="PRM", help="GSAS-II .instprm / .prm instrument file")
    sp.add_argument("--format", help="pattern format (default: from the extension)")
    sp.add_argument("--checkpoint", help="generator checkpoint directory (default: the shipped perov-5 model)")
    sp.add_argument("--steps", type=int, default=200, help="Euler steps (default 200)")
    sp.add_argument("--solver", choices=("euler", "tsit5"), default="euler")
    sp.add_argument("--guidance", type=float, default=0.0, metavar="S",
                    help="differentiable XRD guidance strength during sampling (0 = off)")
    sp.add_argument("--polish-steps", type=int, default=30, metavar="N",
                    help="batched gradient polish of every candidate (coordinates and a strain of the cell): "
                         "N broadened + N fine Adam steps (0 = off)")
    sp.add_argument("--swap-rounds", type=int, default=2, metavar="R",
                    help="decoration search: every exchange of two atoms of different elements is tried on the "
                         "start and in R rounds after the polish; an exchange is kept if it polishes lower (0 = off)")
    sp.add_argument("--refine-top", type=int, default=5, metavar="N",
                    help="Rietveld-refine the N candidates with the best polished pattern match (default 5)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--out", required=True, metavar="DIR")
    sp.set_defaults(func=cmd_solve)

    gp = sub.add_parser("generator", help="train, evaluate or export the structure generator")
    gs = gp.add_subparsers(dest="generator_cmd", required=True)
    tp = gs.add_parser("train", help="contrastive pre-training + flow matching (resumes from DIR)")
    tp.add_argument("--train", required=True, metavar="CSV", help="CDVAE-format CSV of training structures")
    tp.add_argument("--train-split", help="rows whose 'split' column equals this (MP-20 subset: train)")
    tp.add_argument("--val", metavar="CSV", help="CDVAE-format CSV for validation loss and retrieval")
    tp.add_argument("--val-split")
    tp.add_argument("--limit", type=int, help="first N training rows only")
    tp.add_argument("--max-atoms", type=int)
    tp.add_argument("--batch", type=int, default=128)
    tp.add_argument("--pretrain-steps", type=int, default=1000)
    tp.add_argument("--flow-steps", type=int, default=12000)
    tp.add_argument("--lr", type=float, default=1e-3)
    tp.add_argument("--encoder", choices=("cnn", "transformer"), default="cnn")
    tp.add_argument("--hidden", type=int, default=96)
    tp.add_argument("--contrastive-weight", type=float, default=0.1,
                    help="InfoNCE term kept during flow training (keeps the encoder's retrieval; 0 = off)")
    tp.add_argument("--seed", type=int, default=0)
    tp.add_argument("--save-every", type=int, default=250)
    tp.add_argument("--eval-every", type=int, default=500)
    tp.add_argument("--restart", action="store_true", help="discard a previous run in DIR instead of resuming")
    tp.add_argument("--out", required=True, metavar="DIR")
    tp.set_defaults(func=cmd_train)

    ep = gs.add_parser("evaluate", help="match rate / RMSE (CDVAE/PXRDGen protocol) on a CSV of test structures")
    ep.add_argument("--checkpoint", help="default: the shipped perov-5 model")
    ep.add_argument("--csv", required=True)
    ep.add_argument("--split")
    ep.add_argument("--limit", type=int)
    ep.add_argument("--samples", type=int, default=20)
    ep.add_argument("--with-lattice", action="store_true", help="give the true lattice (as from indexing)")
    ep.add_argument("--steps", type=int, default=200)
    ep.add_argument("--solver", choices=("euler", "tsit5"), default="euler")
    ep.add_argument("--guidance", type=float, default=0.0)
    ep.add_argument("--workers", type=int, default=1, help="processes for StructureMatcher")
    ep.add_argument("--seed", type=int, default=0)
    ep.add_argument("--out", required=True, metavar="JSON")
    ep.set_defaults(func=cmd_evaluate)

    xp = gs.add_parser("export", help="parameters-only copy of a training run's latest checkpoint")
    xp.add_argument("src")
    xp.add_argument("dst")
    xp.set_defaults(func=cmd_export)


def _checkpoint(path):
    from .api import default_checkpoint

    return Path(path) if path else default_checkpoint()


def _guidance(strength: float):
    from .flow import Guidance

    if strength < 0:
        raise ValueError("--guidance must be >= 0")
    return Guidance(strength=strength) if strength > 0 else None


def _solve_instrument(args, pattern):
    """As ``xtaljax refine`` (a file, or a wavelength / anode line, checked against a wavelength the
    pattern file states), falling back to the pattern file's own wavelength."""
    import xtaljax as xj
    from xtaljax.cli import refine_instrument

    if not args.instrument and not args.wavelength:
        if pattern.wavelength is None:
            raise ValueError("the pattern file states no wavelength: give --wavelength or --instrument")
        return xj.Instrument.from_wavelength(float(pattern.wavelength))
    return refine_instrument(args, pattern)


def cmd_solve(args) -> int:
    from xtaljax._cache import enable_compilation_cache
    from xtaljax.io import read_pattern

    from . import checkpoint as ck
    from .api import generate, parse_composition
    from .data import to_model_grid
    from .evaluate import structure_valid
    from .polish import Polish, polish
    from .rank import refine_and_rank, write_solution

    if args.samples < 1 or args.refine_top < 1:
        raise ValueError("--samples and --refine-top must be >= 1")
    settings = Polish(broad_steps=args.polish_steps, fine_steps=args.polish_steps, swap_rounds=args.swap_rounds)
    enable_compilation_cache()
    t0 = time.perf_counter()
    pat = read_pattern(args.pattern, fmt=args.format)
    inst = _solve_instrument(args, pat)
    lam = float(np.asarray(inst.wavelengths)[0])
    model, meta = ck.load_generator(_checkpoint(args.checkpoint))
    zs = parse_composition(args.composition, meta)
    y = to_model_grid(pat.two_theta, pat.intensity, lam, meta.grid)
    z = np.zeros((1, meta.max_atoms), np.int32)
    z[0, :len(zs)] = zs
    mask = (z > 0).astype(np.float32)
    lattice = None
    if args.lattice:
        p = np.asarray(args.lattice, np.float64)
        if np.any(p[:3] <= 0) or np.any(p[3:] <= 0) or np.any(p[3:] >= 180):
            raise ValueError("--lattice needs a, b, c > 0 Å and angles in (0, 180) degrees")
        lattice = p[None]
    print(f"solve: {len(zs)} atoms ({args.composition}), {args.samples} samples, "
          f"{'given lattice' if lattice is not None else 'lattice generated'}", file=sys.stderr)
    cand = generate(model, meta, z, mask, y[None], args.samples, key=__import__("jax").random.key(args.seed),
                    lattice=lattice, steps=args.steps, solver=args.solver, guidance=_guidance(args.guidance))
    print(f"  generated in {cand.seconds:.2f} s", file=sys.stderr)
    cand, loss = polish(cand, y[None], meta, settings=settings)
    structs = cand.structures(0)
    order = [int(i) for i in np.argsort(loss[0]) if structs[i] is not None and structure_valid(structs[i])]
    print(f"  polished ({args.polish_steps} + {args.polish_steps} steps, {args.swap_rounds} swap rounds); {len(order)}/{len(structs)} structurally "
          f"valid; best pattern loss (1 - cos) {float(np.min(loss[0])):.4f}", file=sys.stderr)
    if not order:
        raise ValueError("no structurally valid candidate was generated; try more --samples or give --lattice")
    top = order[:args.refine_top]
    ranked = refine_and_rank([structs[i] for i in top], pat, inst, progress=True)
    for r in ranked:
        r["sample"] = top[r["index"]]
        r["pattern_loss"] = float(loss[0, r["sample"]])
    out = write_solution(args.out, ranked, extra={
        "pattern": str(args.pattern), "composition": args.composition, "samples": args.samples,
        "valid_samples": len(order), "refined": len(top), "polish": dataclasses.asdict(settings),
        "not_refined": [{"sample": i, "pattern_loss": float(loss[0, i])} for i in order[args.refine_top:]],
        "lattice_given": lattice is not None, "steps": args.steps, "solver": args.solver,
        "guidance": args.guidance, "checkpoint": str(_checkpoint(args.checkpoint)),
        "sampling_seconds": cand.seconds, "seconds": time.perf_counter() - t0})
    best = ranked[0]
    print(f"best: Rwp {best['rwp']:.2f} %, {best['space_group']}; wrote {out}")
    return 0


def cmd_train(args) -> int:
    from .models import ModelConfig
    from .train import TrainConfig, train

    cfg = TrainConfig(train_csv=args.train, train_split=args.train_split, val_csv=args.val, val_split=args.val_split,
                      limit=args.limit, max_atoms=args.max_atoms, batch=args.batch, pretrain_steps=args.pretrain_steps,
                      flow_steps=args.flow_steps, lr=args.lr, contrastive_weight=args.contrastive_weight, seed=args.seed, save_every=args.save_every,
                      eval_every=args.eval_every)
    try:
        summary = train(cfg, args.out, model_cfg=ModelConfig(encoder=args.encoder, hidden=args.hidden),
                        resume=not args.restart)
    except KeyboardInterrupt:
        print(f"xtaljax: interrupted; state saved in {args.out}: rerun the same command to resume", file=sys.stderr)
        return 130
    print(json.dumps(summary))
    return 0


def cmd_evaluate(args) -> int:
    from .api import evaluate_generator
    from .evaluate import write_report

    rep = evaluate_generator(_checkpoint(args.checkpoint), args.csv, split=args.split, limit=args.limit, k=args.samples,
                             ks=(1, args.samples), with_lattice=args.with_lattice, steps=args.steps,
                             solver=args.solver, guidance=_guidance(args.guidance), seed=args.seed, workers=args.workers)
    write_report(args.out, rep)
    mr = rep["match_rate"]
    print("match rate " + ", ".join(f"@{k}: {100 * v:.1f} %" for k, v in mr.items())
          + f"; {rep['seconds_per_structure'] * 1e3:.1f} ms per sample; wrote {args.out}")
    return 0


def cmd_export(args) -> int:
    from .checkpoint import export

    print(f"wrote {export(args.src, args.dst)}")
    return 0
