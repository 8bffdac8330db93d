"""1-D and 2-D slices of the loss landscape along symmetry-template parameters.

A parameter is named as in the template: ``"lattice:0"`` … (the free lattice parameters of the
crystal family in order: cubic ``a``; tetragonal/hexagonal ``a, c``; orthorhombic ``a, b, c``;
monoclinic ``a, b, c, β``; triclinic all six; Å or degrees) or ``"coord:O:K"`` (free coordinate
``K`` of orbit ``O``; fractional). Offsets are added to the true value; every point of the grid is
one lane of a jitted ``vmap`` of ``simulate`` + the metric.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from ..core.pattern import simulate
from ..core.symmetry import expand
from .metrics import get_metric
from .recover import Target, reduce_cell


def parameter_names(target: Target) -> list[str]:
    """Names of the free parameters of ``target``'s template (see the module docstring)."""
    t = target.template
    names = [f"lattice:{j}" for j in range(t.n_lattice)]
    species = np.asarray(t.species)
    for o, d in enumerate(t.dof):
        if species[o] > 0:
            names += [f"coord:{o}:{k}" for k in range(int(d))]
    return names


def _offset(params, name: str, value):
    kind, *idx = name.split(":")
    if kind == "lattice":
        j = int(idx[0])
        return dataclasses.replace(params, lattice=params.lattice.at[j].add(value))
    o, k = int(idx[0]), int(idx[1])
    return dataclasses.replace(params, coords=params.coords.at[o, k].add(value))


def slice_patterns(target: Target, names, offsets):
    """Simulated patterns on a grid of parameter offsets: ``(patterns (G, N), shape)`` with
    ``shape`` the grid shape (``(len(offsets),)`` for one name, ``(len(o1), len(o2))`` for two)."""
    valid = parameter_names(target)
    names = [names] if isinstance(names, str) else list(names)
    if not 1 <= len(names) <= 2:
        raise ValueError("a slice needs one or two parameter names")
    for n in names:
        if n not in valid:
            raise ValueError(f"unknown parameter {n!r}; this structure has {', '.join(valid)}")
    dt = target.crystal.frac.dtype
    if len(names) == 1:
        grid = np.asarray(offsets, np.float64).reshape(-1, 1)
        shape = (grid.shape[0],)
    else:
        a, b = (np.asarray(o, np.float64).reshape(-1) for o in offsets)
        ga, gb = np.meshgrid(a, b, indexing="ij")
        grid = np.stack([ga.ravel(), gb.ravel()], axis=1)
        shape = ga.shape
    kinds = np.array([[0 if n.startswith("lattice") else 1] + [int(v) for v in n.split(":")[1:]] + [0] * (3 - len(n.split(":")))
                      for n in names])
    y, ovf = _slice_kernel(target.template, target.params, target.instrument, jnp.asarray(target.two_theta, dt),
                           target.reflections, jnp.asarray(grid, dt), target.config, tuple(map(tuple, kinds.tolist())),
                           target.cell)
    if bool(np.any(np.asarray(ovf))):
        raise ValueError("slice leaves the enumerated reflections (lattice offsets too large for the target's margin)")
    return y, shape


@functools.partial(jax.jit, static_argnames=("config", "kinds"))
def _slice_kernel(template, params, inst, tt, refl, grid, config, kinds, cell):
    def one(vals):
        p = params
        for (kind, i, k), v in zip(kinds, vals):
            if kind == 0:
                p = dataclasses.replace(p, lattice=p.lattice.at[i].add(v))
            else:
                p = dataclasses.replace(p, coords=p.coords.at[i, k].add(v))
        y, info = simulate(reduce_cell(expand(template, p), cell), inst, tt, refl, config, return_info=True)
        return y, info["overflow"]

    return jax.vmap(one)(grid)


def landscape_slice(target: Target, metric: str, names, offsets, *, metric_options: dict | None = None,
                    patterns=None):
    """Loss of ``metric`` against the target pattern on a grid of offsets of one or two
    parameters (see :func:`slice_patterns`; pass its result as ``patterns`` to evaluate several
    metrics on the same simulations). Returns a NumPy array of the grid's shape."""
    y, shape = patterns if patterns is not None else slice_patterns(target, names, offsets)
    m = get_metric(metric, target.two_theta, **(metric_options or {}))
    out = jax.jit(jax.vmap(m.loss, in_axes=(0, None)))(y, target.pattern)
    return np.asarray(out).reshape(shape)
