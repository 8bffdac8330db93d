"""Rietveld refinement: symmetry-constrained structures, named parameters, staged strategies.

A :class:`Problem` holds a measured pattern (the fit range), the phases — each a symmetry
template from :func:`xtaljax.io.spacegroups.symmetrize` with its reflection list — the instrument
and a *model*: the pytree ``{"instrument": Instrument, "phases": (SymmetryParams, ...),
"scales": (P,)}``. Every refinable scalar of the model has a name and a group:

=============== ================================================================ ==============
group           parameters (names)                                               bounds
=============== ================================================================ ==============
scale           ``<phase>:scale``                                                ≥ 0
background      ``bkg0 … bkgK`` (Chebyshev coefficients)                         —
lattice         ``<phase>:a`` (``b``, ``c``, ``alpha``, ``beta``, ``gamma`` as    lengths > 0,
                the lattice family leaves free)                                  angles 30–150°
zero            ``zero`` (° 2θ)                                                  ±2°
displacement    ``displacement`` (mm)                                            ±5 mm
transparency    ``transparency`` (° 2θ)                                          ±1°
gaussian        ``u v w`` (°², instrumental Gaussian; usually from calibration)   u, w ≥ 0
lorentzian      ``x y`` (°, Lorentzian: sample size/strain and instrument)      ≥ 0
profile         gaussian + lorentzian
asymmetry       ``shl``: GSAS-II's SH/L = S/L + H/L with S/L = H/L (FCJ)         2e-4 … 0.4
fcj             ``asym_sl asym_hl`` (FCJ S/L and H/L separately)                 1e-4 … 0.2
size_strain     ``inv_size`` (Å⁻¹), ``strain``                                   ≥ 0
po              ``po_ratio`` (March–Dollase)                                     0.2 … 5
coords          ``<phase>:<El><n>.x`` … Wyckoff free coordinates                 —
biso            ``<phase>:<El><n>.B`` (Å²)                                       0 … 30
occupancy       ``<phase>:<El><n>.occ``                                          0 … 1
=============== ================================================================ ==============

A *strategy* is a list of stages, each a list of groups (or parameter names) to refine together,
like a GSAS-II user's sequence; each stage runs Levenberg–Marquardt (:mod:`xtaljax.refine.lm`) to
convergence. Everything is float64 and compiled once per problem: the union of all stages is one
parameter vector and a stage only switches entries on (``active`` mask), so stages do not
recompile.

**Le Bail mode** (``Problem(..., lebail=True)``): every reflection row gets a free intensity
``J`` (the model's ``"lebail"`` entry, one ``(capacity,)`` array per phase, standing in for the
structure's mean |F|²; LP, multiplicity, Kα2 and the profile are applied as usual) and the
structure plays no part beyond its cell. Each cycle first re-extracts the intensities with the
Le Bail formula, ``J ← J · Σᵢ Kᵢ (yᵢᵒ − bᵢ)/(yᵢᶜ − bᵢ) / Σᵢ Kᵢ`` (Kᵢ = the row's profile at
point i, b the background; both sums are VJPs of the calculated pattern with respect to ``J``,
so the formula holds for any profile the simulator draws), then runs one Levenberg–Marquardt
cycle on the other parameters (lattice, zero/displacement, profile, background; the phase scale
is fixed, ``J`` carries it). In the last stage the extraction switches to the weighted
least-squares update (``lebail_update``), so the fit ends at the least-squares optimum of the
intensities (a Pawley fit with positivity). Stages use the ``"lebail"`` strategy by default;
structure groups (scale, coords, biso, occupancy, po) are refused.
"""

from __future__ import annotations

import dataclasses
import sys
from functools import partial
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.flatten_util import ravel_pytree

from ..core.crystal import Crystal
from ..core.instrument import Instrument
from ..core.lattice import volume
from ..core.pattern import (SimConfig, chebyshev_background, reflections_for, resolve_config, simulate_kernel,
                            validate_instrument)
from ..core.reflections import merge_equivalents
from ..core.symmetry import SymmetryParams, SymmetryTemplate, expand
from ..metrics import agreement
from . import lm

#: named strategies: stages of groups (GSAS-II tutorial order)
_B = ["scale", "background"]
_L = _B + ["lattice", "displacement"]
_P = _L + ["lorentzian", "asymmetry"]
STRATEGIES = {
    "scale": [_B],
    "lattice": [_B, _L],
    "profile": [_B, _L, _P],
    # for a Bragg–Brentano pattern: sample displacement (not the instrument zero) with the lattice
    # and the sample broadening; the instrumental Gaussian (U, V, W) stays as calibrated
    "default": [_B, _P, _P + ["coords", "biso"]],
    # the same one group at a time (slower; for a poor starting model)
    "stepwise": [_B, _L, _P, _P + ["coords", "biso"]],
    # the same, then the zero shift and the Gaussian terms too (the data must determine them)
    "full": [_B, _L, _P, _P + ["coords", "biso"], _P + ["coords", "biso", "zero", "gaussian"]],
    # instrument calibration on a standard of known cell (e.g. LaB6 SRM 660): the lattice stays fixed
    "calibration": [_B, _B + ["zero", "displacement"], _B + ["zero", "displacement", "profile"],
                    _B + ["zero", "displacement", "profile", "asymmetry", "coords", "biso"]],
    # Le Bail (free intensities): no scale, no structure
    "lebail": [["background"], ["background", "lattice", "displacement"],
               ["background", "lattice", "displacement", "lorentzian", "asymmetry"]],
}
#: groups that a Le Bail fit cannot refine (the free intensities replace the structure and scale)
LEBAIL_EXCLUDED = ("scale", "coords", "biso", "occupancy", "po")

GROUPS = ("scale", "background", "lattice", "zero", "displacement", "transparency", "gaussian", "lorentzian",
          "profile", "asymmetry", "fcj", "size_strain", "po", "coords", "biso", "occupancy")
_ALIASES = {"profile": ("gaussian", "lorentzian")}
#: groups the pattern is linear in (a stage of only these is solved exactly, without cycles)
LINEAR_GROUPS = ("scale", "background")

_INSTRUMENT_PARAMS = {  # field: (group, lower, upper)
    "zero": ("zero", -2.0, 2.0), "displacement": ("displacement", -5.0, 5.0),
    "transparency": ("transparency", -1.0, 1.0),
    "u": ("gaussian", 0.0, np.inf), "v": ("gaussian", -np.inf, np.inf), "w": ("gaussian", 0.0, np.inf),
    "x": ("lorentzian", 0.0, np.inf), "y": ("lorentzian", 0.0, np.inf),
    "asym_sl": ("fcj", 1e-4, 0.2), "asym_hl": ("fcj", 1e-4, 0.2),
    "inv_size": ("size_strain", 0.0, np.inf), "strain": ("size_strain", 0.0, np.inf),
    "po_ratio": ("po", 0.2, 5.0),
}
_LATTICE_NAMES = {
    "triclinic": ("a", "b", "c", "alpha", "beta", "gamma"), "monoclinic": ("a", "b", "c", "beta"),
    "orthorhombic": ("a", "b", "c"), "tetragonal": ("a", "c"), "trigonal": ("a", "c"), "hexagonal": ("a", "c"),
    "cubic": ("a",),
}


_expand_jit = jax.jit(expand)


@partial(jax.jit, static_argnums=(3,))
def _positions_jit(crystal, instrument, refl, model):
    from ..core.pattern import _peak_table

    t = _peak_table(crystal, instrument, refl, model)
    return {"pos": t["pos"], "valid": t["valid"]}


class RefinementError(ValueError):
    """A refinement that cannot start or continue (the message names the cause)."""


@dataclasses.dataclass(frozen=True)
class Parameter:
    """A refinable scalar: ``flat[index] = coef * value`` (and ``flat[i] = c * value`` for each
    ``(i, c)`` in ``ties``: one value driving several model entries, e.g. GSAS-II's SH/L)."""

    name: str
    group: str
    index: int  # position in the flat model vector
    lower: float
    upper: float
    coef: float = 1.0
    ties: tuple = ()


def _scatter_plan(params: Sequence[Parameter]):
    """(flat indices, source entry of z, coefficient) for writing z into the flat model."""
    idx, src, coef = [], [], []
    for k, p in enumerate(params):
        for i, c in ((p.index, p.coef),) + tuple(p.ties):
            idx.append(i)
            src.append(k)
            coef.append(c)
    if len(set(idx)) != len(idx):
        dup = sorted({p.name for p in params for i in (p.index, *[t[0] for t in p.ties]) if idx.count(i) > 1})
        raise RefinementError(f"parameters {', '.join(dup)} set the same model entry; refine one of them")
    return (jnp.asarray(idx, jnp.int32), jnp.asarray(src, jnp.int32), jnp.asarray(coef, jnp.float64))


def _scatter(flat, z, plan):
    idx, src, coef = plan
    return flat.at[idx].set(jnp.asarray(z)[src] * coef)


def _gather(flat, params: Sequence[Parameter]):
    return jnp.asarray([flat[p.index] / p.coef for p in params]) if params else jnp.zeros(0)


@dataclasses.dataclass
class PhaseModel:
    name: str
    template: SymmetryTemplate
    info: object  # SymmetryInfo
    reflections: object  # Reflections
    masses: np.ndarray  # atomic mass per orbit (u)
    labels: tuple  # site label per orbit


def _f64(tree):
    return jax.tree_util.tree_map(
        lambda a: jnp.asarray(a, jnp.float64) if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating) else jnp.asarray(a),
        tree)


def _leaf_offsets(tree):
    """(path-string, offset, size, shape) of each leaf in ravel_pytree order."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    out, off = [], 0
    for path, leaf in leaves:
        size = int(np.size(leaf))
        out.append((jax.tree_util.keystr(path), off, size, np.shape(leaf)))
        off += size
    return out


class Problem:
    """A Rietveld problem: data in the fit range, phases, instrument, parameters.

    Args:
      two_theta, y_obs, sigma: the measured pattern (degrees, counts, esd; σ <= 0 excludes a point).
      phases: ``[(name, structure), ...]`` with structures as CIF paths, pymatgen ``Structure``
        or ``(template, params, info)`` triples from :func:`symmetrize`.
      instrument: starting :class:`Instrument`.
      n_background: number of Chebyshev background terms.
      symprec: tolerance for the symmetry detection of the starting structures.
      merge: merge symmetry-equivalent reflections (exact; off when preferred orientation is used).
      config: simulator settings (``autodiff`` is forced to ``"forward"``). Default: 8 FCJ
        quadrature points (FAP: wR 9.634 % vs 9.654 % with 16, half the time per cycle).
      margin: relative margin of the reflection enumeration (lattice room before re-enumeration).
      lebail: Le Bail mode (free intensities per reflection; see the module docstring).
      lebail_iterations: Le Bail extractions per refinement cycle.
      lebail_update: ``"lebail"`` (the Le Bail formula: observed net counts shared out in
        proportion to each reflection's calculated share), ``"wls"`` (the multiplicative
        weighted-least-squares update ``J ← J · Σᵢ Kᵢ wᵢ (yᵢᵒ − bᵢ)⁺ / Σᵢ Kᵢ wᵢ (yᵢᶜ − bᵢ)``, ISRA,
        whose fixed point is the non-negative least-squares optimum of the intensities: a Pawley
        fit with positivity, the same objective as the Levenberg–Marquardt cycles) or
        ``"lebail+wls"`` (default: the Le Bail formula in every stage but the last, the
        least-squares update in the last). The Le Bail formula's fixed point is not the
        least-squares optimum (FAP: wR 9.30 % with it to the end, 8.32 % with the final WLS
        stage); started from flat intensities with a poor cell, the WLS update drives the
        intensities of misplaced reflections to zero, from where a multiplicative update cannot
        bring them back (FAP: 27.5 % with WLS throughout).
    """

    def __init__(self, two_theta, y_obs, sigma, phases: Sequence, instrument: Instrument, *, n_background: int = 6,
                 symprec: float = 0.01, merge: bool | None = None, config: SimConfig | None = None,
                 margin: float = 0.05, lebail: bool = False, lebail_iterations: int = 10,
                 lebail_update: str = "lebail+wls"):
        from ..io.spacegroups import symmetrize

        with jax.enable_x64(True):
            tt = np.asarray(two_theta, np.float64)
            yo = np.asarray(y_obs, np.float64)
            sig = np.asarray(sigma, np.float64)
            if tt.ndim != 1 or tt.size < 10:
                raise RefinementError(f"need at least 10 data points in the fit range, got {tt.size}")
            if yo.shape != tt.shape or sig.shape != tt.shape:
                raise RefinementError("2θ, intensity and sigma differ in length")
            if not (np.all(np.isfinite(yo)) and np.all(np.isfinite(sig))):
                raise RefinementError("the pattern contains NaN or infinite intensities or sigmas")
            w = np.where(sig > 0, 1.0 / np.where(sig > 0, sig, 1.0) ** 2, 0.0)
            if np.count_nonzero(w) < 10:
                raise RefinementError("fewer than 10 points have sigma > 0 (weight 1/sigma² is undefined for sigma = 0)")
            if not phases:
                raise RefinementError("at least one phase is needed")
            inst = _f64(instrument)
            validate_instrument(inst)
            lam = float(np.max(np.asarray(inst.wavelengths)))
            if tt[-1] >= 180.0 or tt[0] <= 0.0:
                raise RefinementError(f"2θ range {tt[0]:g}–{tt[-1]:g}° is not in (0, 180)°: wrong units?")
            if n_background < 1:
                raise RefinementError("n_background must be >= 1")
            self.two_theta, self.y_obs, self.sigma, self.weights = tt, yo, sig, w
            self.n_obs = int(np.count_nonzero(w))
            use_po = float(np.asarray(inst.po_ratio)) != 1.0
            self.merge = (not use_po) if merge is None else bool(merge)
            bkg = np.zeros(n_background)
            bkg[: min(n_background, np.size(inst.background))] = np.asarray(inst.background)[:n_background]
            inst = inst.replace(background=jnp.asarray(bkg), scale=jnp.asarray(1.0))
            self.config = resolve_config(dataclasses.replace(config or SimConfig(n_fcj=8), autodiff="forward"), inst, tt)
            self.margin = margin
            self.phases: list[PhaseModel] = []
            params = []
            names = set()
            for item in phases:
                name, struct = item
                if name in names:
                    raise RefinementError(f"two phases are named {name!r}")
                names.add(name)
                if isinstance(struct, tuple):
                    template, p, info = struct
                else:
                    try:
                        template, p, info = symmetrize(struct, symprec=symprec, return_info=True)
                    except ValueError as err:
                        raise RefinementError(f"phase {name}: {err}") from None
                template, p = _f64(template), _f64(p)
                labels, masses = _site_labels(info)
                pm = PhaseModel(name, template, info, None, masses, labels)
                pm.reflections = self._reflections(pm, p, inst)
                self.phases.append(pm)
                params.append(p)
            d_max = lam / (2.0 * np.sin(np.radians(tt[-1] / 2)))
            if d_max <= 0:
                raise RefinementError("wavelength/2θ range give no reflections")
            self.lebail = bool(lebail)
            if int(lebail_iterations) < 1:
                raise RefinementError("lebail_iterations must be >= 1")
            self.lebail_iterations = int(lebail_iterations)
            if lebail_update not in ("lebail", "wls", "lebail+wls"):
                raise RefinementError(f"lebail_update must be 'lebail', 'wls' or 'lebail+wls', got {lebail_update!r}")
            self.lebail_update = lebail_update
            if self.lebail and use_po:
                raise RefinementError("Le Bail mode fits free intensities: preferred orientation (po_ratio != 1) "
                                      "has no meaning there; set it to 1")
            lb = tuple(jnp.asarray(np.asarray(pm.reflections.mask) > 0, jnp.float64) for pm in self.phases) \
                if self.lebail else ()
            self._set_model0({"instrument": inst, "lebail": lb, "phases": tuple(params),
                              "scales": jnp.ones(len(params))})

    def _set_model0(self, model0) -> None:
        """The model layout: flat vector, unravel, named parameters (offsets), compiled cache."""
        self.model0 = model0
        self.flat0, self.unravel = ravel_pytree(model0)
        self.parameters = self._parameters()
        self._compiled = {}

    # -- reflections -------------------------------------------------------------------------
    def _reflections(self, pm: PhaseModel, params: SymmetryParams, inst: Instrument):
        crystal = _expand_jit(pm.template, params)
        refl = reflections_for(crystal, inst, self.two_theta, self.config, margin=self.margin)
        if int(np.count_nonzero(np.asarray(refl.mask))) == 0:
            raise RefinementError(f"phase {pm.name}: no reflection falls in the 2θ range "
                                  f"{self.two_theta[0]:g}–{self.two_theta[-1]:g}° at λ = "
                                  f"{float(np.max(np.asarray(inst.wavelengths))):g} Å (wrong units? 2θ must be in "
                                  "degrees; or a wavelength/file mismatch)")
        if self.merge and pm.info.rotations is not None:
            refl = merge_equivalents(refl, pm.info.rotations)
        return refl

    def reenumerate(self, model):
        """Enumerate every phase's reflections again around the current lattice (after an
        overflow flag), and drop the compiled functions. Returns the model (in Le Bail mode with
        the intensities carried over to the new rows by hkl, and a new layout)."""
        with jax.enable_x64(True):
            old = [pm.reflections for pm in self.phases]
            for pm, p in zip(self.phases, model["phases"]):
                pm.reflections = self._reflections(pm, p, model["instrument"])
            self._compiled = {}
            if not self.lebail:
                return model
            lb = []
            for pm, r0, j0 in zip(self.phases, old, model["lebail"]):
                m0 = np.asarray(r0.mask) > 0
                prev = {tuple(h): float(v) for h, v in zip(np.rint(np.asarray(r0.hkl)[m0]).astype(int),
                                                           np.asarray(j0)[m0])}
                fill = float(np.median(list(prev.values()))) if prev else 1.0
                hkl = np.rint(np.asarray(pm.reflections.hkl)).astype(int)
                m1 = np.asarray(pm.reflections.mask) > 0
                lb.append(jnp.asarray([prev.get(tuple(h), fill) if ok else 0.0 for h, ok in zip(hkl, m1)],
                                      jnp.float64))
            model = {**model, "lebail": tuple(lb)}
            self._set_model0({**self.model0, "lebail": tuple(lb)})
            return model

    # -- parameters --------------------------------------------------------------------------
    def _parameters(self) -> list[Parameter]:
        out = []
        offsets = {path: (off, size, shape) for path, off, size, shape in _leaf_offsets(self.model0)}
        for field, (group, lo, hi) in _INSTRUMENT_PARAMS.items():
            off, _, _ = offsets[f"['instrument'].{field}"]
            out.append(Parameter(field, group, off, lo, hi))
        i_sl = offsets["['instrument'].asym_sl"][0]
        i_hl = offsets["['instrument'].asym_hl"][0]
        out.append(Parameter("shl", "asymmetry", i_sl, 2e-4, 0.4, coef=0.5, ties=((i_hl, 0.5),)))
        off, size, _ = offsets["['instrument'].background"]
        out += [Parameter(f"bkg{k}", "background", off + k, -np.inf, np.inf) for k in range(size)]
        off, _, _ = offsets["['scales']"]
        for i, pm in enumerate(self.phases):
            out.append(Parameter(f"{pm.name}:scale", "scale", off + i, 0.0, np.inf))
        for i, pm in enumerate(self.phases):
            base = f"['phases'][{i}]"
            lat_names = _LATTICE_NAMES[pm.info.crystal_system]
            off, _, _ = offsets[f"{base}.lattice"]
            for j in range(pm.template.n_lattice):
                nm = lat_names[j] if len(lat_names) == pm.template.n_lattice else f"lat{j}"
                lo, hi = (30.0, 150.0) if nm in ("alpha", "beta", "gamma") else (0.5, np.inf)
                out.append(Parameter(f"{pm.name}:{nm}", "lattice", off + j, lo, hi))
            off_c, _, _ = offsets[f"{base}.coords"]
            off_b, _, _ = offsets[f"{base}.b_iso"]
            off_o, _, _ = offsets[f"{base}.occupancy"]
            basis = np.asarray(pm.template.basis)
            for o, (label, site) in enumerate(zip(pm.labels, pm.info.sites)):
                for j in range(site.dof):
                    axis = "xyz"[int(np.argmax(np.abs(basis[o, :, j]) > 1e-8))]
                    out.append(Parameter(f"{pm.name}:{label}.{axis}", "coords", off_c + 3 * o + j, -np.inf, np.inf))
                out.append(Parameter(f"{pm.name}:{label}.B", "biso", off_b + o, 0.0, 30.0))
                out.append(Parameter(f"{pm.name}:{label}.occ", "occupancy", off_o + o, 0.0, 1.0))
        return out

    def select(self, items: Sequence[str]) -> list[Parameter]:
        """Parameters of the given groups and/or names (``'coords'``, ``'FAP:a'``, ``'bkg0'``)."""
        chosen = []
        by_name = {p.name: p for p in self.parameters}
        for it in items:
            if it in GROUPS:
                groups = _ALIASES.get(it, (it,))
                chosen += [p for p in self.parameters if p.group in groups]
            elif it in by_name:
                chosen.append(by_name[it])
            else:
                raise RefinementError(f"unknown parameter or group {it!r} (groups: {', '.join(GROUPS)})")
        seen, out = set(), []
        for p in chosen:
            if p.name not in seen:
                seen.add(p.name)
                out.append(p)
        return out

    # -- the model ---------------------------------------------------------------------------
    def calc(self, model, phase_patterns: bool = False):
        """Calculated pattern of ``model`` on the fit grid (pure JAX); with
        ``phase_patterns=True`` also each phase's contribution (no background)."""
        inst = model["instrument"]
        no_bkg = inst.replace(background=jnp.zeros((1,), inst.background.dtype))
        tt = jnp.asarray(self.two_theta)
        parts, overflow = [], jnp.array(False)
        lb = model.get("lebail") or (None,) * len(self.phases)
        for pm, p, s, f2 in zip(self.phases, model["phases"], model["scales"], lb):
            crystal = expand(pm.template, p)
            y, info = simulate_kernel(crystal, no_bkg, tt, pm.reflections, self.config, f2)
            parts.append(s * y)
            overflow = overflow | info["overflow"]
        y = sum(parts) + chebyshev_background(tt, inst.background)
        return (y, parts, overflow) if phase_patterns else (y, overflow)

    def _calc_parts(self, model):
        key = "calc_parts"
        if key not in self._compiled:
            self._compiled[key] = jax.jit(lambda m: self.calc(m, phase_patterns=True))
        return self._compiled[key](model)

    def with_values(self, model, values: dict):
        """``model`` with the named parameters set (e.g. ``{"FAP:a": 9.37, "zero": 0.01}``)."""
        by_name = {p.name: p for p in self.parameters}
        unknown = [n for n in values if n not in by_name]
        if unknown:
            raise RefinementError(f"unknown parameter(s) {', '.join(unknown)}")
        with jax.enable_x64(True):
            flat = ravel_pytree(model)[0]
            plan = _scatter_plan([by_name[n] for n in values])
            return self.unravel(_scatter(flat, jnp.asarray(list(values.values()), jnp.float64), plan))

    def values(self, model, names: Sequence[str] | None = None) -> dict:
        """The named parameters' values in ``model`` (all parameters by default)."""
        by_name = {p.name: p for p in self.parameters}
        flat = np.asarray(ravel_pytree(model)[0])
        return {n: float(flat[by_name[n].index] / by_name[n].coef) for n in (names or by_name)}

    def model_of(self, z, params: Sequence[Parameter], base=None):
        flat = self.flat0 if base is None else ravel_pytree(base)[0]
        return self.unravel(_scatter(flat, z, _scatter_plan(params)))

    def residual_fn(self, params: Sequence[Parameter], base_flat) -> Callable:
        plan = _scatter_plan(params)
        yo = jnp.asarray(self.y_obs)
        sw = jnp.asarray(np.sqrt(self.weights))

        def residual(z, y_obs=yo, base=base_flat, sqrt_w=sw):
            y, overflow = self.calc(self.unravel(_scatter(base, z, plan)))
            return (y - y_obs) * sqrt_w, {"overflow": overflow, "y": y}
        return residual

    def refine_batch(self, y_obs, sigma=None, strategy="lattice", *, model=None, max_cycles: int = 20,
                     tol: float = 1e-3):
        """Refine many patterns on this problem's grid at once (``vmap`` of the same LM cycles):
        ``y_obs`` ``(B, N)`` (``sigma`` ``(B, N)``, default √max(y, 1)), all from the same
        starting ``model``. Returns ``(values (B, P), names, chi2 (B,), cycles (B,))`` for the
        parameters of the last stage. One compilation for all stages and patterns."""
        if self.lebail:
            raise RefinementError("refine_batch does not run Le Bail fits (one pattern at a time: refine())")
        stages = _stages(strategy)
        with jax.enable_x64(True):
            yo = jnp.asarray(y_obs, jnp.float64)
            if yo.ndim != 2 or yo.shape[1] != self.two_theta.size:
                raise RefinementError(f"y_obs must be (batch, {self.two_theta.size}), got {tuple(yo.shape)}")
            sig = jnp.sqrt(jnp.maximum(yo, 1.0)) if sigma is None else jnp.asarray(sigma, jnp.float64)
            sw = jnp.where(sig > 0, 1.0 / jnp.where(sig > 0, sig, 1.0), 0.0)
            model = model if model is not None else self.model0
            union = self.select([g for st in stages for g in st])
            base = ravel_pytree(model)[0]
            residual = self.residual_fn(union, base)
            lo = jnp.asarray([p.lower for p in union])
            hi = jnp.asarray([p.upper for p in union])
            z0 = jnp.clip(_gather(base, union), lo, hi)

            key = ("batch", tuple(p.name for p in union), max_cycles, tol)
            if key not in self._compiled:
                @jax.jit
                def run(z, active, yo, sw, base):
                    def one(z1, y1, s1):
                        return lm.lm_run(lambda q: residual(q, y_obs=y1, sqrt_w=s1, base=base), z1, active, lo, hi,
                                         max_cycles=max_cycles, tol=tol)
                    st = jax.vmap(one)(z, yo, sw)
                    return st.z, st.chi2, st.cycle
                self._compiled[key] = run
            run = self._compiled[key]

            z = jnp.broadcast_to(z0, (yo.shape[0], z0.shape[0]))
            cycles = jnp.zeros(yo.shape[0], jnp.int32)
            for stage in stages:
                names = {p.name for p in self.select(stage)}
                active = jnp.asarray([1.0 if p.name in names else 0.0 for p in union])
                z, chi2, c = run(z, active, yo, sw, base)
                cycles = cycles + c
            return np.asarray(z), [p.name for p in union], np.asarray(chi2), np.asarray(cycles)

    # -- public entry points -----------------------------------------------------------------
    def initial_linear_fit(self, model):
        """Scales and background by exact weighted linear least squares (the pattern is linear
        in them): a robust start before any non-linear cycle."""
        with jax.enable_x64(True):
            _, parts, _ = self._calc_parts({**model, "scales": jnp.ones(len(self.phases))})
            n_b = model["instrument"].background.shape[0]
            tt = jnp.asarray(self.two_theta)
            eye = np.eye(n_b)
            cols = [np.asarray(p) for p in parts] + [np.asarray(chebyshev_background(tt, jnp.asarray(eye[k])))
                                                     for k in range(n_b)]
            a = np.stack(cols, 1)
            sw = np.sqrt(self.weights)
            coef, *_ = np.linalg.lstsq(a * sw[:, None], self.y_obs * sw, rcond=None)
            scales = np.maximum(coef[: len(self.phases)], 1e-12)
            inst = model["instrument"].replace(background=jnp.asarray(coef[len(self.phases):]))
            return {**model, "instrument": inst, "scales": jnp.asarray(scales)}

    def refine(self, strategy: str | Sequence[Sequence[str]] = "default", *, model=None, max_cycles: int = 20,
               tol: float = 1e-3, progress: Callable | bool | None = True) -> "Result":
        """Run a staged refinement; returns a :class:`Result` (final model, R-factors, esd's)."""
        if self.lebail and strategy == "default":
            strategy = "lebail"
        if not self.lebail and strategy == "lebail":
            raise RefinementError("strategy 'lebail' is for a Le Bail fit: Problem(..., lebail=True) / --lebail")
        stages = _stages(strategy)
        if self.lebail:
            bad = sorted({p.group for st in stages for p in self.select(st)} & set(LEBAIL_EXCLUDED))
            if bad:
                raise RefinementError(f"Le Bail mode refines no structure or scale: drop {', '.join(bad)} "
                                      "from the strategy (or use strategy='lebail')")
        with jax.enable_x64(True):
            if self.lebail and model is None:  # a given model (e.g. a previous fit's) is taken as it is
                model = self._lebail_start(self.model0)
            model = model if model is not None else self.model0
            union = self.select([g for st in stages for g in st])
            union_names = [p.name for p in union]
            z = _gather(ravel_pytree(model)[0], union)
            lo = jnp.asarray([p.lower for p in union])
            hi = jnp.asarray([p.upper for p in union])
            z = jnp.clip(z, lo, hi)
            report = _reporter(progress)
            history, t0 = [], time.perf_counter()
            lam = 1e-3
            state = None
            for k, stage in enumerate(stages):
                names = {p.name for p in self.select(stage)}
                active = jnp.asarray([1.0 if n in names else 0.0 for n in union_names])
                if {"asymmetry", "fcj"} & {p.group for p in self.select(stage)} and self.config.asymmetry != "fcj":
                    z = self._enable_asymmetry(union, z)
                    model = self.model_of(z, union, model)
                init_fn, cycle_fn = self._cycle(union, model)
                state = init_fn(z, lam)
                chi2_prev = np.inf
                for _ in range(max_cycles):
                    if self.lebail:  # re-extract the intensities at the current parameters
                        model = self._lebail_extract(self.model_of(state.z, union, model),
                                                     last_stage=k == len(stages) - 1)
                        init_fn, cycle_fn = self._cycle(union, model)
                    state = cycle_fn(state, active, lo, hi)
                    if bool(state.aux["overflow"]):  # the lattice moved beyond the enumerated reflections
                        model = self.reenumerate(self.model_of(state.z, union, model))
                        union = self.select([g for st in stages for g in st])
                        init_fn, cycle_fn = self._cycle(union, model)
                        state = init_fn(state.z, float(state.lam))
                    chi2 = float(state.chi2)
                    wr = 100 * np.sqrt(chi2 / np.sum(self.weights * self.y_obs**2))
                    history.append({"stage": k, "cycle": int(state.cycle), "chi2": chi2, "rwp": wr,
                                    "lambda": float(state.lam), "accepted": bool(state.accepted),
                                    "n_singular": int(state.n_singular), "seconds": time.perf_counter() - t0})
                    report(history[-1], stage)
                    if self.lebail:  # converged when a whole cycle (extraction + LM) stops gaining
                        if np.isfinite(chi2_prev) and abs(chi2_prev - chi2) < tol * chi2_prev:
                            break
                        chi2_prev = chi2
                    elif not bool(state.accepted) or float(state.rel_change) < tol:
                        break
                z = state.z
                lam = float(state.lam)
                model = self.model_of(z, union, model)
                if not np.all(np.isfinite(np.asarray(z))):  # never expected: lm keeps the last good state
                    raise RefinementError("refinement diverged (non-finite parameters)")
            final_active = jnp.asarray([1.0 if p.name in {q.name for q in self.select(stages[-1])} else 0.0
                                        for p in union])
            return self._result(model, union, final_active, history, time.perf_counter() - t0, state)

    # -- Le Bail ----------------------------------------------------------------------------
    def _lebail_start(self, model):
        """Starting background and intensity scale of a Le Bail fit. The background is the lower
        envelope of the data (a Chebyshev fit clipped to the data, repeated 20 times, as WPEM
        starts): a least-squares background under flat starting intensities would sink beneath
        misplaced peaks and feed the extraction counts that belong to no reflection. The
        intensities' common scale then comes from a linear fit of the net pattern (the phase
        scales stay 1)."""
        tt = jnp.asarray(self.two_theta)
        n_b = model["instrument"].background.shape[0]
        basis = np.stack([np.asarray(chebyshev_background(tt, jnp.asarray(np.eye(n_b)[k]))) for k in range(n_b)], 1)
        fitted = self.weights > 0
        yb = self.y_obs.copy()
        for _ in range(20):
            coef, *_ = np.linalg.lstsq(basis[fitted], yb[fitted], rcond=None)
            yb = np.minimum(self.y_obs, basis @ coef)
        inst = model["instrument"].replace(background=jnp.asarray(coef))
        model = {**model, "instrument": inst, "scales": jnp.ones(len(self.phases))}
        _, parts, _ = self._calc_parts(model)
        peaks = np.sum([np.asarray(q) for q in parts], axis=0)
        net = self.y_obs - basis @ coef
        sw = self.weights
        s = float(np.sum(sw * peaks * net) / max(np.sum(sw * peaks * peaks), 1e-300))
        s = s if s > 0 else 1.0
        return {**model, "lebail": tuple(j * s for j in model["lebail"])}

    def _lebail_extract(self, model, last_stage: bool = False):
        """``lebail_iterations`` Le Bail extractions of every phase's intensities (compiled)."""
        wls = self.lebail_update == "wls" or (self.lebail_update == "lebail+wls" and last_stage)
        key = ("lebail_extract", self.lebail_iterations, wls)
        if key not in self._compiled:
            yo = jnp.asarray(self.y_obs)
            fit = jnp.asarray(self.weights > 0, jnp.float64)
            wts = jnp.asarray(self.weights)
            tt = jnp.asarray(self.two_theta)

            @jax.jit
            def extract(model):
                bkg = chebyshev_background(tt, model["instrument"].background)

                def body(_, lb):
                    y, vjp = jax.vjp(lambda j: self.calc({**model, "lebail": j})[0], lb)
                    net = y - bkg
                    tiny = 1e-12 * jnp.max(jnp.abs(net))
                    if wls:  # ISRA: Σ_i K_ri w_i (yo - b)+ / Σ_i K_ri w_i (yc - b)
                        (num,) = vjp(wts * jnp.maximum(yo - bkg, 0.0))
                        (den,) = vjp(wts * jnp.maximum(net, 0.0))
                    else:  # Le Bail: Σ_i K_ri (yo - b)/(yc - b) / Σ_i K_ri
                        ratio = jnp.where((fit > 0) & (net > tiny),
                                          jnp.maximum(yo - bkg, 0.0) / jnp.maximum(net, tiny), 0.0)
                        (num,) = vjp(ratio)
                        (den,) = vjp(fit)
                    return tuple(jnp.where(d > 0, j * n / jnp.where(d > 0, d, 1.0), j)
                                 for j, n, d in zip(lb, num, den))

                return lax.fori_loop(0, self.lebail_iterations, body, model["lebail"])

            self._compiled[key] = extract
        return {**model, "lebail": self._compiled[key](model)}

    # -- compiled pieces (one per reflection-list state) -----------------------------------
    def _cycle(self, union, model):
        """Compiled ``(init, cycle)`` for this parameter union and reflection lists; the model
        vector of the fixed entries is an argument, so new values do not recompile."""
        base = ravel_pytree(model)[0]
        key = tuple(p.name for p in union)
        if key not in self._compiled:
            residual = self.residual_fn(union, base)
            init = jax.jit(lambda z, lam, base: lm.lm_init(lambda q: residual(q, base=base), z, lam))
            cycle = jax.jit(lambda st, active, lo, hi, base: lm.lm_cycle(lambda q: residual(q, base=base),
                                                                         st, active, lo, hi))
            self._compiled[key] = (init, cycle)
        init, cycle = self._compiled[key]
        return (lambda z, lam: init(z, jnp.asarray(lam, jnp.float64), base),
                lambda st, active, lo, hi: cycle(st, active, lo, hi, base))

    def _enable_asymmetry(self, union, z):
        """Switch the static config to FCJ asymmetry (the starting S/L, H/L were 0)."""
        self.config = dataclasses.replace(self.config, asymmetry="fcj")
        self._compiled = {}
        for k, p in enumerate(union):
            if p.group in ("asymmetry", "fcj"):
                z = z.at[k].set(jnp.maximum(z[k], 0.01 if p.group == "asymmetry" else 0.005))
        return z

    def _result(self, model, union, active, history, seconds, state):
        z = _gather(ravel_pytree(model)[0], union)
        a = state.normal
        y = np.asarray(state.aux["y"])
        n_act = int(np.asarray(active).sum())
        mask = self.weights > 0
        stats = agreement(self.y_obs[mask], y[mask], self.sigma[mask], n_act)
        values = np.asarray(z)
        lo = np.asarray([p.lower for p in union])
        hi = np.asarray([p.upper for p in union])
        tiny = 1e-9 * np.maximum(1.0, np.abs(values))
        at_bound = (np.asarray(active) > 0) & ((values <= lo + tiny) | (values >= hi - tiny))
        # a parameter held at a bound is not estimated: no esd, and it does not inflate the others
        cov, esd, corr, singular = lm.covariance(a, stats["chi2"], self.n_obs, np.asarray(active) * ~at_bound)
        act = np.asarray(active) > 0
        return Result(problem=self, model=model, y_calc=y,
                      stats=stats, names=[p.name for p, on in zip(union, act) if on],
                      values=values[act], esd=esd[act], correlation=corr[np.ix_(act, act)],
                      singular=[union[i].name for i in singular], history=history, seconds=seconds,
                      covariance=cov[np.ix_(act, act)], groups=[p.group for p, on in zip(union, act) if on],
                      at_bounds=[p.name for p, b in zip(union, at_bound) if b])


def _stages(strategy) -> list[list[str]]:
    if isinstance(strategy, str):
        if strategy not in STRATEGIES:
            raise RefinementError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
        return [list(s) for s in STRATEGIES[strategy]]
    stages = [list(s) for s in strategy]
    if not stages or not all(stages):
        raise RefinementError("a strategy needs at least one non-empty stage")
    return stages


def _reporter(progress):
    if progress is False or progress is None:
        return lambda rec, stage: None
    if callable(progress):
        return progress

    def show(rec, stage):
        print(f"  stage {rec['stage'] + 1} [{'+'.join(stage)}] cycle {rec['cycle']:2d}: wR {rec['rwp']:7.3f} %  "
              f"chi2 {rec['chi2']:.4g}  lambda {rec['lambda']:.1e}"
              + ("" if rec["accepted"] else "  (no better step: converged)")
              + (f"  [{rec['n_singular']} singular]" if rec["n_singular"] else ""), file=sys.stderr, flush=True)
    return show


def _site_labels(info):
    from pymatgen.core import Element

    import re

    labels, masses, count = [], [], {}
    for site in info.sites:
        el = re.sub(r"[0-9.+-]+$", "", site.element)  # "Mn3+" -> "Mn"
        count[el] = count.get(el, 0) + 1
        labels.append(f"{el}{count[el]}")
        try:
            masses.append(float(Element(site.element).atomic_mass))
        except ValueError:  # an ion name like "O2-"
            from pymatgen.core import Species
            masses.append(float(Species.from_str(site.element).element.atomic_mass))
    return tuple(labels), np.asarray(masses)


@dataclasses.dataclass
class Result:
    """Outcome of :meth:`Problem.refine`."""

    problem: Problem
    model: dict
    y_calc: np.ndarray
    stats: dict
    names: list
    values: np.ndarray
    esd: np.ndarray
    correlation: np.ndarray
    covariance: np.ndarray
    singular: list
    history: list
    seconds: float
    groups: list
    at_bounds: list = dataclasses.field(default_factory=list)  # refined parameters stopped at a bound (esd 0)

    def phase_patterns(self) -> list:
        """Each phase's contribution (no background) on the fit grid."""
        with jax.enable_x64(True):
            return [np.asarray(p) for p in self.problem._calc_parts(self.model)[1]]

    @property
    def rwp(self) -> float:
        return self.stats["rwp"]

    def parameters(self) -> dict:
        return {n: {"value": float(v), "esd": float(e)} for n, v, e in zip(self.names, self.values, self.esd)}

    def crystal(self, i: int = 0) -> Crystal:
        pm = self.problem.phases[i]
        with jax.enable_x64(True):
            return _expand_jit(pm.template, self.model["phases"][i])

    def lattice(self, i: int = 0):
        """(a, b, c, α, β, γ) and their esd's (propagated through the lattice family)."""
        pm = self.problem.phases[i]
        m = np.asarray(pm.template.lat_m, np.float64)
        free = np.asarray(pm.template.lat_free, np.float64)
        six = m @ (np.asarray(self.model["phases"][i].lattice, np.float64) * free) + np.asarray(pm.template.lat_k)
        lat_params = [p for p in self.problem.parameters if p.group == "lattice" and p.name.startswith(pm.name + ":")]
        var = np.zeros(6)
        pos = {n: k for k, n in enumerate(self.names)}
        cov_p = np.zeros((6, 6))
        for a_i, pa in enumerate(lat_params):
            for b_i, pb in enumerate(lat_params):
                if pa.name in pos and pb.name in pos:
                    cov_p[a_i, b_i] = self.covariance[pos[pa.name], pos[pb.name]]
        var = np.diag(m @ cov_p @ m.T)
        return six, np.sqrt(np.clip(var, 0, None))

    def background(self) -> np.ndarray:
        with jax.enable_x64(True):
            return np.asarray(chebyshev_background(jnp.asarray(self.problem.two_theta),
                                                   self.model["instrument"].background))

    def reflection_positions(self, i: int = 0) -> np.ndarray:
        """Peak positions (2θ, first line, zero and displacement included) of phase ``i``'s
        reflections in the fit range."""
        pm = self.problem.phases[i]
        with jax.enable_x64(True):
            t = _positions_jit(self.crystal(i), self.model["instrument"], pm.reflections,
                               self.problem.config.form_factors)
            n = pm.reflections.capacity
            pos = np.asarray(t["pos"])[:n][np.asarray(t["valid"])[:n]]
        tt = self.problem.two_theta
        return np.sort(pos[(pos >= tt[0]) & (pos <= tt[-1])])

    def lebail_reflections(self, i: int = 0) -> dict:
        """Le Bail fits: phase ``i``'s extracted intensities, one entry per reflection row in the
        fit range (arrays): ``hkl``, ``multiplicity`` (Friedel pair × merged equivalents), ``d``
        (Å), ``two_theta`` (first line, shifts included) and ``intensity`` — the row's mean
        |F|² on the scale of the fit (the simulator applies LP, multiplicity, Kα2 and profile)."""
        if not self.problem.lebail:
            raise RefinementError("lebail_reflections() needs a Le Bail fit (Problem(..., lebail=True))")
        pm = self.problem.phases[i]
        with jax.enable_x64(True):
            t = _positions_jit(self.crystal(i), self.model["instrument"], pm.reflections,
                               self.problem.config.form_factors)
            n = pm.reflections.capacity
            pos = np.asarray(t["pos"])[:n]
            ok = np.asarray(t["valid"])[:n]
            rec = np.linalg.inv(np.asarray(self.crystal(i).lattice, np.float64)).T
        hkl = np.rint(np.asarray(pm.reflections.hkl)).astype(int)
        tt = self.problem.two_theta
        keep = ok & (pos >= tt[0]) & (pos <= tt[-1])
        order = np.argsort(pos[keep], kind="stable")
        g = np.linalg.norm(hkl[keep] @ rec, axis=1)
        return {"hkl": hkl[keep][order], "multiplicity": 2 * np.asarray(pm.reflections.mask)[keep][order],
                "d": (1.0 / g)[order], "two_theta": pos[keep][order],
                "intensity": np.asarray(self.model["lebail"][i])[keep][order]}

    def weight_fractions(self) -> np.ndarray:
        """Hill–Howard: W_p = S_p (ZMV)_p / Σ S (ZMV) with ZM the cell mass (occupancy-weighted) and
        V the cell volume (the scale multiplies |F|² of one cell, no 1/V² in the model). NaN in a
        Le Bail fit (no structure, no scale)."""
        if self.problem.lebail:
            return np.full(len(self.problem.phases), np.nan)
        w = []
        for i, pm in enumerate(self.problem.phases):
            p = self.model["phases"][i]
            o = np.asarray(pm.template.site_orbit)
            mask = np.asarray(pm.template.site_mask) > 0
            occ = np.asarray(p.occupancy)[o][mask]
            masses = np.concatenate([pm.masses, np.zeros(len(np.asarray(p.occupancy)) - len(pm.masses))])[o][mask]
            cell_mass = float(np.sum(occ * masses))
            vol = float(volume(self.crystal(i).lattice))
            w.append(float(self.model["scales"][i]) * cell_mass * vol)
        w = np.asarray(w)
        return w / w.sum()
