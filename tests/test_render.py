"""Contract and reference tests of the render core (``tractor_prob.render.mog``) and of
``Tractor.getModelImage``.

References are independent of the code under test: analytic Gaussian integrals and
moments, mixtures evaluated with numpy, discrete convolution of sampled Gaussians,
numpy slicing, astropy's WCS, and closed-form photometric zero points.

Sampling remark used for several tolerances: a Gaussian whose covariance has smallest
eigenvalue lambda_min, sampled at integer pixel centres, has sums (flux), first and
second moments equal to the continuous ones up to aliasing terms of order
exp(-2 pi^2 lambda_min) (Poisson summation).  With lambda_min >= 1.5**2 px^2 that is
< 1e-19, so the stated tolerances (1e-6, 1e-4) are loose bounds that only a real error
(normalisation, coordinates, covariance convention) can break.
"""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from astropy.wcs import WCS

import tractor_prob
from tractor_prob import (
    ConstantSky,
    FitsWcs,
    Flux,
    Fluxes,
    FluxesPhotoCal,
    GaussianMixturePSF,
    Image,
    LinearPhotoCal,
    Mag,
    Mags,
    MagsPhotoCal,
    NanoMaggies,
    NCircularGaussianPSF,
    PixPos,
    PointSource,
    RaDecPos,
    Tan,
    Tractor,
)
from tractor_prob import fit as fit_mod
from tractor_prob import scene as scene_mod
from tractor_prob.psf import STAMP_CHI2
from tractor_prob.render import mog


# --------------------------------------------------------------------------- helpers
#: one compilation per stamp size instead of op-by-op dispatch (keeps the suite fast)
eval_stamp = jax.jit(mog.eval_stamp, static_argnums=(5, 6))
add_stamps = jax.jit(mog.add_stamps)


def conv_same(a, k):
    """Discrete 2-D convolution of ``a`` with the odd-sized centred kernel ``k``, 'same' size."""
    s = (a.shape[0] + k.shape[0] - 1, a.shape[1] + k.shape[1] - 1)
    full = np.fft.irfft2(np.fft.rfft2(a, s) * np.fft.rfft2(k, s), s)
    r0, c0 = k.shape[0] // 2, k.shape[1] // 2
    return full[r0 : r0 + a.shape[0], c0 : c0 + a.shape[1]]


def np_mog(xx, yy, amps, means, covs):
    """Numpy reference: sum_k a_k N((x, y); mu_k, C_k) evaluated at (xx, yy)."""
    out = np.zeros(np.broadcast(xx, yy).shape)
    for a, m, c in zip(amps, np.asarray(means, float), np.asarray(covs, float)):
        det = c[0, 0] * c[1, 1] - c[0, 1] ** 2
        inv = np.linalg.inv(c)
        dx, dy = xx - m[0], yy - m[1]
        q = inv[0, 0] * dx * dx + 2 * inv[0, 1] * dx * dy + inv[1, 1] * dy * dy
        out += a / (2 * np.pi * np.sqrt(det)) * np.exp(-0.5 * q)
    return out


def grid(shape, ox=0, oy=0):
    """Pixel-centre coordinates (xx, yy), arrays indexed [y, x]."""
    H, W = shape
    yy, xx = np.mgrid[oy : oy + H, ox : ox + W]
    return xx.astype(float), yy.astype(float)


def moments(img, ox, oy):
    xx, yy = grid(img.shape, ox, oy)
    A = img.sum()
    mx, my = (img * xx).sum() / A, (img * yy).sum() / A
    dx, dy = xx - mx, yy - my
    cov = np.array([[(img * dx * dx).sum(), (img * dx * dy).sum()],
                    [(img * dx * dy).sum(), (img * dy * dy).sum()]]) / A
    return A, np.array([mx, my]), cov


def tiny_noise_image(shape, psf, **kw):
    """An image whose noise is so small that stamps reach their maximum radius
    (8 widest sigmas: the truncated tail is < 1e-13 of the peak)."""
    return Image(data=np.zeros(shape), invvar=np.full(shape, 1e30), psf=psf, **kw)


PSF2_ARGS = dict(sigmas=[1.6, 3.5], weights=[0.7, 0.3])
GM_ARGS = dict(amps=[0.6, 0.4],
               means=[[0.0, 0.0], [0.35, -0.25]],
               vars=[[[2.6, 0.0], [0.0, 2.6]], [[7.0, 2.1], [2.1, 4.5]]])


def psf_cases():
    s, w = PSF2_ARGS["sigmas"], PSF2_ARGS["weights"]
    ncirc = (NCircularGaussianPSF(s, w),
             (np.array(w), np.zeros((2, 2)), np.array([si**2 * np.eye(2) for si in s])))
    gm = (GaussianMixturePSF(GM_ARGS["amps"], GM_ARGS["means"], GM_ARGS["vars"]),
          (np.array(GM_ARGS["amps"]), np.array(GM_ARGS["means"]), np.array(GM_ARGS["vars"])))
    return {"ncircular2": ncirc, "mixture_elliptical": gm}


# --------------------------------------------------------------------------- eval_stamp
MOGS = {
    "single": (np.array([2.5]), np.array([[29.3, 33.6]]),
               np.array([[[5.0, 1.5], [1.5, 3.5]]])),
    "three": (np.array([1.0, 2.0, 0.5]),
              np.array([[30.2, 31.7], [33.9, 29.4], [28.0, 30.0]]),
              np.array([[[3.0, 0.0], [0.0, 3.0]],
                        [[6.0, -2.0], [-2.0, 4.0]],
                        [[2.5, 0.5], [0.5, 8.0]]])),
}


@pytest.mark.parametrize("name", MOGS)
def test_eval_stamp_flux_centroid_second_moments(name):
    amps, means, covs = MOGS[name]
    # every component has lambda_min >= 2.25 px^2 (sigma >= 1.5 px): see module docstring
    assert np.linalg.eigvalsh(covs).min() >= 2.25
    ox, oy, S = -3, 2, 68  # stamp pixels x in [-3, 64], y in [2, 69]: >= 9 sigma margin
    img = np.asarray(eval_stamp(jnp.asarray(amps), jnp.asarray(means), jnp.asarray(covs),
                                    ox, oy, S))
    assert img.shape == (S, S)
    A, mu, cov = moments(img, ox, oy)
    A_ref = amps.sum()
    mu_ref = (amps[:, None] * means).sum(0) / A_ref
    second = (amps[:, None, None] * (covs + means[:, :, None] * means[:, None, :])).sum(0) / A_ref
    cov_ref = second - np.outer(mu_ref, mu_ref)
    assert abs(A / A_ref - 1) < 1e-6
    np.testing.assert_allclose(mu, mu_ref, rtol=0, atol=1e-6)
    np.testing.assert_allclose(cov, cov_ref, rtol=0, atol=1e-4)
    # and pointwise against the numpy mixture (orientation [y, x] and origin)
    xx, yy = grid((S, S), ox, oy)
    np.testing.assert_allclose(img, np_mog(xx, yy, amps, means, covs), rtol=0,
                               atol=1e-12 * img.max())


def test_eval_stamp_symmetry():
    R = 12
    ox, oy = 5, -7
    cx, cy = ox + R, oy + R  # the stamp's central pixel
    amps = jnp.array([0.8, 0.2])
    covs = jnp.array([np.eye(2) * 1.7**2, np.eye(2) * 4.0**2])
    means = jnp.array([[cx, cy], [cx, cy]], dtype=float)
    img = np.asarray(eval_stamp(amps, means, covs, ox, oy, 2 * R + 1))
    tol = 1e-14 * img.max()
    assert np.unravel_index(np.argmax(img), img.shape) == (R, R)
    np.testing.assert_allclose(img, img[::-1, :], atol=tol, rtol=0)
    np.testing.assert_allclose(img, img[:, ::-1], atol=tol, rtol=0)
    np.testing.assert_allclose(img, img.T, atol=tol, rtol=0)
    # an elliptical (off-diagonal) profile keeps only the point symmetry, and its
    # transpose is the profile with x and y swapped (xy term unchanged)
    c = jnp.array([[[4.0, 1.3], [1.3, 2.5]]])
    ell = np.asarray(eval_stamp(jnp.array([1.0]), jnp.array([[cx, cy]], float), c, ox, oy,
                                    2 * R + 1))
    np.testing.assert_allclose(ell, ell[::-1, ::-1], atol=1e-14 * ell.max(), rtol=0)
    assert np.abs(ell - ell[::-1, :]).max() > 1e-3 * ell.max()
    swapped = np.asarray(eval_stamp(jnp.array([1.0]), jnp.array([[cx, cy]], float),
                                        c[:, ::-1, ::-1], ox, oy, 2 * R + 1))
    np.testing.assert_allclose(ell.T, swapped, atol=1e-14 * ell.max(), rtol=0)


# --------------------------------------------------------------------------- convolve
def test_convolve_two_gaussians_adds_covariances():
    a1, m1, C1 = 2.0, np.array([20.3, 19.6]), np.array([[2.4, 0.7], [0.7, 2.9]])
    a2, m2, C2 = 1.0, np.array([0.15, -0.35]), np.array([[2.5, -0.3], [-0.3, 3.2]])
    A, M, C = mog.convolve(jnp.array([a1]), jnp.array([m1]), jnp.array([C1]),
                           jnp.array([a2]), jnp.array([m2]), jnp.array([C2]))
    S, ox, oy = 41, 0, 0
    img = np.asarray(eval_stamp(A, M, C, ox, oy, S))
    xx, yy = grid((S, S), ox, oy)
    ref = np_mog(xx, yy, [a1 * a2], [m1 + m2], [C1 + C2])
    np.testing.assert_allclose(img, ref, rtol=0, atol=1e-12 * ref.max())

    # independent of the closed form: discrete convolution of the two sampled Gaussians
    # (exact up to aliasing ~exp(-2 pi^2 * 2.2) for lambda_min >= 2.2 px^2)
    src = np_mog(xx, yy, [a1], [m1], [C1])
    R = 20
    kx, ky = grid((2 * R + 1, 2 * R + 1), -R, -R)
    ker = np_mog(kx, ky, [a2], [m2], [C2])
    conv = conv_same(src, ker)
    inner = (slice(8, -8), slice(8, -8))  # away from the zero-padded borders of src
    np.testing.assert_allclose(img[inner], conv[inner], rtol=0, atol=1e-9 * ref.max())


def test_convolve_mixtures_batched():
    rng = np.random.default_rng(3)
    n, K, P = 3, 2, 2
    amps = rng.uniform(0.5, 2.0, (n, K))
    means = rng.uniform(14.0, 18.0, (n, K, 2))
    covs = np.array([[[[2.3 + k, 0.4 * (-1) ** k], [0.4 * (-1) ** k, 2.6 + j]]
                      for k in range(K)] for j in range(n)])
    pa = np.array([0.75, 0.25])
    pm = np.array([[0.0, 0.0], [0.2, -0.1]])
    pc = np.array([np.eye(2) * 2.3, [[5.0, 1.0], [1.0, 3.0]]])
    A, M, C = mog.convolve(*(jnp.asarray(v) for v in (amps, means, covs, pa, pm, pc)))
    assert A.shape == (n, K * P) and M.shape == (n, K * P, 2) and C.shape == (n, K * P, 2, 2)
    xx, yy = grid((33, 33))
    for j in range(n):
        img = np.asarray(eval_stamp(A[j], M[j], C[j], 0, 0, 33))
        ref = sum(np_mog(xx, yy, [amps[j, k] * pa[p]], [means[j, k] + pm[p]],
                         [covs[j, k] + pc[p]]) for k in range(K) for p in range(P))
        np.testing.assert_allclose(img, ref, rtol=0, atol=1e-12 * ref.max())


# --------------------------------------------------------------------------- add_stamps
def test_add_stamps_edges_and_off_image():
    H, W, R = 20, 27, 3
    S = 2 * R + 1
    rng = np.random.default_rng(7)
    origins = [
        (5, 6),     # inside
        (6, 8),     # inside, overlapping the first
        (-2, -3),   # hangs over the left and bottom edges
        (24, 17),   # hangs over the right and top edges
        (-R, 10),   # origin as far left as stamp_origin allows (centre on column 0)
        (W + 1, 5),  # completely off, right
        (-12, 4),   # completely off, left, beyond the pad
        (3, -10),   # completely off, below, beyond the pad
        (-S, -S),   # completely off, just outside the corner
        (10, H + 4),  # completely off, above
    ]
    stamps = rng.uniform(1.0, 2.0, (len(origins), S, S))
    base = rng.normal(size=(H, W))
    ox = jnp.array([o[0] for o in origins])
    oy = jnp.array([o[1] for o in origins])
    out = np.asarray(add_stamps(jnp.asarray(base), jnp.asarray(stamps), ox, oy))

    m = 40
    canvas = np.zeros((H + 2 * m, W + 2 * m))
    for st, (x0, y0) in zip(stamps, origins):
        canvas[m + y0 : m + y0 + S, m + x0 : m + x0 + S] += st
    ref = base + canvas[m : m + H, m : m + W]
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-13)
    # what was dropped is exactly the off-image part
    assert np.isclose((out - base).sum(), canvas[m : m + H, m : m + W].sum())


# --------------------------------------------------------------------------- model images
STAR_POSITIONS = {
    "interior": (23.37, 17.81),
    "near_corner": (1.2, 48.6),       # stamp hangs over the left and top edges
    "off_image_left": (-3.7, 25.2),   # centre off the image: only its wing lands
    "off_image_corner": (62.5, -4.2),  # off the right-bottom corner
}


@pytest.mark.parametrize("where", STAR_POSITIONS)
@pytest.mark.parametrize("psf_name", ["ncircular2", "mixture_elliptical"])
def test_point_source_model_matches_analytic_mixture(psf_name, where):
    psf, (pa, pm, pc) = psf_cases()[psf_name]
    H, W = 50, 60
    x, y = STAR_POSITIONS[where]
    flux = 1234.5
    tr = Tractor([tiny_noise_image((H, W), psf)], [PointSource(PixPos(x, y), Flux(flux))])
    model = tr.getModelImage(0)
    xx, yy = grid((H, W))
    ref = flux * np_mog(xx, yy, pa, pm + np.array([x, y]), pc)
    peak = flux * np_mog(np.array(x), np.array(y), pa, pm + np.array([x, y]), pc)
    assert model.shape == (H, W)
    np.testing.assert_allclose(model, ref, rtol=0, atol=1e-10 * peak)
    assert ref.max() > 1e-3 * peak  # something of the star is on the image


def _tan_and_astropy(crval, crpix, cd, W, H):
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = crval
    w.wcs.crpix = crpix
    w.wcs.cd = cd
    w.pixel_shape = (W, H)
    return Tan(*crval, *crpix, *np.asarray(cd).ravel(), W, H), w


def _rot_cd(scale_arcsec, theta_deg):
    t = np.deg2rad(theta_deg)
    s = scale_arcsec / 3600.0
    return s * np.array([[-np.cos(t), np.sin(t)], [np.sin(t), np.cos(t)]])


# (crval, crpix, cd, tolerance relative to the peak).  The second case is limited by
# float64 itself: ulp(150 deg) = 2.8e-14 deg = 4e-10 pixel at 0.262"/pixel, i.e. up to
# ~1e-10 of the peak of a sigma = 2 px star per ulp; 1e-9 leaves a few ulps of room.
WCS_CASES = {
    "ra30_1arcsec_rotated": ((30.0, -12.5), (18.3, 31.7), _rot_cd(1.0, 23.0), 1e-10),
    "ra150_decam_scale": ((150.1, 2.2), (30.5, 25.5), _rot_cd(0.262, -17.0), 1e-9),
}


@pytest.mark.parametrize("case", WCS_CASES)
def test_radec_star_matches_pixpos_star_at_astropy_pixel(case):
    crval, crpix, cd, tol = WCS_CASES[case]
    H, W = 50, 60
    tan, aw = _tan_and_astropy(crval, crpix, cd, W, H)
    psf = NCircularGaussianPSF([2.0], [1.0])
    flux = 800.0
    for xp, yp in [(21.4, 30.2), (2.3, 47.9), (55.6, 3.1)]:
        ra, dec = aw.all_pix2world(xp, yp, 0)
        x, y = aw.all_world2pix(ra, dec, 0)  # the independent pixel position
        t_rd = Tractor([tiny_noise_image((H, W), copy.deepcopy(psf), wcs=FitsWcs(tan))],
                       [PointSource(RaDecPos(float(ra), float(dec)), Flux(flux))])
        t_px = Tractor([tiny_noise_image((H, W), copy.deepcopy(psf))],
                       [PointSource(PixPos(float(x), float(y)), Flux(flux))])
        m_rd, m_px = t_rd.getModelImage(0), t_px.getModelImage(0)
        peak = flux / (2 * np.pi * 2.0**2)
        np.testing.assert_allclose(m_rd, m_px, rtol=0, atol=tol * peak)
        assert m_rd.max() > 0.5 * peak


def _zp_counts_cases():
    nm = 10 ** ((22.5 - 21.3) / 2.5)  # 21.3 AB mag in nanomaggies, by definition
    return {
        "null_flux": (tractor_prob.NullPhotoCal(), Flux(321.0), 321.0),
        "mags": (MagsPhotoCal("r", 25.2), Mags(r=19.3, g=20.1), 10 ** (0.4 * (25.2 - 19.3))),
        "mags_other_band": (MagsPhotoCal("g", 24.0), Mags(r=19.3, g=20.1),
                            10 ** (0.4 * (24.0 - 20.1))),
        "mag_scalar": (MagsPhotoCal("r", 22.0), Mag(18.5), 10 ** (0.4 * (22.0 - 18.5))),
        "linear": (LinearPhotoCal(2.5, band="g"), Fluxes(r=100.0, g=40.0), 2.5 * 40.0),
        "fluxes": (FluxesPhotoCal("r"), Fluxes(r=100.0, g=40.0), 100.0),
        "nanomaggies": (LinearPhotoCal(310.0, band="r"), NanoMaggies(r=nm, z=3.0), 310.0 * nm),
        "nanomaggies_from_mag": (LinearPhotoCal(50.0, band="z"),
                                 NanoMaggies.fromMag(Mags(r=20.0, z=18.0)),
                                 50.0 * 10 ** ((22.5 - 18.0) / 2.5)),
    }


@pytest.mark.parametrize("case", list(_zp_counts_cases()))
def test_photocal_model_sum_equals_expected_counts(case):
    pc, br, expected = _zp_counts_cases()[case]
    H = W = 49
    img = tiny_noise_image((H, W), NCircularGaussianPSF([2.0], [1.0]), photocal=pc)
    tr = Tractor([img], [PointSource(PixPos(24.2, 23.9), br)])
    model = tr.getModelImage(0)
    # the 16-px stamp lies inside the image; the sum over pixel centres of a
    # sigma = 2 px Gaussian equals its integral to ~1e-30 (module docstring)
    assert abs(model.sum() / expected - 1) < 1e-9
    assert abs(pc.brightnessToCounts(br) / expected - 1) < 1e-12


def _two_star_sky_tractor():
    psf = NCircularGaussianPSF([1.8], [1.0])
    img = tiny_noise_image((40, 45), psf, sky=ConstantSky(7.5))
    s1 = PointSource(PixPos(12.3, 20.1), Flux(500.0))
    s2 = PointSource(PixPos(30.8, 14.6), Flux(300.0))
    return Tractor([img], [s1, s2]), s1, s2


def test_constant_sky_and_source_selection():
    tr, s1, s2 = _two_star_sky_tractor()
    xx, yy = grid((40, 45))
    c = 1.8**2 * np.eye(2)
    r1 = 500.0 * np_mog(xx, yy, [1.0], [[12.3, 20.1]], [c])
    r2 = 300.0 * np_mog(xx, yy, [1.0], [[30.8, 14.6]], [c])
    tol = 1e-10 * r1.max()
    full = tr.getModelImage(0)
    nosky = tr.getModelImage(0, sky=False)
    np.testing.assert_allclose(full, r1 + r2 + 7.5, rtol=0, atol=tol)
    np.testing.assert_allclose(full - nosky, np.full(full.shape, 7.5), rtol=0, atol=tol)
    np.testing.assert_allclose(tr.getModelImage(0, srcs=[s1], sky=False), r1, rtol=0, atol=tol)
    np.testing.assert_allclose(tr.getModelImage(0, srcs=[s2]), r2 + 7.5, rtol=0, atol=tol)
    np.testing.assert_allclose(tr.getModelImage(0, srcs=[]), np.full(full.shape, 7.5),
                               rtol=0, atol=tol)
    # the image object works as the index too
    np.testing.assert_allclose(tr.getModelImage(tr.getImage(0)), full, rtol=0, atol=0)
    empty = Tractor([tiny_noise_image((10, 12), NCircularGaussianPSF([1.8], [1.0]),
                                      sky=ConstantSky(-2.25))], [])
    np.testing.assert_array_equal(empty.getModelImage(0), np.full((10, 12), -2.25))


def _circ(sigmas, weights):
    """NCircularGaussianPSF and its mixture written out from the constructor arguments."""
    mix = (np.array(weights), np.zeros((len(sigmas), 2)),
           np.array([s**2 * np.eye(2) for s in sigmas]))
    return NCircularGaussianPSF(sigmas, weights), mix


TRUNC_CASES = {
    "single": (lambda: _circ([2.0], [1.0]), 1e5),
    "wide_wing": (lambda: _circ([1.8, 5.0], [0.85, 0.15]), 3e4),
    "elliptical": (lambda: psf_cases()["mixture_elliptical"], 5e4),
}


@pytest.mark.parametrize("name", TRUNC_CASES)
def test_stamp_truncation_costs_less_than_stamp_chi2(name):
    make, flux = TRUNC_CASES[name]
    psf, (pa, pm, pc) = make()
    H = W = 141
    sigma_n = 2.0
    img = Image(data=np.zeros((H, W)), invvar=np.full((H, W), 1 / sigma_n**2), psf=psf)
    x, y = 70.4, 69.7
    tr = Tractor([img], [PointSource(PixPos(x, y), Flux(flux))])
    model = tr.getModelImage(0)
    xx, yy = grid((H, W))
    ref = flux * np_mog(xx, yy, pa, pm + np.array([x, y]), pc)
    # the documented rule: what the stamp leaves out is worth < STAMP_CHI2 of chi^2
    assert np.sum(((model - ref) / sigma_n) ** 2) < STAMP_CHI2
    # the stamp really is truncated (this is not a full-frame render) ...
    assert np.any((model == 0) & (ref > 1e-9 * sigma_n))
    # ... and what it keeps is the exact profile
    inside = model != 0
    np.testing.assert_allclose(model[inside], ref[inside], rtol=1e-12, atol=0)


def test_mog_radii_is_the_documented_cut():
    """psf.mog_radii (searched between single-component bounds) against its definition, for
    random mixtures (elliptical, off-centre components, 1-20 of them, several thresholds):
    the radius r is on the 0.25-pixel grid, the chi^2 beyond r is at most chi2 and beyond
    r - 0.25 above it, unless r is clipped to [3 RMS sigmas, 8 widest sigmas]."""
    from tractor_prob.psf import mog_radii

    rng = np.random.default_rng(3)
    for _ in range(300):
        n, K = rng.integers(1, 6), rng.integers(1, 21)
        sig = np.exp(rng.uniform(-2, 3.5, (n, K)))
        q, th = rng.uniform(0.1, 1, (n, K)), rng.uniform(0, np.pi, (n, K))
        c, sn = np.cos(th), np.sin(th)
        covs = np.empty((n, K, 2, 2))
        covs[..., 0, 0] = sig**2 * (c**2 + q**2 * sn**2)
        covs[..., 1, 1] = sig**2 * (sn**2 + q**2 * c**2)
        covs[..., 0, 1] = covs[..., 1, 0] = sig**2 * (1 - q**2) * c * sn
        amps = rng.random((n, K))
        means = rng.normal(0, rng.choice([0.0, 2.0]), (n, K, 2))
        flux, noise, chi2 = np.exp(rng.uniform(0, 10)), np.exp(rng.uniform(-2, 2)), \
            rng.choice([0.01, 0.001])
        r = mog_radii(amps, means, covs, flux, noise, chi2=chi2)
        lam = np.linalg.eigvalsh(covs)[..., 1]
        det = np.linalg.det(covs)
        off = np.hypot(means[..., 0], means[..., 1])
        cc = (amps * flux / (2 * np.pi * np.sqrt(det) * noise)) ** 2 * np.pi * np.sqrt(det)

        def beyond(j, rr):  # the documented chi^2 beyond radius rr of profile j
            return np.sum(cc[j] * np.exp(-np.maximum(rr - off[j], 0.0) ** 2 / lam[j]))

        rms = np.sqrt(np.sum(amps * lam, -1) / np.sum(amps, -1))
        rmin, rmax = 3 * rms + off.max(-1), 8 * np.sqrt(lam.max(-1)) + off.max(-1)
        for j in range(n):
            if r[j] in (pytest.approx(rmin[j]), pytest.approx(rmax[j])):
                continue  # clipped (the cut itself lies beyond: checked below)
            assert rmin[j] < r[j] < rmax[j] and r[j] % 0.25 == 0
            assert beyond(j, r[j]) <= chi2 < beyond(j, r[j] - 0.25), (r[j], j)
        clipped = [j for j in range(n) if r[j] == pytest.approx(rmax[j])]
        for j in clipped:  # clipped at 8 widest sigmas: the cut would lie further out
            assert beyond(j, r[j] - 0.25) > chi2


# --------------------------------------------------------------------------- coarse grids
render_stamp = jax.jit(mog.render_stamp, static_argnums=(5, 6, 7))


def _rot_cov(sig, q, theta):
    R = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    return R @ np.diag([sig**2, (q * sig) ** 2]) @ R.T


def test_upsample_is_exact_at_nodes_and_for_cubics():
    """4-point Lagrange interpolation reproduces the nodes and any cubic polynomial exactly."""
    step, Sy, Sx = 4, 21, 18
    ny, nx = mog.n_nodes(Sy, step), mog.n_nodes(Sx, step)
    yn = step * (np.arange(ny) - 1.0)  # node i sits at pixel step * (i - 1)
    xn = step * (np.arange(nx) - 1.0)

    def f(y, x):
        return 0.3 + 0.1 * x - 0.02 * y + 0.004 * x * y - 3e-4 * x**3 + 2e-4 * y**3 * x**2 / 50

    out = np.asarray(mog.upsample(jnp.asarray(f(yn[:, None], xn[None, :])), step, Sy, Sx))
    ref = f(np.arange(Sy)[:, None].astype(float), np.arange(Sx)[None, :].astype(float))
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-12)
    rnd = np.random.default_rng(0).normal(size=(ny, nx))
    out = np.asarray(mog.upsample(jnp.asarray(rnd), step, Sy, Sx))
    np.testing.assert_array_equal(out[::step, ::step], rnd[1 : 1 + -(-Sy // step), 1 : 1 + -(-Sx // step)])


@pytest.mark.parametrize("step", [2, 4, 8])
def test_interp_chi2_estimate_bounds_the_exact_error(step):
    """psf.interp_chi2 (the coarse-grid rule) against the exact chi^2 of the interpolation
    error, for single Gaussians (round and elliptical, several sub-pixel centres) and for a
    PSF-convolved deV mixture: never below the exact error (within 5% where the error is
    tiny: the estimate is the leading order), and close to it where the rule matters."""
    from tractor_prob import profiles
    from tractor_prob.psf import interp_chi2

    flux, noise = 1000.0, 1.0
    cases = [(np.array([1.0]), _rot_cov(sig, q, 0.6)[None])
             for sig in (1.6, 2.5, 4.0, 8.0, 16.0) for q in (1.0, 0.4)]
    a, v = (np.asarray(x) for x in profiles.dev_mog())
    re_px = 9.0
    cov = np.concatenate([v[:, None, None] * _rot_cov(re_px, 0.7, 0.3)[None] + s**2 * np.eye(2)
                          for s in (1.6, 3.5)])
    cases.append((np.concatenate([0.8 * a, 0.2 * a]), cov))
    for amps, covs in cases:
        est = interp_chi2(amps, covs, flux, noise, step)
        R = int(8 * np.sqrt(np.linalg.eigvalsh(covs).max())) + 2 * step
        S = 2 * R + 1
        for ph in range(3):
            means = np.tile([R + 0.37 * ph, R - 0.23 * ph], (len(amps), 1))
            args = (jnp.asarray(flux * amps), jnp.asarray(means), jnp.asarray(covs), 0, 0, S, S)
            err = np.asarray(render_stamp(*args, step)) - np.asarray(render_stamp(*args, 1))
            exact = float(np.sum((err / noise) ** 2))
            assert exact <= 1.05 * est, (step, covs[0], exact, est)
            if est < 1.0:  # the regime the rule works in: the estimate is tight
                assert est <= 2.5 * exact, (step, covs[0], exact, est)


@pytest.mark.usefixtures("windowed_plans")
def test_coarse_render_units_cost_less_than_interp_chi2():
    """The documented rule at work: galaxies whose wide components render on coarse grids
    differ from the exact pixel-centre render by less than INTERP_CHI2 of chi^2 each (at the
    image's noise), while the steps chosen really are coarse."""
    from tractor_prob.galaxy import DevGalaxy, EllipseE, ExpGalaxy
    from tractor_prob.psf import INTERP_CHI2

    H = W = 128
    sigma_n = 1.0
    psf = GaussianMixturePSF([0.8, 0.2], np.zeros((2, 2)),
                             np.array([np.eye(2) * 1.6**2, np.eye(2) * 3.5**2]))
    img = Image(data=np.zeros((H, W)), invvar=np.full((H, W), 1 / sigma_n**2), psf=psf)
    srcs = [DevGalaxy(PixPos(60.3, 66.8), Flux(5000.0), EllipseE(5.0, 0.3, -0.2)),
            DevGalaxy(PixPos(70.1, 50.2), Flux(800.0), EllipseE(2.0, -0.1, 0.1)),
            ExpGalaxy(PixPos(40.6, 80.4), Flux(3000.0), EllipseE(6.0, 0.2, 0.2))]
    tr = Tractor([img], srcs)
    plan = tr._compile()[0].plan
    assert max(plan.images[0].steps) >= 4
    models = [tr.getModelImage(0, srcs=[s], sky=False) for s in srcs]
    import tractor_prob.psf as psf_mod
    saved = psf_mod.STEP_MAX
    try:
        psf_mod.STEP_MAX = 1
        exact = Tractor([img], srcs)
        assert max(exact._compile()[0].plan.images[0].steps) == 1
        refs = [exact.getModelImage(0, srcs=[s], sky=False) for s in srcs]
    finally:
        psf_mod.STEP_MAX = saved
    ip = plan.images[0]
    chi2s = []
    for j, (m, r) in enumerate(zip(models, refs)):
        chi2s.append(np.sum(((m - r) / sigma_n) ** 2))
        g = next(g for g, gp in enumerate(plan.groups) if j in gp.members)
        n_coarse = sum(ip.steps[u] > 1 for u, (gu, _) in enumerate(plan.units) if gu == g)
        # each coarse unit's error is below INTERP_CHI2; a source's units add coherently
        assert chi2s[-1] <= n_coarse**2 * INTERP_CHI2
    assert max(chi2s) > 0


@pytest.mark.usefixtures("windowed_plans")
def test_component_windows_cost_less_than_window_chi2(monkeypatch):
    """The documented rule at work: galaxies whose narrow components render on a window of
    their stamp differ from the same stamps rendered whole by less than WINDOW_CHI2 of chi^2
    each, also where the stamp (and the window in it) is clipped at the image's edge."""
    from tractor_prob.galaxy import CompositeGalaxy, DevGalaxy, EllipseE, ExpGalaxy
    from tractor_prob.sersic import SersicGalaxy, SersicIndex

    H, W = 150, 170
    sigma_n = 1.0
    psf = GaussianMixturePSF([0.8, 0.2], np.zeros((2, 2)),
                             np.array([np.eye(2) * 1.6**2, np.eye(2) * 3.5**2]))
    img = Image(data=np.zeros((H, W)), invvar=np.full((H, W), 1 / sigma_n**2), psf=psf)
    srcs = [DevGalaxy(PixPos(60.3, 66.8), Flux(5000.0), EllipseE(5.0, 0.3, -0.2)),
            DevGalaxy(PixPos(2.6, 147.1), Flux(3000.0), EllipseE(4.0, -0.1, 0.1)),  # corner
            ExpGalaxy(PixPos(120.6, 40.4), Flux(3000.0), EllipseE(6.0, 0.2, 0.2)),
            SersicGalaxy(PixPos(150.2, 120.9), Flux(4000.0), EllipseE(3.0, 0.0, 0.4),
                         SersicIndex(2.5)),
            CompositeGalaxy(PixPos(90.1, 20.3), Flux(2000.0), EllipseE(5.0, 0.1, 0.0),
                            Flux(2000.0), EllipseE(2.0, 0.0, 0.1))]
    tr = Tractor([img], srcs)
    ip = tr._compile()[0].plan.images[0]
    assert sum(w is not None for w in ip.windows) >= 4  # every kind of galaxy has one
    models = [tr.getModelImage(0, srcs=[s], sky=False) for s in srcs]
    monkeypatch.setattr(scene_mod, "_unit_window", lambda *a, **k: None)
    whole = Tractor([img], srcs)
    assert all(w is None for w in whole._compile()[0].plan.images[0].windows)
    for m, s in zip(models, srcs):
        ref = whole.getModelImage(0, srcs=[s], sky=False)
        chi2 = np.sum(((m - ref) / sigma_n) ** 2)
        assert 0 < chi2 < scene_mod.WINDOW_CHI2, (s, chi2)


# --------------------------------------------------------------------------- retracing
@pytest.fixture
def trace_count(monkeypatch):
    """Counts traces of the render core: Python code inside a jitted function runs only
    while tracing, so a wrapper around ``mog.eval_stamp`` counts (re)compilations of
    every entry point that renders (model images, likelihood, Jacobians, fit steps)."""
    calls = {"n": 0}
    orig = mog.eval_stamp

    def counting(*args, **kwargs):
        calls["n"] += 1
        return orig(*args, **kwargs)

    monkeypatch.setattr(mog, "eval_stamp", counting)
    # start from empty compiled-plan caches so that the first calls do trace
    monkeypatch.setattr(scene_mod, "_CACHE", {})
    monkeypatch.setattr(fit_mod, "_FITTERS", {})
    return calls


def _retrace_scene(shape=(37, 41)):
    H, W = shape
    rng = np.random.default_rng(11)
    truth = [(10.2, 12.7, 400.0), (28.9, 24.1, 250.0)]
    data = rng.normal(0, 1.0, shape) + 3.0
    xx, yy = grid(shape)
    for x, y, f in truth:
        data += f * np_mog(xx, yy, [1.0], [[x, y]], [2.0**2 * np.eye(2)])
    img = Image(data=data, invvar=np.ones(shape), psf=NCircularGaussianPSF([2.0], [1.0]),
                sky=ConstantSky(2.5))
    img.freezeParam("psf")
    srcs = [PointSource(PixPos(x + 0.3, y - 0.2), Flux(0.9 * f)) for x, y, f in truth]
    return Tractor([img], srcs)


def test_no_retrace_when_values_change(trace_count):
    tr = _retrace_scene()
    tr.getModelImage(0)
    tr.getLogLikelihood()
    tr.optimize()
    tr.getDerivs()
    assert trace_count["n"] > 0  # the counter sees traces (the guard can fail)

    trace_count["n"] = 0
    p = np.array(tr.getParams())
    tr.setParams(p + 0.05)
    tr.getModelImage(0)
    tr.getLogLikelihood()
    src = tr.catalog[0]
    src.pos.x = src.pos.x + 0.8  # move a source
    src.pos.y = src.pos.y - 1.3
    src.brightness.setValue(src.brightness.getValue() * 1.05)  # change a flux
    tr.getImage(0).sky.setValue(3.1)
    tr.getModelImage(0)
    tr.getModelImage(0, srcs=[src], sky=False)
    tr.getLogLikelihood()
    tr.getDerivs()
    for _ in range(3):
        tr.optimize()
    tr.optimize_loop()
    assert trace_count["n"] == 0


def test_structural_change_retraces(trace_count):
    tr = _retrace_scene()
    tr.getModelImage(0)
    tr.getLogLikelihood()
    trace_count["n"] = 0
    tr.getModelImage(0)
    assert trace_count["n"] == 0
    # a source of a new kind: a new plan, so a new trace
    tr.addSource(PointSource(PixPos(20.0, 5.0), Fluxes(r=100.0)))
    tr.getModelImage(0)
    assert trace_count["n"] > 0
    # a new image shape: a new trace too
    trace_count["n"] = 0
    _retrace_scene((37, 43)).getModelImage(0)
    assert trace_count["n"] > 0
