"""Riemannian flow matching on the flat torus (fractional coordinates) and in Euclidean space
(the lattice), contrastive pre-training loss, and ODE sampling with diffrax.

Coordinates: prior uniform on [0, 1)^3 per atom; the geodesic from x0 to x1 on the torus is
x_t = x0 + t·u (mod 1) with u = wrap(x1 − x0) ∈ [−½, ½)³, so the target velocity is the constant
u; its mean over the atoms of a cell is removed (a rigid translation is not a different crystal).
Lattice: y = (log a, log b, log c, α, β, γ) standardised with the training set's mean and spread;
prior N(0, I), straight path, target y1 − y0. With the lattice *given* (from indexing), y_t = y1
along the path and the lattice loss is off; the network is told which case it is in, so one
model serves both (the case is drawn per training example with probability ``p_given``).
"""

from __future__ import annotations

import dataclasses

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .data import lattice_to_vec, params_to_matrix, pattern_mismatch, vec_to_params


def wrap(d):
    """Map differences to [−½, ½)."""
    return d - jnp.floor(d + 0.5)


def masked_center(v, mask):
    """Remove the mean over real atoms from (B, N, 3) velocities."""
    n = jnp.maximum(mask.sum(axis=1), 1.0)[:, None, None]
    mean = (v * mask[..., None]).sum(axis=1, keepdims=True) / n
    return (v - mean) * mask[..., None]


@dataclasses.dataclass(frozen=True)
class LatticeNorm:
    """Standardisation of the lattice vector y (see :func:`xtaljax.generate.data.lattice_to_vec`)."""

    mean: tuple
    std: tuple

    @classmethod
    def fit(cls, vec: np.ndarray, floor: float = 0.02) -> "LatticeNorm":
        return cls(tuple(float(v) for v in vec.mean(0)), tuple(float(max(s, floor)) for s in vec.std(0)))

    def _b(self, v, x):
        return jnp.asarray(v, x.dtype).reshape((1,) * (x.ndim - 1) + (6,))

    def encode(self, vec):
        return (vec - self._b(self.mean, vec)) / self._b(self.std, vec)

    def decode(self, y):
        return y * self._b(self.std, y) + self._b(self.mean, y)


def flow_loss(model, batch, emb, key, p_given: float, lattice_weight: float = 1.0):
    """Conditional flow-matching loss of one batch.

    ``batch``: dict with ``z`` (B, N), ``frac`` (B, N, 3), ``lat`` (B, 6) standardised lattice,
    ``mask`` (B, N). ``emb``: (B, E) XRD embeddings. Returns (loss, aux dict)."""
    z, x1, l1, mask = batch["z"], batch["frac"], batch["lat"], batch["mask"]
    b = z.shape[0]
    k1, k2, k3, k4 = jax.random.split(key, 4)
    t = jax.random.uniform(k1, (b,))
    x0 = jax.random.uniform(k2, x1.shape)
    u = masked_center(wrap(x1 - x0), mask)
    xt = jnp.mod(x0 + t[:, None, None] * u, 1.0)
    l0 = jax.random.normal(k3, l1.shape)
    given = jax.random.bernoulli(k4, p_given, (b,)).astype(l1.dtype)
    lt = jnp.where(given[:, None] > 0, l1, (1 - t[:, None]) * l0 + t[:, None] * l1)
    v, vl = model.velocity(z, xt, lt, mask, t, emb, given)
    v = masked_center(v, mask)
    n = jnp.maximum(mask.sum(), 1.0)
    coord = ((v - u) ** 2).sum() / (3 * n)
    lat = (((vl - (l1 - l0)) ** 2).mean(axis=1) * (1 - given)).sum() / jnp.maximum((1 - given).sum(), 1.0)
    return coord + lattice_weight * lat, {"coord": coord, "lattice": lat}


def info_nce(model, batch, y):
    """Symmetric InfoNCE between XRD embeddings of patterns ``y`` and structure embeddings of
    the same rows (learned temperature). Returns (loss, aux)."""
    e_x = model.xrd(y)
    e_s = model.struct(batch["z"], batch["frac"], batch["lat"], batch["mask"])
    e_x = e_x / jnp.linalg.norm(e_x, axis=-1, keepdims=True)
    e_s = e_s / jnp.linalg.norm(e_s, axis=-1, keepdims=True)
    logits = e_x @ e_s.T / jnp.exp(model.log_temp[...])
    labels = jnp.arange(logits.shape[0])
    lx = -jnp.mean(jax.nn.log_softmax(logits, axis=1)[labels, labels])
    ls = -jnp.mean(jax.nn.log_softmax(logits, axis=0)[labels, labels])
    acc = jnp.mean(jnp.argmax(logits, axis=1) == labels)
    return 0.5 * (lx + ls), {"acc": acc}


# ----------------------------------------------------------------------------------------------
# sampling
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Guidance:
    """Differentiable XRD guidance: at each ODE step the network's end-point estimate
    x̂1 = x_t + (1 − t)·v is rendered by the simulator and the velocity is corrected by
    −strength·t·∇(1 − cos(pattern(x̂1), observed)), normalised per structure to unit RMS per atom.
    ``start``: first t at which guidance acts."""

    strength: float = 0.5
    start: float = 0.5


def _guide_grad(x1, l1_phys, z_species, mask, y_obs, sim):
    """∇ of 1 − cosine similarity between simulated and observed patterns w.r.t. (x̂1, lattice y)."""
    instrument, two_theta, refl, config = sim

    def one(x, lp, sp, m, yo, rf):
        lat = params_to_matrix(vec_to_params(lp))
        return pattern_mismatch(x, lat, sp, m, yo, rf, instrument, two_theta, config)

    return jax.vmap(jax.grad(one, argnums=(0, 1)))(x1, l1_phys, z_species, mask, y_obs, refl)


def sample(model, z, mask, emb, key, *, lat_norm: LatticeNorm, lattice=None, steps: int = 200,
           solver: str = "euler", rtol: float = 1e-3, atol: float = 1e-3, guidance: Guidance | None = None,
           guide_sim=None, species=None, y_obs=None):
    """Integrate the learned flow from the prior to t = 1 with diffrax.

    ``z`` (B, N) atomic numbers, ``mask`` (B, N), ``emb`` (B, E) XRD embeddings; ``lattice``
    (B, 6) lattice parameters (Å, degrees) when given. ``solver``: ``"euler"`` (``steps`` fixed
    steps, as PXRDGen) or ``"tsit5"`` (adaptive, ``rtol``/``atol``). With ``guidance``,
    ``guide_sim`` = (instrument, two_theta, stacked reflections, resolved config), ``species``
    (B, N) scatterer indices and ``y_obs`` (B, n_points) are needed.

    Returns ``(frac (B, N, 3) in [0, 1), lattice parameters (B, 6), number of steps)``."""
    graphdef, state = nnx.split(model)
    b, n = z.shape
    dt = emb.dtype
    k1, k2 = jax.random.split(key)
    x0 = jax.random.uniform(k1, (b, n, 3), dt)
    if lattice is not None:
        l_given = lat_norm.encode(lattice_to_vec(jnp.asarray(lattice, dt)))
        given = jnp.ones((b,), dt)
        l0 = l_given
    else:
        given = jnp.zeros((b,), dt)
        l0 = jax.random.normal(k2, (b, 6), dt)

    def field(t, state_y, args):
        params = args
        m = nnx.merge(graphdef, params)
        x, lv = state_y
        xw = jnp.mod(x, 1.0)
        tt = jnp.full((b,), t, dt)
        v, vl = m.velocity(z, xw, lv, mask, tt, emb, given)
        v = masked_center(v, mask)
        vl = vl * (1 - given[:, None])
        if guidance is not None:
            x1 = xw + (1 - t) * v
            l1 = lv + (1 - t) * vl
            gx, gl = _guide_grad(x1, lat_norm.decode(l1), species, mask, y_obs, guide_sim)
            gx = masked_center(gx, mask)
            rms = jnp.sqrt((gx ** 2).sum(axis=(1, 2)) / jnp.maximum(mask.sum(1), 1.0))[:, None, None]
            w = jnp.where(t >= guidance.start, guidance.strength * t, 0.0)
            v = v - w * gx / jnp.maximum(rms, 1e-12)
            gl = gl * jnp.asarray(lat_norm.std, gl.dtype)[None, :] * (1 - given[:, None])
            vl = vl - w * gl / jnp.maximum(jnp.linalg.norm(gl, axis=1, keepdims=True), 1e-12) * 0.1
        return v, vl

    term = diffrax.ODETerm(field)
    if solver == "euler":
        sol = diffrax.diffeqsolve(term, diffrax.Euler(), 0.0, 1.0, 1.0 / steps, (x0, l0), args=state,
                                  stepsize_controller=diffrax.ConstantStepSize(), max_steps=steps + 1,
                                  saveat=diffrax.SaveAt(t1=True))
    elif solver == "tsit5":
        sol = diffrax.diffeqsolve(term, diffrax.Tsit5(), 0.0, 1.0, 0.05, (x0, l0), args=state,
                                  stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol), max_steps=4096,
                                  saveat=diffrax.SaveAt(t1=True))
    else:
        raise ValueError(f"unknown solver {solver!r} (choose 'euler' or 'tsit5')")
    x1, l1 = sol.ys
    frac = jnp.mod(x1[0], 1.0) * mask[..., None]
    params = vec_to_params(lat_norm.decode(l1[0]))
    return frac, params, sol.stats["num_steps"]
