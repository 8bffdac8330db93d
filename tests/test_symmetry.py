"""Symmetry templates: expansion, gradients through the simulator, batching, errors."""

import dataclasses

import numpy as np
import pytest

import jax
import jax.numpy as jnp
import xtaljax as xj
from xtaljax.io import to_pymatgen
from xtaljax.io.spacegroups import stack_templates, symmetrize

FAP = "xtaljax/data/fap.cif"


def _fap():
    from pathlib import Path

    return symmetrize(str(Path(__file__).resolve().parents[1] / FAP), return_info=True)


def test_fap_template_matches_gsas_parametrisation():
    t, p, info = _fap()
    assert info.space_group == 176 and info.crystal_system == "hexagonal"
    assert info.n_lattice == 2 and info.n_free_coords == 12  # GSAS refines 12 coordinates for FAP
    assert sorted(s.multiplicity for s in info.sites) == [2, 4, 6, 6, 6, 6, 12]
    assert {s.wyckoff for s in info.sites} == {"a", "f", "h", "i"}
    c = t.expand(p)
    assert int(c.mask.sum()) == 42
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from xtaljax.io import load_structure

    assert StructureMatcher(ltol=1e-4, stol=1e-4, angle_tol=1e-3).fit(load_structure(FAP), to_pymatgen(c))


def test_any_params_keep_the_space_group():
    import spglib

    t, p, _ = _fap()
    rng = np.random.default_rng(0)
    for _ in range(3):
        q = dataclasses.replace(p, coords=p.coords + 0.03 * rng.normal(size=p.coords.shape),
                                lattice=p.lattice * (1 + 0.02 * rng.normal(size=6)))
        c = t.expand(q)
        m = np.asarray(c.mask) > 0
        ds = spglib.get_symmetry_dataset((np.asarray(c.lattice), np.asarray(c.frac)[m], np.asarray(c.species)[m]), symprec=1e-3)
        assert ds.number == 176


def test_gradients_through_expand_and_simulate(x64):
    from test_grads_invariance import check_field_grads

    t, p, _ = symmetrize(_path(), return_info=True)
    inst = xj.Instrument.cu_kalpha()
    tt = np.arange(20.0, 40.0, 0.05)
    c0 = t.expand(p)
    cfg = xj.resolve_config(xj.SimConfig(render="dense", autodiff="forward"), inst, tt)
    refl = xj.reflections_for(c0, inst, tt, cfg)
    w = jnp.asarray(np.random.default_rng(3).normal(size=tt.size))
    p = dataclasses.replace(p, b_iso=p.b_iso + 0.3)

    def loss(d):
        y = xj.simulate(t.expand(dataclasses.replace(p, **d)), inst, jnp.asarray(tt), refl, cfg)
        return jnp.sum(w * y) / 1e4

    used = {"lattice": p.lattice, "coords": p.coords, "b_iso": p.b_iso, "occupancy": p.occupancy}
    check_field_grads(loss, used)
    g = jax.grad(loss)(used)
    dof = t.dof
    gc = np.asarray(g["coords"])
    assert np.all(np.isfinite(gc))
    # unused coordinate slots (special positions: F at 2a has none) get exactly zero gradient
    unused = np.arange(3)[None, :] >= dof[:, None]
    assert np.all(gc[unused] == 0.0) and np.any(gc[~unused] != 0.0)
    assert np.all(np.asarray(g["lattice"])[2:] == 0.0)  # hexagonal: 2 lattice parameters


def _path():
    from pathlib import Path

    return str(Path(__file__).resolve().parents[1] / FAP)


def test_vmap_over_mixed_space_groups_and_multistart():
    from pymatgen.core import Lattice, Structure

    a = symmetrize(Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]))
    b = symmetrize(Structure.from_spacegroup("P6_3mc", Lattice.hexagonal(3.25, 5.21), ["Zn", "O"], [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.38]]))
    c = symmetrize(_path())
    ts, ps = stack_templates([a, b, c])
    batch = jax.jit(jax.vmap(xj.expand))(ts, ps)
    for i, (t, p) in enumerate((a, b, c)):
        single = t.expand(p)
        n = int(single.mask.sum())
        got = np.asarray(batch.frac[i])[np.asarray(batch.mask[i]) > 0]
        np.testing.assert_allclose(got, np.asarray(single.frac)[: n], atol=1e-6)
        np.testing.assert_allclose(np.asarray(batch.lattice[i]), np.asarray(single.lattice), atol=1e-5)
    # many starts of one template in one call
    t, p = c
    starts = jax.vmap(lambda k: dataclasses.replace(p, coords=p.coords + 0.01 * jax.random.normal(k, p.coords.shape)))(
        jax.random.split(jax.random.PRNGKey(0), 16))
    crystals = jax.vmap(t.expand)(starts)
    assert crystals.frac.shape[0] == 16 and bool(jnp.all(jnp.isfinite(crystals.frac)))


def test_project_lattice_onto_family():
    t, p, _ = _fap()
    six = jnp.asarray([9.30, 9.44, 6.90, 90.5, 89.0, 120.3])
    q = xj.project_lattice(t, six)
    assert float(q[0]) == pytest.approx(9.37, abs=1e-5) and float(q[1]) == pytest.approx(6.90, abs=1e-5)
    np.testing.assert_allclose(np.asarray(t.lattice_parameters(dataclasses.replace(p, lattice=q)))[3:], [90, 90, 120], atol=1e-5)


def test_bad_params_and_structures():
    from pymatgen.core import Lattice, Structure

    t, p, _ = _fap()
    with pytest.raises(ValueError, match=r"params.coords has shape \(3, 3\)"):
        t.expand(dataclasses.replace(p, coords=jnp.zeros((3, 3))))
    with pytest.raises(ValueError, match="params.lattice"):
        jax.jit(t.expand)(dataclasses.replace(p, lattice=jnp.zeros(2)))
    dis = Structure(Lattice.cubic(4.0), [{"Na": 0.5, "K": 0.5}, "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    with pytest.raises(ValueError, match="disordered"):
        symmetrize(dis)
    with pytest.raises(ValueError, match="symprec must be positive"):
        symmetrize(_path(), symprec=0)


def test_simulate_of_expand_under_jit_equals_simulate_of_expanded_crystal():
    t, p, _ = _fap()
    c = t.expand(p)
    inst = xj.Instrument.cu_kalpha()
    tt = np.arange(15.0, 60.0, 0.02)
    y1 = xj.simulate(c, inst, tt)
    cfg = xj.resolve_config(None, inst, tt)
    refl = xj.reflections_for(c, inst, tt, cfg)
    y2 = jax.jit(lambda q: xj.simulate(t.expand(q), inst, jnp.asarray(tt, jnp.float32), refl, cfg))(p)
    np.testing.assert_allclose(np.asarray(y1), np.asarray(y2), rtol=1e-5, atol=1e-5 * float(jnp.max(y1)))


def test_rhombohedral_family_table():
    """R groups on rhombohedral axes: a = b = c and α = β = γ are the two free parameters; the
    least-squares projection of a distorted cell averages them. (``symmetrize`` itself returns
    spglib's standard setting, hexagonal axes, for R groups.)"""
    from xtaljax.core.symmetry import lattice_family_tables

    m, k, n = lattice_family_tables("trigonal", rhombohedral=True)
    assert n == 2
    six = np.array([5.01, 5.03, 4.99, 55.2, 55.0, 54.9])
    p = np.linalg.lstsq(m[:, :n], six - k, rcond=None)[0]
    np.testing.assert_allclose(m[:, :n] @ p + k, [5.01, 5.01, 5.01, 55.033333, 55.033333, 55.033333], atol=1e-6)
