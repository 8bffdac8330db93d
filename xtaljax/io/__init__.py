"""Host-side input/output (pymatgen, spglib, file formats). Never jitted."""

from .structures import from_pymatgen, load_structure, read_structure, to_pymatgen

__all__ = ["from_pymatgen", "load_structure", "read_structure", "to_pymatgen"]
