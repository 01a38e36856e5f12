"""Tests of the pure-JAX gnomonic (TAN) WCS against astropy/wcslib."""

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from astropy.io import fits  # noqa: E402
from astropy.wcs import WCS  # noqa: E402

from tractor_prob.render.tan import cd_inverse, pixel_to_radec, radec_to_pixel  # noqa: E402

NPIX = 2000  # image is NPIX x NPIX, pixel centres 0 .. NPIX-1 (0-indexed)
ARCSEC = 1.0 / 3600.0


def _rot_cd(scale_arcsec, theta_deg, flip=True, skew=0.0):
    """CD matrix (deg/pix) with pixel scale, rotation, RA flip and skew."""
    s = scale_arcsec * ARCSEC
    t = np.deg2rad(theta_deg)
    r = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    f = np.diag([-1.0 if flip else 1.0, 1.0])
    k = np.array([[1.0, skew], [0.0, 1.0]])
    return s * (r @ f @ k)


# name -> (crval, crpix, cd)
WCSS = {
    # ordinary DECam-like image, east to the left (flipped RA axis)
    "ordinary": ((150.0, 2.0), (1000.5, 1000.5), _rot_cd(0.262, 0.0)),
    # rotated by 37 deg, skewed, non-square-ish, reference pixel off the image
    "rotated_skewed": ((210.3, -41.7), (-250.3, 2300.8),
                       _rot_cd(0.4, 37.0, skew=0.07) * np.array([[1.0, 1.0], [1.0, 1.1]])),
    # tangent point just west of RA = 0: the field straddles the 0/360 wrap
    "ra_wrap": ((359.99, -30.0), (1000.5, 1000.5), _rot_cd(1.0, 10.0)),
    # near the north pole but not containing it
    "north_near_pole": ((37.0, 89.95), (1000.5, 1000.5), _rot_cd(0.1, 20.0)),
    # a field that contains the north celestial pole
    "north_pole_in_field": ((123.0, 89.95), (1000.5, 1000.5), _rot_cd(1.0, -15.0)),
    # near the south pole
    "south_near_pole": ((280.0, -89.9), (1000.5, 1000.5), _rot_cd(0.262, 65.0)),
    # a field that contains the south celestial pole
    "south_pole_in_field": ((280.0, -89.9), (800.0, 1200.0), _rot_cd(0.5, 65.0)),
}


def _astropy_wcs(crval, crpix, cd):
    hdr = fits.Header()
    hdr["NAXIS"] = 2
    hdr["NAXIS1"] = NPIX
    hdr["NAXIS2"] = NPIX
    hdr["CTYPE1"] = "RA---TAN"
    hdr["CTYPE2"] = "DEC--TAN"
    hdr["CRVAL1"], hdr["CRVAL2"] = crval
    hdr["CRPIX1"], hdr["CRPIX2"] = crpix
    for i in range(2):
        for j in range(2):
            hdr[f"CD{i + 1}_{j + 1}"] = float(cd[i, j])
    return WCS(hdr)


def _pixel_grid(n=41):
    g = np.linspace(-0.5, NPIX - 0.5, n)
    x, y = np.meshgrid(g, g)
    return x.ravel(), y.ravel()


def _unit(ra, dec):
    ra, dec = np.deg2rad(ra), np.deg2rad(dec)
    return np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)], -1)


def _sep_pix(ra1, dec1, ra2, dec2, cd):
    """Angular separation (chord, exact at these scales) in pixels."""
    chord = np.linalg.norm(_unit(ra1, dec1) - _unit(ra2, dec2), axis=-1)
    scale_deg = np.sqrt(abs(np.linalg.det(cd)))
    return np.rad2deg(chord) / scale_deg


# jitted versions (compiled once per input shape) keep the test-suite fast;
# the eager path is exercised by test_tutorial_numbers and test_jit_and_vmap.
_fwd = jax.jit(radec_to_pixel)
_inv = jax.jit(pixel_to_radec)


# --------------------------------------------------------------------------
# Tractor tutorial example
# --------------------------------------------------------------------------

def test_tutorial_numbers():
    crval, crpix, cd = (42.0, 9.0), (100.0, 100.0), [[0.1, 0.0], [0.0, 0.1]]
    x, y = radec_to_pixel(42.3, 9.7, crval, crpix, cd)
    assert x.dtype == jnp.float64 and y.dtype == jnp.float64
    assert abs(float(x) - 101.957357071) < 1e-9
    assert abs(float(y) - 106.001652903) < 1e-9
    ra, dec = pixel_to_radec(x, y, crval, crpix, cd)
    assert abs(float(ra) - 42.3) < 1e-12
    assert abs(float(dec) - 9.7) < 1e-12
    # the reference pixel maps exactly to the reference sky position
    ra0, dec0 = pixel_to_radec(99.0, 99.0, crval, crpix, cd)
    assert abs(float(ra0) - 42.0) < 1e-13 and abs(float(dec0) - 9.0) < 1e-13


def test_cd_inverse():
    cd = WCSS["rotated_skewed"][2]
    np.testing.assert_allclose(np.asarray(cd_inverse(cd)) @ cd, np.eye(2), atol=1e-12)


# --------------------------------------------------------------------------
# Agreement with astropy / wcslib
# --------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(WCSS))
def test_against_astropy(name):
    crval, crpix, cd = WCSS[name]
    w = _astropy_wcs(crval, crpix, cd)
    x, y = _pixel_grid()

    # inverse: pixel -> sky, compared with astropy as an angular separation
    ra_ap, dec_ap = w.all_pix2world(x, y, 0)
    ra, dec = (np.asarray(a) for a in _inv(x, y, crval, crpix, cd))
    assert np.all((ra >= 0.0) & (ra < 360.0))
    assert np.all(np.abs(dec) <= 90.0)
    assert np.max(_sep_pix(ra, dec, ra_ap, dec_ap, cd)) < 1e-8
    assert np.max(np.abs(dec - dec_ap)) / np.sqrt(abs(np.linalg.det(cd))) < 1e-8

    # forward: sky (astropy's) -> pixel, compared with astropy's world2pix and the grid
    xf, yf = (np.asarray(a) for a in _fwd(ra_ap, dec_ap, crval, crpix, cd))
    x_ap, y_ap = w.all_world2pix(ra_ap, dec_ap, 0)
    assert np.max(np.hypot(xf - x_ap, yf - y_ap)) < 1e-8
    assert np.max(np.hypot(xf - x, yf - y)) < 1e-8

    # round trip through our own functions
    xr, yr = (np.asarray(a) for a in _fwd(ra, dec, crval, crpix, cd))
    assert np.max(np.hypot(xr - x, yr - y)) < 1e-8


def test_wrap_field_straddles_zero():
    crval, crpix, cd = WCSS["ra_wrap"]
    x, y = _pixel_grid()
    ra, _ = (np.asarray(a) for a in _inv(x, y, crval, crpix, cd))
    # both sides of the wrap are present, and nothing lies in between
    assert np.any(ra < 1.0) and np.any(ra > 359.0)
    assert not np.any((ra > 1.0) & (ra < 359.0))
    # forward projection is continuous across the wrap: ra and ra-360 agree
    xa, ya = _fwd(0.2, -30.1, crval, crpix, cd)
    xb, yb = _fwd(-359.8, -30.1, crval, crpix, cd)
    xc, yc = _fwd(360.2, -30.1, crval, crpix, cd)
    assert abs(float(xa - xb)) < 1e-8 and abs(float(ya - yb)) < 1e-8
    assert abs(float(xa - xc)) < 1e-8 and abs(float(ya - yc)) < 1e-8


@pytest.mark.parametrize("name,pole_dec", [("north_pole_in_field", 90.0),
                                           ("south_pole_in_field", -90.0)])
def test_pole_in_field(name, pole_dec):
    crval, crpix, cd = WCSS[name]
    w = _astropy_wcs(crval, crpix, cd)
    xp_ap, yp_ap = w.all_world2pix([0.0], [pole_dec], 0)
    assert -0.5 < xp_ap[0] < NPIX - 0.5 and -0.5 < yp_ap[0] < NPIX - 0.5  # pole is on the image
    # the pole projects to the same pixel whatever the RA
    for ra in (0.0, 77.0, 181.0, 359.0):
        xp, yp = _fwd(ra, pole_dec, crval, crpix, cd)
        assert np.hypot(float(xp) - xp_ap[0], float(yp) - yp_ap[0]) < 1e-8
    # and back again
    _, dec = _inv(xp_ap[0], yp_ap[0], crval, crpix, cd)
    assert abs(float(dec) - pole_dec) < 1e-10


# --------------------------------------------------------------------------
# Gradients
# --------------------------------------------------------------------------

@jax.jit
def _xy(ra, dec, crval, crpix, cd):
    return jnp.stack(radec_to_pixel(ra, dec, crval, crpix, cd))


_xy_jac = jax.jit(jax.jacfwd(_xy, argnums=(0, 1, 2, 3, 4)))
_x_grad = jax.jit(jax.grad(lambda *a: _xy(*a)[0], argnums=(0, 1, 2, 3, 4)))


@jax.jit
def _radec(x, y, crval, crpix, cd):
    return jnp.stack(pixel_to_radec(x, y, crval, crpix, cd))


def _fd_jacobian(f, args, argnum, h):
    """Central finite-difference Jacobian of f w.r.t. args[argnum] (step h)."""
    a0 = np.asarray(args[argnum], dtype=np.float64)
    out = []
    for idx in np.ndindex(a0.shape):
        ap, am = a0.copy(), a0.copy()
        ap[idx] += h
        am[idx] -= h
        fp = np.asarray(f(*args[:argnum], ap, *args[argnum + 1:]))
        fm = np.asarray(f(*args[:argnum], am, *args[argnum + 1:]))
        out.append((fp - fm) / (2 * h))
    return np.stack(out, axis=-1).reshape(np.shape(out[0]) + a0.shape)


@pytest.mark.parametrize("name", ["ordinary", "rotated_skewed", "north_near_pole"])
def test_forward_gradients_match_finite_differences(name):
    crval, crpix, cd = WCSS[name]
    crval, crpix, cd = np.array(crval), np.array(crpix), np.array(cd)
    # a sky position well inside the image, far from the reference point
    ra, dec = (float(v) for v in _radec(1700.0, 250.0, crval, crpix, cd))
    args = (ra, dec, crval, crpix, cd)
    scale = np.sqrt(abs(np.linalg.det(cd)))
    # steps: 1e-6 deg on angles (tens of milli-pixels), 1e-3 pix on crpix,
    # 1e-6 relative on the CD matrix; the maps are smooth on scales of ~1 rad
    # (and exactly linear in crpix), so truncation errors are ~1e-12 relative.
    steps = {0: 1e-6, 1: 1e-6, 2: 1e-6, 3: 1e-3, 4: 1e-6 * scale}
    jac = _xy_jac(*args)
    for argnum, h in steps.items():
        j_ad = np.asarray(jac[argnum])
        j_fd = _fd_jacobian(_xy, args, argnum, h)
        assert j_ad.shape == j_fd.shape
        assert np.all(np.isfinite(j_ad))
        np.testing.assert_allclose(j_ad, j_fd, rtol=1e-6, atol=1e-6 * np.max(np.abs(j_fd)),
                                   err_msg=f"argnum {argnum}")
    # sanity on the physics: d(x)/d(crpix1) = 1, d(y)/d(crpix2) = 1
    np.testing.assert_allclose(np.asarray(jac[3]), np.eye(2), atol=1e-12)
    # reverse mode agrees with forward mode
    g = _x_grad(*args)
    for argnum in range(5):
        np.testing.assert_allclose(np.asarray(g[argnum]), np.asarray(jac[argnum])[0],
                                   rtol=1e-12, atol=1e-12 * np.max(np.abs(jac[argnum])))


def test_inverse_gradients():
    crval, crpix, cd = (np.array(v) for v in WCSS["rotated_skewed"])
    x, y = 1234.5, 321.0
    radec = _radec

    # d(ra,dec)/d(x,y) is the inverse of d(x,y)/d(ra,dec)
    j_inv = np.asarray(jnp.stack(jax.jacfwd(radec, argnums=(0, 1))(x, y, crval, crpix, cd), -1))
    ra, dec = (float(v) for v in radec(x, y, crval, crpix, cd))
    j_fwd = np.asarray(jnp.stack(jax.jacfwd(_xy, argnums=(0, 1))(ra, dec, crval, crpix, cd), -1))
    np.testing.assert_allclose(j_inv @ j_fwd, np.eye(2), atol=1e-10)

    # d(ra,dec)/d(cd) against finite differences
    scale = np.sqrt(abs(np.linalg.det(cd)))
    j_ad = np.asarray(jax.jacfwd(radec, argnums=4)(x, y, crval, crpix, cd))
    j_fd = _fd_jacobian(radec, (x, y, crval, crpix, cd), 4, 1e-6 * scale)
    np.testing.assert_allclose(j_ad, j_fd, rtol=1e-6, atol=1e-6 * np.max(np.abs(j_fd)))


# --------------------------------------------------------------------------
# jit / vmap / dtype
# --------------------------------------------------------------------------

def test_jit_and_vmap():
    # jit reproduces the eager tutorial numbers
    tut = (jnp.array([42.0, 9.0]), jnp.array([100.0, 100.0]), jnp.array([[0.1, 0.0], [0.0, 0.1]]))
    x, y = _fwd(42.3, 9.7, *tut)
    assert abs(float(x) - 101.957357071) < 1e-9 and abs(float(y) - 106.001652903) < 1e-9
    ra, dec = _inv(x, y, *tut)
    assert abs(float(ra) - 42.3) < 1e-12 and abs(float(dec) - 9.7) < 1e-12

    # vmap over a batch of WCSs (different tangent points and rotations)
    crval, crpix, cd = (jnp.asarray(v) for v in WCSS["ordinary"])
    crvals = jnp.stack([crval, crval + jnp.array([0.01, -0.02]), jnp.array([10.0, 50.0])])
    cds = jnp.stack([cd, jnp.asarray(_rot_cd(0.3, 30.0)), jnp.asarray(_rot_cd(1.0, -70.0))])
    fwd = jax.jit(jax.vmap(radec_to_pixel, in_axes=(None, None, 0, None, 0)))
    xb, yb = fwd(150.01, 2.01, crvals, crpix, cds)
    assert xb.shape == (3,)
    for k in range(3):
        xk, yk = _fwd(150.01, 2.01, crvals[k], crpix, cds[k])
        assert abs(float(xb[k] - xk)) < 1e-9 and abs(float(yb[k] - yk)) < 1e-9
    # the three WCSs really are different
    assert len(set(np.round(np.asarray(xb), 3))) == 3
    # vmap of the inverse over pixel positions matches the batched call
    xs, ys = jnp.array([0.0, 500.0, 1999.0]), jnp.array([10.0, 1500.0, 3.0])
    inv_v = jax.vmap(pixel_to_radec, in_axes=(0, 0, None, None, None))
    ra_v, dec_v = inv_v(xs, ys, crval, crpix, cd)
    ra_b, dec_b = _inv(xs, ys, crval, crpix, cd)
    np.testing.assert_allclose(np.asarray(ra_v), np.asarray(ra_b), rtol=0, atol=1e-11)
    np.testing.assert_allclose(np.asarray(dec_v), np.asarray(dec_b), rtol=0, atol=1e-11)

    # broadcasting: (n,1) against (1,m)
    xx, yy = _fwd(ra_b[:, None], dec_b[None, :2], crval, crpix, cd)
    assert xx.shape == (3, 2) and yy.shape == (3, 2)
    np.testing.assert_allclose(np.diag(np.asarray(xx)[:2, :2]), np.asarray(xs[:2]), atol=1e-8)


def test_float32_inputs_promoted():
    crval, crpix, cd = WCSS["ordinary"]
    x, y = _fwd(np.float32(150.01), np.float32(2.01), np.asarray(crval, np.float32),
                np.asarray(crpix, np.float32), np.asarray(cd, np.float64))
    assert x.dtype == jnp.float64 and y.dtype == jnp.float64
