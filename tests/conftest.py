from pathlib import Path

import jax
import numpy as np
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_path(*parts) -> Path:
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"shared data not found: {p}")
    return p


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def nacl():
    from pymatgen.core import Lattice, Structure

    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def silicon():
    from pymatgen.core import Lattice, Structure

    return Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.431), ["Si"], [[0, 0, 0]])


def low_symmetry(seed: int = 0):
    """A triclinic 5-site structure at general positions (every gradient component non-zero)."""
    from pymatgen.core import Lattice, Structure

    rng = np.random.default_rng(seed)
    lat = Lattice.from_parameters(5.1, 6.3, 7.2, 84.0, 97.0, 101.0)
    return Structure(lat, ["Ca", "Ti", "O", "O", "O"], rng.uniform(0, 1, (5, 3)))
