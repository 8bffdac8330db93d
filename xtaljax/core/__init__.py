"""Pure-JAX core: no pymatgen, spglib or flax imports here (a test checks this)."""

from .crystal import SITE_BUCKETS, Crystal, stack, unstack
from .instrument import ANODES, PYMATGEN_WAVELENGTHS, Instrument, resolve_wavelength
from .lattice import lattice_from_parameters, lattice_parameters, reciprocal, volume
from .pattern import (SimConfig, prepare_batch, simulate_batch, chebyshev_background, reflections_for, resolve_config, simulate,
                      simulate_kernel, simulate_phases, structure_factors)
from .reflections import Reflections, make_reflections, stack_reflections
from .scattering import scatterer_index, scatterer_names
from .symmetry import SymmetryParams, SymmetryTemplate, crystal_system, expand, lattice_family_tables, project_lattice
from .sticks import StickTable, reflection_table, sticks

__all__ = [
    "ANODES", "PYMATGEN_WAVELENGTHS", "SITE_BUCKETS", "Crystal", "Instrument", "Reflections", "SimConfig",
    "chebyshev_background", "lattice_from_parameters", "lattice_parameters", "make_reflections",
    "reciprocal", "reflections_for", "resolve_config", "resolve_wavelength", "scatterer_index",
    "scatterer_names", "StickTable", "reflection_table", "sticks", "simulate", "simulate_kernel", "simulate_phases", "prepare_batch", "simulate_batch", "stack", "stack_reflections",
    "structure_factors", "unstack", "volume",
]
