"""Elementwise loss terms the families share (each family's loss module composes them)."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def smooth_l1(x: jax.Array, beta: float = 1.0) -> jax.Array:
  """torch's `smooth_l1_loss` before reduction: `0.5 x^2 / beta` inside `|x| < beta`, `|x| - beta / 2` outside."""
  a = jnp.abs(x)
  return jnp.where(a < beta, 0.5 * a * a / beta, a - 0.5 * beta)


def bce_with_logits(x: jax.Array, target: jax.Array) -> jax.Array:
  """torch's `binary_cross_entropy_with_logits`, elementwise: `max(x, 0) - x t + log(1 + exp(-|x|))`."""
  return jnp.maximum(x, 0.0) - x * target + jnp.log1p(jnp.exp(-jnp.abs(x)))
