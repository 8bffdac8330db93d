"""xtaljax.landscape.solve: multi-start structure solution (known space group, sites, cell)."""

import numpy as np
import pytest

from xtaljax.landscape.recover import load_target
from xtaljax.landscape.solve import solve

STEPS = 150


def rutile(x=0.3048):
    from pymatgen.core import Lattice, Structure

    return Structure.from_spacegroup("P4_2/mnm", Lattice.tetragonal(4.5937, 2.9587), ["Ti", "O"],
                                     [[0, 0, 0], [x, x, 0]])


def wurtzite(u=0.382):
    """ZnO P6_3mc: Zn and O at 2b (1/3, 2/3, z); z(Zn) = 0 fixes the polar origin, so with the
    origin free in the standard setting both z are free (2 parameters, one a pure translation)."""
    from pymatgen.core import Lattice, Structure

    return Structure.from_spacegroup("P6_3mc", Lattice.hexagonal(3.2498, 5.2066), ["Zn", "O"],
                                     [[1 / 3, 2 / 3, 0.0], [1 / 3, 2 / 3, u]])


def _matches(a, b):
    from pymatgen.analysis.structure_matcher import StructureMatcher

    sm = StructureMatcher(ltol=0.2, stol=0.3, angle_tol=5)
    return sm.fit(a, b), (sm.get_rms_dist(a, b) if sm.fit(a, b) else None)


def test_solve_rutile(x64):
    truth = rutile()
    tg = load_target(truth)
    # the template's own coordinates must not matter: give a wrong x
    res = solve(tg.two_theta, np.asarray(tg.pattern), rutile(0.21), n_starts=16, steps=STEPS, seed=1,
                reference=truth)
    assert res.losses.shape == (16,) and len(res.ranked) == 16
    assert [r["loss"] for r in res.ranked] == sorted(res.losses.tolist())
    best = res.best
    ok, rms = _matches(best["structure"], truth)
    assert ok and rms[0] < 0.01, rms
    (el, x), = best["free"]
    assert el == "O"
    # x and its symmetry-equivalent choices (x, 1-x, 1/2±x)
    d = min(abs(((v - 0.3048 + 0.5) % 1.0) - 0.5) for v in (x[0], 1 - x[0], 0.5 + x[0], 0.5 - x[0]))
    assert d < 0.001, x  # after the unbroadened polish (the broadened stage alone: ~0.0012 off)
    assert res.stage1_losses.shape == (16,)
    assert best["matched"] and res.success_rate >= 0.25
    assert res.timings["optimise_s"] > 0


def test_solve_two_free_parameters(x64):
    truth = wurtzite()
    tg = load_target(truth)
    res = solve(tg.two_theta, np.asarray(tg.pattern), wurtzite(0.25), n_starts=32, steps=STEPS, seed=0,
                reference=truth)
    assert int(res.coord_free.sum()) >= 2
    ok, rms = _matches(res.best["structure"], truth)
    assert ok and rms[0] < 0.02, (res.best["loss"], rms)
    assert res.best["loss"] < 1e-3


@pytest.mark.parametrize("kw, msg", [
    (dict(n_starts=0), "n_starts"),
    (dict(steps=0), "steps"),
    (dict(nan=True), "finite"),
    (dict(empty=True), "at least 2"),
    (dict(mismatch=True), "points but"),
    (dict(metric="nope"), "unknown metric"),
])
def test_solve_bad_input(kw, msg):
    tt = np.round(np.arange(10.0, 60.0, 0.05), 10)
    y = np.exp(-0.5 * ((tt - 30.0) / 0.2) ** 2)
    if kw.pop("nan", False):
        y = y.copy()
        y[5] = np.nan
    if kw.pop("empty", False):
        tt, y = tt[:0], y[:0]
    if kw.pop("mismatch", False):
        y = y[:-1]
    with pytest.raises(ValueError, match=msg) as e:
        solve(tt, y, rutile(), **kw)
    assert "\n" not in str(e.value)
