"""Galaxies (``tractor_prob.galaxy``, ``tractor_prob.sersic``, ``tractor_prob.ellipses``) against
independent references.

(a) shape conventions: covariances of EllipseE / EllipseESoft / GalaxyShape / LogRadius against
    R(theta) diag(re^2, (q re)^2) R(theta)^T built here; conversions round-trip; illegal shapes give
    -inf (never NaN) and optimize() never steps into them;
(b) GalSim images (an independent renderer; ``method='no_pixel'`` because our PSF is the effective
    PSF) of every galaxy class, through NullWCS and rotated / flipped TAN WCSs (GalSim's own
    ``FitsWCS`` built from the same FITS header), Gaussian and 3-component MoG PSFs: the bounds of
    issue 3 (max |ours - GalSim| <= 1e-3 of the peak pixel, flux within 0.2%);
(c) stamp truncation of a bright galaxy in noise obeys the documented rule (psf.STAMP_CHI2);
(d) d(image)/d(parameter) from getDerivs() (autodiff) against central finite differences of
    getModelImage, for every galaxy parameter (incl. position, shapes at e = 0, Sersic n, fracDev);
(e) fits of GalSim-simulated galaxies in noise recover the truth: pulls from the Fisher matrix
    (J^T W J with J from getDerivs()).

The galaxy <-> GalSim mapping (verified numerically in ``test_galsim_shear_mapping``):
``galsim.Sersic(n, half_light_radius=re*sqrt(q)).shear(g=e, beta=beta)`` has semi-major
half-light radius re and axis ratio q (GalSim's shear preserves area); beta is the major axis'
angle in GalSim's world (u, v) frame, which we derive from GalSim's own WCS (East and North
directions at the galaxy), so the test does not assume how GalSim orients celestial coordinates.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import pytest
from astropy.io import fits
from scipy.stats import chi2 as chi2_dist

from tractor_prob import (
    FitsWcs,
    Flux,
    GaussianMixturePSF,
    Image,
    NCircularGaussianPSF,
    NullWCS,
    PixPos,
    RaDecPos,
    Tan,
    Tractor,
)
from tractor_prob import profiles
from tractor_prob.galaxy import (
    CompositeGalaxy,
    DevGalaxy,
    EllipseE,
    EllipseESoft,
    ExpGalaxy,
    FixedCompositeGalaxy,
    GalaxyShape,
    LogRadius,
    RexGalaxy,
)
from tractor_prob.psf import STAMP_CHI2
from tractor_prob.sersic import SersicGalaxy, SersicIndex

galsim = pytest.importorskip("galsim")

PIXSCALE = 0.262  # arcsec / pixel (DECaLS)
FWHM2SIG = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))
#: models/README.md / models/accuracy.py: GalSim's defaults are not accurate enough for 1e-4
#: comparisons (with them GalSim is itself off by up to 3e-4 of the peak)
GSPARAMS = galsim.GSParams(folding_threshold=1e-3, maxk_threshold=1e-6, kvalue_accuracy=1e-7,
                           maximum_fft_size=16384)
#: issue 3's bounds
MAX_DIFF = 1e-3  # of the peak pixel
FLUX_TOL = 2e-3  # relative


# =========================================================================== (a) shapes
def cov_ref(re, q, theta_deg):
    """R(theta) diag(re^2, (q re)^2) R(theta)^T: major axis re at theta from +x (East) towards
    +y (North)."""
    t = math.radians(theta_deg)
    R = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    return R @ np.diag([re * re, (q * re) ** 2]) @ R.T


def e_of_q(q):
    return (1.0 - q) / (1.0 + q)


def ellipse_e(re, q, theta_deg):
    e, t = e_of_q(q), math.radians(2 * theta_deg)
    return EllipseE(re, e * math.cos(t), e * math.sin(t))


def ellipse_esoft(re, q, theta_deg):
    ee, t = -math.log1p(-e_of_q(q)), math.radians(2 * theta_deg)  # e = 1 - exp(-|ee|)
    return EllipseESoft(math.log(re), ee * math.cos(t), ee * math.sin(t))


def galaxy_shape(re, q, theta_deg):
    return GalaxyShape(re, q, -theta_deg)  # the Tractor's phi = -theta


SHAPE_MAKERS = dict(EllipseE=ellipse_e, EllipseESoft=ellipse_esoft, GalaxyShape=galaxy_shape)
SHAPE_CASES = [(1.3, 1.0, 0.0), (0.7, 0.5, 0.0), (2.1, 0.3, 30.0), (0.45, 0.8, 90.0),
               (3.0, 0.05, -60.0), (1.0, 0.6, 135.0), (0.2, 0.999, 17.0)]


@pytest.mark.parametrize("kind", list(SHAPE_MAKERS))
@pytest.mark.parametrize("re,q,theta", SHAPE_CASES)
def test_shape_covariance_matches_rotation_construction(kind, re, q, theta):
    shape = SHAPE_MAKERS[kind](re, q, theta)
    C = shape.getCovariance()
    ref = cov_ref(re, q, theta)
    np.testing.assert_allclose(C, ref, rtol=0, atol=1e-12 * re * re)
    # the covariance's own geometry: eigenvalues re^2 and (q re)^2, major axis at theta
    lam, vec = np.linalg.eigh(C)
    np.testing.assert_allclose(np.sqrt(lam[::-1]), [re, q * re], rtol=1e-9)
    # derived accessors
    assert shape.getRe() == pytest.approx(re, rel=1e-12)
    assert shape.e == pytest.approx(e_of_q(q), abs=1e-12)
    if q < 1:
        d = (shape.theta - theta + 90.0) % 180.0 - 90.0  # axes are defined mod 180 deg
        assert abs(d) < 1e-9
        t = math.radians(theta)
        assert abs(abs(vec[:, 1] @ [math.cos(t), math.sin(t)]) - 1) < 1e-9


def test_logradius_is_round():
    for re in (0.1, 1.0, 7.5):
        s = LogRadius(math.log(re))
        np.testing.assert_allclose(s.getCovariance(), re * re * np.eye(2), rtol=1e-14)
        assert s.getRe() == pytest.approx(re) and s.e == 0.0


@pytest.mark.parametrize("re,q,theta", SHAPE_CASES)
def test_shape_conversions_round_trip(re, q, theta):
    ref = cov_ref(re, q, theta)
    for kind, make in SHAPE_MAKERS.items():
        s = make(re, q, theta)
        for conv in ("toEllipseE", "toEllipseESoft", "toGalaxyShape"):
            t = getattr(s, conv)()
            assert type(t).__name__ == conv[2:]
            np.testing.assert_allclose(t.getCovariance(), ref, rtol=0, atol=1e-12 * re * re)
            # and back to where we started, parameter by parameter
            back = getattr(t, "to" + kind)()
            pa, pb = np.array(s.getAllParams()), np.array(back.getAllParams())
            if kind == "GalaxyShape":  # phi is defined mod 180 deg
                pa[2], pb[2] = pa[2] % 180.0, pb[2] % 180.0
                if q == 1.0:
                    pa[2] = pb[2] = 0.0  # a round shape has no angle
            np.testing.assert_allclose(pb, pa, rtol=0, atol=1e-10)
    # Tractor's EllipseE.fromRAbPhi is GalaxyShape's parameterisation
    e = EllipseE.fromRAbPhi(re, q, -theta)
    np.testing.assert_allclose(e.getCovariance(), ref, rtol=0, atol=1e-12 * re * re)


def test_ellipse_esoft_e_is_one_minus_exp():
    for ee1, ee2 in [(0.0, 0.0), (1e-14, 0.0), (0.3, -0.4), (-2.0, 1.5), (8.0, 6.0), (30.0, -40.0)]:
        s = EllipseESoft(0.1, ee1, ee2)
        mod = math.hypot(ee1, ee2)
        assert s.e == pytest.approx(-math.expm1(-mod), rel=1e-12, abs=1e-300)
        assert s.e < 1.0 or mod > 35  # 1 - exp(-50) rounds to 1 in float64
        if mod > 0:  # same direction as (ee1, ee2)
            e1, e2 = s.toEllipseE().e1, s.toEllipseE().e2
            assert e1 * ee2 - e2 * ee1 == pytest.approx(0.0, abs=1e-12)
            assert e1 * ee1 + e2 * ee2 > 0
        assert s.isLegal() and s.getLogPrior() == 0.0  # unbounded parameter space
        assert np.all(np.isfinite(s.getCovariance()))


def _one_galaxy_tractor(shape, size=25):
    img = Image(data=np.zeros((size, size)), invvar=np.ones((size, size)),
                psf=NCircularGaussianPSF([1.5], [1.0]), wcs=NullWCS(pixscale=PIXSCALE))
    tr = Tractor([img], [ExpGalaxy(PixPos(12.2, 11.9), Flux(100.0), shape)])
    tr.freezeParam("images")
    return tr


ILLEGAL = [EllipseE(1.0, 1.0, 0.0), EllipseE(1.0, 0.8, 0.7), EllipseE(1.0, 0.0, -1.5),
           EllipseE(-0.5, 0.1, 0.2), GalaxyShape(1.0, 0.0, 30.0), GalaxyShape(1.0, -0.4, 30.0),
           GalaxyShape(-1.0, 0.5, 30.0)]


@pytest.mark.parametrize("shape", ILLEGAL, ids=str)
def test_illegal_shapes_have_minus_inf_log_prob(shape):
    assert not shape.isLegal()
    assert shape.getLogPrior() == -np.inf
    tr = _one_galaxy_tractor(shape)
    lp = tr.getLogProb()
    assert lp == -np.inf  # not NaN, not a finite number


def _sersic(n):
    return SersicGalaxy(PixPos(12.2, 11.9), Flux(100.0), EllipseE(1.0, 0.1, 0.0), SersicIndex(n))


@pytest.mark.parametrize("make", [
    lambda: _sersic(0.45),
    lambda: _sersic(6.3),
    lambda: FixedCompositeGalaxy(PixPos(12.2, 11.9), Flux(100.0), 1.2, EllipseE(1.0, 0.1, 0.0),
                                 EllipseE(0.5, 0.0, 0.0)),
    lambda: FixedCompositeGalaxy(PixPos(12.2, 11.9), Flux(100.0), -0.1, EllipseE(1.0, 0.1, 0.0),
                                 EllipseE(0.5, 0.0, 0.0)),
], ids=["n0.45", "n6.3", "fracDev1.2", "fracDev-0.1"])
def test_illegal_sersic_index_and_fracdev(make):
    lo, hi = profiles.SERSIC_N_RANGE
    assert (lo, hi) == (0.5, 6.2)  # the stated range (models/README.md)
    src = make()
    assert not src.isLegal() and src.getLogPrior() == -np.inf
    img = Image(data=np.zeros((25, 25)), invvar=np.ones((25, 25)),
                psf=NCircularGaussianPSF([1.5], [1.0]), wcs=NullWCS(pixscale=PIXSCALE))
    assert Tractor([img], [src]).getLogProb() == -np.inf


def test_legal_edge_shapes_are_finite():
    shapes = [EllipseE(0.0, 0.0, 0.0), EllipseE(1.0, 0.999999, 0.0), GalaxyShape(1.0, 1e-6, 10.0),
              GalaxyShape(1.0, 1.7, 10.0),  # ab > 1 is legal (the 'major' axis is the minor)
              EllipseESoft(0.0, 40.0, 0.0), EllipseESoft(-30.0, 0.1, 0.1)]
    N = 25 * len(shapes)
    img = Image(data=np.zeros((25, N)), invvar=np.ones((25, N)),
                psf=NCircularGaussianPSF([1.5], [1.0]), wcs=NullWCS(pixscale=PIXSCALE))
    srcs = [ExpGalaxy(PixPos(12.2 + 25 * i, 11.9), Flux(100.0), s) for i, s in enumerate(shapes)]
    tr = Tractor([img], srcs)
    for shape in shapes:
        assert shape.isLegal() and shape.getLogPrior() == 0.0
    assert np.isfinite(tr.getLogProb())
    for src in srcs:
        mod = tr.getModelImage(0, srcs=[src])
        assert np.all(np.isfinite(mod)) and 50 < mod.sum() <= 100.0, src


def _thin_galaxy_fit(shape_true, shape_start):
    """Data: a very elongated galaxy seen through a *narrower* PSF (sigma 0.6 px) than the
    model's (1.2 px), so the best fit would need a minor axis of negative size (e > 1, ab < 0)."""
    N = 41

    def tractor(shape, psf_sigma):
        img = Image(data=np.zeros((N, N)), invvar=np.full((N, N), 1e4),
                    psf=NCircularGaussianPSF([psf_sigma], [1.0]), wcs=NullWCS(pixscale=1.0))
        return Tractor([img], [ExpGalaxy(PixPos(20.2, 19.9), Flux(100.0), shape)])

    data = tractor(shape_true, 0.6).getModelImage(0)
    tr = tractor(shape_start, 1.2)
    tr.getImage(0).data = data
    tr.freezeParam("images")
    return tr


@pytest.mark.parametrize("shapes", [
    (EllipseE(6.0, 0.99 * math.cos(0.6), 0.99 * math.sin(0.6)),
     EllipseE(6.0, 0.95 * math.cos(0.6), 0.95 * math.sin(0.6))),
    (GalaxyShape(6.0, 0.01, 30.0), GalaxyShape(6.0, 0.1, 30.0)),
], ids=["EllipseE", "GalaxyShape"])
def test_optimize_never_steps_into_illegal_shapes(shapes):
    tr = _thin_galaxy_fit(*shapes)
    gal = tr.catalog[0]
    lp = tr.getLogProb()
    n_illegal_proposals = 0
    for _ in range(12):
        p = np.array(tr.getParams())
        dlnp, X, alpha = tr.optimize()
        probe = gal.copy()
        probe.setParams(p + X)
        n_illegal_proposals += not probe.shape.isLegal()
        assert gal.shape.isLegal() and gal.isLegal()
        lp_new = tr.getLogProb()
        assert np.isfinite(lp_new) and lp_new >= lp
        assert lp_new - lp == pytest.approx(dlnp, rel=1e-6, abs=1e-6)
        lp = lp_new
        if alpha == 0:
            break
    # the full Gauss-Newton steps did point outside the legal domain: the guard was exercised
    assert n_illegal_proposals >= 3
    assert gal.shape.e > 0.95 if isinstance(gal.shape, EllipseE) else gal.shape.ab < 0.1


def test_frozen_illegal_shape_is_consistent():
    """A frozen illegal shape makes the model undefined: -inf, and optimize() says why."""
    tr = _one_galaxy_tractor(EllipseE(3.0, 1.2, 0.0))
    tr.getImage(0).data = np.random.default_rng(0).normal(size=(25, 25))
    tr.catalog[0].freezeParam("shape")
    # the model is undefined there: the log-probability says so, and fitting refuses clearly
    assert tr.getLogProb() == -np.inf
    with pytest.raises(ValueError, match="illegal"):
        tr.optimize()


# =========================================================================== (b) GalSim images
CRVAL = (150.1, 2.2)


def _rot(deg):
    t = math.radians(deg)
    return np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])


#: CD matrices (deg / pixel).  'rot': the usual sky parity (East to the left when North is up,
#: det CD < 0) rotated by 25 deg; 'flip': the mirrored parity (det CD > 0) rotated by 110 deg,
#: with slightly non-square, skewed pixels.
TAN_CD = {
    "rot": PIXSCALE / 3600.0 * _rot(25.0) @ np.diag([-1.0, 1.0]),
    "flip": PIXSCALE / 3600.0 * _rot(110.0) @ np.array([[1.04, 0.07], [0.0, 0.96]]),
}


class Case(NamedTuple):
    kind: str  # 'exp', 'dev', 'sersic', 'comp', 'fcomp', 'rex'
    re_px: float  # semi-major half-light radius in pixels (arcsec / pixel scale)
    q: float  # axis ratio
    theta: float  # major axis, degrees from East towards North
    psf: tuple  # ('gauss', FWHM px) or ('mog', core FWHM px)
    wcs: str  # 'null' (NullWCS + PixPos) or a TAN_CD key (FitsWcs + RaDecPos)
    n: float = 0.0  # Sersic index of kind 'sersic'

    def __str__(self):
        n = f"n{self.n:g}-" if self.kind == "sersic" else ""
        return (f"{self.kind}-{n}re{self.re_px:g}-q{self.q:g}-th{self.theta:g}-"
                f"{self.psf[0]}{self.psf[1]:g}-{self.wcs}")


def image_size(re_px):
    """Odd side of the comparison image: half-size max(10 re, 30) px (as models/accuracy.py)."""
    return 2 * max(int(math.ceil(10 * re_px)), 30) + 1


def galaxy_components(case, re_as):
    """[(n, flux, re arcsec, q, theta deg)] of the case's profiles, total flux 100."""
    F, re, q, th = 100.0, re_as, case.q, case.theta
    bulge = (0.5 * re, min(1.0, q + 0.3), th + 40.0)  # composites: a rounder, smaller bulge
    return {
        "exp": [(1.0, F, re, q, th)],
        "dev": [(4.0, F, re, q, th)],
        "sersic": [(case.n, F, re, q, th)],
        "rex": [(1.0, F, re, 1.0, 0.0)],
        "comp": [(1.0, 0.6 * F, re, q, th), (4.0, 0.4 * F, *bulge)],
        "fcomp": [(1.0, 0.65 * F, re, q, th), (4.0, 0.35 * F, *bulge)],
    }[case.kind]


def our_source(case, pos, comps):
    """The case's source; each kind uses a different shape parameterisation."""
    (n, F, re, q, th), *rest = comps
    if case.kind == "exp":
        return ExpGalaxy(pos, Flux(F), ellipse_e(re, q, th))
    if case.kind == "dev":
        return DevGalaxy(pos, Flux(F), galaxy_shape(re, q, th))
    if case.kind == "sersic":
        return SersicGalaxy(pos, Flux(F), ellipse_esoft(re, q, th), SersicIndex(case.n))
    if case.kind == "rex":
        return RexGalaxy(pos, Flux(F), LogRadius(math.log(re)))
    (_, Fd, red, qd, thd), = rest
    if case.kind == "comp":
        return CompositeGalaxy(pos, Flux(F), ellipse_e(re, q, th), Flux(Fd),
                               ellipse_esoft(red, qd, thd))
    return FixedCompositeGalaxy(pos, Flux(F + Fd), Fd / (F + Fd), galaxy_shape(re, q, th),
                                ellipse_e(red, qd, thd))


def gs_profile(n, flux, re_as, q, beta_rad):
    """GalSim profile of semi-major half-light radius re_as, axis ratio q, major axis at beta
    in GalSim's world frame (see test_galsim_shear_mapping)."""
    kw = dict(half_light_radius=re_as * math.sqrt(q), flux=flux, gsparams=GSPARAMS)
    if n == 1.0:
        prof = galsim.Exponential(**kw)
    elif n == 4.0:
        prof = galsim.DeVaucouleurs(**kw)
    else:
        prof = galsim.Sersic(n, **kw)
    return prof.shear(g=e_of_q(q), beta=beta_rad * galsim.radians)


def sky_frame(gs_wcs, image_pos):
    """(beta_E, s): the angle of East in GalSim's world (u, v) frame at image_pos, and s = +1 if
    North is 90 deg counter-clockwise from East there, -1 if clockwise.  Our theta (East towards
    North) is then GalSim's beta = beta_E + s theta.  East and North come from GalSim's own
    celestial WCS; with a NullWCS our convention is East = +x, North = +y."""
    J = gs_wcs.jacobian(image_pos=image_pos).getMatrix()  # pixel -> (u, v) arcsec
    if gs_wcs.isCelestial():
        c = gs_wcs.toWorld(image_pos)
        d = 0.05  # arcsec
        east = galsim.CelestialCoord(c.ra + d / math.cos(c.dec.rad) * galsim.arcsec, c.dec)
        north = galsim.CelestialCoord(c.ra, c.dec + d * galsim.arcsec)
        pe, pn = gs_wcs.toImage(east) - image_pos, gs_wcs.toImage(north) - image_pos
        pe, pn = np.array([pe.x, pe.y]), np.array([pn.x, pn.y])
    else:
        pe, pn = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    ue, un = J @ pe, J @ pn
    # on the sky East and North are perpendicular and equally scaled
    assert abs(ue @ un) < 1e-6 * (ue @ ue) and abs(un @ un / (ue @ ue) - 1) < 1e-6
    return math.atan2(ue[1], ue[0]), float(np.sign(ue[0] * un[1] - ue[1] * un[0]))


def psf_pair(spec):
    """(our PSF, GalSim PSF in pixel coordinates) for ('gauss', FWHM) or ('mog', core FWHM)."""
    kind, fwhm = spec
    s0 = fwhm * FWHM2SIG
    if kind == "gauss":
        amps, means, covs = [1.0], [[0.0, 0.0]], [s0 * s0 * np.eye(2)]
        ours = NCircularGaussianPSF([s0], [1.0])
    else:  # core + off-centre elliptical + wide wing
        amps = [0.6, 0.3, 0.1]
        means = [[0.0, 0.0], [0.25, -0.15], [-0.4, 0.3]]
        covs = [s0 * s0 * np.eye(2),
                s0 * s0 * np.array([[1.8**2, 0.35], [0.35, 1.4**2]]),
                (3.5 * s0) ** 2 * np.eye(2)]
        ours = GaussianMixturePSF(amps, means, covs)
    parts = []
    for a, m, C in zip(amps, means, covs):
        L = np.linalg.cholesky(C)  # unit Gaussian -> covariance L L^T
        g = galsim.Gaussian(sigma=1.0, gsparams=GSPARAMS).transform(*L.ravel()).withFlux(a)
        parts.append(g.shift(*m))
    return ours, galsim.Add(parts, gsparams=GSPARAMS)


def render_case(case, invvar=1e20, N=None):
    """(ours, GalSim) images of the case (side N, default image_size).  invvar 1e20 (noise
    1e-10) makes our stamps cover the whole image, so the comparison measures the profile
    mixtures, the shapes and the WCS."""
    N = N or image_size(case.re_px)
    xc, yc = N // 2 + 0.3, N // 2 - 0.2  # 0-indexed pixel; GalSim's bounds start at 1
    gpos = galsim.PositionD(xc + 1, yc + 1)
    if case.wcs == "null":
        gs_wcs = galsim.PixelScale(PIXSCALE)
        wcs, pos, pixscale = NullWCS(pixscale=PIXSCALE), PixPos(xc, yc), PIXSCALE
    else:
        cd = TAN_CD[case.wcs]
        crpix = (N / 2 + 3.5, N / 2 - 2.25)  # the galaxy is off the tangent point
        hdr = fits.Header()
        for k, v in dict(CTYPE1="RA---TAN", CTYPE2="DEC--TAN", CRVAL1=CRVAL[0], CRVAL2=CRVAL[1],
                         CRPIX1=crpix[0], CRPIX2=crpix[1], CD1_1=cd[0, 0], CD1_2=cd[0, 1],
                         CD2_1=cd[1, 0], CD2_2=cd[1, 1]).items():
            hdr[k] = v
        gs_wcs = galsim.FitsWCS(header=hdr)
        assert isinstance(gs_wcs, galsim.GSFitsWCS)  # GalSim's own TAN code
        wcs = FitsWcs(Tan(*CRVAL, *crpix, *cd.ravel(), N, N))
        c = gs_wcs.toWorld(gpos)
        pos = RaDecPos(c.ra.deg, c.dec.deg)
        pixscale = 3600.0 * math.sqrt(abs(np.linalg.det(cd)))
        # both WCS codes put the galaxy on the same pixel
        np.testing.assert_allclose(wcs.positionToPixel(pos), (xc, yc), atol=1e-7)
    comps = galaxy_components(case, case.re_px * pixscale)
    psf, gs_psf_px = psf_pair(case.psf)
    beta_e, s = sky_frame(gs_wcs, gpos)
    gal = galsim.Add([gs_profile(n, f, r, q, beta_e + s * math.radians(th))
                      for n, f, r, q, th in comps], gsparams=GSPARAMS)
    gs_psf = gs_wcs.local(image_pos=gpos).toWorld(gs_psf_px)
    assert abs(gs_psf.flux - 1.0) < 1e-12
    gim = galsim.ImageD(N, N, wcs=gs_wcs)
    galsim.Convolve([gal, gs_psf], gsparams=GSPARAMS).drawImage(
        image=gim, method="no_pixel", center=gpos)
    img = Image(data=np.zeros((N, N)), invvar=np.full((N, N), invvar), psf=psf, wcs=wcs)
    tr = Tractor([img], [our_source(case, pos, comps)])
    return tr.getModelImage(0), gim.array.copy()


def compare(case):
    ours, ref = render_case(case)
    return float(np.abs(ours - ref).max() / ref.max()), float(ours.sum() / ref.sum())


REPRESENTATIVE = [
    Case("exp", 3, 0.6, 30.0, ("gauss", 4), "null"),
    Case("dev", 10, 0.2, -50.0, ("mog", 3), "flip"),
    Case("sersic", 1, 1.0, 0.0, ("gauss", 6), "rot", n=2.5),
    Case("sersic", 3, 0.2, 75.0, ("gauss", 2), "null", n=0.5),
    Case("sersic", 3, 0.6, 120.0, ("mog", 2), "rot", n=6.0),
    Case("comp", 3, 0.6, 160.0, ("mog", 3), "rot"),
    Case("fcomp", 10, 0.2, 10.0, ("gauss", 2), "flip"),
    Case("rex", 3, 1.0, 0.0, ("gauss", 4), "flip"),
]


@pytest.mark.parametrize("case", REPRESENTATIVE, ids=str)
def test_galsim_images_representative(case):
    maxdiff, flux_ratio = compare(case)
    assert maxdiff <= MAX_DIFF, (str(case), maxdiff)
    assert abs(flux_ratio - 1) <= FLUX_TOL, (str(case), flux_ratio)


@pytest.mark.parametrize("n", [1.0, 2.5, 4.0])
def test_galsim_shear_mapping(n):
    """gs_profile(n, 1, re, q, beta) really has semi-major half-light radius re, axis ratio q
    and its major axis at beta (GalSim's shear preserves area: hlr_round = re sqrt(q))."""
    re, q, beta = 12.0, 0.4, math.radians(30.0)
    prof = gs_profile(n, 1.0, re, q, beta)
    # isophotes: equal surface brightness all around the ellipse (re, q re) at beta
    t = np.linspace(0, 2 * np.pi, 17)[:-1]
    R = _rot(math.degrees(beta))
    ring = R @ np.stack([re * np.cos(t), q * re * np.sin(t)])
    vals = np.array([prof.xValue(galsim.PositionD(x, y)) for x, y in ring.T])
    np.testing.assert_allclose(vals, vals[0], rtol=1e-9)
    # ... and not around the ellipse turned by 90 deg (the axes are not swapped)
    turned = _rot(math.degrees(beta) + 90.0) @ np.stack([re * np.cos(t), q * re * np.sin(t)])
    other = np.array([prof.xValue(galsim.PositionD(x, y)) for x, y in turned.T])
    assert other.max() / other.min() > 2
    # half the flux inside the ellipse: sums of pixel integrals on a fine grid ('real_space'
    # integrates each pixel, so the cusp of large-n profiles is handled; no_pixel's midpoint
    # sums converge slowly there: 0.5055 for n = 2.5 at this resolution)
    h = re / 40.0
    H = int(math.ceil(1.2 * re / h))
    im = prof.drawImage(nx=2 * H + 1, ny=2 * H + 1, scale=h, method="real_space",
                        dtype=np.float64).array
    yy, xx = (np.mgrid[-H:H + 1, -H:H + 1] * h).astype(float)
    u, v = R.T @ np.stack([xx.ravel(), yy.ravel()])
    inside = ((u / re) ** 2 + (v / (q * re)) ** 2 <= 1.0).reshape(xx.shape)
    assert im[inside].sum() == pytest.approx(0.5, abs=1.5e-3)  # boundary pixels: ~5e-4


GRID_KINDS = [("exp", 0.0), ("dev", 0.0), ("sersic", 0.5), ("sersic", 1.0), ("sersic", 2.5),
              ("sersic", 4.0), ("sersic", 6.0), ("comp", 0.0), ("fcomp", 0.0), ("rex", 0.0)]
GRID_RE = (1, 3, 10, 20)  # pixels
GRID_Q = (0.2, 0.6, 1.0)
GRID_PSF = (("gauss", 2), ("gauss", 4), ("gauss", 6), ("mog", 3))
GRID_THETA = (0.0, 30.0, 75.0, 110.0, 155.0)  # cycled through the grid, as are the WCSs
GRID_WCS = ("null", "rot", "flip")


def grid_cases(kind, n):
    """Every (re, q, PSF) for one kind; position angle and WCS cycle along the grid."""
    out = []
    for re in GRID_RE:
        for q in GRID_Q if kind != "rex" else (1.0,):
            for psf in GRID_PSF:
                i = len(out)
                out.append(Case(kind, re, q, GRID_THETA[i % 5], psf, GRID_WCS[i % 3], n))
    return out


#: cases of the grid that miss issue 3's bounds, with the measured (max |diff| / peak, flux
#: ratio); they are reported in the issue.  Empty: every case of the grid meets the bounds.
KNOWN_MISSES: dict = {}


@pytest.mark.slow
@pytest.mark.parametrize("kind,n", GRID_KINDS, ids=[f"{k}{n:g}" if k == "sersic" else k
                                                    for k, n in GRID_KINDS])
def test_galsim_images_grid(kind, n):
    rows = [(str(c), *compare(c)) for c in grid_cases(kind, n)]
    misses = [r for r in rows if r[1] > MAX_DIFF or abs(r[2] - 1) > FLUX_TOL]
    unexpected = [r for r in misses if r[0] not in KNOWN_MISSES]
    assert not unexpected, unexpected
    if misses:
        pytest.xfail("known misses of issue 3's bounds (case, max|diff|/peak, flux ratio): "
                     + "; ".join(f"{c} {d:.2e} {f:.5f}" for c, d, f in misses))


# =========================================================================== (c) stamp truncation
def mixture_image(N, xc, yc, comps_px, psf_mog):
    """The complete (untruncated) PSF-convolved mixture at the pixel centres, in numpy:
    comps_px = [(flux, (amps, vars), covariance of the half-light ellipse in pixels^2)]."""
    yy, xx = np.mgrid[:N, :N].astype(float)
    out = np.zeros((N, N))
    pa, pm, pc = psf_mog
    for flux, (amps, vars), S in comps_px:
        for a, v in zip(np.asarray(amps), np.asarray(vars)):
            for b, m, P in zip(pa, pm, pc):
                C = v * S + P
                Ci = np.linalg.inv(C)
                dx, dy = xx - xc - m[0], yy - yc - m[1]
                q2 = Ci[0, 0] * dx * dx + 2 * Ci[0, 1] * dx * dy + Ci[1, 1] * dy * dy
                out += flux * a * b / (2 * np.pi * math.sqrt(np.linalg.det(C))) * np.exp(-0.5 * q2)
    return out


@pytest.mark.parametrize("case,profile,sigma,N", [
    (Case("dev", 4, 0.5, 30.0, ("gauss", 4), "null"), profiles.dev_mog(), 1e-2, 321),
    (Case("exp", 6, 0.7, -20.0, ("mog", 3), "null"), profiles.exp_mog(), 2e-3, 161),
    (Case("sersic", 3, 0.6, 60.0, ("gauss", 3), "null", n=6.0), profiles.sersic_mog(6.0),
     1e-2, 451),
], ids=["dev", "exp", "sersic6"])
@pytest.mark.usefixtures("windowed_plans")
def test_stamp_truncation_obeys_stamp_chi2(case, profile, sigma, N):
    """A bright galaxy (flux 100, peak S/N 200-450) in an image bigger than its stamps: what the
    stamps cut off is worth < STAMP_CHI2 of chi^2, so ours differs from GalSim by at most the
    truncation plus what the mixture itself misses."""
    ours, ref = render_case(case, invvar=1.0 / sigma**2, N=N)
    full, _ = render_case(case, invvar=1e20, N=N)  # stamps covering the image
    xc, yc = N // 2 + 0.3, N // 2 - 0.2
    (n, F, re, q, th), = galaxy_components(case, case.re_px * PIXSCALE)
    S = cov_ref(re / PIXSCALE, q, th)
    psf, _ = psf_pair(case.psf)
    mix = mixture_image(N, xc, yc, [(F, profile, S)], psf.getMixtureOfGaussians())
    # our untruncated render is the numpy mixture
    assert np.abs(full - mix).max() <= 1e-10 * mix.max()
    # the stamp really cuts: many pixels of the image are outside it
    assert np.count_nonzero(ours == 0) > 0.2 * N * N
    chi2_trunc = np.sum(((ours - mix) / sigma) ** 2)
    chi2_mix = np.sum(((mix - ref) / sigma) ** 2)
    chi2_tot = np.sum(((ours - ref) / sigma) ** 2)
    print(f"{case}: chi2 truncation {chi2_trunc:.2e}, mixture {chi2_mix:.3g}, total {chi2_tot:.3g}"
          f", flux in stamp {ours.sum() / mix.sum():.6f}")
    assert 0 < chi2_trunc <= STAMP_CHI2, chi2_trunc
    # triangle inequality on the residual vectors; and the rule as documented
    assert math.sqrt(chi2_tot) <= math.sqrt(STAMP_CHI2) + math.sqrt(chi2_mix)
    assert chi2_tot <= STAMP_CHI2 + chi2_mix, (chi2_tot, chi2_mix, chi2_trunc)
    # and the flux left outside the stamp is a small fraction
    assert abs(ours.sum() / mix.sum() - 1) < 2e-3


# =========================================================================== (d) gradients
def _pow2(h):
    """Largest power of two <= h: p +- k h is then exact, and the stencil uses the intended step."""
    return 2.0 ** math.floor(math.log2(h))


def _fd_step(name):
    last = name.rsplit(".", 1)[-1]
    return _pow2({"x": 1e-2, "y": 1e-2, "ra": 1e-2 * PIXSCALE / 3600, "dec": 1e-2 * PIXSCALE / 3600,
                  "phi": 0.05}.get(last, 1e-3))


def _model(tr, p):
    tr.setParams(p)
    return tr.getModelImage(0)


def fd_derivative(tr, t, h):
    """Five-point central difference (error O(h^4)) of image 0 w.r.t. thawed parameter t."""
    p0 = list(tr.getParams())
    img = {}
    for k in (-2, -1, 1, 2):
        p = list(p0)
        p[t] = p0[t] + k * h
        assert p[t] - p0[t] == k * h
        img[k] = _model(tr, p)
    tr.setParams(p0)
    return (8 * (img[1] - img[-1]) - (img[2] - img[-2])) / (12 * h)


def ad_derivatives(tr):
    """getDerivs() as full images: {parameter name: d(image 0)/d(parameter)}."""
    H, W = tr.getImage(0).shape
    out = {}
    for name, per_image in zip(tr.getParamNames(), tr.getDerivs()):
        a = np.zeros((H, W))
        for patch, img in per_image:
            assert img is tr.getImage(0)
            patch.addTo(a)
        out[name] = a
    return out


def check_against_fd(tr, rtol=1e-6):
    ad = ad_derivatives(tr)
    names = tr.getParamNames()
    assert list(ad) == names
    for t, name in enumerate(names):
        fd = fd_derivative(tr, t, _fd_step(name))
        scale = max(np.abs(fd).max(), np.abs(ad[name]).max())
        assert scale > 0, name
        err = np.abs(ad[name] - fd).max() / scale
        assert err <= rtol, (name, err)
    return names


def _mid_interval_n(n):
    """Sersic index in the middle (in ln n) of the spline interval that holds n."""
    br = np.asarray(profiles._SER_BR)
    j = int(np.searchsorted(br, math.log(n))) - 1
    return float(np.exp(0.5 * (br[j] + br[j + 1])))


def _gradient_scene(wcs_kind, keep=None):
    """Every galaxy class (or those at indices ``keep``) in one 96 x 96 image (noise 1: stamps
    sized by the chi^2 rule), positions away from half-integer pixels so that stamp origins stay
    put under the stencil.  With a TAN WCS, PixPos and RaDecPos sources alternate (FitsWcs
    places both)."""
    N = 96
    if wcs_kind == "null":
        wcs = NullWCS(pixscale=PIXSCALE)
    else:
        cd = TAN_CD[wcs_kind]
        wcs = FitsWcs(Tan(*CRVAL, 50.5, 44.0, *cd.ravel(), N, N))
    psf = psf_pair(("mog", 3) if wcs_kind != "null" else ("gauss", 3.5))[0]
    img = Image(data=np.zeros((N, N)), invvar=np.ones((N, N)), psf=psf, wcs=wcs)

    def pos(x, y, radec):
        if radec and wcs_kind != "null":
            return RaDecPos(*wcs.pixelToPosition(x, y).getAllParams())
        return PixPos(x, y)

    n1, n2 = _mid_interval_n(0.6), _mid_interval_n(2.7)
    srcs = [
        ExpGalaxy(pos(20.2, 22.7, False), Flux(300.0), ellipse_e(1.1, 0.55, 35.0)),
        DevGalaxy(pos(70.3, 20.1, True), Flux(500.0), galaxy_shape(0.9, 0.7, 100.0)),
        SersicGalaxy(pos(22.8, 72.3, False), Flux(400.0), ellipse_esoft(0.8, 0.45, -30.0),
                     SersicIndex(n1)),
        SersicGalaxy(pos(47.1, 47.8, True), Flux(400.0), ellipse_e(1.2, 0.8, 60.0),
                     SersicIndex(n2)),
        CompositeGalaxy(pos(73.7, 70.2, True), Flux(250.0), ellipse_e(1.3, 0.5, 10.0),
                        Flux(200.0), ellipse_esoft(0.6, 0.8, 70.0)),
        FixedCompositeGalaxy(pos(45.2, 15.3, False), Flux(450.0), 0.3,
                             galaxy_shape(1.0, 0.6, -45.0), ellipse_e(0.5, 0.85, 20.0)),
        RexGalaxy(pos(15.8, 47.3, True), Flux(300.0), LogRadius(math.log(0.9))),
    ]
    if keep is not None:
        srcs = [srcs[i] for i in keep]
    tr = Tractor([img], srcs)
    tr.freezeParam("images")
    return tr


def test_derivatives_match_finite_differences_quick():
    """The two richest classes (every shape kind, n between spline knots, fracDev, PixPos and
    RaDecPos through a flipped TAN WCS); all classes in the slow test below.  (Compiling the
    Jacobians costs ~1.4 s per source kind.)"""
    tr = _gradient_scene("flip", keep=(3, 5))
    names = check_against_fd(tr)
    assert {n.rsplit(".", 1)[-1] for n in names} == {
        "x", "y", "ra", "dec", "Flux", "re", "e1", "e2", "ab", "phi", "SersicIndex", "FracDev"}


@pytest.mark.slow
@pytest.mark.parametrize("wcs_kind", ["flip", "null"])
def test_derivatives_match_finite_differences(wcs_kind):
    tr = _gradient_scene(wcs_kind)
    names = check_against_fd(tr)
    # every parameter of every class was checked
    expected = {"x", "y"} | ({"ra", "dec"} if wcs_kind != "null" else set())
    expected |= {"Flux", "re", "e1", "e2", "ab", "phi", "logre", "ee1", "ee2", "SersicIndex",
                 "FracDev"}
    assert {n.rsplit(".", 1)[-1] for n in names} == expected
    assert len(names) == 6 + 6 + 7 + 7 + 10 + 10 + 4


def test_shape_derivative_at_zero_ellipticity():
    """e = 0 is a kink of the convention (re is the semi-major axis, whose direction jumps):
    C(e1, 0) = re^2 diag(1, ((1-e1)/(1+e1))^2) for e1 > 0 but re^2 diag(((1+e1)/(1-e1))^2, 1)
    for e1 < 0.  Our gradient there is the central one (|e| contributes nothing): dC/de1 =
    re^2 diag(2, -2), dC/de2 = re^2 [[0, 2], [2, 0]], the mean of the two one-sided
    derivatives, to which a symmetric finite difference converges.  Same for
    EllipseESoft (d e / d ee = 1 at 0)."""
    import jax
    import jax.numpy as jnp

    re = 1.2
    for cls, v0 in ((EllipseE, [re, 0.0, 0.0]), (EllipseESoft, [math.log(re), 0.0, 0.0])):
        J = np.asarray(jax.jacfwd(lambda v, c=cls: c._cov(jnp, *v))(jnp.array(v0)))  # (2, 2, 3)
        np.testing.assert_allclose(J[..., 1], re * re * np.diag([2.0, -2.0]), atol=1e-12)
        np.testing.assert_allclose(J[..., 2], re * re * np.array([[0, 2.0], [2.0, 0]]), atol=1e-12)
    N = 48
    img = Image(data=np.zeros((N, N)), invvar=np.ones((N, N)),
                psf=NCircularGaussianPSF([1.3], [1.0]), wcs=NullWCS(pixscale=PIXSCALE))
    srcs = [ExpGalaxy(PixPos(14.2, 23.7), Flux(500.0), EllipseE(re, 0.0, 0.0)),
            ExpGalaxy(PixPos(33.8, 24.3), Flux(500.0), EllipseESoft(math.log(re), 0.0, 0.0))]
    tr = Tractor([img], srcs)
    tr.freezeParam("images")
    for s in srcs:
        s.freezeParams("pos", "brightness")
    names = tr.getParamNames()
    assert [n.rsplit(".", 1)[-1] for n in names] == ["re", "e1", "e2", "logre", "ee1", "ee2"]
    ad = ad_derivatives(tr)
    p0 = list(tr.getParams())

    def at(t, x):
        p = list(p0)
        p[t] += x
        return _model(tr, p)

    h = 2.0**-8
    for t, name in enumerate(names):
        if name.endswith("re"):
            continue
        f = {k: at(t, k * h) for k in (-3, -2, -1, 0, 1, 2, 3)}
        # one-sided derivatives, O(h^3)
        fwd = (-11 * f[0] + 18 * f[1] - 9 * f[2] + 2 * f[3]) / (6 * h)
        bwd = (11 * f[0] - 18 * f[-1] + 9 * f[-2] - 2 * f[-3]) / (6 * h)
        # a symmetric difference converges to their mean only as O(h) (the curvature jumps too)
        hs = 2.0**-16
        sym = (at(t, hs) - at(t, -hs)) / (2 * hs)
        tr.setParams(p0)
        scale = np.abs(ad[name]).max()
        assert np.abs(fwd - bwd).max() > 0.5 * scale, name  # the kink is real
        assert np.abs(ad[name] - 0.5 * (fwd + bwd)).max() <= 1e-5 * scale, name
        assert np.abs(ad[name] - sym).max() <= 1e-4 * scale, name


# =========================================================================== (e) recovery
class Recovery(NamedTuple):
    kind: str  # 'exp', 'dev', 'sersic'
    shape: str  # 'EllipseE' or 'EllipseESoft'
    n: float = 0.0


REC_N, REC_SIGMA = 48, 1.0  # image side (pixels), pixel noise
REC_TRUTH = dict(x=23.7, y=24.2, flux=3000.0, re_px=4.0, q=0.6, theta=30.0)
REC_PSF_FWHM = 4.0  # pixels


def _rec_truth_params(rc):
    """Truth in the fitted parameterisation: x, y, flux, shape parameters (, n)."""
    t = REC_TRUTH
    shape = SHAPE_MAKERS[rc.shape](t["re_px"] * PIXSCALE, t["q"], t["theta"])
    p = [t["x"], t["y"], t["flux"], *shape.getAllParams()]
    return np.array(p + ([rc.n] if rc.kind == "sersic" else []))


def _rec_galsim_truth(rc):
    t = REC_TRUTH
    n = {"exp": 1.0, "dev": 4.0}.get(rc.kind, rc.n)
    gal = gs_profile(n, t["flux"], t["re_px"] * PIXSCALE, t["q"], math.radians(t["theta"]))
    psf = galsim.Gaussian(sigma=REC_PSF_FWHM * FWHM2SIG * PIXSCALE, gsparams=GSPARAMS)
    im = galsim.ImageD(REC_N, REC_N, scale=PIXSCALE)  # PixelScale: u = +x = East, as NullWCS
    galsim.Convolve([gal, psf], gsparams=GSPARAMS).drawImage(
        image=im, method="no_pixel", center=galsim.PositionD(t["x"] + 1, t["y"] + 1))
    return im.array.copy()


def _rec_fit(rc, truth_image, seed):
    """Fit noisy GalSim data from a perturbed start; returns (fit, sigmas, names)."""
    rng = np.random.default_rng(seed)
    data = truth_image + rng.normal(0.0, REC_SIGMA, truth_image.shape)
    img = Image(data=data, invvar=np.full(data.shape, REC_SIGMA**-2),
                psf=NCircularGaussianPSF([REC_PSF_FWHM * FWHM2SIG], [1.0]),
                wcs=NullWCS(pixscale=PIXSCALE))
    t = REC_TRUTH
    # start: 0.4 px off, flux +15%, re -15%, e rotated and changed, n +0.6
    start = SHAPE_MAKERS[rc.shape](0.85 * t["re_px"] * PIXSCALE, 0.75, t["theta"] + 20.0)
    args = [PixPos(t["x"] + 0.3, t["y"] - 0.25), Flux(1.15 * t["flux"]), start]
    cls = {"exp": ExpGalaxy, "dev": DevGalaxy, "sersic": SersicGalaxy}[rc.kind]
    if rc.kind == "sersic":
        args.append(SersicIndex(rc.n + 0.6))
    tr = Tractor([img], [cls(*args)])
    tr.freezeParam("images")
    res = tr.optimize_loop(dchisq=1e-6, steps=60)
    assert res["converged"], res
    # errors: the inverse Fisher (Gauss-Newton normal) matrix J^T W J at the fit
    J = np.stack([d.ravel() for d in ad_derivatives(tr).values()], axis=1) / REC_SIGMA
    cov = np.linalg.inv(J.T @ J)
    return np.array(tr.getParams()), np.sqrt(np.diag(cov)), tr.getParamNames()


def check_recovery(rc, seeds):
    truth_image = _rec_galsim_truth(rc)
    truth = _rec_truth_params(rc)
    pulls, sig = [], None
    for seed in seeds:
        fit, sig, names = _rec_fit(rc, truth_image, seed)
        pulls.append((fit - truth) / sig)
    pulls = np.array(pulls)
    N = len(seeds)
    # every pull within 3 sigma (for ~6 x 6 independent normal pulls P(some |pull| > 3) ~ 10%:
    # the seeds are fixed, so this is deterministic); mean pulls consistent with 0
    assert np.abs(pulls).max() < 3.0, (names, pulls)
    assert np.all(np.abs(pulls.mean(0)) < 3.0 / math.sqrt(N)), (names, pulls.mean(0))
    return names, pulls, sig


REC_DEFAULT = Recovery("exp", "EllipseE")
REC_SLOW = [Recovery("exp", "EllipseESoft"), Recovery("dev", "EllipseE"),
            Recovery("dev", "EllipseESoft"), Recovery("sersic", "EllipseE", 2.5),
            Recovery("sersic", "EllipseESoft", 1.5), Recovery("sersic", "EllipseE", 4.5)]


def test_recovery_galsim_exp_quick():
    names, pulls, sig = check_recovery(REC_DEFAULT, seeds=range(5))
    assert [n.rsplit(".", 1)[-1] for n in names] == ["x", "y", "Flux", "re", "e1", "e2"]
    # the data constrain the parameters well (a test of recovery, not of a flat likelihood)
    assert sig[2] / REC_TRUTH["flux"] < 0.02 and sig[3] / (REC_TRUTH["re_px"] * PIXSCALE) < 0.03


@pytest.mark.slow
@pytest.mark.parametrize("rc", REC_SLOW, ids=lambda r: f"{r.kind}{r.n or ''}-{r.shape}")
def test_recovery_galsim(rc):
    names, pulls, sig = check_recovery(rc, seeds=range(100, 110))
    # the pull spread says the Fisher errors are right: pooled over parameters (~60 pulls)
    sd = pulls.std(ddof=1)
    lo, hi = np.sqrt(chi2_dist.ppf([0.005, 0.995], pulls.size - 1) / (pulls.size - 1))
    assert lo < sd < hi, (sd, lo, hi)
