"""xtaljax: differentiable, jit-compiled powder X-ray diffraction in JAX."""

from .core import (Crystal, Instrument, Reflections, SimConfig, prepare_batch, reflections_for, resolve_config, simulate,
                   simulate_batch, simulate_phases, stack, sticks, unstack)

from .core.symmetry import SymmetryParams, SymmetryTemplate, expand, project_lattice

__version__ = "0.1.0"


def symmetrize(structure, symprec: float = 0.01, angle_tolerance: float = -1.0, **kw):
    """Detect symmetry (spglib) and build ``(template, params)``; see
    :func:`xtaljax.io.spacegroups.symmetrize`. spglib/pymatgen are imported only when called."""
    from .io.spacegroups import symmetrize as _symmetrize

    return _symmetrize(structure, symprec, angle_tolerance, **kw)

__all__ = ["Crystal", "Instrument", "Reflections", "SimConfig", "__version__", "prepare_batch", "simulate_batch", "reflections_for",
           "resolve_config", "simulate", "simulate_phases", "stack", "sticks", "unstack", "SymmetryParams", "SymmetryTemplate", "expand",
           "project_lattice", "symmetrize"]
