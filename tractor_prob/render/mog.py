"""Mixtures of Gaussians (MoG) in pixel space, and stamps.

Pure functions of arrays (jit/vmap/grad safe).  A MoG is three arrays:
``amps`` (K,) total flux of each component (counts), ``means`` (K, 2) centres
(x, y) in pixels and ``covs`` (K, 2, 2) covariances in pixels^2, ordered
[[xx, xy], [xy, yy]].  A point source is a component with zero covariance.

Sources render into stamps of ``Sy x Sx`` pixels whose origin (lower-left
pixel, integer) is chosen from the source centre; the stamps are scatter-added
into the image.  Pixel values are the mixture *evaluated* at pixel centres: the
PSF is the effective PSF (pixel response included), as in the Tractor.  Wide,
smooth render units may be evaluated every ``step`` pixels and interpolated
(``render_stamp``; the step is chosen by ``psf.mog_step``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "convolve",
    "eval_stamp",
    "render_stamp",
    "upsample",
    "upsample_adjoint",
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


def eval_stamp(amps, means, covs, ox, oy, size: int, size_x: int | None = None, step: int = 1):
    """Evaluate a MoG on the pixel centres of a stamp of ``size`` rows and ``size_x`` columns.

    ``ox, oy`` (integers) are the pixel coordinates of the stamp's first
    column and row; ``size_x`` defaults to ``size`` (square).  With ``step`` > 1
    the points are ``step`` pixels apart (ox + step * i).  Returns
    (size, size_x) counts per pixel, indexed [y, x].
    """
    sx = size if size_x is None else size_x
    xs = ox + step * jnp.arange(sx, dtype=means.dtype)
    ys = oy + step * jnp.arange(size, dtype=means.dtype)
    vxx, vxy, vyy = covs[:, 0, 0], covs[:, 0, 1], covs[:, 1, 1]
    det = vxx * vyy - vxy * vxy
    ixx, ixy, iyy = -0.5 * vyy / det, vxy / det, -0.5 * vxx / det
    norm = amps / (2.0 * jnp.pi * jnp.sqrt(det))
    # one fused elementwise pass per component (unrolled): XLA:CPU handles this
    # several times faster than a reduction over a components axis, for values
    # and forward-mode derivatives alike
    def one(out, p):
        nk, mx, my, a, b, c = p
        dx = xs - mx
        dy = ys - my
        q = (a * dx * dx)[None, :] + dy[:, None] * (b * dx)[None, :] + (c * dy * dy)[:, None]
        return out + nk * jnp.exp(q), None

    K = amps.shape[0]
    params = (norm, means[:, 0], means[:, 1], ixx, ixy, iyy)
    out = jnp.zeros((size, sx), means.dtype)
    if K <= UNROLL_MAX:
        for k in range(K):
            out, _ = one(out, tuple(p[k] for p in params))
        return out
    out, _ = jax.lax.scan(one, out, params, unroll=SCAN_UNROLL)
    return out


#: mixtures of up to UNROLL_MAX components are evaluated by unrolled code; longer ones by a
#: loop, SCAN_UNROLL components per iteration (compile time grows with unrolled code; one
#: per iteration also gave the fastest reverse-mode gradient of a 12-component Sersic).
#: Measured on the benchmark field with component windows (scene._unit_window): 4 makes a
#: fit step 5% faster (the deV cores' 4 wide components skip the loop's zero-filled carry)
#: but its first fit compiles 5.7 s longer (46 vs 40 s, pinned); 8 or 16 gain 2% more
UNROLL_MAX = 2
SCAN_UNROLL = 1


def _lagrange_weights(step: int):
    """(step, 4) weights of the 4-point Lagrange interpolation at phases t = r/step between
    the 2nd and 3rd of four equally spaced nodes."""
    t = np.arange(step) / step
    return np.stack([-t * (t - 1) * (t - 2) / 6, (t + 1) * (t - 1) * (t - 2) / 2,
                     -(t + 1) * t * (t - 2) / 2, (t + 1) * t * (t - 1) / 6], -1)


def n_nodes(size: int, step: int) -> int:
    """Coarse nodes per axis that cover ``size`` pixels at ``step``: node i sits at pixel
    step * (i - 1) of the stamp."""
    return -(-size // step) + 3


def _upsample_axis(c, step: int, size: int, axis: int):
    """Interpolate along ``axis`` (-1 or -2) from n_nodes(size, step) nodes to ``size`` pixels.

    Pixels step * i0 + r (r = 0..step-1) use nodes i0..i0+3 with weights w[r]: four shifted
    slices of the nodes broadcast against the weights, one fused elementwise pass."""
    n0 = -(-size // step)
    w = _lagrange_weights(step)
    out = None
    for s in range(4):
        if axis == -1:
            term = c[..., s : s + n0, None] * jnp.asarray(w[:, s])
        else:
            term = c[..., s : s + n0, None, :] * jnp.asarray(w[:, s])[:, None]
        out = term if out is None else out + term
    if axis == -1:
        return out.reshape(c.shape[:-1] + (n0 * step,))[..., :size]
    return out.reshape(c.shape[:-2] + (n0 * step, c.shape[-1]))[..., :size, :]


def _upsample_adjoint_axis(g, step: int, size: int, axis: int):
    """Adjoint of _upsample_axis: pixels (size along ``axis``) -> nodes (strided slices)."""
    n0 = -(-size // step)
    w = _lagrange_weights(step)
    nd = g.ndim
    if axis == -1:
        gp = jnp.pad(g, [(0, 0)] * (nd - 1) + [(0, n0 * step - size)])
        phases = [gp[..., r::step] for r in range(step)]
    else:
        gp = jnp.pad(g, [(0, 0)] * (nd - 2) + [(0, n0 * step - size), (0, 0)])
        phases = [gp[..., r::step, :] for r in range(step)]
    out = None
    for s in range(4):
        h = None
        for r in range(step):
            if w[r, s] != 0.0:
                term = float(w[r, s]) * phases[r]
                h = term if h is None else h + term
        pads = [(s, 3 - s)] if axis == -1 else [(s, 3 - s), (0, 0)]
        h = jnp.pad(h, [(0, 0)] * (nd - len(pads)) + pads)
        out = h if out is None else out + h
    return out


def upsample(coarse, step: int, size_y: int, size_x: int):
    """Interpolate values on coarse nodes (..., n_nodes(size_y), n_nodes(size_x)) to the
    (..., size_y, size_x) pixels of a stamp (separable 4-point Lagrange; exact at nodes)."""
    return _upsample_axis(_upsample_axis(coarse, step, size_x, -1), step, size_y, -2)


def upsample_adjoint(img, step: int, size_y: int, size_x: int):
    """The adjoint (transpose) of ``upsample``: (..., size_y, size_x) -> nodes."""
    return _upsample_adjoint_axis(_upsample_adjoint_axis(img, step, size_y, -2), step, size_x, -1)


def render_stamp(amps, means, covs, ox, oy, size_y: int, size_x: int, step: int = 1):
    """A MoG on a (size_y, size_x) stamp at origin (ox, oy): evaluated at the pixel centres
    (step 1), or on nodes every ``step`` pixels and interpolated (``upsample``)."""
    if step == 1:
        return eval_stamp(amps, means, covs, ox, oy, size_y, size_x)
    coarse = eval_stamp(amps, means, covs, ox - step, oy - step, n_nodes(size_y, step),
                        n_nodes(size_x, step), step)
    return upsample(coarse, step, size_y, size_x)


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
    """Read ``image`` (..., H, W) on (size_y, size_x) stamps at origins (n,): (..., n, Sy, Sx).

    Origins must keep the stamps inside the image (as ``stamp_origin`` does).
    """
    rows = oy[:, None, None] + jnp.arange(size_y)[None, :, None]
    cols = ox[:, None, None] + jnp.arange(size_x)[None, None, :]
    return image[..., rows, cols]
