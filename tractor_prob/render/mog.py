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


def eval_stamp(amps, means, covs, ox, oy, size: int, size_x: int | None = None):
    """Evaluate a MoG on the pixel centres of a stamp of ``size`` rows and ``size_x`` columns.

    ``ox, oy`` (integers) are the pixel coordinates of the stamp's first
    column and row; ``size_x`` defaults to ``size`` (square).  Returns
    (size, size_x) counts per pixel, indexed [y, x].
    """
    sx = size if size_x is None else size_x
    xs = ox + jnp.arange(sx, dtype=means.dtype)
    ys = oy + jnp.arange(size, dtype=means.dtype)
    dx = xs[None, None, :] - means[:, 0, None, None]
    dy = ys[None, :, None] - means[:, 1, None, None]
    vxx, vxy, vyy = covs[:, 0, 0], covs[:, 0, 1], covs[:, 1, 1]
    det = vxx * vyy - vxy * vxy
    ixx, ixy, iyy = vyy / det, -vxy / det, vxx / det
    q = ixx[:, None, None] * dx * dx + 2.0 * ixy[:, None, None] * dx * dy + iyy[:, None, None] * dy * dy
    norm = amps / (2.0 * jnp.pi * jnp.sqrt(det))
    return jnp.sum(norm[:, None, None] * jnp.exp(-0.5 * q), axis=0)


def stamp_origin(cx, cy, size_y: int, size_x: int, height: int, width: int):
    """Integer origin (ox, oy) of a (size_y, size_x) stamp centred near (cx, cy).

    The origin is clipped so that the stamp lies inside the (height, width)
    image (stamps are never larger than the image).  This loses nothing: a
    stamp of half-size R covers every image pixel within R of its source.
    Stamps of sources off the image sit at the edge and hold the source's
    (faint) wing there.  Origins are clipped explicitly, so no negative index
    ever wraps around.
    """
    cx = jax.lax.stop_gradient(cx)
    cy = jax.lax.stop_gradient(cy)
    ix = jnp.clip(jnp.round(cx).astype(jnp.int32) - size_x // 2, 0, width - size_x)
    iy = jnp.clip(jnp.round(cy).astype(jnp.int32) - size_y // 2, 0, height - size_y)
    return ix, iy


def add_stamps(image, stamps, ox, oy):
    """Scatter-add stamps (n, Sy, Sx) at origins (n,) into ``image`` (H, W).

    Overlapping stamps add.  Pixels falling outside the image are dropped
    (``stamp_origin`` never produces any; this is a safety net).
    """
    H, W = image.shape
    Sy, Sx = stamps.shape[-2:]
    rows = oy[:, None, None] + jnp.arange(Sy)[None, :, None]
    cols = ox[:, None, None] + jnp.arange(Sx)[None, None, :]
    # negative indices would wrap (numpy-style): send them out of bounds, where they drop
    rows = jnp.where(rows < 0, H, rows)
    cols = jnp.where(cols < 0, W, cols)
    return image.at[rows, cols].add(stamps, mode="drop")


def gather_stamps(image, ox, oy, size_y: int, size_x: int):
    """Read ``image`` (H, W, ...) on (size_y, size_x) stamps at origins (n,): (n, Sy, Sx, ...).

    Origins must keep the stamps inside the image (as ``stamp_origin`` does).
    """
    rows = oy[:, None, None] + jnp.arange(size_y)[None, :, None]
    cols = ox[:, None, None] + jnp.arange(size_x)[None, None, :]
    return image[rows, cols]
