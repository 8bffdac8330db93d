"""Masked ("double-where") numerics.

``jnp.where(mask, f(x), 0)`` is not enough to keep gradients finite: the VJP of ``f`` is
still evaluated at the masked-out ``x`` and ``0 * inf = nan`` leaks into the gradient. Each
helper below first replaces the unsafe inputs by a safe value, applies ``f`` and then masks
the output (the JAX MD ``safe_mask`` pattern), so masked entries get an exactly-zero gradient.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def safe_mask(mask, fn, x, placeholder=0.0, safe_value=1.0):
    """``fn(x)`` where ``mask`` else ``placeholder``, with finite gradients everywhere."""
    x_safe = jnp.where(mask, x, safe_value)
    return jnp.where(mask, fn(x_safe), placeholder)


def safe_sqrt(x, eps: float = 0.0):
    """sqrt(x) for x > eps, else 0 (zero gradient there)."""
    return safe_mask(x > eps, jnp.sqrt, x, 0.0, 1.0)


def safe_div(num, den, placeholder=0.0):
    """num / den where den != 0, else ``placeholder`` (zero gradient there)."""
    ok = den != 0
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), placeholder)


def safe_arcsin(x):
    """arcsin(x) for |x| < 1; clipped to ±pi/2 (zero gradient) outside."""
    ok = jnp.abs(x) < 1.0
    return jnp.where(ok, jnp.arcsin(jnp.where(ok, x, 0.0)), jnp.sign(x) * (jnp.pi / 2))


def safe_arccos(x):
    """arccos(x) for |x| < 1; clipped to 0 / pi (zero gradient) outside."""
    ok = jnp.abs(x) < 1.0
    return jnp.where(ok, jnp.arccos(jnp.where(ok, x, 0.0)), jnp.where(x > 0, 0.0, jnp.pi))


@jax.custom_jvp
def sincos_turns(p):
    """``(sin 2πp, cos 2πp)`` of a phase ``p`` given in turns.

    float64: ``jnp.sin``/``jnp.cos`` (libm). float32: reduced exactly to ``|2πf| <= π/4``
    (``f = p − round(p) − q/4``) and evaluated with the Cephes ``sinf``/``cosf`` minimax
    polynomials (≈1 ulp), which XLA vectorises; XLA's float32 sin/cos on CPU are scalar calls
    (~10 ns per element). The derivative is the exact ``2π (cos, −sin)``.
    """
    if p.dtype != jnp.float32:
        x = 2.0 * jnp.pi * p
        return jnp.sin(x), jnp.cos(x)
    r = p - jnp.round(p)  # [-1/2, 1/2], exact
    q = jnp.round(4.0 * r)  # quadrant, -2..2
    x = (2.0 * np.pi) * (r - 0.25 * q)  # [-π/4, π/4]
    z = x * x
    s = x + x * z * ((-1.9515295891e-4 * z + 8.3321608736e-3) * z - 1.6666654611e-1)
    c = 1.0 - 0.5 * z + z * z * ((2.443315711809948e-5 * z - 1.388731625493765e-3) * z + 4.166664568298827e-2)
    qi = q.astype(jnp.int32) & 3  # rotate by q·π/2
    sin = jnp.where(qi == 0, s, jnp.where(qi == 1, c, jnp.where(qi == 2, -s, -c)))
    cos = jnp.where(qi == 0, c, jnp.where(qi == 1, -s, jnp.where(qi == 2, -c, s)))
    return sin, cos


@sincos_turns.defjvp
def _sincos_turns_jvp(primals, tangents):
    (p,), (dp,) = primals, tangents
    sin, cos = sincos_turns(p)
    w = 2.0 * np.pi * dp
    return (sin, cos), (cos * w, -sin * w)
