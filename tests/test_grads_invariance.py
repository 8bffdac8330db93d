"""Gradients (check_grads), padding, invariances, batching, jit and retracing."""

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
from conftest import low_symmetry, nacl

import jax
import jax.numpy as jnp
import xtaljax as xj
from jax.test_util import check_grads
from xtaljax.io import read_structure

TT = np.arange(15.0, 60.0, 0.02)
TT_GRAD = np.arange(15.0, 45.0, 0.05)  # shorter grid for the finite-difference checks


def _setup(inst_kw=None, pad_to=8):
    c = read_structure(low_symmetry(), b_iso=0.5, pad_to=pad_to)
    c = dataclasses.replace(c, occupancy=c.occupancy * jnp.where(c.mask > 0, 0.9, 0.0))
    inst = xj.Instrument.cu_kalpha(**(inst_kw or {}))
    tt = jnp.asarray(TT_GRAD)
    cfg = xj.resolve_config(xj.SimConfig(render="dense", autodiff="forward"), inst, TT_GRAD)
    refl = xj.reflections_for(c, inst, TT_GRAD, cfg)
    return c, inst, tt, cfg, refl


def _loss_fn(inst, tt, refl, cfg, weights):
    def loss(crystal, instrument=inst):
        y = xj.simulate(crystal, instrument, tt, refl, cfg)
        return jnp.sum(weights * y) / 1e4
    return loss


def check_field_grads(loss, params: dict, eps: float = 1e-6, rtol: float = 1e-5):
    """Per-field gradient check, order 1, both modes (what jax.test_util.check_grads does), with
    one compilation for all fields: forward-mode JVP and reverse-mode gradient along a random
    direction in each field are compared with a central finite difference."""
    loss_j = jax.jit(loss)
    grad_j = jax.jit(jax.grad(loss))
    jvp_j = jax.jit(lambda p, v: jax.jvp(loss, (p,), (v,))[1])
    g_rev = grad_j(params)
    rng = np.random.default_rng(0)
    for name, x in params.items():
        d = jnp.asarray(rng.normal(size=np.shape(x)))
        d = d / jnp.linalg.norm(d)
        tangent = {k: (d if k == name else jnp.zeros_like(v)) for k, v in params.items()}
        plus = {**params, name: x + eps * d}
        minus = {**params, name: x - eps * d}
        num = float((loss_j(plus) - loss_j(minus)) / (2 * eps))
        # round-off of the central difference: a few ulp of the loss value over 2 eps
        tol_abs = 1e-9 + 50 * np.finfo(np.float64).eps * abs(float(loss_j(params))) / eps
        fwd = float(jvp_j(params, tangent))
        rev = float(jnp.vdot(g_rev[name], d))
        assert np.isfinite(fwd) and np.isfinite(rev), name
        assert abs(num) > 1e-8, f"{name}: pattern does not depend on it"
        assert fwd == pytest.approx(num, rel=rtol, abs=tol_abs), f"{name}: jvp {fwd} vs finite difference {num}"
        assert rev == pytest.approx(num, rel=rtol, abs=tol_abs), f"{name}: grad {rev} vs finite difference {num}"
        assert rev == pytest.approx(fwd, rel=1e-9, abs=1e-12), f"{name}: forward and reverse mode disagree"


def test_grads_crystal_fields(x64):
    """Lattice, coordinates, occupancy and B: JVP, VJP and finite differences agree."""
    c, inst, tt, cfg, refl = _setup(dict(asym_sl=0.02, asym_hl=0.01))
    cfg = dataclasses.replace(cfg, n_fcj=8)
    w = jnp.asarray(np.random.default_rng(0).normal(size=TT_GRAD.size))
    names = ("lattice", "frac", "occupancy", "b_iso")

    def loss(p):
        y = xj.simulate(dataclasses.replace(c, **p), inst, tt, refl, cfg)
        return jnp.sum(w * y) / 1e4

    check_field_grads(loss, {n: getattr(c, n) for n in names})
    # the default autodiff="reverse" (hand-written structure-factor VJP) gives the same gradient
    cfg_r = dataclasses.replace(cfg, autodiff="reverse")
    p0 = {n: getattr(c, n) for n in names}
    g_r = jax.grad(lambda p: jnp.sum(w * xj.simulate(dataclasses.replace(c, **p), inst, tt, refl, cfg_r)) / 1e4)(p0)
    g_f = jax.grad(loss)(p0)
    for n in names:
        np.testing.assert_allclose(np.asarray(g_r[n]), np.asarray(g_f[n]), rtol=1e-9, atol=1e-12, err_msg=n)
    # jax.test_util.check_grads itself on the coordinates (fwd and rev, second order too)
    check_grads(lambda f: loss({**{n: getattr(c, n) for n in names}, "frac": f}), (c.frac,), order=2,
                modes=("fwd", "rev"), atol=1e-3, rtol=1e-3, eps=1e-5)


INSTRUMENT_FIELDS = ["wavelengths", "line_weights", "zero", "displacement", "radius", "transparency", "polarization",
                     "u", "v", "w", "p", "x", "y", "inv_size", "strain", "asym_sl", "asym_hl", "scale",
                     "background", "po_ratio", "po_axis", "dispersion"]


def test_grads_every_instrument_field(x64):
    kw = dict(asym_sl=0.02, asym_hl=0.01, inv_size=1e-3, strain=1e-3, p=1e-5, displacement=0.05,
              transparency=0.01, po_ratio=0.9, po_axis=(1.0, 0.5, 0.2), background=(3.0, 1.0, 0.5), zero=0.01)
    c, inst, tt, cfg, refl = _setup(kw)
    cfg = dataclasses.replace(cfg, n_fcj=8, form_factors="itc")  # itc: f', f'' (dispersion) enter
    w = jnp.asarray(np.random.default_rng(1).normal(size=TT_GRAD.size))
    assert set(INSTRUMENT_FIELDS) == {f.name for f in dataclasses.fields(xj.Instrument)}

    def loss(p):
        y = xj.simulate(c, dataclasses.replace(inst, **p), tt, refl, cfg)
        return jnp.sum(w * y) / 1e4

    check_field_grads(loss, {n: getattr(inst, n) for n in INSTRUMENT_FIELDS})


def test_fused_window_kernel_both_autodiff_modes(x64):
    """The window renderer without asymmetry runs a fused kernel with a hand-written derivative:
    a custom JVP (autodiff='forward') checked against finite differences in both modes, and a
    custom VJP (autodiff='reverse', the default) whose gradient must equal it."""
    kw = dict(inv_size=1e-3, strain=1e-3, displacement=0.05, zero=0.01, background=(3.0, 1.0))
    c, inst, tt, _, refl = _setup(kw)
    w = jnp.asarray(np.random.default_rng(3).normal(size=TT_GRAD.size))
    cfg_f = xj.resolve_config(xj.SimConfig(autodiff="forward"), inst, TT_GRAD)
    cfg_r = dataclasses.replace(cfg_f, autodiff="reverse")
    assert cfg_f.render == "window" and cfg_f.asymmetry == "none" and cfg_f.window < TT_GRAD.size
    names = ("lattice", "frac", "occupancy", "b_iso")
    inst_names = ("zero", "displacement", "u", "v", "w", "x", "y", "inv_size", "strain", "scale", "wavelengths")

    def make_loss(cfg):
        def loss(p):
            cr = dataclasses.replace(c, **{k: v for k, v in p.items() if k in names})
            ins = dataclasses.replace(inst, **{k: v for k, v in p.items() if k not in names})
            return jnp.sum(w * xj.simulate(cr, ins, tt, refl, cfg)) / 1e4
        return loss

    params = {**{n: getattr(c, n) for n in names}, **{n: getattr(inst, n) for n in inst_names}}
    check_field_grads(make_loss(cfg_f), params)
    g_f = jax.grad(make_loss(cfg_f))(params)
    g_r = jax.jit(jax.grad(make_loss(cfg_r)))(params)
    for n in params:
        np.testing.assert_allclose(np.asarray(g_r[n]), np.asarray(g_f[n]), rtol=1e-9, atol=1e-12, err_msg=n)
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(make_loss(cfg_r), (params,), (params,))
    with pytest.raises(ValueError, match="autodiff"):
        xj.SimConfig(autodiff="both")


def test_padded_rows_get_exactly_zero_finite_gradient(x64):
    c, inst, tt, cfg, refl = _setup(pad_to=16)
    w = jnp.asarray(np.random.default_rng(2).normal(size=TT_GRAD.size))
    loss = _loss_fn(inst, tt, refl, cfg, w)
    names = ("frac", "occupancy", "b_iso")
    grads = jax.grad(lambda a: loss(dataclasses.replace(c, **dict(zip(names, a)))))(tuple(getattr(c, n) for n in names))
    pad = np.asarray(c.mask) == 0
    assert pad.sum() == 11
    for name, arr in zip(names, grads):
        arr = np.asarray(arr)
        assert np.all(np.isfinite(arr)), name
        assert np.all(arr[pad] == 0.0), name
        assert np.any(arr[~pad] != 0.0), name
    # the window renderer too, with float32 (the production dtype)
    with jax.enable_x64(False):
        c32 = read_structure(low_symmetry(), pad_to=16)
        inst32 = xj.Instrument.cu_kalpha()
        cfg32 = xj.resolve_config(None, inst32, TT)
        r32 = xj.reflections_for(c32, inst32, TT, cfg32)
        g32 = jax.grad(lambda f: jnp.sum(xj.simulate(dataclasses.replace(c32, frac=f), inst32,
                                                     jnp.asarray(TT, jnp.float32), r32, cfg32)))(c32.frac)
        assert np.all(np.isfinite(np.asarray(g32)))
        assert np.all(np.asarray(g32)[np.asarray(c32.mask) == 0] == 0.0)


def test_invariances(x64):
    s = low_symmetry()
    inst = xj.Instrument.cu_kalpha()
    base = xj.simulate(read_structure(s), inst, TT)
    scale = float(jnp.max(base))

    def close(y, factor=1.0):
        np.testing.assert_allclose(np.asarray(y), factor * np.asarray(base), atol=1e-9 * scale * factor)

    close(xj.simulate(read_structure(s, pad_to=64), inst, TT))  # padding size
    perm = s.copy()
    perm.sort(key=lambda site: -site.frac_coords[0])  # atom order
    close(xj.simulate(read_structure(perm), inst, TT))
    shifted = s.copy()
    shifted.translate_sites([0], [1.0, -2.0, 3.0], frac_coords=True, to_unit_cell=False)  # lattice translation
    close(xj.simulate(read_structure(shifted), inst, TT))
    origin = s.copy()
    origin.translate_sites(list(range(len(s))), [0.137, 0.25, -0.41], frac_coords=True)  # origin shift
    close(xj.simulate(read_structure(origin), inst, TT))
    sup = s.copy()
    sup.make_supercell([2, 1, 1])  # supercell: F doubles on the sublattice, so I x 4
    close(xj.simulate(read_structure(sup), inst, TT), 4.0)


def test_vmap_equals_loop_and_jit_equals_eager(x64):
    from pymatgen.core import Lattice, Structure

    structures = [nacl(), low_symmetry(1), Structure(Lattice.hexagonal(3.2, 5.2), ["Zn", "O"], [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.38]])]
    crystals = [read_structure(s) for s in structures]
    inst = xj.Instrument.cu_kalpha()
    cb, rb, cfg = xj.prepare_batch(crystals, inst, TT)
    yb, info = xj.simulate_batch(cb, inst, jnp.asarray(TT), rb, cfg)
    assert yb.shape == (3, TT.size) and not bool(jnp.any(info["overflow"]))
    for i, c in enumerate(crystals):
        np.testing.assert_allclose(np.asarray(yb[i]), np.asarray(xj.simulate(c, inst, TT, config=cfg)), rtol=1e-9,
                                   atol=1e-9 * float(jnp.max(yb[i])))
    # vmap over instruments
    insts = jax.tree_util.tree_map(lambda *x: jnp.stack(x), *[inst.replace(zero=z) for z in (0.0, 0.1, -0.1)])
    yi, _ = xj.simulate_batch(cb, insts, jnp.asarray(TT), rb, cfg, batched_instrument=True)
    np.testing.assert_allclose(np.asarray(yi[1]), np.asarray(xj.simulate(crystals[1], inst.replace(zero=0.1), TT, config=cfg)),
                               rtol=1e-9, atol=1e-9 * float(jnp.max(yi[1])))
    # eager (disable_jit) equals jit
    refl = xj.reflections_for(crystals[1], inst, TT, cfg)
    y_jit = xj.simulate(crystals[1], inst, TT, refl, cfg)
    with jax.disable_jit():
        y_eager = xj.simulate(crystals[1], inst, TT, refl, cfg)
    np.testing.assert_allclose(np.asarray(y_jit), np.asarray(y_eager), rtol=1e-9, atol=1e-9 * float(jnp.max(y_jit)))


def test_new_instrument_values_do_not_retrace():
    from xtaljax.core.pattern import _peaks_kernel

    c = read_structure(nacl())
    inst = xj.Instrument.cu_kalpha()
    cfg = xj.resolve_config(None, inst, TT)
    refl = xj.reflections_for(c, inst, TT, cfg)
    tt = jnp.asarray(TT, jnp.float32)
    xj.simulate(c, inst, tt, refl, cfg)
    n0 = _peaks_kernel._cache_size()
    for z in (0.01, 0.02):
        xj.simulate(c, inst.replace(zero=z, u=3e-4, scale=2.0, wavelengths=jnp.asarray([1.5, 1.51])), tt, refl, cfg)
    xj.simulate(dataclasses.replace(c, frac=c.frac + 0.01), inst, tt, refl, cfg)
    assert _peaks_kernel._cache_size() == n0


def test_float32_agrees_with_float64():
    s = low_symmetry()
    inst_kw = dict(asym_sl=0.01, asym_hl=0.01)
    y32 = np.asarray(xj.simulate(read_structure(s), xj.Instrument.cu_kalpha(**inst_kw), TT))
    with jax.enable_x64(True):
        y64 = np.asarray(xj.simulate(read_structure(s), xj.Instrument.cu_kalpha(**inst_kw), TT))
    assert y32.dtype == np.float32 and y64.dtype == np.float64
    # float32 rounds 2θ to ~4e-6° near 60°; on a 0.05°-wide flank that is ~2e-4 of the peak maximum
    assert np.max(np.abs(y32 - y64)) / np.max(y64) < 1e-3
    assert np.sum(y32) / np.sum(y64) == pytest.approx(1.0, abs=1e-5)


def test_overflow_flag_when_lattice_expands(x64):
    c = read_structure(nacl())
    inst = xj.Instrument.cu_kalpha()
    cfg = xj.resolve_config(None, inst, TT)
    refl = xj.reflections_for(c, inst, TT, cfg, margin=0.0)
    _, info = xj.simulate(c, inst, TT, refl, cfg, return_info=True)
    assert not bool(info["overflow"])
    big = dataclasses.replace(c, lattice=c.lattice * 1.2)
    _, info = xj.core.simulate_kernel(big, inst, jnp.asarray(TT), refl, cfg)
    assert bool(info["overflow"])
    with pytest.raises(ValueError, match="reflection capacity overflow"):
        xj.simulate(big, inst, TT, refl, cfg)


def test_core_imports_without_pymatgen_spglib_flax():
    code = ("import sys, xtaljax.core, xtaljax; "
            "bad=[m for m in sys.modules if m.split('.')[0] in ('pymatgen','spglib','flax','ase')]; "
            "assert not bad, bad; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


@pytest.mark.parametrize("autodiff", ["reverse", "forward"])
def test_species_slots_same_pattern_and_gradient(autodiff):
    """Form factors per distinct scatterer (SimConfig.species_slots) give the same pattern and
    gradients (to float32 rounding) as per atom; too few slots: one-line error on the host, NaN peaks under a trace."""
    c, inst, tt, _, refl = _setup()
    cfg = xj.resolve_config(xj.SimConfig(autodiff=autodiff), inst, TT_GRAD)
    n_sp = np.unique(np.asarray(c.species)).size  # padding rows included
    assert n_sp < c.frac.shape[0]  # atoms share elements: fewer form-factor rows
    cfg_s = dataclasses.replace(cfg, species_slots=n_sp)
    w = jnp.asarray(np.random.default_rng(4).normal(size=TT_GRAD.size))

    def loss(params, cf):
        cr = dataclasses.replace(c, **params)
        return jnp.sum(w * xj.simulate(cr, inst, tt, refl, cf)) / 1e4

    params = {"lattice": c.lattice, "frac": c.frac, "b_iso": c.b_iso}
    np.testing.assert_allclose(np.asarray(xj.simulate(c, inst, tt, refl, cfg_s)),
                               np.asarray(xj.simulate(c, inst, tt, refl, cfg)), rtol=1e-12, atol=0)
    g0 = jax.jit(jax.grad(loss), static_argnums=1)(params, cfg)
    g1 = jax.jit(jax.grad(loss), static_argnums=1)(params, cfg_s)
    for k in params:
        # the backward pass sums the per-atom form-factor cotangents per scatterer in another
        # order (float32): equal to rounding, not bitwise (a CI run saw 4e-7 relative; one
        # earlier run was bitwise equal)
        ref = np.asarray(g0[k])
        np.testing.assert_allclose(np.asarray(g1[k]), ref, rtol=5e-6, atol=1e-6 * float(np.max(np.abs(ref))),
                                   err_msg=k)
    few = dataclasses.replace(cfg, species_slots=n_sp - 1)
    with pytest.raises(ValueError, match="species_slots"):
        xj.simulate(c, inst, tt, refl, few)
    y = jax.jit(lambda cr: xj.simulate(cr, inst, tt, refl, few))(c)
    assert np.isnan(np.asarray(y)).any()
    with pytest.raises(ValueError, match="species_slots"):
        xj.SimConfig(species_slots=0)
