"""Mixtures of Gaussians (MoG) in pixel space, and stamps.

Pure functions of arrays (jit/vmap/grad safe).  A MoG is three arrays:
``amps`` (K,) total flux of each component (counts), ``means`` (K, 2) centres
(x, y) in pixels and ``covs`` (K, 2, 2) covariances in pixels^2, ordered
[[xx, xy], [xy, yy]].  A point source is a component with zero covariance.

Sources render into square stamps of side ``S = 2R + 1`` pixels whose origin
(lower-left pixel, integer) is chosen from the source centre; the stamps are
scatter-added into the image.  Pixel values are the mixture *evaluated* at
pixel centres: the PSF is the effective PSF (pixel response included), as in
the Tractor.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = [
    "convolve",
    "eval_stamp",
    "stamp_origin",
    "add_stamps",
    "gather_stamps",
]


def convolve(amps, means, covs, psf_amps, psf_means, psf_covs):
    """Convolve a source MoG (K components) with a PSF MoG (P): K*P components.

    Amplitudes multiply, means and covariances add.  Leading batch axes of the
    source arrays are kept: (..., K) x (P,) -> (..., K*P).
    """
    a = amps[..., :, None] * psf_amps
    m = means[..., :, None, :] + psf_means
    c = covs[..., :, None, :, :] + psf_covs
    batch = amps.shape[:-1]
    n = amps.shape[-1] * psf_amps.shape[0]
    return a.reshape(batch + (n,)), m.reshape(batch + (n, 2)), c.reshape(batch + (n, 2, 2))


def eval_stamp(amps, means, covs, ox, oy, size: int):
    """Evaluate a MoG on the pixel centres of a ``size`` x ``size`` stamp.

    ``ox, oy`` (integers) are the pixel coordinates of the stamp's first
    column and row.  Returns (size, size) counts per pixel, indexed [y, x].
    """
    xs = ox + jnp.arange(size, dtype=means.dtype)
    ys = oy + jnp.arange(size, dtype=means.dtype)
    dx = xs[None, None, :] - means[:, 0, None, None]
    dy = ys[None, :, None] - means[:, 1, None, None]
    vxx, vxy, vyy = covs[:, 0, 0], covs[:, 0, 1], covs[:, 1, 1]
    det = vxx * vyy - vxy * vxy
    ixx, ixy, iyy = vyy / det, -vxy / det, vxx / det
    q = ixx[:, None, None] * dx * dx + 2.0 * ixy[:, None, None] * dx * dy + iyy[:, None, None] * dy * dy
    norm = amps / (2.0 * jnp.pi * jnp.sqrt(det))
    return jnp.sum(norm[:, None, None] * jnp.exp(-0.5 * q), axis=0)


def stamp_origin(cx, cy, radius: int, height: int, width: int):
    """Integer origin (ox, oy) of a stamp of radius ``radius`` centred near (cx, cy).

    The centre is clipped to the image so that stamps of sources off the image
    stay in the padding margin of ``add_stamps`` (where they are discarded).
    ``lax.dynamic_slice``-style negative-index wrapping never happens: origins
    are clipped here explicitly.
    """
    cx = jax.lax.stop_gradient(cx)
    cy = jax.lax.stop_gradient(cy)
    ix = jnp.clip(jnp.round(cx), 0, width - 1).astype(jnp.int32)
    iy = jnp.clip(jnp.round(cy), 0, height - 1).astype(jnp.int32)
    return ix - radius, iy - radius


def add_stamps(image, stamps, ox, oy, pad: int):
    """Scatter-add stamps (n, S, S) at origins (n,) into ``image`` (H, W).

    ``pad`` must be >= the stamp radius; pixels falling outside the image are
    dropped.  Overlapping stamps add.
    """
    H, W = image.shape
    S = stamps.shape[-1]
    padded = jnp.zeros((H + 2 * pad, W + 2 * pad), image.dtype)
    r = jnp.arange(S)
    rows = (oy + pad)[:, None, None] + r[None, :, None]
    cols = (ox + pad)[:, None, None] + r[None, None, :]
    padded = padded.at[rows, cols].add(stamps)
    return image + padded[pad : pad + H, pad : pad + W]


def gather_stamps(image, ox, oy, size: int):
    """Read ``image`` (H, W, ...) on stamps of side ``size`` at origins (n,): (n, S, S, ...).

    Pixels outside the image read as 0.
    """
    H, W = image.shape[:2]
    r = jnp.arange(size)
    rows = oy[:, None, None] + r[None, :, None]
    cols = ox[:, None, None] + r[None, None, :]
    inside = (rows >= 0) & (rows < H) & (cols >= 0) & (cols < W)
    vals = image[jnp.clip(rows, 0, H - 1), jnp.clip(cols, 0, W - 1)]
    inside = inside.reshape(inside.shape + (1,) * (image.ndim - 2))
    return jnp.where(inside, vals, 0.0)
