"""Rietveld refinement: LM engine, recovery of known parameters within esd's, singular normal
matrices, bad input, the CLI on the shipped FAP data."""

import json

import numpy as np
import pytest
from conftest import low_symmetry, nacl, shared_path, silicon

import jax
import jax.numpy as jnp
import xtaljax as xj
from xtaljax.refine import lm
from xtaljax.refine.rietveld import Problem, RefinementError

FAP_CIF = "xtaljax/data/fap.cif"


def test_lm_rosenbrock_vmapped_starts():
    """The pure LM converges on Rosenbrock from several starts at once (vmap), inside bounds."""
    def residual(z):
        return jnp.stack([10.0 * (z[1] - z[0] ** 2), 1.0 - z[0]]), jnp.array(False)

    starts = jnp.array([[-1.2, 1.0], [2.0, -1.0], [0.5, 3.0]], jnp.float32)
    run = jax.vmap(lambda z0: lm.lm_run(residual, z0, jnp.ones(2), jnp.full(2, -5.0), jnp.full(2, 5.0),
                                        max_cycles=100, tol=0.0))
    out = run(starts)
    np.testing.assert_allclose(np.asarray(out.z), 1.0, atol=1e-3)
    # a bound below the optimum stops there
    st = lm.lm_run(residual, jnp.array([-1.2, 1.0]), jnp.ones(2), jnp.array([-5.0, -5.0]), jnp.array([0.5, 5.0]),
                   max_cycles=100)
    assert float(st.z[0]) == pytest.approx(0.5, abs=1e-6)


def _synthetic(structure, truth: dict, start: dict, two_theta, seed=0, peak_counts=2e4):
    """Poisson data simulated from ``structure`` with ``truth`` applied, and the perturbed start."""
    inst = xj.Instrument.cu_kalpha(u=2e-4, v=-2e-4, w=5e-4, x=0.03, y=0.02)
    prob = Problem(two_theta, np.ones_like(two_theta), np.ones_like(two_theta), [("X", structure)], inst,
                   n_background=3)
    bkg = {"bkg0": 100.0, "bkg1": -20.0, "bkg2": 5.0}
    m_true = prob.with_values(prob.model0, {**truth, **bkg})
    with jax.enable_x64(True):
        y0 = np.asarray(jax.jit(lambda m: prob.calc(m)[0])(m_true))
    scale = peak_counts / (y0.max() - 100.0)
    m_true = prob.with_values(m_true, {"X:scale": scale})
    with jax.enable_x64(True):
        y = np.asarray(jax.jit(lambda m: prob.calc(m)[0])(m_true))
    obs = np.random.default_rng(seed).poisson(y).astype(float)
    data = Problem(two_theta, obs, np.sqrt(np.maximum(obs, 1.0)), [("X", structure)], inst, n_background=3)
    m0 = data.with_values(data.model0, {**start, "X:scale": scale * 0.7, **bkg})
    return data, m0, prob.values(m_true)


def _check_recovered(res, truth_values, names, n_sigma=4.0):
    got = res.parameters()
    for n in names:
        v, e = got[n]["value"], got[n]["esd"]
        assert e > 0, n
        assert abs(v - truth_values[n]) < n_sigma * e, f"{n}: {v} ± {e}, truth {truth_values[n]}"


@pytest.mark.parametrize("case", ["fap", "pyrite", "triclinic"])
def test_recovers_perturbed_parameters_within_esd(x64, case):
    """Simulate from a known structure, perturb lattice, free coordinates (special positions
    included), B and zero, refine: every parameter comes back within 4 esd's."""
    from pymatgen.core import Lattice, Structure

    tt = np.arange(15.0, 100.0, 0.02)
    if case == "fap":
        s, names = FAP_CIF, ["X:a", "X:c", "X:Ca1.z", "X:Ca2.x", "X:Ca2.y", "X:P1.x", "X:O3.z", "X:Ca1.B", "zero"]
        truth = {"X:Ca1.B": 0.8, "X:Ca2.B": 0.7, "X:P1.B": 0.6, "X:O1.B": 1.0, "X:O2.B": 1.0, "X:O3.B": 1.2, "X:F1.B": 2.0}
        delta = {"X:a": 0.02, "X:c": -0.015, "X:Ca1.z": 0.004, "X:Ca2.x": -0.003, "X:P1.x": 0.003,
                 "X:O3.z": -0.004, "X:Ca1.B": 0.5, "zero": 0.03}
    elif case == "pyrite":  # Pa-3: S on 8c (x, x, x), one free coordinate
        s = Structure.from_spacegroup("Pa-3", Lattice.cubic(5.417), ["Fe", "S"], [[0, 0, 0], [0.385, 0.385, 0.385]])
        names = ["X:a", "X:S1.x", "X:Fe1.B", "X:S1.B", "zero"]
        truth = {"X:Fe1.B": 0.4, "X:S1.B": 0.6}
        delta = {"X:a": 0.013, "X:S1.x": 0.005, "X:Fe1.B": 0.6, "X:S1.B": -0.4, "zero": -0.02}
    else:  # P1: six lattice parameters, every coordinate free
        s = low_symmetry()
        names = ["X:a", "X:b", "X:c", "X:alpha", "X:beta", "X:gamma", "X:Ti1.x", "X:O2.z", "zero"]
        truth = {"X:Ca1.B": 0.5, "X:Ti1.B": 0.5, "X:O1.B": 0.8, "X:O2.B": 0.8, "X:O3.B": 0.8}
        delta = {"X:a": 0.01, "X:b": -0.01, "X:gamma": 0.15, "X:Ti1.x": 0.003, "X:O2.z": -0.003}
    data, m0, truth_values = _synthetic(s, truth, {}, tt)
    m0 = data.with_values(m0, {k: truth_values[k] + d for k, d in delta.items()})
    coords = ["coords"]
    if case == "triclinic":  # P1: the origin floats; fix it by keeping Ca1 where it is
        coords = [p.name for p in data.select(["coords"]) if not p.name.startswith("X:Ca1.")]
    stages = [["scale", "background"], ["scale", "background", "lattice", "zero"],
              ["scale", "background", "lattice", "zero", *coords, "biso"]]
    res = data.refine(stages, model=m0, progress=False)
    assert res.stats["gof"] < 1.3  # Poisson data, right model: GOF ≈ 1
    _check_recovered(res, truth_values, names)


def test_singular_normal_matrix_is_reported_and_harmless(x64):
    """Scale and the occupancy of the only orbit (diamond Si: I ∝ scale·occ²) cannot both be
    determined: the refinement stays finite, keeps the fit, and names them."""
    from pymatgen.core import Lattice, Structure

    si = Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.431), ["Si"], [[0, 0, 0]])
    tt = np.arange(20.0, 90.0, 0.02)
    data, m0, truth = _synthetic(si, {"X:Si1.occ": 0.8}, {}, tt)
    m0 = data.with_values(m0, {"X:Si1.occ": 0.8})  # inside its bounds (at a bound it would get no esd)
    res = data.refine([["scale", "background"], ["scale", "background", "occupancy"]], model=m0, progress=False)
    assert set(res.singular) >= {"X:scale", "X:Si1.occ"}
    assert np.all(np.isfinite(res.values)) and np.all(np.isfinite(res.esd))
    assert res.stats["gof"] < 1.3


def test_bad_input_is_one_line_error(x64):
    tt = np.arange(20.0, 60.0, 0.02)
    inst = xj.Instrument.cu_kalpha()
    with pytest.raises(RefinementError, match="sigma > 0"):
        Problem(tt, np.ones_like(tt), np.zeros_like(tt), [("F", FAP_CIF)], inst)
    with pytest.raises(RefinementError, match="NaN"):
        Problem(tt, np.full_like(tt, np.nan), np.ones_like(tt), [("F", FAP_CIF)], inst)
    with pytest.raises(RefinementError, match="wrong units"):
        Problem(np.radians(tt), np.ones_like(tt), np.ones_like(tt), [("F", FAP_CIF)], inst)
    prob = Problem(tt, np.ones_like(tt), np.ones_like(tt), [("F", FAP_CIF)], inst)
    with pytest.raises(RefinementError, match="unknown parameter or group"):
        prob.refine([["scale", "nonsense"]], progress=False)
    with pytest.raises(RefinementError, match="unknown strategy"):
        prob.refine("fastest", progress=False)


def test_multiphase_weight_fractions_hill_howard(x64):
    """Two phases mixed by mass: the refined scales give back the weight fractions."""
    tt = np.arange(20.0, 100.0, 0.02)
    inst = xj.Instrument.cu_kalpha(u=2e-4, v=-2e-4, w=5e-4, x=0.03, y=0.02)
    phases = [("Si", silicon()), ("NaCl", nacl())]
    prob = Problem(tt, np.ones_like(tt), np.ones_like(tt), phases, inst, n_background=2)
    # weight fractions 0.3 / 0.7: s_p ∝ w_p / (Z M V)_p
    zmv = []
    for pm in prob.phases:
        from xtaljax.core.lattice import volume
        c = pm.template.expand(prob.model0["phases"][prob.phases.index(pm)])
        zmv.append(float(np.sum(pm.masses[np.asarray(pm.template.site_orbit)][np.asarray(pm.template.site_mask) > 0]))
                   * float(volume(c.lattice)))
    w_true = np.array([0.3, 0.7])
    s = w_true / np.array(zmv)
    s *= 2e4 / float(np.max(np.asarray(jax.jit(lambda m: prob.calc(m)[0])(prob.with_values(prob.model0, {"Si:scale": s[0], "NaCl:scale": s[1]})))))
    m_true = prob.with_values(prob.model0, {"Si:scale": s[0], "NaCl:scale": s[1], "bkg0": 50.0})
    y = np.random.default_rng(1).poisson(np.asarray(jax.jit(lambda m: prob.calc(m)[0])(m_true))).astype(float)
    data = Problem(tt, y, np.sqrt(np.maximum(y, 1)), phases, inst, n_background=2)
    res = data.refine("scale", progress=False)
    np.testing.assert_allclose(res.weight_fractions(), w_true, atol=0.01)


@pytest.mark.skipif(not shared_path("patterns", "fap_lab_xray", "FAP.XRA").exists(), reason="shared data")
def test_cli_refine_fap_reaches_gsas2_wr(tmp_path):
    """The headline: FAP from the starting model to wR <= 10.38 % (GSAS-II tutorial's final),
    with every output file; then a wavelength mismatch fails cleanly without output."""
    from xtaljax.cli import main
    from xtaljax.io import read_pattern, write_pattern

    d = shared_path("patterns", "fap_lab_xray")
    out = tmp_path / "fap"
    rc = main(["refine", str(d / "FAP.XRA"), "--phase", f"FAP={FAP_CIF}", "--instrument", str(d / "INST_XRY.PRM"),
               "--out", str(out), "--no-cache"])
    assert rc == 0
    r = json.loads((out / "result.json").read_text())
    assert r["rwp"] <= 10.38
    assert r["phases"][0]["lattice"]["a"] == pytest.approx(9.37, abs=0.01)
    assert r["phases"][0]["lattice_esd"]["a"] > 0
    assert {"rwp", "rp", "gof", "chi2", "n_obs", "n_params", "phases", "parameters"} <= set(r)
    for f in ("FAP.cif", "fit.csv", "fit.png"):
        assert (out / f).stat().st_size > 0
    from pymatgen.core import Structure
    assert Structure.from_file(out / "FAP.cif").get_space_group_info()[1] == 176
    # a pattern stating another wavelength than the instrument's: one-line error, nothing written
    pat = read_pattern(d / "FAP.XRA")
    xy = tmp_path / "mo.xy"
    write_pattern(type(pat)(pat.two_theta, pat.intensity, wavelength=0.7093), xy)
    bad = tmp_path / "bad"
    assert main(["refine", str(xy), "--phase", FAP_CIF, "--instrument", str(d / "INST_XRY.PRM"), "--out", str(bad)]) == 2
    assert not bad.exists()
    assert main(["refine", str(d / "FAP.XRA"), "--phase", FAP_CIF, "--wavelength", "CuKa", "--range", "200", "300",
                 "--out", str(bad)]) == 2
    assert not bad.exists()


def test_merged_reflections_give_the_same_pattern(x64):
    """merge_equivalents (used by the refinement) renders fewer peaks with identical results."""
    from xtaljax.core.reflections import merge_equivalents
    from xtaljax.io.spacegroups import symmetrize

    template, params, info = symmetrize(FAP_CIF, return_info=True)
    c = template.expand(params)
    tt = np.arange(15.0, 90.0, 0.02)
    inst = xj.Instrument.cu_kalpha(x=0.03, y=0.02)
    refl = xj.reflections_for(c, inst, tt)
    merged = merge_equivalents(refl, info.rotations)
    n_all, n_merged = int(np.count_nonzero(np.asarray(refl.mask))), int(np.count_nonzero(np.asarray(merged.mask)))
    assert n_merged < n_all / 3 and float(np.sum(np.asarray(merged.mask))) == n_all
    y_all = np.asarray(xj.simulate(c, inst, tt, refl))
    y_merged = np.asarray(xj.simulate(c, inst, tt, merged))
    np.testing.assert_allclose(y_merged, y_all, rtol=1e-9, atol=1e-9 * y_all.max())


@pytest.mark.skipif(not shared_path("patterns", "lab6_srm660", "NIST660CBI.gsas").exists(), reason="shared data")
def test_cli_calibrate_lab6_writes_instprm_that_refine_reads(tmp_path):
    """LaB6 SRM 660a, lattice fixed: the fitted profile terms are written as .instprm, read back
    identically, and used by a refinement of the same pattern."""
    from xtaljax.cli import main
    from xtaljax.io import read_instrument

    data = shared_path("patterns", "lab6_srm660", "NIST660CBI.gsas")
    out = tmp_path / "cal"
    assert main(["calibrate", str(data), "--wavelength", "CuKa", "--out", str(out), "--no-cache"]) == 0
    r = json.loads((out / "result.json").read_text())
    assert r["rwp"] < 7.0 and r["gof"] < 2.5
    assert r["phases"][0]["lattice"]["a"] == pytest.approx(4.1569162, abs=1e-9)  # fixed
    inst = read_instrument(out / "instrument.instprm")
    p = r["parameters"]
    assert float(inst.w) == pytest.approx(p["w"]["value"], rel=1e-6)
    assert float(inst.x) == pytest.approx(p["x"]["value"], rel=1e-6)
    assert float(inst.asym_sl + inst.asym_hl) == pytest.approx(p["shl"]["value"], rel=1e-6)
    assert main(["refine", str(data), "--phase", "xtaljax/data/lab6.cif", "--instrument", str(out / "instrument.instprm"),
                 "--strategy", "lattice", "--out", str(tmp_path / "ref"), "--no-cache"]) == 0
    r2 = json.loads((tmp_path / "ref" / "result.json").read_text())
    assert r2["phases"][0]["lattice"]["a"] == pytest.approx(4.15692, abs=2e-4)
