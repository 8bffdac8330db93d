"""Data pipeline of the generator: CDVAE-format CSVs -> padded structure arrays -> powder patterns
simulated on the fly by the xtaljax simulator, with a randomised instrument and noise.

A *structure set* holds Niggli-reduced cells padded to ``max_atoms`` sites. Its reflection lists
are enumerated once on the host (the lattice of a training structure never changes), so every
training batch renders fresh patterns under ``jit``: random peak widths (Caglioti U, V, W and
Lorentzian X), zero shift, Debye–Waller B, Chebyshev background, counting noise and truncated
2θ coverage, which a fixed pre-computed pattern set cannot give.
"""

from __future__ import annotations

import csv
import dataclasses
import sys
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ..core import Crystal, Instrument, SimConfig
from ..core.pattern import reflections_for, resolve_config, simulate_kernel
from ..core.reflections import stack_reflections
from ..core.scattering import scatterer_index

#: Elements known to the embedding tables (atomic numbers 1..MAX_Z).
MAX_Z = 100


@dataclasses.dataclass(frozen=True)
class PatternGrid:
    """The model's pattern axis: ``n_points`` 2θ values (degrees) from ``two_theta_min`` to
    ``two_theta_max`` for the lab line ``anode`` (Kα1 + Kα2)."""

    two_theta_min: float = 10.0
    two_theta_max: float = 80.0
    n_points: int = 1024
    anode: str = "Cu"

    @property
    def two_theta(self) -> np.ndarray:
        return np.linspace(self.two_theta_min, self.two_theta_max, self.n_points)

    def instrument(self, **kw) -> Instrument:
        return Instrument.lab(self.anode, **kw)

    def scaled_instrument(self, width: float, lorentz: float, zero: float = 0.0) -> Instrument:
        """The lab instrument with its Caglioti U, V, W multiplied by ``width``, Lorentzian X and
        zero shift set: the instruments of :class:`Augment` (and of the evaluation patterns)."""
        base = self.instrument()
        return base.replace(u=base.u * width, v=base.v * width, w=base.w * width, x=lorentz, zero=zero)

    @property
    def wavelength(self) -> float:
        """Kα1 wavelength in Å (the line used to convert 2θ between wavelengths)."""
        return float(np.asarray(self.instrument().wavelengths)[0])


@dataclasses.dataclass
class StructureSet:
    """Padded arrays of ``n`` structures (host NumPy).

    ``z`` (n, N) atomic numbers (0 = padding), ``species`` (n, N) simulator scatterer indices,
    ``frac`` (n, N, 3) fractional coordinates in [0, 1), ``lattice`` (n, 3, 3) row vectors (Å),
    ``params`` (n, 6) a, b, c (Å), α, β, γ (degrees), ``mask`` (n, N), ``ids``, ``structures``
    (the Niggli-reduced pymatgen structures, for evaluation).
    """

    z: np.ndarray
    species: np.ndarray
    frac: np.ndarray
    lattice: np.ndarray
    params: np.ndarray
    mask: np.ndarray
    ids: list
    structures: list

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def max_atoms(self) -> int:
        return self.z.shape[1]

    def subset(self, idx) -> "StructureSet":
        idx = np.asarray(idx)
        return StructureSet(self.z[idx], self.species[idx], self.frac[idx], self.lattice[idx], self.params[idx],
                            self.mask[idx], [self.ids[i] for i in idx], [self.structures[i] for i in idx])


def read_cdvae_csv(path, *, split: str | None = None, limit: int | None = None) -> list[tuple[str, object]]:
    """Rows of a CDVAE-format CSV (``material_id``, ``cif``, ...) as ``(id, pymatgen Structure)``.

    ``split`` keeps rows whose ``split`` column equals it (the MP-20 subset marks the official
    split per row); files without that column are taken whole. Raises ``ValueError`` (one line)
    for a missing file, a file without ``cif``/``material_id`` columns or an unreadable CIF.
    """
    from pymatgen.core import Structure

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    out = []
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        cols = reader.fieldnames or []
        if "cif" not in cols or "material_id" not in cols:
            raise ValueError(f"{path}: not a CDVAE-format CSV (needs 'material_id' and 'cif' columns, has {cols[:6]})")
        if split is not None and "split" not in cols:
            raise ValueError(f"{path}: has no 'split' column to select split={split!r}")
        for row in reader:
            if split is not None and row["split"] != split:
                continue
            try:
                with warnings.catch_warnings():  # "fractional coordinates rounded" on most rows
                    warnings.simplefilter("ignore")
                    s = Structure.from_str(row["cif"], fmt="cif")
            except Exception as exc:  # noqa: BLE001 - pymatgen raises many types
                raise ValueError(f"{path}: row {row['material_id']}: unreadable CIF ({type(exc).__name__}: {exc})") from None
            out.append((row["material_id"], s))
            if limit is not None and len(out) >= limit:
                break
    if not out:
        raise ValueError(f"{path}: no structures" + (f" with split={split!r}" if split else ""))
    return out


def niggli(structure):
    """Niggli-reduced cell with fractional coordinates wrapped into [0, 1)."""
    s = structure.get_reduced_structure(reduction_algo="niggli")
    s = s.copy()
    for i in range(len(s)):
        s[i] = s[i].species, np.mod(s[i].frac_coords, 1.0)
    return s


def build_set(rows, max_atoms: int | None = None) -> StructureSet:
    """Pad ``(id, Structure)`` rows into a :class:`StructureSet` (Niggli-reduced, ordered sites).

    Structures must be ordered (one element per site). ``max_atoms`` defaults to the largest cell;
    a larger cell raises ``ValueError``."""
    structs, ids = [], []
    for mid, s in rows:
        if not s.is_ordered:
            raise ValueError(f"structure {mid}: disordered sites are not supported by the generator")
        structs.append(niggli(s))
        ids.append(mid)
    n_max = max(len(s) for s in structs)
    max_atoms = max_atoms or n_max
    if n_max > max_atoms:
        raise ValueError(f"a structure has {n_max} atoms, more than max_atoms={max_atoms}")
    n = len(structs)
    z = np.zeros((n, max_atoms), np.int32)
    species = np.zeros((n, max_atoms), np.int32)
    frac = np.zeros((n, max_atoms, 3))
    mask = np.zeros((n, max_atoms))
    lat = np.zeros((n, 3, 3))
    params = np.zeros((n, 6))
    for i, s in enumerate(structs):
        k = len(s)
        z[i, :k] = [site.specie.Z for site in s]
        species[i, :k] = [scatterer_index(site.specie.symbol) for site in s]
        frac[i, :k] = s.frac_coords
        mask[i, :k] = 1.0
        lat[i] = s.lattice.matrix
        params[i] = s.lattice.parameters
    if z.max() > MAX_Z:
        raise ValueError(f"element with Z={z.max()} beyond the model's table (Z <= {MAX_Z})")
    return StructureSet(z, species, frac, lat, params, mask, ids, structs)


def load_set(path, *, split: str | None = None, limit: int | None = None, max_atoms: int | None = None) -> StructureSet:
    """:func:`read_cdvae_csv` + :func:`build_set`."""
    return build_set(read_cdvae_csv(path, split=split, limit=limit), max_atoms=max_atoms)


def scatterer_indices(z) -> np.ndarray:
    """Simulator scatterer indices of padded atomic numbers (0 stays 0 = padding)."""
    from pymatgen.core import Element

    z = np.asarray(z)
    table = {int(v): scatterer_index(Element.from_Z(int(v)).symbol) for v in np.unique(z) if v}
    return np.vectorize(lambda v: table.get(int(v), 0))(z).astype(np.int32)


# ----------------------------------------------------------------------------------------------
# lattice parametrisation for the flow
# ----------------------------------------------------------------------------------------------

def lattice_to_vec(params) -> np.ndarray:
    """(…, 6) a, b, c, α, β, γ -> log a, log b, log c, α, β, γ in radians."""
    if isinstance(params, jax.Array):
        return jnp.concatenate([jnp.log(params[..., :3]), jnp.radians(params[..., 3:])], axis=-1)
    p = np.asarray(params, np.float64)
    return np.concatenate([np.log(p[..., :3]), np.radians(p[..., 3:])], axis=-1)


def vec_to_params(vec):
    """Inverse of :func:`lattice_to_vec` (works on NumPy and JAX arrays)."""
    xp = jnp if isinstance(vec, jax.Array) else np
    return xp.concatenate([xp.exp(vec[..., :3]), xp.degrees(vec[..., 3:])], axis=-1)


def params_to_matrix(params):
    """(…, 6) lattice parameters -> (…, 3, 3) row vectors in the convention of
    ``pymatgen.core.Lattice.from_parameters`` (c along z); differentiable (JAX)."""
    a, b, c = params[..., 0], params[..., 1], params[..., 2]
    al, be, ga = (jnp.radians(params[..., k]) for k in (3, 4, 5))
    ca, cb, cg = jnp.cos(al), jnp.cos(be), jnp.cos(ga)
    sb = jnp.sin(be)
    val = jnp.clip((ca * cb - cg) / (jnp.sin(al) * sb), -1.0, 1.0)
    gstar = jnp.arccos(val)
    z0 = jnp.zeros_like(a)
    va = jnp.stack([a * sb, z0, a * cb], -1)
    vb = jnp.stack([-b * jnp.sin(al) * jnp.cos(gstar), b * jnp.sin(al) * jnp.sin(gstar), b * ca], -1)
    vc = jnp.stack([z0, z0, c], -1)
    return jnp.stack([va, vb, vc], -2)


# ----------------------------------------------------------------------------------------------
# patterns on the fly
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Augment:
    """Ranges of the randomised instrument/sample (uniform unless said otherwise).

    ``width``: factor on the default Caglioti U, V, W (FWHM scales with its square root);
    ``lorentz``: Lorentzian X (degrees); ``zero``: ± zero shift (degrees); ``b_iso``: Debye–Waller
    B (Å²); ``background``: constant background as a fraction of the strongest peak; ``counts``:
    log-uniform peak counts for Poisson-like noise (Gaussian approximation); ``truncate``:
    probability of blanking a random low-angle (to +10°) and high-angle (to -15°) stretch, as on
    a pattern measured over a shorter range."""

    width: tuple = (0.5, 6.0)
    lorentz: tuple = (0.0, 0.04)
    zero: float = 0.04
    b_iso: tuple = (0.2, 1.5)
    background: tuple = (0.0, 0.08)
    counts: tuple = (300.0, 1e5)
    truncate: float = 0.25

    @classmethod
    def off(cls) -> "Augment":
        """Fixed mid-range settings and no noise (evaluation patterns of the test set)."""
        return cls(width=(2.0, 2.0), lorentz=(0.01, 0.01), zero=0.0, b_iso=(0.5, 0.5), background=(0.0, 0.0),
                   counts=(0.0, 0.0), truncate=0.0)


class PatternSource:
    """Renders patterns of the structures of a :class:`StructureSet` on a :class:`PatternGrid`.

    The reflection lists (common capacity) and the simulator config (window wide enough for the
    broadest augmented profile) are prepared once; :meth:`render` is jitted over a batch of
    indices and a PRNG key."""

    def __init__(self, data: StructureSet, grid: PatternGrid, augment: Augment = Augment()):
        self.grid, self.augment = grid, augment
        tt = grid.two_theta
        wide = grid.scaled_instrument(augment.width[1], augment.lorentz[1], augment.zero)
        self.config = resolve_config(SimConfig(asymmetry="none"), wide, tt)
        refls = []
        for i in range(len(data)):
            k = int(data.mask[i].sum())
            c = Crystal.create(data.lattice[i], data.frac[i, :k], data.species[i, :k], pad_to=0)
            refls.append(reflections_for(c, wide, tt, self.config))
        cap = max(r.capacity for r in refls)
        self.refl = stack_reflections(refls, cap)
        dt = jnp.zeros(()).dtype
        self.crystals = Crystal(lattice=jnp.asarray(data.lattice, dt), frac=jnp.asarray(data.frac, dt),
                                species=jnp.asarray(data.species), occupancy=jnp.asarray(data.mask, dt),
                                b_iso=jnp.zeros(data.mask.shape, dt), mask=jnp.asarray(data.mask, dt))
        self.base = grid.instrument()
        self.two_theta = jnp.asarray(tt, dt)
        self._render = jax.jit(self._render_impl)

    def render(self, idx, key) -> jax.Array:
        """(B, n_points) patterns scaled to a maximum of 1 for structures ``idx``."""
        return self._render(jnp.asarray(idx), key)

    def _render_impl(self, idx, key):
        aug = self.augment
        b = idx.shape[0]
        ks = jax.random.split(key, 9)
        crys = jax.tree.map(lambda a: a[idx], self.crystals)
        refl = jax.tree.map(lambda a: a[idx], self.refl)
        bi = jax.random.uniform(ks[0], (b, 1), minval=aug.b_iso[0], maxval=aug.b_iso[1])
        crys = dataclasses.replace(crys, b_iso=crys.mask * bi)
        width = jax.random.uniform(ks[1], (b,), minval=aug.width[0], maxval=aug.width[1])
        ins = jax.tree.map(lambda a: jnp.broadcast_to(a, (b,) + a.shape), self.base)
        ins = dataclasses.replace(
            ins, u=ins.u * width, v=ins.v * width, w=ins.w * width,
            x=jax.random.uniform(ks[2], (b,), minval=aug.lorentz[0], maxval=aug.lorentz[1]),
            zero=jax.random.uniform(ks[3], (b,), minval=-aug.zero, maxval=aug.zero) if aug.zero > 0 else ins.zero)
        y, _ = jax.vmap(simulate_kernel, in_axes=(0, 0, None, 0, None))(crys, ins, self.two_theta, refl, self.config)
        y = y / jnp.maximum(jnp.max(y, axis=1, keepdims=True), 1e-12)
        bg = jax.random.uniform(ks[4], (b, 1), minval=aug.background[0], maxval=aug.background[1])
        y = y + bg
        if aug.counts[1] > 0:
            lc = jax.random.uniform(ks[5], (b, 1), minval=np.log(aug.counts[0]), maxval=np.log(aug.counts[1]))
            n = jnp.exp(lc)
            y = y + jnp.sqrt(jnp.maximum(y, 0.0) / n) * jax.random.normal(ks[6], y.shape)
        if aug.truncate > 0:
            t = self.two_theta
            lo = self.grid.two_theta_min + 10.0 * jax.random.uniform(ks[7], (b, 1))
            hi = self.grid.two_theta_max - 15.0 * jax.random.uniform(ks[8], (b, 1))
            cut = jax.random.bernoulli(ks[7], aug.truncate, (b, 1))
            keep = jnp.where(cut, (t[None, :] >= lo) & (t[None, :] <= hi), True)
            y = jnp.where(keep, y, 0.0)
        return normalise(y)


def pattern_mismatch(frac, lattice, species, mask, y_obs, refl, instrument, two_theta, config):
    """1 − cos(simulated, observed) for one P1 candidate (B = 0.5 Å² on every atom): the pattern
    loss of XRD guidance and of the polish. Differentiable in ``frac`` and ``lattice``."""
    c = Crystal(lattice=lattice, frac=frac, species=species, occupancy=mask, b_iso=0.5 * mask, mask=mask)
    y, _ = simulate_kernel(c, instrument, two_theta, refl, config)
    return 1.0 - jnp.dot(y, y_obs) / jnp.maximum(jnp.linalg.norm(y) * jnp.linalg.norm(y_obs), 1e-12)


def normalise(y):
    """Pattern scaling used everywhere the model sees a pattern: clip at 0, divide by the maximum."""
    y = jnp.maximum(y, 0.0)
    return y / jnp.maximum(jnp.max(y, axis=-1, keepdims=True), 1e-12)


def to_model_grid(two_theta, intensity, wavelength: float, grid: PatternGrid, *, min_coverage: float = 0.6):
    """Map a measured pattern (2θ in degrees at ``wavelength`` Å) onto the model's grid: 2θ is
    converted through d-spacing to the model's Kα1 wavelength, the intensity interpolated
    linearly, points outside the measured range set to 0, the result normalised.

    Raises ``ValueError`` when the converted pattern covers less than ``min_coverage`` of the
    model's 2θ range (a different wavelength or range than the model was trained for)."""
    tt = np.asarray(two_theta, np.float64)
    y = np.asarray(intensity, np.float64)
    if tt.ndim != 1 or tt.size < 2 or tt.shape != y.shape:
        raise ValueError("pattern needs matching 1-D 2θ and intensity arrays with at least 2 points")
    if not (np.all(np.isfinite(tt)) and np.all(np.isfinite(y))):
        raise ValueError("pattern contains NaN or infinite values")
    if not (0 < wavelength < 20):
        raise ValueError(f"wavelength {wavelength} Å is not a plausible X-ray wavelength")
    s = np.sin(np.radians(tt / 2)) * grid.wavelength / wavelength
    ok = s < 1.0
    tt_m = np.degrees(2 * np.arcsin(np.clip(s, 0, 1)))
    g = grid.two_theta
    lo, hi = (tt_m[ok].min(), tt_m[ok].max()) if ok.any() else (np.inf, -np.inf)
    inside = (g >= lo) & (g <= hi)
    cover = inside.mean()
    if cover < min_coverage:
        raise ValueError(
            f"pattern covers {cover:.0%} of the model's range (2θ {grid.two_theta_min:g}–{grid.two_theta_max:g}° at "
            f"{grid.wavelength:.4f} Å; the pattern spans {lo:.1f}–{hi:.1f}° after conversion from {wavelength:.4f} Å); "
            f"at least {min_coverage:.0%} is needed")
    out = np.where(inside, np.interp(g, tt_m[ok], y[ok]), 0.0)
    out = np.maximum(out, 0.0)
    if out.max() <= 0:
        raise ValueError("pattern has no positive intensity in the model's range")
    return out / out.max()
