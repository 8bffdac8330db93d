"""Host-side input/output (pymatgen, spglib, file formats). Never jitted."""

from .instruments import read_instrument, write_instprm
from .patterns import Pattern, read_pattern, write_pattern
from .structures import from_pymatgen, load_structure, read_structure, to_pymatgen

__all__ = ["Pattern", "from_pymatgen", "load_structure", "read_instrument", "read_pattern", "read_structure",
           "to_pymatgen", "write_instprm", "write_pattern"]
