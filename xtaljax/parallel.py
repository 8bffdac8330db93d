"""Data parallelism over local devices: split a batch's leading axis across a 1-D device mesh.

One mechanism, used by the batched entry points (``simulate_batch(..., mesh=)``,
``decompose_batch(..., mesh=)``):

* :func:`batch_mesh` builds a 1-D :class:`jax.sharding.Mesh` with one axis named ``"batch"``
  (by default over :func:`jax.local_devices`).
* :func:`shard_leading` pads a pytree's leading (batch) axis to a multiple of the device count
  (repeating the last row, so every shard runs a valid example and there is one shape per
  call) and places every leaf with ``NamedSharding(mesh, P("batch"))``; :func:`replicate`
  places leaves with ``P()`` (a full copy on every device).
* :func:`sharded_vmap` turns a per-example function into ``jit(shard_map(vmap(fn)))``: every
  device runs the vmapped function on its own block of the batch, with no communication; the
  per-example arithmetic is the same as in the single-device ``vmap`` (each device just sees a
  shorter batch). :func:`run_sharded` is the one-call form (pad, place, run, drop the pad).

The outputs stay sharded over the mesh (``out.sharding`` names all devices); ``np.asarray``
gathers them.

Testing on a CPU: ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (set before JAX is
imported) makes the host appear as 8 devices; see ``tests/test_sharding.py``.

Multi-host (documented, not tested): call ``jax.distributed.initialize()`` on every process
first; then ``jax.devices()`` lists the devices of all hosts and ``jax.local_devices()`` this
host's. A mesh over *all* devices, ``batch_mesh(jax.devices())``, is the global mesh; every
process then has to build the same global batch shape and hand JAX only its own rows, e.g. with
``jax.make_array_from_process_local_data(NamedSharding(mesh, P("batch")), local_rows)`` in place
of :func:`shard_leading`'s ``device_put`` (which needs the whole array on this host), and read
back only ``out.addressable_shards``. The ``shard_map`` program itself is unchanged.
With the default ``batch_mesh()`` over local devices each process works on its own batch
independently.
"""

from __future__ import annotations

from functools import lru_cache, partial
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXIS = "batch"

__all__ = ["AXIS", "batch_mesh", "pad_leading", "shard_leading", "replicate", "sharded_vmap", "run_sharded",
           "round_up"]


def batch_mesh(devices: Sequence | None = None) -> Mesh:
    """1-D mesh with the axis ``"batch"`` over ``devices`` (default: :func:`jax.local_devices`)."""
    devs = list(jax.local_devices() if devices is None else devices)
    if not devs:
        raise ValueError("batch_mesh needs at least one device")
    return Mesh(np.asarray(devs, dtype=object), (AXIS,))


def round_up(n: int, mesh: Mesh) -> int:
    """``n`` rounded up to a multiple of the mesh's device count (at least one per device)."""
    d = mesh.devices.size
    return max(-(-int(n) // d), 1) * d


def _batch_size(tree) -> int:
    sizes = {int(np.shape(x)[0]) for x in jax.tree_util.tree_leaves(tree) if np.ndim(x) >= 1}
    if len(sizes) != 1:
        raise ValueError(f"leaves of a batched tree need one common leading size, got {sorted(sizes)}")
    return sizes.pop()


def pad_leading(tree, multiple: int):
    """Pad every non-scalar leaf's leading axis to a multiple of ``multiple`` by repeating its
    last row (scalar leaves are left alone). Returns ``(padded_tree, pad)``; drop the pad with
    ``x[:n]`` (``n`` = original size)."""
    n = _batch_size(tree)
    pad = (-n) % int(multiple)
    if not pad:
        return tree, 0

    def one(x):
        if np.ndim(x) == 0:
            return x
        if isinstance(x, jax.core.Tracer):  # under jit/vmap/grad
            return jnp.concatenate([x, jnp.repeat(x[-1:], pad, axis=0)])
        x = np.asarray(x)  # concrete: pad on the host, one transfer per leaf in shard_leading
        return np.concatenate([x, np.repeat(x[-1:], pad, axis=0)])

    return jax.tree_util.tree_map(one, tree), pad


def shard_leading(tree, mesh: Mesh):
    """Pad the leading (batch) axis of every leaf to a multiple of the device count and place it
    with ``NamedSharding(mesh, P("batch"))``; scalar leaves (no batch axis) are replicated with
    ``P()``. Every non-scalar leaf must have the same leading size. Returns ``(tree, pad)``."""
    tree, pad = pad_leading(tree, mesh.devices.size)
    batched, whole = NamedSharding(mesh, P(AXIS)), NamedSharding(mesh, P())
    shardings = jax.tree_util.tree_map(lambda x: batched if np.ndim(x) >= 1 else whole, tree)
    return jax.device_put(tree, shardings), pad


def replicate(tree, mesh: Mesh):
    """Place every leaf on every device of the mesh (``P()``)."""
    return jax.device_put(tree, NamedSharding(mesh, P()))


@lru_cache(maxsize=64)
def sharded_vmap(fn: Callable, mesh: Mesh, n_batched: int, n_unbatched: int = 0,
                 already_batched: bool = False) -> Callable:
    """``jit(shard_map(vmap(fn)))`` for ``fn(*batched, *unbatched)`` (one example): the first
    ``n_batched`` arguments carry a leading batch axis split over the mesh's ``"batch"`` axis,
    the remaining ``n_unbatched`` are replicated. The batch must already be a multiple of the
    device count (see :func:`shard_leading`). ``already_batched=True``: ``fn`` itself maps over
    the leading axis (e.g. an existing ``jit(vmap(...))``) and is not vmapped again. Cached on
    the arguments (``fn`` by identity), so a module-level or cached ``fn`` compiles once per
    shape. Differentiable: ``jax.grad`` through it gives the single-device gradients, for the
    sharded arguments and for the replicated ones (whose cotangents shard_map's transpose sums
    over the devices); ``tests/test_sharding.py`` checks both through ``simulate_batch``."""
    specs = (P(AXIS),) * n_batched + (P(),) * n_unbatched
    body = fn if already_batched else jax.vmap(fn, in_axes=(0,) * n_batched + (None,) * n_unbatched)
    return jax.jit(jax.shard_map(body, mesh=mesh, in_specs=specs, out_specs=P(AXIS), check_vma=False))


def run_sharded(fn: Callable, batched_args: Sequence, unbatched_args: Sequence, mesh: Mesh) -> Any:
    """Run ``vmap(fn)`` over the leading axis of ``batched_args`` (pytrees) with the batch split
    over ``mesh``; ``unbatched_args`` (pytrees) are shared by every example. ``fn`` takes
    ``(*batched_args, *unbatched_args)`` for one example. Pads to a multiple of the device
    count, and returns the outputs (leading axis = the original batch size, padding removed).
    Every leaf of ``batched_args`` must carry the batch axis."""
    batched_args, unbatched_args = tuple(batched_args), tuple(unbatched_args)
    n = _batch_size(batched_args)
    sharded, pad = shard_leading(batched_args, mesh)
    out = sharded_vmap(fn, mesh, len(batched_args), len(unbatched_args))(*sharded, *replicate(unbatched_args, mesh))
    return _unpad(out, n) if pad else out


@partial(jax.jit, static_argnums=1)
def _unpad(tree, n: int):
    return jax.tree_util.tree_map(lambda a: a[:n], tree)
