"""Flax NNX networks of the generator.

* :class:`CNNEncoder` and :class:`TransformerEncoder` map a pattern on the model grid to an
  embedding (PXRDGen's two XRD-encoder families).
* :class:`CSPNet` is a CSPNet/DiffCSP-style message-passing network on the fully connected graph
  of the atoms of one cell. Its edge messages see the two atoms' features, the lattice (log
  lengths and angles: invariant to rotations) and Fourier features of the fractional-coordinate
  difference (invariant to translations, periodic), so the predicted coordinate velocities are
  permutation-equivariant and translation-invariant, the lattice velocity invariant.
  ``pooled=True`` turns it into the structure encoder of the contrastive pre-training.
* :class:`Generator` holds an XRD encoder, the structure encoder and the denoiser.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from .data import MAX_Z


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters (stored with every checkpoint)."""

    encoder: str = "cnn"  # "cnn" or "transformer"
    n_points: int = 1024
    embed_dim: int = 128
    hidden: int = 96
    layers: int = 4
    n_freq: int = 8
    cnn_channels: tuple = (16, 32, 48, 64, 64)
    patch: int = 16
    tf_dim: int = 128
    tf_layers: int = 4
    tf_heads: int = 4


class MLP(nnx.Module):
    def __init__(self, sizes, rngs: nnx.Rngs, final_act: bool = False):
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])
        self.final_act = final_act

    def __call__(self, x):
        for i, lay in enumerate(self.layers):
            x = lay(x)
            if i < len(self.layers) - 1 or self.final_act:
                x = nnx.silu(x)
        return x


class CNNEncoder(nnx.Module):
    """Strided 1-D convolutions (each halves the length), then a dense head on the flattened map
    (keeps where the peaks are, which global pooling would blur)."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        chans = (1,) + tuple(cfg.cnn_channels)
        self.convs = nnx.List([nnx.Conv(a, b, kernel_size=(7 if i == 0 else 5,), strides=(2,), rngs=rngs)
                               for i, (a, b) in enumerate(zip(chans[:-1], chans[1:]))])
        self.norms = nnx.List([nnx.LayerNorm(b, rngs=rngs) for b in chans[1:]])
        length = cfg.n_points
        for _ in cfg.cnn_channels:
            length = -(-length // 2)
        self.head = MLP([length * chans[-1], 2 * cfg.embed_dim, cfg.embed_dim], rngs)

    def __call__(self, y):
        h = y[..., None]
        for conv, norm in zip(self.convs, self.norms):
            h = nnx.gelu(norm(conv(h)))
        return self.head(h.reshape(h.shape[:-2] + (-1,)))


class TransformerEncoder(nnx.Module):
    """Patches of ``patch`` points -> tokens with learned position embeddings -> pre-norm
    Transformer layers -> mean over tokens -> embedding."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        if cfg.n_points % cfg.patch:
            raise ValueError(f"n_points={cfg.n_points} is not a multiple of patch={cfg.patch}")
        self.patch = cfg.patch
        n_tok = cfg.n_points // cfg.patch
        d = cfg.tf_dim
        self.proj = nnx.Linear(cfg.patch, d, rngs=rngs)
        self.pos = nnx.Param(0.02 * jax.random.normal(rngs.params(), (n_tok, d)))
        self.ln1 = nnx.List([nnx.LayerNorm(d, rngs=rngs) for _ in range(cfg.tf_layers)])
        self.ln2 = nnx.List([nnx.LayerNorm(d, rngs=rngs) for _ in range(cfg.tf_layers)])
        self.attn = nnx.List([nnx.MultiHeadAttention(num_heads=cfg.tf_heads, in_features=d, decode=False, rngs=rngs)
                              for _ in range(cfg.tf_layers)])
        self.mlp = nnx.List([MLP([d, 4 * d, d], rngs) for _ in range(cfg.tf_layers)])
        self.out = nnx.Linear(d, cfg.embed_dim, rngs=rngs)

    def __call__(self, y):
        t = y.reshape(y.shape[:-1] + (-1, self.patch))
        h = self.proj(t) + self.pos[...][None]
        for ln1, ln2, attn, mlp in zip(self.ln1, self.ln2, self.attn, self.mlp):
            h = h + attn(ln1(h))
            h = h + mlp(ln2(h))
        return self.out(h.mean(axis=-2))


def make_encoder(cfg: ModelConfig, rngs: nnx.Rngs):
    if cfg.encoder == "cnn":
        return CNNEncoder(cfg, rngs)
    if cfg.encoder == "transformer":
        return TransformerEncoder(cfg, rngs)
    raise ValueError(f"unknown encoder {cfg.encoder!r} (choose 'cnn' or 'transformer')")


def time_features(t, dim: int):
    """Sinusoidal embedding of t in [0, 1]: (..., dim)."""
    half = dim // 2
    freqs = jnp.exp(jnp.linspace(0.0, jnp.log(1000.0), half))
    ang = t[..., None] * freqs.reshape((1,) * t.ndim + (half,))
    return jnp.concatenate([jnp.sin(ang), jnp.cos(ang)], axis=-1)


def fourier_diff(frac, n_freq: int):
    """Periodic features of x_j - x_i: (B, N, N, 6 n_freq)."""
    d = frac[:, None, :, :] - frac[:, :, None, :]
    k = jnp.arange(1, n_freq + 1, dtype=frac.dtype)
    ang = 2 * jnp.pi * d[..., None] * k.reshape((1,) * d.ndim + (n_freq,))
    return jnp.concatenate([jnp.sin(ang), jnp.cos(ang)], axis=-1).reshape(d.shape[:3] + (-1,))


class CSPNet(nnx.Module):
    """Message passing over all atom pairs of a cell.

    Inputs: ``z`` (B, N) atomic numbers, ``frac`` (B, N, 3), ``lat`` (B, 6) normalised lattice
    vector, ``mask`` (B, N); optional ``t`` (B,), ``cond`` (B, E) and ``given`` (B,) (1 where the
    lattice is given, not generated). Returns (coordinate velocity (B, N, 3), lattice velocity
    (B, 6)) or, with ``pooled=True``, the pooled embedding (B, E)."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, *, pooled: bool = False):
        h = cfg.hidden
        self.cfg, self.pooled = cfg, pooled
        self.embed = nnx.Embed(MAX_Z + 1, h, rngs=rngs)
        self.cond = None if pooled else MLP([2 * h + cfg.embed_dim + 1, h, h], rngs)
        edge_in = 2 * h + 6 * cfg.n_freq + 7
        self.edge = nnx.List([MLP([edge_in, h, h], rngs, final_act=True) for _ in range(cfg.layers)])
        self.node = nnx.List([MLP([2 * h, h, h], rngs) for _ in range(cfg.layers)])
        self.norm = nnx.List([nnx.LayerNorm(h, rngs=rngs) for _ in range(cfg.layers)])
        if pooled:
            self.out = MLP([h, h, cfg.embed_dim], rngs)
        else:
            self.coord_out = nnx.Linear(h, 3, rngs=rngs)
            self.lat_out = MLP([h, h, 6], rngs)

    def __call__(self, z, frac, lat, mask, t=None, cond=None, given=None):
        b, n = z.shape
        h = self.embed(z)
        if given is None:
            given = jnp.zeros((b,), frac.dtype)
        if not self.pooled:
            glob = jnp.concatenate([time_features(t, 2 * self.cfg.hidden), cond, given[:, None]], axis=-1)
            h = h + self.cond(glob)[:, None, :]
        pair_mask = mask[:, :, None] * mask[:, None, :]
        n_real = jnp.maximum(mask.sum(axis=1), 1.0)
        fd = fourier_diff(frac, self.cfg.n_freq)
        lat_f = jnp.broadcast_to(jnp.concatenate([lat, given[:, None]], -1)[:, None, None, :], (b, n, n, 7))
        for edge, node, norm in zip(self.edge, self.node, self.norm):
            hi = jnp.broadcast_to(h[:, :, None, :], (b, n, n, h.shape[-1]))
            hj = jnp.broadcast_to(h[:, None, :, :], (b, n, n, h.shape[-1]))
            m = edge(jnp.concatenate([hi, hj, fd, lat_f], axis=-1))
            agg = (m * pair_mask[..., None]).sum(axis=2) / n_real[:, None, None]
            h = norm(h + node(jnp.concatenate([h, agg], axis=-1)))
        pool = (h * mask[..., None]).sum(axis=1) / n_real[:, None]
        if self.pooled:
            return self.out(pool)
        return self.coord_out(h) * mask[..., None], self.lat_out(pool)


class Generator(nnx.Module):
    """XRD encoder + structure encoder (contrastive pre-training) + flow denoiser."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        self.xrd = make_encoder(cfg, rngs)
        self.struct = CSPNet(cfg, rngs, pooled=True)
        self.denoiser = CSPNet(cfg, rngs)
        self.log_temp = nnx.Param(jnp.log(jnp.asarray(0.07)))

    def velocity(self, z, frac, lat, mask, t, emb, given):
        return self.denoiser(z, frac, lat, mask, t=t, cond=emb, given=given)


def n_params(model: nnx.Module) -> int:
    return int(sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))))
