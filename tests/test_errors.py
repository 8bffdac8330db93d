"""Bad input: one-line ValueErrors naming the problem, never a silent NaN."""

import dataclasses

import numpy as np
import pytest
from conftest import nacl

import jax.numpy as jnp
import xtaljax as xj
from xtaljax.io import read_structure

TT = np.arange(10.0, 60.0, 0.05)


def one_line(exc):
    assert "\n" not in str(exc.value)
    return str(exc.value)


def test_zero_and_negative_volume():
    with pytest.raises(ValueError, match="cell volume must be positive") as e:
        xj.Crystal.create(np.diag([4.0, 4.0, 0.0]), [[0, 0, 0]], [11])
    one_line(e)
    with pytest.raises(ValueError, match="cell volume must be positive"):
        xj.Crystal.create(np.diag([4.0, 4.0, -4.0]), [[0, 0, 0]], [11])
    c = read_structure(nacl())
    with pytest.raises(ValueError, match="cell volume must be positive"):
        xj.simulate(dataclasses.replace(c, lattice=c.lattice * jnp.asarray([[1.0], [1.0], [0.0]])), xj.Instrument.cu_kalpha(), TT)


def test_nan_coordinates():
    with pytest.raises(ValueError, match="NaN"):
        xj.Crystal.create(np.eye(3) * 4, [[np.nan, 0, 0]], [11])
    c = read_structure(nacl())
    with pytest.raises(ValueError, match="frac contains NaN"):
        xj.simulate(dataclasses.replace(c, frac=c.frac.at[0, 0].set(jnp.nan)), xj.Instrument.cu_kalpha(), TT)


def test_unknown_element():
    from pymatgen.core import DummySpecies, Lattice, Structure

    s = Structure(Lattice.cubic(4), [DummySpecies("X")], [[0, 0, 0]])
    with pytest.raises(ValueError, match="unknown element"):
        read_structure(s)
    with pytest.raises(ValueError, match="unknown element or ion 'Qq'"):
        xj.core.scatterer_index("Qq")


@pytest.mark.parametrize("lam", [0.0, -1.5, float("nan")])
def test_bad_wavelength(lam):
    with pytest.raises(ValueError, match="wavelength must be a positive"):
        xj.Instrument.create([lam])
    with pytest.raises(ValueError, match="wavelength must be a positive"):
        xj.Instrument.from_wavelength(lam)


def test_wavelength_in_wrong_units():
    with pytest.raises(ValueError, match="implausible"):
        xj.Instrument.create([154.06])


@pytest.mark.parametrize("grid,msg", [(np.array([]), "non-empty"), (np.arange(60.0, 10.0, -0.1), "ascending"),
                                      (np.array([10.0, np.nan, 11.0]), "NaN"), (np.linspace(0.1, 1.4, 100) - 1, "within"),
                                      (np.linspace(170, 190, 10), "within")])
def test_bad_grids(grid, msg):
    c = read_structure(nacl())
    with pytest.raises(ValueError, match=msg) as e:
        xj.simulate(c, xj.Instrument.cu_kalpha(), grid)
    one_line(e)


def test_capacity_overflow_is_an_error():
    c = read_structure(nacl())
    with pytest.raises(ValueError, match="reflection capacity overflow"):
        xj.core.make_reflections(np.asarray(c.lattice), 1.2, capacity=8)


def test_no_silent_nan_from_nan_instrument():
    c = read_structure(nacl())
    with pytest.raises(ValueError, match="instrument parameter u is NaN"):
        xj.simulate(c, xj.Instrument.cu_kalpha(u=float("nan")), TT)


def test_form_factor_models_cover_the_registry_and_reject_unknown_names():
    from pymatgen.core import Lattice, Structure

    c = read_structure(Structure(Lattice.cubic(5), ["Cf"], [[0, 0, 0]]))  # heaviest tabulated element
    for model in ("pymatgen", "itc"):
        y = xj.simulate(c, xj.Instrument.cu_kalpha(), TT, config=xj.SimConfig(form_factors=model))
        assert np.all(np.isfinite(np.asarray(y))) and float(jnp.max(y)) > 0
    with pytest.raises(ValueError, match="unknown form-factor model"):
        xj.SimConfig(form_factors="cromer")
