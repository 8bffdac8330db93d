"""xtaljax: differentiable, jit-compiled powder X-ray diffraction in JAX."""

from .core import (Crystal, Instrument, Reflections, SimConfig, prepare_batch, reflections_for, resolve_config, simulate,
                   simulate_batch, simulate_phases, stack, sticks, unstack)

__version__ = "0.1.0"

__all__ = ["Crystal", "Instrument", "Reflections", "SimConfig", "__version__", "prepare_batch", "simulate_batch", "reflections_for",
           "resolve_config", "simulate", "simulate_phases", "stack", "sticks", "unstack"]
