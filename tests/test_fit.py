"""Derivatives, the Gauss-Newton system, and fitting (``tractor_prob.fit`` / ``Tractor.optimize``).

References: central finite differences of ``getModelImage``; a dense ``jax.jacfwd`` of the
full model images (no stamps, no pair lists); Fisher matrices built with numpy from the
analytic derivatives of Gaussians; the truths of simulated data; astropy's WCS.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from astropy.wcs import WCS
from scipy.stats import chi2

from tractor_prob import (
    ConstantSky,
    FitsWcs,
    Flux,
    Fluxes,
    GaussianMixturePSF,
    Image,
    LinearPhotoCal,
    Mags,
    MagsPhotoCal,
    NanoMaggies,
    NCircularGaussianPSF,
    NullWCS,
    PixPos,
    PointSource,
    RaDecPos,
    Tan,
    Tractor,
)


# --------------------------------------------------------------------------- helpers
def gauss(xx, yy, x0, y0, s):
    """Unit-flux circular Gaussian of sigma s (pixels) at pixel centres."""
    return np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * s * s)) / (2 * np.pi * s * s)


def grid(shape):
    H, W = shape
    yy, xx = np.mgrid[:H, :W]
    return xx.astype(float), yy.astype(float)


def rot_cd(scale_arcsec, theta_deg):
    t = np.deg2rad(theta_deg)
    s = scale_arcsec / 3600.0
    return s * np.array([[-np.cos(t), np.sin(t)], [np.sin(t), np.cos(t)]])


def tan_pair(crval, crpix, cd, W, H):
    """(our Tan, astropy WCS) of the same TAN header."""
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = crval
    w.wcs.crpix = crpix
    w.wcs.cd = cd
    return Tan(*crval, *crpix, *np.asarray(cd).ravel(), W, H), w


def pow2(h):
    """Largest power of two <= h: p +- k h is then exact for the values used here,
    so the finite-difference steps are exactly the intended ones."""
    return 2.0 ** np.floor(np.log2(h))


def fd_model_derivs(tr, t, h):
    """Five-point central difference (error O(h^4)) of every model image w.r.t. thawed
    parameter t, by setParams + getModelImage."""
    p0 = list(tr.getParams())
    imgs = {}
    for k in (-2, -1, 1, 2):
        p = list(p0)
        p[t] = p0[t] + k * h
        assert p[t] - p0[t] == k * h
        tr.setParams(p)
        imgs[k] = [tr.getModelImage(i) for i in range(tr.getNImages())]
    tr.setParams(p0)
    # differences first: exact zeros stay zero, and less round-off
    return [(8 * (imgs[1][i] - imgs[-1][i]) - (imgs[2][i] - imgs[-2][i])) / (12 * h)
            for i in range(tr.getNImages())]


def check_derivs_against_fd(tr, step_of, rtol=1e-6):
    names = tr.getParamNames()
    derivs = tr.getDerivs()
    assert len(derivs) == len(names) == tr.numberOfParams()
    images = list(tr.getImages())
    top = max(np.abs(tr.getModelImage(i)).max() for i in range(len(images)))
    for t, name in enumerate(names):
        h = pow2(step_of(name))
        fd = fd_model_derivs(tr, t, h)
        # the differences carry the model images' round-off, a few ulp of |model| / h per
        # pixel where the summation order varies between calls (GPU scatter-adds)
        floor = 1e-14 * top / h
        ad = [np.zeros(im.shape) for im in images]
        seen = set()
        for patch, img in derivs[t]:
            i = next(j for j, im in enumerate(images) if im is img)
            assert i not in seen
            seen.add(i)
            patch.addTo(ad[i])
        scale = max(max(np.abs(a).max() for a in ad), max(np.abs(f).max() for f in fd))
        if scale <= floor:  # e.g. the g-band flux of a source seen only in r images
            continue
        for i in range(len(images)):
            # whole image: the patch is right, and nothing outside it moves
            err = np.abs(ad[i] - fd[i]).max()
            assert err <= rtol * scale + floor, (name, i, err / scale)


def pixel_steps(pixscale_arcsec):
    """Finite-difference steps (rounded down to powers of two): 1e-2 pixel for positions,
    also for RA/Dec/CRVAL expressed in degrees (the stencil's O(h^4) error is then ~1e-10
    relative, and the float64 round-off of RA ~ 150 deg, ~4e-10 pixel, stays ~1e-8 of the
    derivative); 2e-4 in their own units for fluxes, magnitudes, sky and PSF widths
    (1e-7 to 1e-4 relative)."""
    deg = 1e-2 * pixscale_arcsec / 3600.0

    def step(name):
        last = name.rsplit(".", 1)[-1]
        if last in ("x", "y"):
            return 1e-2
        if last in ("ra", "dec", "crval1", "crval2"):
            return deg
        return 2e-4
    return step


# --------------------------------------------------------------------------- gradients
def test_derivs_pixpos_flux():
    H, W = 30, 34
    psf = NCircularGaussianPSF([1.7, 3.4], [0.8, 0.2])
    img = Image(data=np.zeros((H, W)), invvar=np.ones((H, W)), psf=psf)
    # positions are kept away from half-integers so the stamp origins do not move
    srcs = [PointSource(PixPos(12.3, 14.8), Flux(700.0)),
            PointSource(PixPos(1.2, 27.7), Flux(300.0))]  # stamp hangs over two edges
    tr = Tractor([img], srcs)
    tr.freezeParam("images")
    assert tr.getParamNames() == ["source0.pos.x", "source0.pos.y", "source0.brightness.Flux",
                                  "source1.pos.x", "source1.pos.y", "source1.brightness.Flux"]
    check_derivs_against_fd(tr, pixel_steps(1.0))


def _radec_scene(pixscale=0.262, n_images=2):
    """Two images (bands r, g) with different TAN WCSs; RaDecPos + NanoMaggies sources.
    ``n_images=1`` keeps the r image only."""
    H, W = 36, 40
    t0, w0 = tan_pair((150.1, 2.2), (20.5, 18.5), rot_cd(pixscale, 10.0), W, H)
    t1, w1 = tan_pair((150.1003, 2.1998), (24.0, 15.5), rot_cd(pixscale, -25.0), W, H)
    imgs = [
        Image(data=np.zeros((H, W)), invvar=np.ones((H, W)),
              psf=NCircularGaussianPSF([1.9], [1.0]), wcs=FitsWcs(t0),
              photocal=LinearPhotoCal(150.0, band="r")),
        Image(data=np.zeros((H, W)), invvar=np.full((H, W), 4.0),
              psf=GaussianMixturePSF([0.7, 0.3], [[0, 0], [0.3, -0.2]],
                                     [[[3.5, 0.0], [0.0, 3.5]], [[7.0, 1.5], [1.5, 5.0]]]),
              wcs=FitsWcs(t1), photocal=LinearPhotoCal(90.0, band="g")),
    ]
    srcs = []
    for (x, y), (fr, fg) in [((18.2, 17.3), (5.0, 3.0)), ((22.7, 13.8), (2.0, 4.0))]:
        ra, dec = w0.all_pix2world(x, y, 0)
        srcs.append(PointSource(RaDecPos(float(ra), float(dec)), NanoMaggies(r=fr, g=fg)))
    return Tractor(imgs[:n_images], srcs), (w0, w1)[:n_images]


def _assert_origins_stay(tr, wcss):
    """Stamp origins (rounded centres) must not move within the +-0.02 pixel reach of the
    stencil, or the finite differences would see stamps jump."""
    for s in tr.catalog:
        for w in wcss:
            x, y = w.all_world2pix(s.pos.ra, s.pos.dec, 0)
            assert min(abs(x % 1 - 0.5), abs(y % 1 - 0.5)) > 0.025


def test_derivs_radecpos_nanomaggies_tan():
    tr, wcss = _radec_scene()
    tr.freezeParam("images")
    _assert_origins_stay(tr, wcss)
    check_derivs_against_fd(tr, pixel_steps(0.262))


def test_derivs_mags_magsphotocal():
    H, W = 28, 30
    img = Image(data=np.zeros((H, W)), invvar=np.ones((H, W)),
                psf=NCircularGaussianPSF([2.1], [1.0]), photocal=MagsPhotoCal("r", 25.0))
    srcs = [PointSource(PixPos(13.3, 12.9), Mags(r=18.7, g=19.2)),
            PointSource(PixPos(16.8, 15.2), Mags(r=19.9, g=19.0))]
    tr = Tractor([img], srcs)
    tr.freezeParam("images")
    check_derivs_against_fd(tr, pixel_steps(1.0))


def test_derivs_image_params_sky_psf_crval():
    tr, wcss = _radec_scene(pixscale=1.0, n_images=1)
    _assert_origins_stay(tr, wcss)
    img = tr.getImage(0)
    img.sky = ConstantSky(4.0)  # thawed
    img.freezeParam("photocal")
    img.psf.freezeParam("weights")
    names = tr.getParamNames()
    assert names[:4] == ["image0.psf.sigmas.param0", "image0.wcs.crval1", "image0.wcs.crval2",
                         "image0.sky.sky"]
    check_derivs_against_fd(tr, pixel_steps(1.0))


# --------------------------------------------------------------------------- normal matrix
def _blended_field(n_images=2, seed=0):
    """Two images (two PSF kinds, two TAN WCSs, two bands), ten blended stars of two
    source kinds (RaDecPos+NanoMaggies, PixPos+Fluxes) with overlapping stamps, thawed
    skies and one thawed PSF width; masked and non-uniform inverse variances.
    ``n_images=1`` keeps only the first image (cheaper to compile)."""
    rng = np.random.default_rng(seed)
    H, W = 40, 46
    t0, w0 = tan_pair((30.0, -12.5), (22.5, 20.5), rot_cd(1.0, 15.0), W, H)
    t1, _ = tan_pair((30.0002, -12.4999), (24.0, 18.0), rot_cd(1.0, -20.0), W, H)
    ivs = []
    for _ in range(2):
        iv = rng.uniform(0.5, 2.0, (H, W))
        iv[rng.random((H, W)) < 0.05] = 0.0  # masked pixels
        ivs.append(iv)
    psf0 = NCircularGaussianPSF([1.7, 3.2], [0.8, 0.2])
    psf0.freezeParam("weights")
    psf0.sigmas.freezeParam(1)
    psf1 = GaussianMixturePSF([0.7, 0.3], [[0, 0], [0.3, -0.2]],
                              [[[3.5, 0.0], [0.0, 3.5]], [[7.0, 1.5], [1.5, 5.0]]])
    psf1.freezeAllParams()
    imgs = [Image(data=rng.normal(5.0, 1.0, (H, W)), invvar=ivs[0], psf=psf0, wcs=FitsWcs(t0),
                  photocal=LinearPhotoCal(100.0, band="r"), sky=ConstantSky(4.5)),
            Image(data=rng.normal(3.0, 1.0, (H, W)), invvar=ivs[1], psf=psf1, wcs=FitsWcs(t1),
                  photocal=LinearPhotoCal(60.0, band="g"), sky=ConstantSky(2.5))]
    for im in imgs:
        im.freezeParams("wcs", "photocal")
    xy = [(18.2, 17.3), (21.1, 19.4), (23.7, 16.2), (19.6, 22.8), (25.3, 21.7), (1.3, 2.2),
          (16.4, 14.1), (22.4, 24.6), (27.1, 18.3), (2.9, 4.1)]
    srcs = []
    for j, (x, y) in enumerate(xy):
        if j % 2 == 0:
            ra, dec = w0.all_pix2world(x, y, 0)
            srcs.append(PointSource(RaDecPos(float(ra), float(dec)),
                                    NanoMaggies(r=rng.uniform(2, 8), g=rng.uniform(2, 8))))
        else:
            srcs.append(PointSource(PixPos(x, y), Fluxes(r=rng.uniform(200, 800),
                                                         g=rng.uniform(200, 800))))
    tr = Tractor(imgs[:n_images], srcs)
    tr.catalog[5].freezeParam("brightness")  # a partly frozen source
    tr.addGaussianPrior("source3.brightness.r", 400.0, 30.0)
    return tr


@pytest.mark.parametrize("n_images", [1, pytest.param(2, marks=pytest.mark.slow)])
@pytest.mark.usefixtures("windowed_plans")
def test_normal_matrix_equals_dense_jacobian(n_images):
    tr = _blended_field(n_images)
    fitter, theta, pairs, pri = tr._fit_inputs()
    data, weights = tr._pixels(fitter.c)
    A, g, lnp = (np.asarray(v) for v in fitter.system(theta, data, weights, pairs, pri))
    nt = tr.numberOfParams()
    assert A.shape == (nt, nt) and g.shape == (nt,)
    names = tr.getParamNames()
    assert "image0.psf.sigmas.param0" in names and f"image{n_images - 1}.sky.sky" in names
    # the scene really has overlapping stamps, within and across source kinds
    n_pairs = [int(v.sum()) for per_img in pairs for (_, _, v) in per_img]
    assert all(n > 0 for n in n_pairs)

    comp = fitter.c
    T = jnp.asarray(fitter.T)
    th0 = jnp.asarray(theta)

    @jax.jit
    def full_model(x):  # all pixels of all images, no stamps / pairs involved
        th = th0.at[T].set(x)
        return jnp.concatenate([comp.model_images(ig, th).ravel()
                                for ig in range(len(comp.plan.images))])

    J = np.asarray(jax.jacfwd(full_model)(th0[T]))  # (n_pixels, nt)
    w = np.concatenate([np.asarray(wi).ravel() for wi in weights])
    d = np.concatenate([np.asarray(di).ravel() for di in data])
    r = d - np.asarray(full_model(th0[T]))
    Jw = J * w[:, None]
    A_ref = Jw.T @ Jw
    g_ref = Jw.T @ (w * r)
    # the Gaussian prior on source3.brightness.r
    k = names.index("source3.brightness.r")
    A_ref[k, k] += 1 / 30.0**2
    g_ref[k] += (400.0 - tr.catalog[3].brightness.r) / 30.0**2

    dA = np.sqrt(np.diag(A_ref))
    # parameters the pixels do not see (g-band fluxes with only the r image): exact zeros
    nz = dA > 0
    blind = [n.endswith(".g") and n_images == 1 for n in names]
    np.testing.assert_array_equal(~nz, blind)
    assert np.all(A[~nz] == 0) and np.all(A[:, ~nz] == 0) and np.all(g[~nz] == 0)
    dA = np.where(nz, dA, 1.0)
    # |A_ij| <= sqrt(A_ii A_jj) (Cauchy-Schwarz) sets the scale of each entry
    np.testing.assert_array_less(np.abs(A - A_ref), 1e-10 * np.outer(dA, dA))
    # and |g_i| <= ||w J_i|| ||w r||
    np.testing.assert_array_less(np.abs(g - g_ref), 1e-10 * dA * np.linalg.norm(w * r))
    assert abs(lnp - tr.getLogProb()) < 1e-10 * abs(lnp)
    lnl_ref = -0.5 * np.sum((w * r) ** 2)
    assert abs(tr.getLogLikelihood() - lnl_ref) < 1e-10 * abs(lnl_ref)


def _galaxy_field(H, W, flux_scale=1.0, re_scale=1.0, seed=0):
    """Stars, an ExpGalaxy and two DevGalaxies (one with its shape frozen) blended in one
    image with a thawed sky, non-uniform inverse variances and masked pixels."""
    from tractor_prob.galaxy import DevGalaxy, EllipseE, ExpGalaxy

    rng = np.random.default_rng(seed)
    iv = rng.uniform(0.5, 2.0, (H, W))
    iv[rng.random((H, W)) < 0.03] = 0.0
    t, _ = tan_pair((150.0, 2.0), ((W + 1) / 2.0, (H + 1) / 2.0), rot_cd(0.262, 10.0), W, H)
    wcs = FitsWcs(t)
    psf = GaussianMixturePSF([0.8, 0.2], np.zeros((2, 2)),
                             np.array([np.eye(2) * 1.6**2, np.eye(2) * 3.5**2]))
    tim = Image(data=np.zeros((H, W)), invvar=iv, psf=psf, wcs=wcs,
                photocal=LinearPhotoCal(1.0, band="r"), sky=ConstantSky(0.3))
    tim.freezeParams("psf", "wcs", "photocal")

    def pos(fx, fy):
        rd = wcs.pixelToPosition(fx * W, fy * H)
        return RaDecPos(rd.ra, rd.dec)

    f, s = flux_scale, re_scale
    srcs = [PointSource(pos(0.45, 0.5), NanoMaggies(r=800.0 * f)),
            PointSource(pos(0.55, 0.42), NanoMaggies(r=300.0 * f)),
            ExpGalaxy(pos(0.5, 0.58), NanoMaggies(r=1500.0 * f), EllipseE(1.2 * s, 0.2, -0.1)),
            DevGalaxy(pos(0.42, 0.4), NanoMaggies(r=4000.0 * f), EllipseE(1.4 * s, -0.15, 0.2)),
            DevGalaxy(pos(0.6, 0.55), NanoMaggies(r=2500.0 * f), EllipseE(1.0 * s, 0.1, 0.1))]
    tr = Tractor([tim], srcs)
    tr.catalog[4].freezeParam("shape")
    model = tr.getModelImage(0)
    tim.data = model + rng.normal(0, 1.0, (H, W)) / np.sqrt(np.where(iv > 0, iv, 1.0))
    return tr


@pytest.mark.parametrize("H, W, flux_scale, re_scale, lattice", [
    (64, 64, 1.0, 1.0, True),  # deV wings on coarse nodes covering the image (lattice unit)
    pytest.param(128, 128, 0.3, 0.3, False,  # deV wings on coarse stamps inside the image
                 marks=pytest.mark.slow),
])
@pytest.mark.usefixtures("windowed_plans")
def test_normal_matrix_equals_dense_jacobian_galaxies(H, W, flux_scale, re_scale, lattice):
    """The assembled J^T W J and J^T W r equal those of a dense jacfwd of the model images
    with galaxies whose wings render on a coarse grid (psf.mog_step) and whose narrow
    components render on windows of their stamps (scene.WINDOW_CHI2): the fitter's
    derivatives are those of the one model (interpolation and windows included)."""
    from tractor_prob.scene import is_lattice

    tr = _galaxy_field(H, W, flux_scale, re_scale)
    fitter, theta, pairs, pri = tr._fit_inputs()
    plan = fitter.c.plan
    ip = plan.images[0]
    wing = [u for u, (g, p) in enumerate(plan.units) if p == 1]
    assert wing and all(ip.steps[u] > 1 for u in wing)  # coarse wings are in play
    assert any(is_lattice(ip, u) for u in wing) == lattice
    assert any(win is not None for win in ip.windows)  # narrow components on windows
    data, weights = tr._pixels(fitter.c)
    A, g, lnp = (np.asarray(v) for v in fitter.system(theta, data, weights, pairs, pri))
    comp = fitter.c
    T = jnp.asarray(fitter.T)
    th0 = jnp.asarray(theta)

    @jax.jit
    def full_model(x):
        return comp.model_images(0, th0.at[T].set(x)).ravel()

    J = np.asarray(jax.jacfwd(full_model)(th0[T]))
    w = np.asarray(weights[0]).ravel()
    r = np.asarray(data[0]).ravel() - np.asarray(full_model(th0[T]))
    Jw = J * w[:, None]
    A_ref, g_ref = Jw.T @ Jw, Jw.T @ (w * r)
    dA = np.sqrt(np.diag(A_ref))
    assert np.all(dA > 0)
    np.testing.assert_array_less(np.abs(A - A_ref), 1e-10 * np.outer(dA, dA))
    np.testing.assert_array_less(np.abs(g - g_ref), 1e-10 * dA * np.linalg.norm(w * r))
    lnl_ref = -0.5 * np.sum((w * r) ** 2)
    assert abs(lnp - lnl_ref) < 1e-10 * abs(lnl_ref)
    assert abs(tr.getLogLikelihood() - lnl_ref) < 1e-10 * abs(lnl_ref)


def test_plan_widens_large_stamps_to_the_image_and_merges_their_parts():
    """A galaxy whose stamp covers >= scene.FULL_AREA_FRACTION of a small image is rendered
    on the whole image, pixel by pixel (no coarse grid below scene.LATTICE_MIN_PIXELS), as
    one unit: the plan no longer changes as its size changes, and the model equals the
    windowed plan's (which truncates wings below the noise) to within those wings."""
    from tractor_prob import scene
    from tractor_prob.ellipses import EllipseE
    from tractor_prob.sersic import SersicGalaxy

    H = W = 64
    psf = NCircularGaussianPSF([1.5], [1.0])
    img = Image(data=np.zeros((H, W)), invvar=np.ones((H, W)), psf=psf, sky=ConstantSky(0.0))
    gal = SersicGalaxy(PixPos(31.3, 32.6), Flux(2000.0), EllipseE(3.0, 0.2, 0.1), 3.0)
    tr = Tractor([img], [gal])
    plans = []
    for re in (3.0, 4.5, 6.0, 9.0):
        gal.shape.setParams([re, 0.2, 0.1])
        plan = scene.compile_tractor(tr)[0]
        plans.append(plan)
        assert plan.images[0].stamps == ((H, W),) and plan.images[0].steps == (1,)
        assert plan.groups[0].parts == (None,)
    assert all(p == plans[0] for p in plans)
    gal.shape.setParams([3.0, 0.2, 0.1])
    full = np.asarray(tr.getModelImage(0))
    # the same galaxy with the rules of large images: a core stamp plus wings
    tr2 = Tractor([img], [gal.copy()])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(scene, "FULL_AREA_FRACTION", 2.0)
        mp.setattr(scene, "LATTICE_MIN_PIXELS", 0)
        plan2 = scene.compile_tractor(tr2)[0]
        windowed = np.asarray(tr2.getModelImage(0))
    assert len(plan2.units) == 2 and plan2.images[0].stamps[0] != (H, W)
    # what the windowed plan leaves out (wings beyond the core stamp, interpolation of the
    # coarse wing nodes) stays within the budgets of those rules (noise 1 here)
    from tractor_prob.psf import INTERP_CHI2, STAMP_CHI2

    assert np.sum((full - windowed) ** 2) < 2 * (STAMP_CHI2 + INTERP_CHI2)
    assert np.abs(full - windowed).max() < 1e-3 * full.max()


def test_pair_lists_keep_their_length_while_pairs_drift():
    """build_pairs with the engine's memory: a pair list does not shrink to the next padded
    length when a pair or two separate (that would recompile the fit step), only when its
    pairs fill less than fit.PAIR_SHRINK of it; without memory it takes the tight length."""
    from tractor_prob.fit import PAIR_SHRINK, build_pairs

    H, W = 40, 200
    img = Image(data=np.zeros((H, W)), invvar=np.ones((H, W)),
                psf=NCircularGaussianPSF([1.5], [1.0]))
    # a row of 8 stars 8 px apart: 7 overlapping neighbours (and some next-neighbours)
    tr = Tractor([img], [PointSource(PixPos(20.0 + 8 * i, 20.0), Flux(500.0)) for i in range(8)])
    comp, theta, thawed, _ = tr._compile()
    free = np.ones(8, bool)
    origins = jax.tree_util.tree_map(np.asarray, comp.origins(theta))
    (p1, p2, valid), = build_pairs(comp.plan, origins, free)[0]
    n0, P0 = int(valid.sum()), valid.shape[1]
    memo = {}
    build_pairs(comp.plan, origins, free, memo)

    def moved(k):  # the last k stars' stamps moved far to the right: their pairs are gone
        ox = origins[0][0][0].copy()
        ox[0, 8 - k:] = W - comp.plan.images[0].stamps[0][1] - np.arange(k) * 60
        return ((ox, origins[0][0][1], origins[0][0][2], origins[0][0][3]),),

    for k in range(1, 8):
        (_, _, v), = build_pairs(comp.plan, moved(k), free)[0]
        (_, _, vm), = build_pairs(comp.plan, moved(k), free, dict(memo))[0]
        n = int(v.sum())
        assert n == int(vm.sum()) and n <= n0
        if n > PAIR_SHRINK * P0:
            assert vm.shape[1] == P0
        else:
            assert vm.shape[1] == v.shape[1] < P0
    assert any(int(build_pairs(comp.plan, moved(k), free)[0][0][2].sum()) > PAIR_SHRINK * P0
               and build_pairs(comp.plan, moved(k), free)[0][0][2].shape[1] < P0
               for k in range(1, 8))  # the case the memory is for


# --------------------------------------------------------------------------- optimize
def _star_image(truth, shape=(31, 31), sigma_psf=2.0, sigma_n=1.0, seed=0, sky=0.0):
    x, y, F = truth
    xx, yy = grid(shape)
    rng = np.random.default_rng(seed)
    data = F * gauss(xx, yy, x, y, sigma_psf) + sky + rng.normal(0, sigma_n, shape)
    return Image(data=data, invvar=np.full(shape, 1 / sigma_n**2),
                 psf=NCircularGaussianPSF([sigma_psf], [1.0]))


def test_optimize_contract():
    truth = (15.3, 14.8, 500.0)
    img = _star_image(truth)
    img.sky = ConstantSky(0.3)
    img.freezeParam("psf")
    tr = Tractor([img], [PointSource(PixPos(15.8, 14.4), Flux(380.0))])
    n = tr.numberOfParams()
    assert n == 4
    for _ in range(3):
        lp0 = tr.getLogProb()
        p0 = tr.getParams()
        dlnp, X, alpha = tr.optimize()
        assert dlnp > 0 and 0 < alpha <= 1
        assert np.shape(X) == (n,)
        assert abs((tr.getLogProb() - lp0) - dlnp) <= 1e-9 * abs(lp0)
        np.testing.assert_allclose(np.array(tr.getParams()) - p0, alpha * np.asarray(X),
                                   rtol=1e-12, atol=1e-12)
    res = tr.optimize_loop()
    assert res["converged"]
    # at the optimum, steps stop improving: optimize then reports (0, X, 0) and leaves
    # the parameters untouched (a few more calls may still gain round-off)
    for _ in range(30):
        p0 = tr.getParams()
        dlnp, X, alpha = tr.optimize()
        assert dlnp >= 0
        if alpha == 0:
            break
    assert alpha == 0 and dlnp == 0
    assert tr.getParams() == p0
    dlnp, X, alpha = tr.optimize()
    assert (dlnp, alpha) == (0, 0) and tr.getParams() == p0 and np.shape(X) == (n,)
    assert tr.getParamNames() == ["image0.sky.sky", "source0.pos.x", "source0.pos.y",
                                  "source0.brightness.Flux"]
    sky, x, y, F = tr.getParams()
    assert abs(x - truth[0]) < 0.2 and abs(y - truth[1]) < 0.2 and abs(F / truth[2] - 1) < 0.1


@pytest.mark.parametrize("n_stars", [1, 7])  # 4 parameters (LAPACK) / 22 (Cholesky loops)
def test_chord_steps_reuse_the_last_normal_matrix(n_stars):
    """After a small step, optimize() solves with that step's normal matrix and a fresh
    gradient (fit.CHORD_STEP): X = A_last^-1 g, dlnp exact; a fresh matrix again after the
    user sets values, and when a chord step does not improve; the loop reaches the optimum
    of plain Gauss-Newton steps."""
    from tractor_prob.fit import CHORD_STEP

    rng = np.random.default_rng(3)
    truth = [(8.0 + 9 * (i % 4) + rng.uniform(), 9.0 + 12 * (i // 4) + rng.uniform(),
              rng.uniform(300, 900)) for i in range(n_stars)]
    shape = (34, 44)
    xx, yy = grid(shape)
    data = sum(F * gauss(xx, yy, x, y, 2.0) for x, y, F in truth) + rng.normal(0, 1, shape)
    img = Image(data=data, invvar=np.ones(shape), psf=NCircularGaussianPSF([2.0], [1.0]))
    img.sky = ConstantSky(0.0)
    img.freezeParam("psf")
    srcs = [PointSource(PixPos(x + 0.05, y - 0.04), Flux(F * 1.01)) for x, y, F in truth]
    tr = Tractor([img], srcs)
    p_start = tr.getParams()

    def system():
        fitter, theta, pairs, pri = tr._fit_inputs()
        data, weights = tr._pixels(fitter.c)
        A, g, lnp = fitter.system(theta, data, weights, pairs, pri)
        return np.asarray(A), np.asarray(g), float(lnp)

    A1, _, _ = system()
    dlnp, X, alpha, A, _ = tr._step(chord=True)  # a fresh step
    assert A is not None and alpha == 1.0
    np.testing.assert_allclose(A, A1, rtol=1e-12, atol=0)
    assert np.max(np.abs(X) * np.sqrt(np.diag(A1))) < CHORD_STEP  # small: the next may chord
    A2, g2, lnp2 = system()
    dlnp, X, alpha, A, lnp3 = tr._step(chord=True)
    assert A is None  # a chord step
    np.testing.assert_allclose(X, np.linalg.solve(A1, g2), rtol=1e-7, atol=1e-12)
    assert not np.allclose(X, np.linalg.solve(A2, g2), rtol=1e-7, atol=1e-12)
    assert dlnp > 0 and abs(tr.getLogProb() - lnp2 - dlnp) < 1e-9 * abs(lnp2)
    assert lnp3 == pytest.approx(tr.getLogProb(), rel=1e-12)

    # values set by the user: a fresh step
    tr.setParams(list(np.array(tr.getParams()) + 1e-3))
    assert tr._step(chord=True)[3] is not None
    # a chord step that does not improve is replaced by a fresh one
    assert "_chord" in tr.__dict__  # (the fresh step above was small)
    last = tr.__dict__["_chord"]
    L, d = last.factor
    tr.__dict__["_chord"] = last._replace(factor=(L, d * 1e-4))  # steps 1e8 too long
    lp0 = tr.getLogProb()
    dlnp, X, alpha, A, _ = tr._step(chord=True)
    assert A is not None and dlnp > 0 and abs(tr.getLogProb() - lp0 - dlnp) < 1e-9 * abs(lp0)

    # the tutorial's loop (chord steps) ends where Gauss-Newton steps end
    def loop(chord):
        tr.setParams(p_start)
        for _ in range(20):
            if tr._step(chord=chord)[0] < 1e-9:
                break
        return tr.getLogProb(), np.array(tr.getParams())

    (lp_c, p_c), (lp_g, p_g) = loop(True), loop(False)
    assert abs(lp_c - lp_g) < 1e-8
    sigma = 1 / np.sqrt(np.diag(system()[0]))  # conditional standard deviations
    assert np.all(np.abs(p_c - p_g) < 1e-4 * sigma)


def test_optimize_nothing_thawed():
    img = _star_image((15.3, 14.8, 500.0))
    tr = Tractor([img], [PointSource(PixPos(15.8, 14.4), Flux(380.0))])
    tr.freezeParam("images")
    tr.freezeParam("catalog")
    dlnp, X, alpha = tr.optimize()
    assert dlnp == 0 and len(X) == 0 and alpha == 0


def test_gaussian_prior_pins_parameter():
    truth = (15.3, 14.8, 500.0)
    sigma_x = np.sqrt(8 * np.pi) * 2.0**2 / 500.0  # ~0.04 px (see the recovery tests)
    mu = 15.8  # 12 data sigmas away from the truth: the data alone would fit x ~ 15.3
    img = _star_image(truth, seed=4)
    img.freezeParam("psf")
    tr = Tractor([img], [PointSource(PixPos(15.6, 14.6), Flux(420.0))])
    tr.addGaussianPrior("source0.pos.x", mu, 1e-6)
    lp0 = tr.getLogProb()
    dlnp, _, _ = tr.optimize()
    assert abs(tr.getLogProb() - lp0 - dlnp) < 1e-9 * abs(lp0)  # dlnp includes the prior
    assert tr.optimize_loop(dchisq=1e-8)["converged"]
    x = tr.catalog[0].pos.x
    assert abs(x - mu) < 1e-6  # pinned by the prior
    assert abs(tr.catalog[0].pos.y - truth[1]) < 4 * sigma_x  # the others still fit
    log_norm = -np.log(1e-6 * np.sqrt(2 * np.pi))  # the prior is a normalised density
    assert abs(tr.getLogProb() - tr.getLogLikelihood()
               - (-0.5 * ((x - mu) / 1e-6) ** 2 + log_norm)) < 1e-6


# --------------------------------------------------------------------------- recovery
def _fisher_single(shape, x, y, F, s, sigma_n):
    """Numpy Fisher matrix of (x, y, F) for one Gaussian star, from analytic derivatives
    summed over the pixels."""
    xx, yy = grid(shape)
    g = gauss(xx, yy, x, y, s)
    J = np.stack([F * g * (xx - x) / s**2, F * g * (yy - y) / s**2, g], -1).reshape(-1, 3)
    return J.T @ J / sigma_n**2


def _pull_stats_ok(pulls):
    """Per column: mean within 3/sqrt(N), sd inside the chi-square 99% interval, max |pull| <= 4."""
    N = pulls.shape[0]
    lo, hi = np.sqrt(chi2.ppf([0.005, 0.995], N - 1) / (N - 1))
    mean, sd = pulls.mean(0), pulls.std(0, ddof=1)
    assert np.all(np.abs(mean) < 3 / np.sqrt(N)), mean
    assert np.all((sd > lo) & (sd < hi)), (sd, lo, hi)
    assert np.abs(pulls).max() <= 4, np.abs(pulls).max()


def test_single_star_analytic_errors_hold_on_the_pixel_grid():
    # the continuous-limit Fisher errors used below agree with pixel sums to < 1% for
    # sigma_psf >= 1.5 px (here: to ~1e-10), anywhere in the pixel
    for s in (1.5, 2.0):
        for x, y in [(15.0, 15.0), (15.5, 14.5), (15.27, 14.81)]:
            F, sn = 500.0, 1.3
            cov = np.linalg.inv(_fisher_single((31, 31), x, y, F, s, sn))
            sig = np.sqrt(np.diag(cov))
            ana = [sn * np.sqrt(8 * np.pi) * s**2 / F] * 2 + [sn * np.sqrt(4 * np.pi) * s]
            np.testing.assert_allclose(sig, ana, rtol=1e-2)


@pytest.mark.slow
def test_single_star_recovery_pulls():
    N = 100
    shape, s, sn = (31, 31), 2.0, 1.0
    truth = np.array([15.3, 14.8, 500.0])
    sig = np.array([sn * np.sqrt(8 * np.pi) * s**2 / truth[2]] * 2
                   + [sn * np.sqrt(4 * np.pi) * s])
    img = _star_image(tuple(truth), shape, s, sn, seed=0)
    img.freezeParam("psf")
    src = PointSource(PixPos(0.0, 0.0), Flux(1.0))
    tr = Tractor([img], [src])
    rng = np.random.default_rng(2024)
    xx, yy = grid(shape)
    clean = truth[2] * gauss(xx, yy, truth[0], truth[1], s)
    pulls = []
    for _ in range(N):
        img.data = clean + rng.normal(0, sn, shape)
        start = truth + rng.normal(0, 1, 3) * np.array([0.3, 0.3, 40.0])
        tr.setParams(start)
        assert tr.optimize_loop(dchisq=1e-6)["converged"]
        pulls.append((np.array(tr.getParams()) - truth) / sig)
    _pull_stats_ok(np.array(pulls))


@pytest.mark.slow
def test_blended_pair_two_images_recovery_pulls():
    N = 100
    shapes = [(31, 35), (29, 33)]
    sigmas = [1.8, 2.5]
    offsets = [(0.0, 0.0), (1.5, -2.0)]  # NullWCS(dx, dy) of each image
    sns = [1.0, 0.7]
    truth = np.array([14.2, 16.1, 600.0, 17.3, 15.2, 400.0])  # 3.2 px apart: blended

    def clean(i, p):
        xx, yy = grid(shapes[i])
        dx, dy = offsets[i]
        return sum(p[3 * k + 2] * gauss(xx, yy, p[3 * k] + dx, p[3 * k + 1] + dy, sigmas[i])
                   for k in range(2))

    # Fisher matrix from analytic derivatives, with numpy
    Fm = np.zeros((6, 6))
    for i in range(2):
        xx, yy = grid(shapes[i])
        dx, dy = offsets[i]
        cols = []
        for k in range(2):
            x, y, F = truth[3 * k : 3 * k + 3]
            g = gauss(xx, yy, x + dx, y + dy, sigmas[i])
            s2 = sigmas[i] ** 2
            cols += [F * g * (xx - x - dx) / s2, F * g * (yy - y - dy) / s2, g]
        J = np.stack(cols, -1).reshape(-1, 6)
        Fm += J.T @ J / sns[i] ** 2
    sig = np.sqrt(np.diag(np.linalg.inv(Fm)))

    imgs = [Image(data=clean(i, truth), invvar=np.full(shapes[i], 1 / sns[i] ** 2),
                  psf=NCircularGaussianPSF([sigmas[i]], [1.0]), wcs=NullWCS(dx=offsets[i][0],
                                                                        dy=offsets[i][1]))
            for i in range(2)]
    srcs = [PointSource(PixPos(0.0, 0.0), Flux(1.0)) for _ in range(2)]
    tr = Tractor(imgs, srcs)
    tr.freezeParam("images")
    rng = np.random.default_rng(77)
    cl = [clean(i, truth) for i in range(2)]
    pulls = []
    for _ in range(N):
        for i in range(2):
            imgs[i].data = cl[i] + rng.normal(0, sns[i], shapes[i])
        start = truth + rng.normal(0, 1, 6) * np.array([0.2, 0.2, 30.0] * 2)
        tr.setParams(start)
        assert tr.optimize_loop(dchisq=1e-6)["converged"]
        pulls.append((np.array(tr.getParams()) - truth) / sig)
    _pull_stats_ok(np.array(pulls))


@pytest.mark.slow
def test_fit_psf_sigma_and_sky_with_star():
    N = 60
    shape, sn = (41, 41), 1.0
    x0, y0, F, s, sky = 20.3, 19.8, 3000.0, 2.0, 10.0
    xx, yy = grid(shape)
    g = gauss(xx, yy, x0, y0, s)
    r2 = (xx - x0) ** 2 + (yy - y0) ** 2
    # Fisher matrix of (x, y, F, sigma, sky) from analytic derivatives
    J = np.stack([F * g * (xx - x0) / s**2, F * g * (yy - y0) / s**2, g,
                  F * g * (r2 / s**3 - 2 / s), np.ones(shape)], -1).reshape(-1, 5)
    sig = np.sqrt(np.diag(np.linalg.inv(J.T @ J / sn**2)))
    truth = np.array([x0, y0, F, s, sky])
    psf = NCircularGaussianPSF([2.3], [1.0])
    psf.freezeParam("weights")
    img = Image(data=F * g + sky, invvar=np.full(shape, 1 / sn**2), psf=psf,
                sky=ConstantSky(9.3))
    tr = Tractor([img], [PointSource(PixPos(20.6, 19.5), Flux(2500.0))])
    assert tr.getParamNames() == ["image0.psf.sigmas.param0", "image0.sky.sky",
                                  "source0.pos.x", "source0.pos.y", "source0.brightness.Flux"]
    start = tr.getParams()
    rng = np.random.default_rng(5)
    pulls = []
    for _ in range(N):
        img.data = F * g + sky + rng.normal(0, sn, shape)
        tr.setParams(start)  # sigma 2.3 (truth 2.0), sky 9.3 (10), flux 2500 (3000)
        assert tr.optimize_loop(dchisq=1e-8)["converged"]
        s_fit, sky_fit, x, y, F_fit = tr.getParams()
        pulls.append((np.array([x, y, F_fit, s_fit, sky_fit]) - truth) / sig)
    pulls = np.array(pulls)
    # each fit is within the noise-implied errors, and those errors are the right size
    _pull_stats_ok(pulls)
    assert np.mean(np.abs(pulls) < 3) > 0.98


@pytest.mark.slow
def test_fit_crval_from_star_field():
    H, W = 80, 80
    pixscale = 1.0
    crval, crpix, cd = (30.0, -12.5), (40.5, 40.5), rot_cd(pixscale, 12.0)
    tan_true, w_true = tan_pair(crval, crpix, cd, W, H)
    rng = np.random.default_rng(9)
    xy = np.column_stack([rng.uniform(8, W - 9, 10), rng.uniform(8, H - 9, 10)])
    radec = w_true.all_pix2world(xy, 0)
    xx, yy = grid((H, W))
    F, s, sn = 5000.0, 2.0, 1.0
    data = sum(F * gauss(xx, yy, x, y, s) for x, y in xy) + rng.normal(0, sn, (H, W))
    # start: CRVAL off by about half a pixel in each direction
    dra = 0.5 * pixscale / 3600.0 / np.cos(np.deg2rad(crval[1]))
    ddec = -0.45 * pixscale / 3600.0
    tan_off, _ = tan_pair((crval[0] + dra, crval[1] + ddec), crpix, cd, W, H)
    psf = NCircularGaussianPSF([s], [1.0])
    psf.freezeAllParams()
    img = Image(data=data, invvar=np.full((H, W), 1 / sn**2), psf=psf, wcs=FitsWcs(tan_off))
    tr = Tractor([img], [PointSource(RaDecPos(*map(float, rd)), Flux(F)) for rd in radec])
    tr.freezeParam("catalog")
    assert tr.getParamNames() == ["image0.wcs.crval1", "image0.wcs.crval2"]

    def max_pixel_error():
        fw = tr.getImage(0).wcs
        _, w_fit = tan_pair((fw.crval1, fw.crval2), crpix, cd, W, H)
        pts = np.vstack([radec, w_true.all_pix2world([[0, 0], [W - 1, H - 1]], 0)])
        return np.abs(w_fit.all_world2pix(pts, 0) - w_true.all_world2pix(pts, 0)).max()

    assert max_pixel_error() > 0.4
    assert tr.optimize_loop(dchisq=1e-6)["converged"]
    # 10 stars of S/N ~ 350: the noise-implied error is ~1.3e-3 pixel per axis
    assert max_pixel_error() < 0.02


@pytest.mark.skipif(__import__("platform").libc_ver()[0] != "glibc", reason="glibc's mallopt")
@pytest.mark.parametrize("env, pad_mib", [({}, 128), ({"TRACTOR_PROB_MALLOC_PAD": "64"}, 64),
                                          ({"TRACTOR_PROB_MALLOC_PAD": "0"}, 0),
                                          ({"TRACTOR_PROB_MALLOC_PAD": "0.0"}, 0),
                                          ({"MALLOC_TOP_PAD_": "1000000"}, 0)])
def test_import_sets_the_malloc_top_pad_unless_told_not_to(env, pad_mib):
    """The fit's temporaries stay in the heap between calls (tractor_prob._keep_freed_memory);
    mallopt reports success, and a user's own setting or TRACTOR_PROB_MALLOC_PAD=0 wins."""
    import os
    import subprocess
    import sys

    clean = {k: v for k, v in os.environ.items()
             if k not in ("TRACTOR_PROB_MALLOC_PAD", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES")}
    code = "import tractor_prob; print(tractor_prob._MALLOC_TOP_PAD)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(clean, **env))
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout.split()[-1]) == pad_mib * 2**20
