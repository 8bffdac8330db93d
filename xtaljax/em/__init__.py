"""Whole-pattern decomposition by Bragg-constrained expectation–maximisation (WPEM)."""

from .wpem import DecompositionError, Decomposition, EMState, build_problem, decompose, decompose_batch, em_step

__all__ = ["DecompositionError", "Decomposition", "EMState", "build_problem", "decompose", "decompose_batch", "em_step"]
