"""Profile physics, structure factors and instrument terms against independent formulas."""

import numpy as np
import pytest
from conftest import low_symmetry, nacl

import jax
import jax.numpy as jnp
import xtaljax as xj
from xtaljax.core.profiles import (fcj_shifts_weights, gaussian, lorentzian, pseudo_voigt,
                                   tch_fwhm_eta)
from xtaljax.core.scattering import form_factor, scatterer_index
from xtaljax.io import read_structure


def test_tch_matches_published_formula(x64):
    rng = np.random.default_rng(1)
    g = rng.uniform(0.01, 0.3, 50)
    l = rng.uniform(0.0, 0.3, 50)
    total, eta = tch_fwhm_eta(jnp.asarray(g), jnp.asarray(l))
    # Thompson, Cox & Hastings (1987), J. Appl. Cryst. 20, 79, eqs. (4)-(5), written out here
    ref = (g**5 + 2.69269 * g**4 * l + 2.42843 * g**3 * l**2 + 4.47163 * g**2 * l**3
           + 0.07842 * g * l**4 + l**5) ** 0.2
    q = l / ref
    np.testing.assert_allclose(total, ref, rtol=1e-12)
    np.testing.assert_allclose(eta, 1.36603 * q - 0.47719 * q**2 + 0.11116 * q**3, rtol=1e-12)
    # limits: pure Gaussian and pure Lorentzian
    t0, e0 = tch_fwhm_eta(jnp.asarray(0.1), jnp.asarray(0.0))
    t1, e1 = tch_fwhm_eta(jnp.asarray(0.0), jnp.asarray(0.1))
    assert float(t0) == pytest.approx(0.1) and float(e0) == 0.0
    assert float(t1) == pytest.approx(0.1) and float(e1) == pytest.approx(1.0, abs=1e-4)


def test_profiles_unit_area_and_fwhm(x64):
    x = jnp.linspace(-20, 20, 400001)
    dx = float(x[1] - x[0])
    fwhm = 0.37
    for f in (lambda t: gaussian(t, fwhm), lambda t: pseudo_voigt(t, fwhm, 0.0)):
        y = f(x)
        assert float(jnp.sum(y) * dx) == pytest.approx(1.0, abs=1e-8)
        assert float(f(fwhm / 2) / f(0.0)) == pytest.approx(0.5, abs=1e-12)
    # Lorentzian area over +-R is (2/pi) arctan(2R/fwhm)
    yl = lorentzian(x, fwhm)
    assert float(jnp.sum(yl) * dx) == pytest.approx(2 / np.pi * np.arctan(2 * 20 / fwhm), abs=1e-6)
    assert float(lorentzian(fwhm / 2, fwhm) / lorentzian(0.0, fwhm)) == pytest.approx(0.5, abs=1e-12)
    pv = pseudo_voigt(x, fwhm, 0.3)
    expected = 0.3 * 2 / np.pi * np.arctan(2 * 20 / fwhm) + 0.7
    assert float(jnp.sum(pv) * dx) == pytest.approx(expected, abs=1e-6)


def test_structure_factor_matches_brute_force_complex_sum(x64):
    """|F(h)|^2 + |F(-h)|^2 from the kernel vs a direct complex sum (with anomalous terms)."""
    s = low_symmetry()
    c = read_structure(s, b_iso=0.7)
    inst = xj.Instrument.cu_kalpha()
    hkl = np.array([[1, 0, 0], [1, 2, -1], [2, -3, 1], [0, 1, 4], [3, 1, 2]], float)
    g, f2, valid = xj.core.structure_factors(c, jnp.asarray(hkl), jnp.ones(5), inst.dispersion, "itc")
    rec = np.linalg.inv(np.asarray(c.lattice)).T
    gg = np.linalg.norm(hkl @ rec, axis=1)
    s2 = (gg / 2) ** 2
    m = np.asarray(c.mask) > 0
    sp = np.asarray(c.species)[m]
    x = np.asarray(c.frac)[m]
    f0 = np.asarray(form_factor(jnp.asarray(sp), jnp.asarray(s2), "itc"))
    disp = np.asarray(inst.dispersion)[sp]
    f = (f0 + disp[None, :, 0] + 1j * disp[None, :, 1]) * np.exp(-0.7 * s2)[:, None]
    fp = np.sum(f * np.exp(2j * np.pi * hkl @ x.T), axis=1)
    fm = np.sum(f * np.exp(-2j * np.pi * hkl @ x.T), axis=1)
    np.testing.assert_allclose(np.asarray(g), gg, rtol=1e-12)
    np.testing.assert_allclose(2 * np.asarray(f2), np.abs(fp) ** 2 + np.abs(fm) ** 2, rtol=1e-10)
    assert bool(jnp.all(valid))
    # anomalous dispersion breaks Friedel's law for this non-centrosymmetric structure
    assert np.max(np.abs(np.abs(fp) ** 2 - np.abs(fm) ** 2)) > 1e-3


def test_itc_form_factor_at_zero_angle_is_electron_count(x64):
    for name, electrons in (("O", 8), ("Ca", 20), ("Ca2+", 18), ("O2-", 10), ("Cu", 29)):
        f = form_factor(jnp.asarray([scatterer_index(name)]), jnp.zeros(1), "itc")
        assert float(f[0, 0]) == pytest.approx(electrons, abs=0.05)


def _peak_positions(y, tt, n):
    """Positions of the n highest local maxima (parabolic interpolation)."""
    y = np.asarray(y)
    idx = np.where((y[1:-1] > y[:-2]) & (y[1:-1] >= y[2:]))[0] + 1
    idx = idx[np.argsort(y[idx])[::-1][:n]]
    out = []
    for i in idx:
        a, b, c = y[i - 1], y[i], y[i + 1]
        out.append(tt[i] + 0.5 * (a - c) / (a - 2 * b + c) * (tt[1] - tt[0]))
    return np.sort(out)


def test_kalpha_doublet_positions_and_ratio(x64):
    s = nacl()
    c = read_structure(s)
    d200 = 5.64 / 2
    inst = xj.Instrument.cu_kalpha(u=0.0, v=0.0, w=1e-6, x=0.0)
    tt = np.arange(31.0, 32.2, 0.0005)
    y = xj.simulate(c, inst, tt)
    pos = _peak_positions(y, tt, 2)
    expected = np.sort([2 * np.degrees(np.arcsin(lam / (2 * d200))) for lam in (1.540593, 1.544414)])
    np.testing.assert_allclose(pos, expected, atol=2e-4)
    # integrated intensities: ratio 0.5 times the LP ratio of the two positions
    mid = np.mean(expected)
    i1, i2 = float(np.sum(y[tt < mid])), float(np.sum(y[tt >= mid]))
    th = np.radians(expected / 2)
    lp = (1 + np.cos(2 * th) ** 2) / (np.sin(th) ** 2 * np.cos(th))
    assert i2 / i1 == pytest.approx(0.5 * lp[1] / lp[0], rel=2e-3)


def test_zero_displacement_transparency_shift_peaks(x64):
    c = read_structure(nacl())
    tt = np.arange(25.0, 50.0, 0.002)
    base = dict(kalpha2=False, u=0.0, v=0.0, w=4e-6, x=0.0)
    th = np.radians(np.array([31.69, 45.45]) / 2)
    y0 = xj.simulate(c, xj.Instrument.cu_kalpha(**base), tt)
    p0 = _peak_positions(y0, tt, 2)
    for kw, shift in (({"zero": 0.05}, lambda t: 0.05 * np.ones_like(t)),
                      ({"displacement": 0.2, "radius": 200.0}, lambda t: -np.degrees(2 * 0.2 / 200.0 * np.cos(t))),
                      ({"transparency": 0.03}, lambda t: 0.03 * np.sin(2 * t))):
        y = xj.simulate(c, xj.Instrument.cu_kalpha(**base, **kw), tt)
        np.testing.assert_allclose(_peak_positions(y, tt, 2) - p0, shift(th), atol=3e-4)


def test_polarization_and_scale_and_background(x64):
    c = read_structure(nacl())
    tt = np.arange(20.0, 80.0, 0.01)
    y1 = xj.simulate(c, xj.Instrument.cu_kalpha(), tt)
    y2 = xj.simulate(c, xj.Instrument.cu_kalpha(scale=3.0, background=(10.0, 2.0, -1.0)), tt)
    x = 2 * (tt - tt[0]) / (tt[-1] - tt[0]) - 1
    bkg = np.polynomial.chebyshev.chebval(x, [10.0, 2.0, -1.0])
    np.testing.assert_allclose(np.asarray(y2), 3 * np.asarray(y1) + bkg, rtol=1e-10, atol=1e-8)
    # monochromator polarisation: each peak scales by (1 + k cos^2 2θ)/(1 + cos^2 2θ)
    k = np.cos(np.radians(26.6)) ** 2
    st = xj.sticks(nacl(), 1.540593, (20, 80), scaled=False)
    ypol = xj.simulate(c, xj.Instrument.cu_kalpha(kalpha2=False, monochromator_2theta=26.6, u=0, v=0, w=1e-6, x=0), tt)
    yun = xj.simulate(c, xj.Instrument.cu_kalpha(kalpha2=False, u=0, v=0, w=1e-6, x=0), tt)
    for t2 in st.two_theta[:3]:
        i = np.argmin(np.abs(tt - t2))
        ratio = float(ypol[i] / yun[i])
        c2 = np.cos(np.radians(t2)) ** 2
        assert ratio == pytest.approx((1 + k * c2) / (1 + c2), rel=1e-3)


def test_fcj_asymmetry_conserves_area_and_shifts_toward_lower_angle_below_90(x64):
    shifts, w = fcj_shifts_weights(jnp.asarray([20.0, 60.0, 130.0]), 0.02, 0.015, 16)
    np.testing.assert_allclose(np.sum(np.asarray(w), axis=1), 1.0, rtol=1e-12)
    assert np.all(np.asarray(shifts)[:2] <= 1e-12) and np.all(np.asarray(shifts)[2] >= -1e-12)
    mean = np.sum(np.asarray(shifts) * np.asarray(w), axis=1)
    assert abs(mean[0]) > abs(mean[1])  # asymmetry strongest at low angle
    z, _ = fcj_shifts_weights(jnp.asarray([20.0]), 0.0, 0.0, 16)
    assert np.all(np.asarray(z) == 0)
    c = read_structure(nacl())
    tt = np.arange(20.0, 40.0, 0.002)
    cfg = xj.SimConfig(render="dense")
    sym = xj.simulate(c, xj.Instrument.cu_kalpha(kalpha2=False), tt, config=cfg)
    asym = xj.simulate(c, xj.Instrument.cu_kalpha(kalpha2=False, asym_sl=0.02, asym_hl=0.015), tt, config=cfg)
    assert float(jnp.sum(asym)) == pytest.approx(float(jnp.sum(sym)), rel=2e-3)
    # the centroid of the (111)/(200) peaks moves to lower angle
    cen = lambda y: float(jnp.sum(y * tt) / jnp.sum(y))  # noqa: E731
    assert cen(asym) < cen(sym) - 0.005


def test_march_dollase(x64):
    from pymatgen.core import Lattice, Structure

    s = Structure(Lattice.tetragonal(4.0, 9.0), ["Sr", "O"], [[0, 0, 0], [0.5, 0.5, 0.3]])
    c = read_structure(s)
    refl = xj.reflections_for(c, xj.Instrument.cu_kalpha(), np.arange(10, 60, 0.1))
    from xtaljax.core.pattern import march_dollase

    hkl = refl.hkl
    po = np.asarray(march_dollase(c, hkl, jnp.asarray(0.7), jnp.asarray([0.0, 0.0, 1.0])))
    h = np.asarray(hkl)
    real = np.asarray(refl.mask) > 0
    is_00l = real & (h[:, 0] == 0) & (h[:, 1] == 0)
    is_hk0 = real & (h[:, 2] == 0)
    np.testing.assert_allclose(po[is_00l], 0.7**-3, rtol=1e-10)  # (r^2)^-3/2
    np.testing.assert_allclose(po[is_hk0], 0.7**1.5, rtol=1e-10)  # (1/r)^-3/2
    one = np.asarray(march_dollase(c, hkl, jnp.asarray(1.0), jnp.asarray([0.0, 0.0, 1.0])))
    np.testing.assert_allclose(one[real], 1.0, rtol=1e-12)


def test_size_strain_broadening_adds_lorentzian_width(x64):
    c = read_structure(nacl())
    tt = np.arange(28.0, 35.0, 0.0005)
    base = dict(kalpha2=False, u=0.0, v=0.0, w=1e-8, x=0.0, y=0.0)
    y = xj.simulate(c, xj.Instrument.cu_kalpha(**base, inv_size=1 / 500.0), tt, config=xj.SimConfig(render="dense"))
    y = np.asarray(y)
    i = np.argmax(y)
    above = tt[y >= y[i] / 2]
    fwhm = above[-1] - above[0]
    th = np.radians(tt[i] / 2)
    expected = np.degrees(1.540593 / (500.0 * np.cos(th)))  # Scherrer, K = 1
    assert fwhm == pytest.approx(expected, rel=0.02)


def test_multi_phase_is_sum_of_phases(x64):
    from pymatgen.core import Lattice, Structure

    a = read_structure(nacl())
    b = read_structure(Structure(Lattice.cubic(4.2), ["Mg", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]]))
    inst = xj.Instrument.cu_kalpha(background=(5.0, 1.0))
    tt = np.arange(20.0, 70.0, 0.02)
    y = xj.simulate_phases([a, b], inst, tt, [0.3, 1.7])
    no_bkg = inst.replace(background=jnp.zeros(2))
    ref = 0.3 * xj.simulate(a, no_bkg, tt) + 1.7 * xj.simulate(b, no_bkg, tt) + xj.core.chebyshev_background(jnp.asarray(tt), inst.background)
    np.testing.assert_allclose(np.asarray(y), np.asarray(ref), rtol=1e-12)


def test_window_matches_dense_within_cutoff(x64):
    c = read_structure(low_symmetry())
    tt = np.arange(10.0, 70.0, 0.01)
    inst = xj.Instrument.cu_kalpha(x=0.02)
    yw = xj.simulate(c, inst, tt)
    yd = xj.simulate(c, inst, tt, config=xj.SimConfig(render="dense"))
    assert float(jnp.max(jnp.abs(yw - yd)) / jnp.max(yd)) < 2e-3
    assert float(jnp.sum(yw) / jnp.sum(yd)) == pytest.approx(1.0, abs=0.02)
