"""Checkpoints of the generator: ``DIR/config.json`` (model, grid, lattice statistics, training
settings) and ``DIR/ckpt/<step>/`` written by an orbax ``CheckpointManager`` (parameters keyed by
their path in the module, optimiser state, step).

Corrupt or missing checkpoints raise :class:`CheckpointError` with a one-line message.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .data import PatternGrid
from .flow import LatticeNorm
from .models import Generator, ModelConfig

CONFIG = "config.json"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (missing, corrupt, or for a different model)."""


def flat_params(model: nnx.Module) -> tuple[dict, object]:
    """``({path: array}, graphdef)`` of a module's parameters (plain dict: orbax-friendly)."""
    graphdef, state = nnx.split(model)
    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    return {jax.tree_util.keystr(p): v for p, v in leaves}, graphdef


def to_model(graphdef, template_state, params: dict):
    """Rebuild a module from a graphdef and a flat parameter dict (inside or outside jit)."""
    paths, treedef = jax.tree_util.tree_flatten_with_path(template_state)
    leaves = [params[jax.tree_util.keystr(p)] for p, _ in paths]
    return nnx.merge(graphdef, jax.tree_util.tree_unflatten(treedef, leaves))


@dataclasses.dataclass
class Meta:
    """Everything but the weights: what the model was trained for."""

    model: ModelConfig
    grid: PatternGrid
    lat_norm: LatticeNorm
    max_atoms: int
    elements: list  # atomic numbers seen in training
    max_length: float  # longest lattice edge in training (Å)
    train: dict
    weights: str = "training"  # "training" (params + optimiser state) or "params" (exported)

    def to_json(self) -> dict:
        d = {"model": dataclasses.asdict(self.model), "grid": dataclasses.asdict(self.grid),
             "lat_norm": dataclasses.asdict(self.lat_norm), "max_atoms": self.max_atoms,
             "elements": [int(e) for e in self.elements], "max_length": self.max_length, "train": self.train, "weights": self.weights,
             "format": "xtaljax-generator-1"}
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Meta":
        if d.get("format") != "xtaljax-generator-1":
            raise CheckpointError(f"unknown checkpoint format {d.get('format')!r}")
        m = d["model"]
        m = {k: tuple(v) if isinstance(v, list) else v for k, v in m.items()}
        return cls(ModelConfig(**m), PatternGrid(**d["grid"]),
                   LatticeNorm(tuple(d["lat_norm"]["mean"]), tuple(d["lat_norm"]["std"])), int(d["max_atoms"]),
                   list(d["elements"]), float(d["max_length"]), dict(d.get("train", {})), d.get("weights", "training"))


def write_meta(path, meta: Meta) -> None:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / (CONFIG + ".tmp")
    tmp.write_text(json.dumps(meta.to_json(), indent=1))
    os.replace(tmp, path / CONFIG)


def read_meta(path) -> Meta:
    path = Path(path)
    f = path / CONFIG
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint directory")
    if not f.is_file():
        raise CheckpointError(f"{path}: not a generator checkpoint (no {CONFIG})")
    try:
        return Meta.from_json(json.loads(f.read_text()))
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{f}: corrupt ({type(exc).__name__}: {exc})") from None


def manager(path, *, save_every: int = 1, keep: int = 2):
    import orbax.checkpoint as ocp

    opts = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=save_every, create=True)
    return ocp.CheckpointManager(Path(path).absolute() / "ckpt", options=opts)


def save(mgr, step: int, tree: dict, *, force: bool = False) -> bool:
    import orbax.checkpoint as ocp

    ok = mgr.save(step, args=ocp.args.StandardSave(tree), force=force)
    mgr.wait_until_finished()
    return ok


def restore(mgr, target: dict, step: int | None = None) -> tuple[int, dict]:
    """Latest (or ``step``) checkpoint restored into the structure of ``target``."""
    import orbax.checkpoint as ocp

    step = mgr.latest_step() if step is None else step
    if step is None:
        raise CheckpointError(f"{mgr.directory}: no checkpoint steps")
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), jnp.asarray(a).dtype), target)
    try:
        return step, mgr.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception as exc:  # noqa: BLE001 - orbax/tensorstore raise many types
        msg = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{mgr.directory}: step {step} cannot be restored ({type(exc).__name__}: {msg})") from None


def load_generator(path):
    """``(model, meta)`` from a checkpoint directory (latest step; parameters only)."""
    meta = read_meta(path)
    model = Generator(meta.model, nnx.Rngs(0))
    params, _ = flat_params(model)
    mgr = manager(path)
    if mgr.latest_step() is None:
        raise CheckpointError(f"{path}: checkpoint has no saved weights")
    if meta.weights == "params":
        params = restore(mgr, {"params": params})[1]["params"]
    else:
        from .train import restore_training
        params = restore_training(path, meta)[1]
    graphdef, state = nnx.split(model)
    return to_model(graphdef, state, params), meta


def export(src, dst) -> Path:
    """Write a parameters-only copy of the latest checkpoint of a training directory ``src``
    (what ships in the package: no optimiser state)."""
    from .train import restore_training

    meta = read_meta(src)
    _, params, _, _ = restore_training(src, meta)
    write_meta(dst, dataclasses.replace(meta, weights="params"))
    mgr = manager(dst)
    step = mgr.latest_step()
    save(mgr, (step or 0) + 1, {"params": params}, force=True)
    return Path(dst)
