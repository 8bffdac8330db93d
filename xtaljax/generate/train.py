"""Training of the generator: contrastive pre-training of the XRD encoder (InfoNCE against the
structure encoder), then flow matching with the encoder fine-tuned jointly.

Seeded and resumable: the batch order and every random draw are functions of (seed, step), the
state (parameters, optimiser, step) is saved by orbax every ``save_every`` steps and on Ctrl-C or
SIGTERM,
and a rerun of the same command continues from the latest checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import time
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from . import checkpoint as ck
from .data import Augment, PatternGrid, PatternSource, StructureSet, lattice_to_vec, load_set
from .flow import LatticeNorm, flow_loss, info_nce
from .models import Generator, ModelConfig, n_params


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """What to train on and for how long (stored in the checkpoint's config.json)."""

    train_csv: str
    train_split: str | None = None
    val_csv: str | None = None
    val_split: str | None = None
    limit: int | None = None
    val_limit: int = 512
    max_atoms: int | None = None
    batch: int = 128
    pretrain_steps: int = 1000
    flow_steps: int = 5000
    lr: float = 1e-3
    warmup: int = 200
    p_given: float = 0.5
    contrastive_weight: float = 0.0
    seed: int = 0
    save_every: int = 250
    eval_every: int = 500

    def __post_init__(self):
        ints = {"batch": 1, "pretrain_steps": 0, "flow_steps": 0, "save_every": 1, "eval_every": 1, "val_limit": 1}
        for name, lo in ints.items():
            v = getattr(self, name)
            if int(v) != v or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
        if self.pretrain_steps + self.flow_steps < 1:
            raise ValueError("nothing to train: pretrain_steps + flow_steps is 0")
        if not (self.lr > 0 and 0 <= self.p_given <= 1 and self.contrastive_weight >= 0):
            raise ValueError("need lr > 0, 0 <= p_given <= 1 and contrastive_weight >= 0")


def _term_as_interrupt():
    """SIGTERM (a batch scheduler, ``kill``) raises KeyboardInterrupt, so the state is saved as on
    Ctrl-C. Returns a function restoring the previous handler (no-op off the main thread)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    return lambda: signal.signal(signal.SIGTERM, old)


def optimizer(cfg: TrainConfig):
    def sched(n):
        return optax.warmup_cosine_decay_schedule(0.0, cfg.lr, min(cfg.warmup, max(n // 4, 1)), max(n, 2), cfg.lr * 0.02)

    schedule = optax.join_schedules([sched(cfg.pretrain_steps), sched(cfg.flow_steps)], [cfg.pretrain_steps])
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=1e-5))


def _device_set(data: StructureSet, lat_norm: LatticeNorm) -> dict:
    dt = jnp.zeros(()).dtype
    return {"z": jnp.asarray(data.z), "frac": jnp.asarray(data.frac, dt),
            "lat": lat_norm.encode(jnp.asarray(lattice_to_vec(data.params), dt)), "mask": jnp.asarray(data.mask, dt)}


def batch_indices(seed: int, step: int, n: int, batch: int) -> np.ndarray:
    """Indices of the batch at ``step``: epoch-wise permutations seeded by (seed, epoch)."""
    per_epoch = max(n // batch, 1)
    epoch, pos = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    if n < batch:
        perm = np.resize(perm, batch)
    return perm[pos * batch:(pos + 1) * batch]


def new_meta(cfg: TrainConfig, model_cfg: ModelConfig, grid: PatternGrid, data: StructureSet) -> ck.Meta:
    return ck.Meta(model=model_cfg, grid=grid, lat_norm=LatticeNorm.fit(lattice_to_vec(data.params)),
                   max_atoms=data.max_atoms, elements=sorted(set(int(v) for v in np.unique(data.z)) - {0}),
                   max_length=float(data.params[:, :3].max()), train=dataclasses.asdict(cfg))


def _template(meta: ck.Meta):
    model = Generator(meta.model, nnx.Rngs(meta.train.get("seed", 0)))
    params, graphdef = ck.flat_params(model)
    return model, params, graphdef


def restore_training(path, meta: ck.Meta):
    """``(step, params, opt_state, tx)`` from a training directory's latest checkpoint."""
    cfg = TrainConfig(**meta.train)
    _, params, _ = _template(meta)
    tx = optimizer(cfg)
    target = {"params": params, "opt": tx.init(params), "step": jnp.asarray(0)}
    mgr = ck.manager(path)
    step, tree = ck.restore(mgr, target)
    return int(tree["step"]), tree["params"], tree["opt"], tx


def retrieval(model, data: StructureSet, source: PatternSource, lat_norm: LatticeNorm, key, ks=(1, 10), batch=256) -> dict:
    """Top-k retrieval of the encoder: for each pattern, is the true structure among the k
    structures whose embeddings are most similar (cosine) to the pattern's embedding?"""
    dev = _device_set(data, lat_norm)
    ex, es = [], []
    for s in range(0, len(data), batch):
        idx = np.arange(s, min(s + batch, len(data)))
        y = source.render(idx, jax.random.fold_in(key, s))
        ex.append(model.xrd(y))
        es.append(model.struct(dev["z"][idx], dev["frac"][idx], dev["lat"][idx], dev["mask"][idx]))
    ex = jnp.concatenate(ex)
    es = jnp.concatenate(es)
    ex = ex / jnp.linalg.norm(ex, axis=1, keepdims=True)
    es = es / jnp.linalg.norm(es, axis=1, keepdims=True)
    sim = np.asarray(ex @ es.T)
    rank = (sim > np.diag(sim)[:, None]).sum(axis=1)  # structures scoring above the true one
    return {f"top{k}": float(np.mean(rank < k)) for k in ks} | {"n": len(data)}


def train(cfg: TrainConfig, out, *, model_cfg: ModelConfig = ModelConfig(), grid: PatternGrid = PatternGrid(),
          augment: Augment = Augment(), resume: bool = True, progress: bool = True, stop_after: int | None = None) -> dict:
    """Train (or continue training) into ``out``. ``stop_after``: return after this many steps of
    this call (tests of resumption). Returns a summary dict (also the last line of ``log.jsonl``)."""
    from tqdm.auto import tqdm

    out = Path(out)
    data = load_set(cfg.train_csv, split=cfg.train_split, limit=cfg.limit, max_atoms=cfg.max_atoms)
    existing = (out / ck.CONFIG).is_file()
    if existing and resume:
        meta = ck.read_meta(out)
        if meta.train != dataclasses.asdict(cfg) or meta.model != model_cfg or meta.grid != grid:
            raise ck.CheckpointError(f"{out}: holds a run with different settings; use another --out or --restart")
    else:
        meta = new_meta(cfg, model_cfg, grid, data)
        if existing:
            import shutil
            shutil.rmtree(out / "ckpt", ignore_errors=True)
        ck.write_meta(out, meta)
    val = None
    if cfg.val_csv:
        val = load_set(cfg.val_csv, split=cfg.val_split, limit=cfg.val_limit, max_atoms=data.max_atoms)
    source = PatternSource(data, grid, augment)
    val_source = PatternSource(val, grid, augment) if val is not None else None
    dev = _device_set(data, meta.lat_norm)

    model, params, graphdef = _template(meta)
    _, state0 = nnx.split(model)
    tx = optimizer(cfg)
    opt = tx.init(params)
    step = 0
    mgr = ck.manager(out, save_every=cfg.save_every)
    if resume and mgr.latest_step() is not None:
        step, params, opt, _ = restore_training(out, meta)
    total = cfg.pretrain_steps + cfg.flow_steps

    def loss_fn(p, idx, y, key, stage):
        m = ck.to_model(graphdef, state0, p)
        batch = {k: v[idx] for k, v in dev.items()}
        if stage == 0:
            return info_nce(m, batch, y)
        loss, aux = flow_loss(m, batch, m.xrd(y), key, cfg.p_given)
        if cfg.contrastive_weight > 0:  # keeps the encoder aligned with the structure encoder
            c, caux = info_nce(m, batch, y)
            loss, aux = loss + cfg.contrastive_weight * c, aux | {"infonce": c}
        return loss, aux

    @partial(jax.jit, static_argnames="stage")
    def train_step(p, o, idx, y, key, stage):
        (loss, aux), g = jax.value_and_grad(loss_fn, has_aux=True)(p, idx, y, key, stage)
        upd, o = tx.update(g, o, p)
        return optax.apply_updates(p, upd), o, loss, aux

    @partial(jax.jit, static_argnames="stage")
    def eval_loss(p, idx, y, key, stage):
        return loss_fn(p, idx, y, key, stage)

    log_path = out / "log.jsonl"
    base = jax.random.key(cfg.seed)
    done = 0
    t0 = time.perf_counter()
    summary = {}
    bar = tqdm(total=total, initial=step, disable=not progress, desc="train", dynamic_ncols=True)
    restore_term = _term_as_interrupt()
    try:
        while step < total and (stop_after is None or done < stop_after):
            stage = 0 if step < cfg.pretrain_steps else 1
            key = jax.random.fold_in(base, step)
            kr, kl = jax.random.split(key)
            idx = batch_indices(cfg.seed, step, len(data), cfg.batch)
            y = source.render(idx, kr)
            params, opt, loss, aux = train_step(params, opt, jnp.asarray(idx), y, kl, stage)
            step += 1
            done += 1
            bar.update(1)
            if step % 25 == 0 or step == total:
                bar.set_postfix(stage=("contrastive", "flow")[stage], loss=f"{float(loss):.4f}")
            if step % cfg.save_every == 0 or step == total:
                ck.save(mgr, step, {"params": params, "opt": opt, "step": jnp.asarray(step)})
            if step % cfg.eval_every == 0 or step == total:
                rec = {"step": step, "stage": stage, "loss": float(loss), **{k: float(v) for k, v in aux.items()},
                       "seconds": time.perf_counter() - t0}
                if val is not None:
                    m = ck.to_model(graphdef, state0, params)
                    ev = jax.random.key(cfg.seed + 1)
                    vi = np.arange(min(len(val), 256))
                    vy = val_source.render(vi, ev)
                    vdev = _device_set(val, meta.lat_norm)
                    vb = {k: v[vi] for k, v in vdev.items()}
                    rec["val_flow"] = float(flow_loss(m, vb, m.xrd(vy), ev, cfg.p_given)[0])
                    rec["val_retrieval"] = retrieval(m, val, val_source, meta.lat_norm, ev)
                with log_path.open("a") as fh:
                    fh.write(json.dumps(rec) + "\n")
                summary = rec
    except KeyboardInterrupt:
        ck.save(mgr, step, {"params": params, "opt": opt, "step": jnp.asarray(step)}, force=True)
        bar.close()
        raise
    finally:
        restore_term()
    bar.close()
    if done and step % cfg.save_every:
        ck.save(mgr, step, {"params": params, "opt": opt, "step": jnp.asarray(step)}, force=True)
    summary = summary | {"step": step, "n_params": n_params(model), "n_train": len(data)}
    return summary
