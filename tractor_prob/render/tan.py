"""Gnomonic (FITS ``TAN``) world coordinate system, as pure JAX functions.

This is the standard FITS ``RA---TAN`` / ``DEC--TAN`` projection (Calabretta &
Greisen 2002, "Paper II") with the native pole at the default
``LONPOLE = 180`` degrees, i.e. the convention used by wcslib/astropy and by
astrometry.net's ``Tan`` class (``tractor.ConstantFitsWcs``) for any reference
declination other than +90 degrees.  For ``CRVAL2 == +90`` exactly, wcslib's
default becomes ``LONPOLE = 0`` (image rotated by 180 degrees relative to this
module, which keeps 180 like astrometry.net); such headers are not supported
here.  SIP distortions are not supported.

All functions are pure functions of arrays: they can be ``jax.jit``-ed,
``jax.vmap``-ed and differentiated (``jax.grad``, ``jax.jacfwd``...) with
respect to every argument, including the WCS parameters.  Computations are done
in the default JAX floating dtype, so enable 64-bit mode
(``jax.config.update("jax_enable_x64", True)``) for sub-milli-pixel accuracy.

Conventions
-----------
* Angles (``ra``, ``dec``, ``crval``) are in **degrees**.
* Pixel coordinates ``(x, y)`` are **0-indexed**: ``(0, 0)`` is the centre of
  the first pixel, so ``x = FITS_pixel_1 - 1`` (same as astropy's
  ``origin=0`` and the Tractor's ``ConstantFitsWcs``).
* ``crpix`` is the FITS (1-indexed) reference pixel ``(CRPIX1, CRPIX2)``.
* ``cd`` is the ``(2, 2)`` CD matrix in degrees per pixel with
  ``cd[i, j] = CD{i+1}_{j+1}``, so intermediate world coordinates
  ``[xi, eta] = cd @ [x - (crpix1 - 1), y - (crpix2 - 1)]``.
"""

from __future__ import annotations

import jax.numpy as jnp

__all__ = ["cd_inverse", "radec_to_pixel", "pixel_to_radec", "radec_to_intermediate",
           "intermediate_to_radec"]

_DEG = jnp.pi / 180.0
_RAD = 180.0 / jnp.pi


def _as_float(a):
    """Convert to a JAX array of (at least) the default float dtype."""
    a = jnp.asarray(a)
    return a.astype(jnp.promote_types(a.dtype, float))


def cd_inverse(cd):
    """Inverse of a 2x2 CD matrix (closed form; differentiable).

    Parameters
    ----------
    cd : array_like, shape (2, 2)
        CD matrix in degrees per pixel, ``cd[i, j] = CD{i+1}_{j+1}``.

    Returns
    -------
    cdinv : jax.Array, shape (2, 2)
        Inverse matrix, in pixels per degree.  Infinite/NaN if ``cd`` is
        singular.
    """
    cd = _as_float(cd)
    a, b = cd[0, 0], cd[0, 1]
    c, d = cd[1, 0], cd[1, 1]
    det = a * d - b * c
    return jnp.stack([jnp.stack([d, -b]), jnp.stack([-c, a])]) / det


def radec_to_intermediate(ra, dec, crval):
    """Gnomonic projection of sky positions onto the tangent plane.

    Parameters
    ----------
    ra, dec : array_like
        Right ascension and declination in degrees (broadcastable).
    crval : array_like, shape (2,)
        Tangent point ``(CRVAL1, CRVAL2)`` in degrees.

    Returns
    -------
    xi, eta : jax.Array
        Intermediate world coordinates in degrees (``xi`` towards increasing
        RA, ``eta`` towards the north celestial pole), with the broadcast shape
        of ``ra`` and ``dec``.

    Notes
    -----
    Points on the far hemisphere (angular distance from the tangent point
    >= 90 degrees, where the projection denominator ``D <= 0``) have no valid
    gnomonic projection.  They are *not* flagged: the returned values are
    finite (or infinite exactly at 90 degrees) but meaningless, and callers
    must exclude such points themselves if they can occur.
    """
    ra = _as_float(ra)
    dec = _as_float(dec)
    crval = _as_float(crval)
    d0 = crval[1] * _DEG
    da = (ra - crval[0]) * _DEG
    d = dec * _DEG
    cos_d = jnp.cos(d)
    sin_d0, cos_d0 = jnp.sin(d0), jnp.cos(d0)
    # 1 - cos(da) written without cancellation for small offsets.
    one_minus_cos = 2.0 * jnp.sin(0.5 * da) ** 2
    # D = sin d sin d0 + cos d cos d0 cos da
    denom = jnp.cos(d - d0) - cos_d * cos_d0 * one_minus_cos
    xi = cos_d * jnp.sin(da) / denom
    # sin d cos d0 - cos d sin d0 cos da
    eta = (jnp.sin(d - d0) + cos_d * sin_d0 * one_minus_cos) / denom
    return xi * _RAD, eta * _RAD


def intermediate_to_radec(xi, eta, crval):
    """Inverse gnomonic projection from the tangent plane to the sky.

    Parameters
    ----------
    xi, eta : array_like
        Intermediate world coordinates in degrees (broadcastable).
    crval : array_like, shape (2,)
        Tangent point ``(CRVAL1, CRVAL2)`` in degrees.

    Returns
    -------
    ra, dec : jax.Array
        Sky position in degrees, ``ra`` wrapped to ``[0, 360)`` and ``dec`` in
        ``[-90, 90]``.  Exactly at a celestial pole RA is undefined (the value
        returned is that of ``atan2(0, 0)``, and its gradient is NaN).
    """
    xi = _as_float(xi) * _DEG
    eta = _as_float(eta) * _DEG
    crval = _as_float(crval)
    d0 = crval[1] * _DEG
    sin_d0, cos_d0 = jnp.sin(d0), jnp.cos(d0)
    # Unnormalised direction vector (in the frame where the tangent point's
    # meridian is the x-z plane): (cos d0 - eta sin d0, xi, sin d0 + eta cos d0)
    px = cos_d0 - eta * sin_d0
    pz = sin_d0 + eta * cos_d0
    ra = crval[0] + jnp.arctan2(xi, px) * _RAD
    dec = jnp.arctan2(pz, jnp.sqrt(xi * xi + px * px)) * _RAD
    ra = jnp.mod(ra, 360.0)
    # mod of a tiny negative number can round to exactly 360.
    ra = jnp.where(ra >= 360.0, ra - 360.0, ra)
    return ra, dec


def radec_to_pixel(ra, dec, crval, crpix, cd):
    """Sky position to 0-indexed pixel coordinates through a TAN WCS.

    Parameters
    ----------
    ra, dec : array_like
        Right ascension and declination in degrees (broadcastable).
    crval : array_like, shape (2,)
        Reference sky position ``(CRVAL1, CRVAL2)`` in degrees.
    crpix : array_like, shape (2,)
        FITS (1-indexed) reference pixel ``(CRPIX1, CRPIX2)``.
    cd : array_like, shape (2, 2)
        CD matrix in degrees per pixel, ``cd[i, j] = CD{i+1}_{j+1}``.

    Returns
    -------
    x, y : jax.Array
        0-indexed pixel coordinates (pixel ``(0, 0)`` is the centre of the
        first pixel), with the broadcast shape of ``ra`` and ``dec``.

    Notes
    -----
    Positions 90 degrees or more from ``crval`` (far hemisphere) cannot be
    projected; they are not flagged and give meaningless (finite, or infinite
    at exactly 90 degrees) pixel coordinates.  See
    :func:`radec_to_intermediate`.

    Examples
    --------
    >>> x, y = radec_to_pixel(42.3, 9.7, [42., 9.], [100., 100.],
    ...                       [[0.1, 0.], [0., 0.1]])   # doctest: +SKIP
    >>> float(x), float(y)                              # doctest: +SKIP
    (101.95735707..., 106.00165290...)
    """
    crpix = _as_float(crpix)
    xi, eta = radec_to_intermediate(ra, dec, crval)
    cdi = cd_inverse(cd)
    u = cdi[0, 0] * xi + cdi[0, 1] * eta
    v = cdi[1, 0] * xi + cdi[1, 1] * eta
    return u + (crpix[0] - 1.0), v + (crpix[1] - 1.0)


def pixel_to_radec(x, y, crval, crpix, cd):
    """0-indexed pixel coordinates to sky position through a TAN WCS.

    Parameters
    ----------
    x, y : array_like
        0-indexed pixel coordinates (broadcastable).
    crval : array_like, shape (2,)
        Reference sky position ``(CRVAL1, CRVAL2)`` in degrees.
    crpix : array_like, shape (2,)
        FITS (1-indexed) reference pixel ``(CRPIX1, CRPIX2)``.
    cd : array_like, shape (2, 2)
        CD matrix in degrees per pixel, ``cd[i, j] = CD{i+1}_{j+1}``.

    Returns
    -------
    ra, dec : jax.Array
        Right ascension in degrees wrapped to ``[0, 360)`` and declination in
        degrees, with the broadcast shape of ``x`` and ``y``.  Every pixel maps
        to a point on the near hemisphere (the inverse is defined on the whole
        tangent plane).
    """
    crpix = _as_float(crpix)
    cd = _as_float(cd)
    u = _as_float(x) - (crpix[0] - 1.0)
    v = _as_float(y) - (crpix[1] - 1.0)
    xi = cd[0, 0] * u + cd[0, 1] * v
    eta = cd[1, 0] * u + cd[1, 1] * v
    return intermediate_to_radec(xi, eta, crval)
