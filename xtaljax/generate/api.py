"""Generating candidate structures from a pattern and a composition, and the CDVAE/PXRDGen
evaluation protocol on a CSV of test structures."""

from __future__ import annotations

import dataclasses
import math
import time
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ..core import SimConfig
from ..core.pattern import resolve_config
from ..core.reflections import make_reflections, stack_reflections, g_max_for
from . import checkpoint as ck
from .data import Augment, PatternSource, StructureSet, load_set, scatterer_indices
from .flow import Guidance, sample

#: Where the shipped perov-5 checkpoint lives.
SHIPPED = Path(__file__).resolve().parent.parent / "data" / "generator" / "perov5"


def default_checkpoint() -> Path:
    return SHIPPED


def parse_composition(formula: str, meta: ck.Meta) -> list[int]:
    """Atomic numbers of the atoms of one cell from a formula such as ``"SrTiO3"`` or
    ``"Sr1 Ti1 O3"`` (the formula *of the cell*, not reduced). One-line ``ValueError`` for an
    unknown element, fractional amounts, more atoms than the model's maximum, or elements the
    model never saw in training."""
    from pymatgen.core import Composition, Element

    text = str(formula).strip()
    if not text:
        raise ValueError("empty composition")
    try:
        comp = Composition(text)
    except Exception as exc:  # noqa: BLE001 - pymatgen raises ValueError/KeyError
        raise ValueError(f"composition {text!r}: cannot be parsed ({exc})") from None
    zs = []
    for el, amt in comp.items():
        if not isinstance(el, Element) or el.Z <= 0:
            raise ValueError(f"composition {text!r}: unknown element {str(el)!r}")
        if abs(amt - round(amt)) > 1e-6 or amt <= 0:
            raise ValueError(f"composition {text!r}: {el} has a non-integer amount {amt:g}; give the formula of the cell")
        zs += [el.Z] * int(round(amt))
    if len(zs) > meta.max_atoms:
        raise ValueError(f"composition {text!r} has {len(zs)} atoms; this model handles at most {meta.max_atoms} per cell")
    unseen = sorted({Element.from_Z(z).symbol for z in zs if z not in set(meta.elements)})
    if unseen:
        raise ValueError(f"composition {text!r}: element(s) {', '.join(unseen)} never seen in this model's training data")
    return sorted(zs)


def standard_instrument(meta: ck.Meta):
    """The instrument of the evaluation patterns (the middle of the augmentation ranges)."""
    a = Augment.off()
    return meta.grid.scaled_instrument(a.width[0], a.lorentz[0])


@dataclasses.dataclass
class Candidates:
    """Raw generator output for ``T`` targets × ``k`` samples."""

    frac: np.ndarray  # (T, k, N, 3)
    params: np.ndarray  # (T, k, 6)
    z: np.ndarray  # (T, N)
    mask: np.ndarray  # (T, N)
    seconds: float
    nfe: float  # mean network evaluations per sample

    def structures(self, t: int) -> list:
        """pymatgen structures of target ``t`` (None where the lattice is not a valid cell)."""
        from pymatgen.core import Lattice, Structure

        n = int(self.mask[t].sum())
        out = []
        for j in range(self.frac.shape[1]):
            p = self.params[t, j]
            try:
                if not np.all(np.isfinite(p)) or np.any(p[:3] <= 0):
                    raise ValueError
                lat = Lattice.from_parameters(*p)
                if not (lat.volume > 1e-3) or not np.isfinite(lat.volume):
                    raise ValueError
                out.append(Structure(lat, [int(v) for v in self.z[t, :n]], self.frac[t, j, :n]))
            except Exception:  # noqa: BLE001 - degenerate cells count as failed samples
                out.append(None)
        return out


def _pad(a, rows: int):
    return np.concatenate([a, np.repeat(a[-1:], rows - len(a), axis=0)]) if len(a) < rows else a


def _guide_setup(meta: ck.Meta, z, lattice):
    """(instrument, two_theta, reflections (rows), config) for XRD guidance."""
    ins = standard_instrument(meta)
    tt = meta.grid.two_theta
    cfg = resolve_config(SimConfig(asymmetry="none"), ins, tt)
    lam = float(np.min(np.asarray(ins.wavelengths)))
    g = g_max_for(tt[-1] + 1.0, lam)
    if lattice is not None:
        from pymatgen.core import Lattice
        refls = [make_reflections(Lattice.from_parameters(*p).matrix, g, margin=0.08) for p in lattice]
        return ins, tt, refls, cfg
    edge = math.sqrt(3.0) * meta.max_length * 1.1
    r = make_reflections(np.eye(3) * edge, g, margin=0.0)
    return ins, tt, [r] * len(z), cfg


@partial(jax.jit, static_argnums=0)
def _encode(graphdef, state, y):
    return nnx.merge(graphdef, state).xrd(y)


@partial(jax.jit, static_argnames=("graphdef", "lat_norm", "steps", "solver", "guidance", "config"))
def _sample_rows(graphdef, state, z, mask, emb, key, lattice, species, y_obs, refl, instrument, two_theta, *,
                 lat_norm, steps, solver, guidance, config):
    """One chunk of rows; module level and keyed on static settings, so repeated calls with the
    same model, shapes and settings reuse the compiled program."""
    sim = None if guidance is None else (instrument, two_theta, refl, config)
    return sample(nnx.merge(graphdef, state), z, mask, emb, key, lat_norm=lat_norm, lattice=lattice, steps=steps,
                  solver=solver, guidance=guidance, guide_sim=sim, species=species, y_obs=y_obs)


def generate(model, meta: ck.Meta, z, mask, patterns, k: int, *, key=None, lattice=None, steps: int = 200,
             solver: str = "euler", guidance: Guidance | None = None, batch: int = 1024, progress: bool = False) -> Candidates:
    """``k`` samples for each of ``T`` targets: ``z``/``mask`` (T, N) padded atomic numbers,
    ``patterns`` (T, n_points) on the model grid (normalised), ``lattice`` (T, 6) or None.

    Rows (target × sample) are integrated in fixed-size chunks of ``batch`` (one compilation)."""
    from tqdm.auto import tqdm

    key = jax.random.key(0) if key is None else key
    if int(k) != k or k < 1 or int(steps) != steps or steps < 1:
        raise ValueError(f"samples and steps must be positive integers, got {k} and {steps}")
    z = np.asarray(z, np.int32)
    mask = np.asarray(mask, np.float32)
    patterns = np.asarray(patterns, np.float32)
    t_n, n = z.shape
    if patterns.shape != (t_n, meta.grid.n_points):
        raise ValueError(f"patterns must have shape ({t_n}, {meta.grid.n_points}), got {patterns.shape}")
    if n > meta.max_atoms:
        raise ValueError(f"{n} atom slots; this model handles at most {meta.max_atoms}")
    if n < meta.max_atoms:
        z = np.pad(z, ((0, 0), (0, meta.max_atoms - n)))
        mask = np.pad(mask, ((0, 0), (0, meta.max_atoms - n)))
    graphdef, state = nnx.split(model)
    emb = np.asarray(_encode(graphdef, state, jnp.asarray(patterns)))
    rows = np.repeat(np.arange(t_n), k)
    species = scatterer_indices(z)
    lat_rows = None if lattice is None else np.asarray(lattice, np.float64)[rows]
    ins = tt_j = cfg = refls = None
    if guidance is not None:
        ins, tt, refls, cfg = _guide_setup(meta, z, None if lattice is None else np.asarray(lattice))
        tt_j = jnp.asarray(tt, jnp.float32)
        cap = max(r.capacity for r in refls)
    bs = min(batch, len(rows))
    frac = np.zeros((len(rows), meta.max_atoms, 3))
    params = np.zeros((len(rows), 6))
    nfe = []
    t0 = time.perf_counter()
    for s in tqdm(range(0, len(rows), bs), disable=not progress, desc="sample"):
        r = _pad(rows[s:s + bs], bs)
        refl = None if refls is None else stack_reflections([refls[i] for i in r], cap)
        ll = None if lat_rows is None else jnp.asarray(_pad(lat_rows[s:s + bs], bs), jnp.float32)
        f, p, nst = _sample_rows(graphdef, state, jnp.asarray(z[r]), jnp.asarray(mask[r]), jnp.asarray(emb[r]),
                                 jax.random.fold_in(key, s), ll, jnp.asarray(species[r]), jnp.asarray(patterns[r]),
                                 refl, ins, tt_j, lat_norm=meta.lat_norm, steps=steps, solver=solver,
                                 guidance=guidance, config=cfg)
        m = min(bs, len(rows) - s)
        frac[s:s + m] = np.asarray(f)[:m]
        params[s:s + m] = np.asarray(p)[:m]
        nfe.append(float(nst) * (1 if solver == "euler" else 6))
    seconds = time.perf_counter() - t0
    if lattice is not None:
        params = np.asarray(lattice, np.float64)[rows]
    return Candidates(frac.reshape(t_n, k, meta.max_atoms, 3), params.reshape(t_n, k, 6), z, mask, seconds,
                      float(np.mean(nfe)))


def evaluate_generator(checkpoint, csv, *, split: str | None = None, limit: int | None = None, k: int = 20,
                       ks=(1, 20), with_lattice: bool = False, steps: int = 200, solver: str = "euler",
                       guidance: Guidance | None = None, seed: int = 0, workers: int = 1, progress: bool = True) -> dict:
    """The PXRDGen/CDVAE protocol on the rows of ``csv``: a noiseless pattern of each target at
    the standard instrument + its composition (and its true lattice if ``with_lattice``) ->
    ``k`` samples -> match rate and RMSE at each of ``ks`` (StructureMatcher stol 0.5,
    angle_tol 10, ltol 0.3; structural-validity gate; every target in the denominator)."""
    from .evaluate import match_metrics

    model, meta = ck.load_generator(checkpoint)
    data = load_set(csv, split=split, limit=limit, max_atoms=meta.max_atoms)
    y = _eval_patterns(data, meta)
    lattice = data.params if with_lattice else None
    cand = generate(model, meta, data.z, data.mask, y, k, key=jax.random.key(seed), lattice=lattice, steps=steps,
                    solver=solver, guidance=guidance, progress=progress)
    preds = [cand.structures(t) for t in range(len(data))]
    t0 = time.perf_counter()
    rep = match_metrics(preds, data.structures, ks=tuple(x for x in ks if x <= k), workers=workers, progress=progress)
    rep.pop("per_target", None)
    rep.update({"checkpoint": str(checkpoint), "csv": str(csv), "split": split, "n": len(data), "k": k,
                "with_lattice": with_lattice, "steps": steps, "solver": solver,
                "guidance": None if guidance is None else dataclasses.asdict(guidance),
                "sampling_seconds": cand.seconds, "seconds_per_structure": cand.seconds / (len(data) * k),
                "matching_seconds": time.perf_counter() - t0, "nfe_per_sample": cand.nfe, "backend": jax.default_backend()})
    return rep


def _eval_patterns(data: StructureSet, meta: ck.Meta) -> np.ndarray:
    src = PatternSource(data, meta.grid, Augment.off())
    out = [np.asarray(src.render(np.arange(s, min(s + 512, len(data))), jax.random.key(s)))
           for s in range(0, len(data), 512)]
    return np.concatenate(out)


def refined_match(cand: Candidates, data: StructureSet, meta: ck.Meta, rows, *, sample: int = 0, counts: float = 1e4,
                  seed: int = 0, progress: bool = True) -> dict:
    """Match rate of one sample per target before and after Rietveld refinement against the
    target's pattern (the standard instrument, ``counts`` at the strongest peak, Poisson noise,
    flat background of 1 % of the peak). Refinement: :func:`xtaljax.generate.rank.refine_candidate`."""
    from tqdm.auto import tqdm

    from ..io.structures import from_pymatgen
    from ..core import simulate
    from .evaluate import match_metrics, structure_valid
    from .rank import refine_candidate

    ins = standard_instrument(meta)
    tt = meta.grid.two_theta
    rng = np.random.default_rng(seed)
    before, after, rwp, secs = [], [], [], []
    for t in tqdm(rows, disable=not progress, desc="refine"):
        s = cand.structures(int(t))[sample]
        before.append([s])
        if s is None or not structure_valid(s):
            after.append([None])
            rwp.append(None)
            continue
        y = np.asarray(simulate(from_pymatgen(data.structures[int(t)], b_iso=0.5), ins, tt))
        y = y / y.max() * counts + 0.01 * counts
        y = rng.poisson(y).astype(np.float64)
        r = refine_candidate(s, (tt, y), ins)
        after.append([r["structure"] if r["refined"] else s])
        rwp.append(r["rwp"])
        secs.append(r["seconds"])
    targets = [data.structures[int(t)] for t in rows]
    mb = match_metrics(before, targets, ks=(1,))
    ma = match_metrics(after, targets, ks=(1,))
    return {"n": len(rows), "sample": sample, "match_rate_before": mb["match_rate"]["1"],
            "match_rate_after": ma["match_rate"]["1"], "rmse_before": mb["rmse"]["1"], "rmse_after": ma["rmse"]["1"],
            "rwp_median": float(np.median([v for v in rwp if v is not None])) if any(v is not None for v in rwp) else None,
            "seconds_per_refinement": float(np.mean(secs)) if secs else None}
