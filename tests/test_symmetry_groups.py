"""Symmetry templates on a CI sample of space groups (the full 230-group run is
``benchmarks/validate_symmetry.py``, whose checks are imported here).

One random pyxtal structure per group, from chosen Wyckoff combinations (strategies cycle:
special positions only / general + special / general), checked for: StructureMatcher fit
(default and tight), direct coordinates vs spglib's standardised cell within 1e-6, free
coordinates = pyxtal's dof, orbit sizes = pyxtal's and spglib's multiplicities, the group kept
after a random perturbation of all free parameters, lattice free parameters per family, and
jit == eager; plus vmap over a batch of templates of different groups, and the errors.
"""

import sys
from pathlib import Path

import numpy as np
import pytest

import jax

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "benchmarks") not in sys.path:
    sys.path.insert(0, str(REPO / "benchmarks"))

from validate_symmetry import CHECKS, check_case, check_vmap, generate  # noqa: E402

pytest.importorskip("pyxtal")
pytest.importorskip("spglib")

SEED = 0
MAX_ATOMS = 100  # keeps the CI sample fast; the benchmark uses 200
# ~5 per crystal system; R-centred (146, 148, 160, 166, 167), all-special-position cases
# (225, 227, 229 with the "special" strategy), monoclinic 14/15, triclinic 1/2, 176, 194, 230
GROUPS = {
    1: None, 2: "special",  # triclinic
    4: None, 12: "special", 14: None, 15: "mixed",  # monoclinic
    19: None, 43: "special", 62: "mixed", 63: None, 70: "special",  # orthorhombic
    76: None, 88: "mixed", 122: "special", 139: None, 142: "general",  # tetragonal
    146: "mixed", 148: None, 160: "special", 166: "special", 167: "mixed",  # trigonal
    173: None, 176: "mixed", 186: "special", 191: "special", 194: None,  # hexagonal
    198: "mixed", 216: "special", 225: "special", 227: "special", 229: "special", 230: None,  # cubic
}
SYSTEM_OF = [(2, "triclinic"), (15, "monoclinic"), (74, "orthorhombic"), (142, "tetragonal"), (167, "trigonal"),
             (194, "hexagonal"), (230, "cubic")]


def test_sample_spans_all_crystal_systems():
    systems = {next(name for top, name in SYSTEM_OF if sg <= top) for sg in GROUPS}
    assert len(systems) == 7 and len(GROUPS) >= 30


@pytest.mark.parametrize("sg", sorted(GROUPS))
def test_symmetrize_expand_reproduces_random_structure(sg, x64):
    gen = generate(sg, index=sg % 3, seed=SEED, strategy=GROUPS[sg], max_atoms=MAX_ATOMS)
    rec, pair = check_case(gen, rng=np.random.default_rng(sg))
    assert pair is not None, rec["failures"]
    assert rec["template"]["space_group"] == sg
    bad = [c for c in CHECKS if not rec["checks"].get(c)]
    assert not bad, f"group {sg} ({gen.labels}, seed {gen.seed}): {rec['failures']}"
    assert not rec["failures"], rec["failures"]
    if gen.strategy == "special":
        assert rec["details"]["n_special_orbits"] == len(rec["template"]["sites"])  # only special positions
    assert rec["details"]["coords_max_err"] < 1e-9


def test_vmap_over_templates_of_different_groups(x64):
    from xtaljax.io.spacegroups import symmetrize

    pairs = []
    for i, sg in enumerate((2, 14, 63, 139, 166, 176, 227, 230)):
        gen = generate(sg, index=i, seed=SEED + 1, max_atoms=60)
        t, p = symmetrize(gen.structure)
        # distinct free parameters per item, so a mix-up between batch items would show
        p = type(p)(lattice=p.lattice, coords=p.coords + 0.01 * (i + 1) * (np.asarray(t.coord_free)),
                    b_iso=p.b_iso + 0.1 * i, occupancy=p.occupancy)
        pairs.append((t, p))
    assert len({int(t.x0.shape[0]) for t, _ in pairs}) > 1 or len({int(t.site_mask.shape[0]) for t, _ in pairs}) > 1
    ok, err, msg = check_vmap(pairs)
    assert ok, msg
    assert err < 1e-12


def _structure(species, coords, a=4.0):
    from pymatgen.core import Lattice, Structure

    return Structure(Lattice.cubic(a), species, coords)


def test_disordered_structure_raises():
    from xtaljax.io.spacegroups import symmetrize

    s = _structure([{"Na": 0.5, "K": 0.5}, "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    with pytest.raises(ValueError, match="disordered"):
        symmetrize(s)


def test_overlapping_atoms_raise_a_clear_error():
    from xtaljax.io.spacegroups import symmetrize

    s = _structure(["Na", "Cl", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]])
    with pytest.raises(ValueError, match="spglib could not determine the symmetry"):
        symmetrize(s)


@pytest.mark.parametrize("symprec", [0.0, -1e-3])
def test_nonpositive_symprec_raises(symprec):
    from xtaljax.io.spacegroups import symmetrize

    with pytest.raises(ValueError, match="symprec"):
        symmetrize(_structure(["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]), symprec=symprec)


def _monoclinic_near_90():
    """P2/m with β = 88° whose atoms all sit on positions that are also Pmmm-symmetric."""
    from pymatgen.core import Lattice, Structure

    return Structure.from_spacegroup(10, Lattice.monoclinic(3.0, 4.0, 5.0, 88.0), ["Na", "Cl", "O"],
                                     [[0, 0, 0], [0.5, 0.5, 0.5], [0, 0.23, 0]])


def _tight_fit(s, t, p):
    from pymatgen.analysis.structure_matcher import StructureMatcher

    from xtaljax.io import to_pymatgen

    return StructureMatcher(ltol=1e-4, stol=1e-4, angle_tol=1e-3).fit(s, to_pymatgen(t.expand(p)))


def test_monoclinic_cell_near_90_degrees_with_metric_tolerance(x64):
    from xtaljax.io.spacegroups import symmetrize

    s = _monoclinic_near_90()
    t, p, info = symmetrize(s, angle_tolerance=-1.0, return_info=True)
    assert info.space_group == 10 and info.n_lattice == 4
    assert _tight_fit(s, t, p)


def test_default_symmetrize_keeps_monoclinic_cell_near_90_degrees(x64):
    from xtaljax.io.spacegroups import symmetrize

    s = _monoclinic_near_90()
    t, p, info = symmetrize(s, return_info=True)
    assert info.space_group == 10
    assert _tight_fit(s, t, p)
