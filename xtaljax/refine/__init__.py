"""Fitting on top of the simulator. This stage: the exact linear fit of scale and background
(Rietveld refinement of the non-linear parameters is the refinement issue)."""

from .linear import fit_scale_background

__all__ = ["fit_scale_background"]
