"""Sample the posterior of a Sersic galaxy with NUTS: MAP, MCMC, corner, trace and PPC.

A 48 x 48 image of one Sersic galaxy (index n = 2.5, semi-major half-light radius
re = 6 pixels, axis ratio q = 0.6 with the major axis at 30 degrees from +x towards
+y, flux 2000 counts) seen through a Gaussian PSF of sigma 1.5 pixels, with Gaussian
noise of 1 count per pixel (seeded).  The data are rendered by the package itself at
the truth (``--render galsim``: by GalSim's exact Sersic profile instead, if GalSim is
installed; the model's mixture-of-Gaussians Sersic then differs slightly from the data).

A ``SersicGalaxy`` started away from the truth is fitted with ``fit_map()`` (the
posterior mode and its Fisher covariance), then its 7 parameters (position, flux,
``EllipseE`` shape, Sersic index; default flat priors on their supports) are sampled
with NUTS started at the MAP.  The script prints a table of truth, MAP +- stderr,
posterior median and sd, and a posterior predictive p-value of chi^2.

Figures (in ``--out``):

- ``corner.png``: corner plot of the draws, truths marked;
- ``trace.png``: ArviZ trace plot (density and trace per parameter);
- ``ppc.png``: data, model at the posterior median, chi residual, one
  posterior-predictive image (model at a random draw + noise), the pixel-wise sd of
  the model over draws, and the histogram of chi against N(0, 1).

Run: ``python examples/06_sample_galaxy.py --out example-out/06_sample_galaxy``
(about 30-60 s, mostly JAX compilation; ``--chains 2`` adds R-hat).
"""

import argparse
import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from tractor_prob import *  # noqa: E402,F403
from tractor_prob import _arviz  # noqa: E402
from tractor_prob.ellipses import EllipseE  # noqa: E402
from tractor_prob.sersic import SersicGalaxy, SersicIndex  # noqa: E402

NAME = os.path.splitext(os.path.basename(__file__))[0]

# the truth (pixels, counts; NullWCS: arcsec == pixels)
X0, Y0 = 23.3, 24.6
FLUX = 2000.0
RE, Q, THETA = 6.0, 0.6, 30.0  # semi-major half-light radius, axis ratio, degrees
SERSIC_N = 2.5
PSF_SIGMA = 1.5


def truth_shape():
    """The true EllipseE: |e| = (1 - q) / (1 + q) at angle THETA."""
    e = (1 - Q) / (1 + Q)
    a = math.radians(2 * THETA)
    return EllipseE(RE, e * math.cos(a), e * math.sin(a))


def render_galsim(shape, W, H):
    """GalSim image (no pixel convolution, like the model) of the true galaxy."""
    import galsim

    e, q = shape.e, shape.ab
    prof = galsim.Sersic(SERSIC_N, half_light_radius=shape.re * math.sqrt(q), flux=FLUX)
    prof = prof.shear(g=e, beta=shape.theta * galsim.degrees)
    obj = galsim.Convolve([prof, galsim.Gaussian(sigma=PSF_SIGMA)])
    im = galsim.ImageD(W, H, scale=1.0)
    obj.drawImage(image=im, method="no_pixel", center=galsim.PositionD(X0 + 1, Y0 + 1))
    return im.array.copy()


def chi2_sf(x, k):
    """P(chi^2_k >= x) for an integer number of degrees of freedom k >= 1."""
    h = x / 2.0
    if k % 2 == 0:
        term, total = 1.0, 1.0
        for j in range(1, k // 2):
            term *= h / j
            total += term
        return math.exp(-h) * total
    term, total = math.sqrt(x), 0.0
    for j in range(1, (k - 1) // 2 + 1):
        total += term
        term *= x / (2 * j + 1)
    return math.erfc(math.sqrt(h)) + math.sqrt(2 / math.pi) * math.exp(-h) * total


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join("example-out", NAME),
                    help="output folder for the figures")
    ap.add_argument("--seed", type=int, default=42, help="noise and sampler random seed")
    ap.add_argument("--size", type=int, default=48, help="image width = height (pixels)")
    ap.add_argument("--noise", type=float, default=1.0, help="noise sigma (counts per pixel)")
    ap.add_argument("--warmup", type=int, default=300, help="NUTS adaptation steps per chain")
    ap.add_argument("--samples", type=int, default=300, help="NUTS draws per chain")
    ap.add_argument("--chains", type=int, default=1, help="chains (R-hat needs >= 2)")
    ap.add_argument("--render", choices=("tractor", "galsim"), default="tractor",
                    help="renderer of the simulated data")
    ap.add_argument("--progress", action="store_true", help="show numpyro's progress bar")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    W = H = args.size
    if not (0 < X0 < W - 1 and 0 < Y0 < H - 1):
        raise SystemExit(f"--size {args.size} is too small for a galaxy at ({X0}, {Y0})")

    # --- simulate ---
    tim = Image(data=np.zeros((H, W)), invvar=np.full((H, W), 1.0 / args.noise**2),
                psf=NCircularGaussianPSF([PSF_SIGMA], [1.0]), wcs=NullWCS(),
                photocal=NullPhotoCal(), sky=ConstantSky(0.0))
    gal = SersicGalaxy(PixPos(X0, Y0), Flux(FLUX), truth_shape(), SersicIndex(SERSIC_N))
    tractor = Tractor([tim], [gal])
    tractor.freezeParam("images")  # PSF and sky known: sample the galaxy only
    truth = dict(zip(tractor.getParamNames(), tractor.getParams()))
    if args.render == "galsim":
        clean = render_galsim(gal.shape, W, H)
    else:
        clean = np.asarray(tractor.getModelImage(0))
    tim.data = clean + args.noise * rng.normal(size=(H, W))

    # --- MAP from a deliberately poor start ---
    gal.pos.setParams([X0 + 1.0, Y0 - 1.0])
    gal.brightness.setParams([0.7 * FLUX])
    gal.shape.setParams([0.7 * RE, 0.0, 0.0])
    gal.sersicindex.setParams([2.0])
    fit = tractor.fit_map()
    print(fit)

    # --- NUTS from the MAP ---
    res = tractor.sample(num_warmup=args.warmup, num_samples=args.samples,
                         num_chains=args.chains, seed=args.seed, progress_bar=args.progress)
    print(res)
    paths = res.paths
    med, sd = res.median(), res.std()
    lo68 = res.interval(0.68)
    ndiv = int(np.sum(res.stats["diverging"]))
    idata = res.to_arviz()
    ess = _arviz.ess_min(idata)
    rhat = _arviz.rhat_max(idata) if args.chains > 1 else None

    # the truth's squared Mahalanobis distance from the posterior mean (posterior
    # covariance): ~ chi^2 with len(paths) degrees of freedom over noise realizations
    mean = res.mean()
    d = np.array([truth[p] - mean[p] for p in paths])
    cov = np.cov(res.draws.reshape(-1, len(paths)), rowvar=False)
    d2 = float(d @ np.linalg.solve(cov, d))
    p_d2 = chi2_sf(d2, len(paths))

    w = max(len(p) for p in paths)
    print(f"{'parameter':<{w}}  {'truth':>10}  {'MAP':>10}  {'stderr':>8}  {'median':>10}  "
          f"{'sd':>8}  {'(med-truth)/sd':>14}")
    for p in paths:
        print(f"{p:<{w}}  {truth[p]:>10.4g}  {fit.values[p]:>10.4g}  {fit.stderr[p]:>8.3g}  "
              f"{med[p]:>10.4g}  {sd[p]:>8.3g}  {(med[p] - truth[p]) / sd[p]:>+14.2f}")
    # derived shape quantities per draw: axis ratio and angle of (e1, e2)
    e1, e2 = res["source0.shape.e1"], res["source0.shape.e2"]
    e = np.hypot(e1, e2)
    q_draws = (1 - e) / (1 + e)
    theta_draws = np.degrees(0.5 * np.arctan2(e2, e1))
    print(f"axis ratio q = {np.median(q_draws):.3f} +- {np.std(q_draws):.3f} (truth {Q}); "
          f"angle = {np.median(theta_draws):.2f} +- {np.std(theta_draws):.2f} deg "
          f"(truth {THETA})")
    print(f"truth vs posterior: Mahalanobis D^2 = {d2:.1f} for {len(paths)} parameters "
          f"(p = {p_d2:.3g}: a realization of the noise this unusual or more)")
    print(f"divergences {ndiv}, min bulk ESS {ess:.0f}"
          + (f", max R-hat {rhat:.3f}" if rhat is not None else "")
          + f", sampling {res.seconds:.1f} s")

    # --- figures ---
    flat = res.draws.reshape(-1, len(paths))
    lo, hi = flat.min(axis=0), flat.max(axis=0)
    tv = np.array([truth[p] for p in paths])
    pad = 0.05 * (np.maximum(hi, tv) - np.minimum(lo, tv))
    ranges = list(zip(np.minimum(lo, tv) - pad, np.maximum(hi, tv) + pad))  # truths in view
    fig = res.corner(truths=truth, labels=[p.replace("source0.", "") for p in paths],
                     range=ranges, smooth=1.0, title_fmt=".3g",
                     title_kwargs=dict(fontsize=8), label_kwargs=dict(fontsize=8))
    fig.savefig(os.path.join(args.out, "corner.png"), dpi=80)
    plt.close(fig)
    res.plot_trace(os.path.join(args.out, "trace.png"))

    # posterior predictive: model images at random draws, and the chi^2 discrepancy
    n_ppc = min(200, res.num_chains * res.num_samples)
    models = res.model_images(n=n_ppc, seed=args.seed)[0]  # (n, H, W)
    sigma = args.noise
    replicated = models + sigma * rng.normal(size=models.shape)
    chi2_obs = np.sum(((tim.data - models) / sigma) ** 2, axis=(1, 2))
    chi2_rep = np.sum(((replicated - models) / sigma) ** 2, axis=(1, 2))
    ppp = float(np.mean(chi2_rep >= chi2_obs))
    one_draw = res.model_images(n=1, noise=True, seed=args.seed + 1)[0][0]
    res.write_back("median")
    mod_med = np.asarray(tractor.getModelImage(0))
    chi = (tim.data - mod_med) / sigma
    chi2 = float(np.sum(chi**2))
    print(f"chi^2 at the posterior median {chi2:.1f} for {W * H} pixels; posterior predictive "
          f"p-value of chi^2: {ppp:.2f}")

    ima = dict(interpolation="nearest", origin="lower", cmap="gray",
               vmin=-2 * sigma, vmax=np.percentile(tim.data, 99.5))
    fig, axes = plt.subplots(2, 3, figsize=(11, 7))
    panels = [(tim.data, "data", ima), (mod_med, "model at posterior median", ima),
              (chi, "chi = (data - model) / sigma",
               dict(interpolation="nearest", origin="lower", cmap="RdBu_r", vmin=-4, vmax=4)),
              (one_draw, "posterior-predictive draw", ima),
              (models.std(axis=0), "sd of the model over draws",
               dict(interpolation="nearest", origin="lower", cmap="viridis"))]
    for ax, (img, title, kw) in zip(axes.flat, panels):
        im = ax.imshow(img, **kw)
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.8)
    ax = axes.flat[5]
    grid = np.linspace(-5, 5, 201)
    ax.hist(chi.ravel(), bins=50, range=(-5, 5), density=True, color="0.6", label="chi")
    ax.plot(grid, np.exp(-0.5 * grid**2) / math.sqrt(2 * math.pi), "k-", label="N(0, 1)")
    ax.set_title(f"chi^2 = {chi2:.0f} ({W * H} pixels), PPC p = {ppp:.2f}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "ppc.png"), dpi=80)
    plt.close("all")

    return dict(truth=truth, paths=paths, map=dict(fit.values), map_stderr=dict(fit.stderr),
                map_converged=fit.converged, median=med, sd=sd, interval68=lo68,
                q=(float(np.median(q_draws)), float(np.std(q_draws))),
                theta=(float(np.median(theta_draws)), float(np.std(theta_draws))),
                divergences=ndiv, ess_bulk_min=ess, r_hat_max=rhat, chi2=chi2, npix=W * H,
                ppp=ppp, mahalanobis2=d2, mahalanobis_p=p_d2, seconds=res.seconds,
                summary=res.summary(), out=args.out)


if __name__ == "__main__":
    main()
