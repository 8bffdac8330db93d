"""xtaljax.io.matching.ReferenceMatcher gives pymatgen StructureMatcher's own answers."""

import numpy as np
import pytest
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure

from xtaljax.io.matching import ReferenceMatcher


def _reference():
    # a monoclinic, non-primitive-looking cell (skewed basis): Niggli and primitive reductions matter
    lat = Lattice.from_parameters(5.1, 6.3, 7.2, 90, 104.0, 90)
    species = ["Ni", "C", "C", "O", "O", "O", "O"]
    rng = np.random.default_rng(3)
    return Structure(lat, species, rng.random((len(species), 3)))


def _candidates(ref, n=24, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        sigma = 0.01 + 0.05 * (k % 6)  # from near-copies (match) to scrambled (no match)
        strain = np.eye(3) + rng.normal(0, 0.02 * (k % 3), (3, 3))
        frac = ref.frac_coords + rng.normal(0, sigma, ref.frac_coords.shape)
        s = Structure(Lattice(ref.lattice.matrix @ strain), ref.species, frac % 1.0)
        # also the same structure in another (supercell-free, sheared) basis: the reduction must undo it
        if k % 4 == 0:
            s = s.copy()
            s.make_supercell([[1, 1, 0], [0, 1, 0], [0, 0, 1]])
        out.append(s)
    return out


@pytest.mark.parametrize("kw", [{}, {"ltol": 0.2, "stol": 0.3, "angle_tol": 5.0},
                                {"ltol": 0.3, "stol": 0.5, "angle_tol": 10.0, "primitive_cell": False}])
def test_reference_matcher_equals_structure_matcher(kw):
    ref = _reference()
    rm = ReferenceMatcher(ref, **kw)
    assert rm._fast
    sm = StructureMatcher(**kw)
    fits = []
    for s in _candidates(ref):
        ok, rms = rm.match(s)
        assert ok == sm.fit(s, ref)
        fits.append(ok)
        if ok:
            want = sm.get_rms_dist(s, ref)
            assert rms == pytest.approx(want[0], rel=1e-12, abs=1e-15)
        else:
            assert rms is None
        alone, want = rm.rms_dist(s), sm.get_rms_dist(s, ref)  # get_rms_dist without the fit
        assert (alone is None) == (want is None)
        if alone is not None:
            assert alone == pytest.approx(want, rel=1e-12, abs=1e-15)
    assert 0 < sum(fits) < len(fits)  # the set holds both matches and misses


def test_reference_matcher_public_path_with_ignored_species():
    ref = _reference()
    rm = ReferenceMatcher(ref, ignored_species=["C"])
    assert not rm._fast  # species removed before the reduction: pymatgen's public calls
    sm = StructureMatcher(ignored_species=["C"])
    for s in _candidates(ref, n=6, seed=1):
        assert rm.match(s, rms=False)[0] == sm.fit(s, ref)


def test_reference_matcher_takes_a_matcher():
    ref = _reference()
    sm = StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3)
    rm = ReferenceMatcher(ref, matcher=sm)
    assert rm.matcher is sm
    s = _candidates(ref, n=1)[0]
    assert rm.rms_dist(s) == pytest.approx(sm.get_rms_dist(s, ref), rel=1e-12, abs=1e-15)
    with pytest.raises(ValueError, match="either"):
        ReferenceMatcher(ref, matcher=sm, stol=0.3)
