"""Masked ("double-where") numerics.

``jnp.where(mask, f(x), 0)`` is not enough to keep gradients finite: the VJP of ``f`` is
still evaluated at the masked-out ``x`` and ``0 * inf = nan`` leaks into the gradient. Each
helper below first replaces the unsafe inputs by a safe value, applies ``f`` and then masks
the output (the JAX MD ``safe_mask`` pattern), so masked entries get an exactly-zero gradient.
"""

from __future__ import annotations

import jax.numpy as jnp


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
