"""Freeze/thaw as conditioning: a star's flux with and without its calibrations sampled.

A 25 x 25 image of one star (centre (12.3, 12.9) pixels, flux 50 counts) seen through a
Gaussian PSF of sigma 2 pixels, on a constant sky of 0.5 counts, with Gaussian noise of
0.1 counts per pixel (seeded), rendered by the package at the truth.

1. *Joint*: the PSF width (``image0.psf.sigmas.param0``) and the sky level
   (``image0.sky.sky``) are thawed together with the star (the PSF's weight stays frozen:
   with a NullPhotoCal it is degenerate with the flux).  ``fit_map()`` finds the mode and
   its covariance, then NUTS samples all 5 parameters: the flux posterior is marginalised
   over the calibrations.
2. *Frozen*: ``tractor.freezeParam('images')`` freezes the PSF and the sky at their MAP
   values.  In the numpyro model (``tractor.model()``) frozen parameters are not latent
   any more but conditioned on their current values, so NUTS now samples the star's
   conditional posterior p(star | data, PSF, sky).  The flux posterior narrows; its width
   is the one the joint Gaussian (MAP covariance) predicts for the conditional:
   sd = 1 / sqrt((C^-1)_ff), the Schur complement.

The script prints the flux posterior of both runs and the predicted conditional width.
Conditioning is not marginalising: the frozen run is narrower *and* centred where the
frozen calibration puts it (here the MAP PSF width, which this noise realization makes
~3 sd too small; the flux is correlated with it).  By the same Gaussian the script also
shows where the flux would centre with the calibrations frozen at their true values.

Figures (in ``--out``):

- ``joint_corner.png``: corner plot of PSF sigma, sky and flux from the joint run, truths
  marked;
- ``flux_posteriors.png``: the joint draws of flux against PSF sigma and against sky (the
  frozen run is the slice at the frozen values) and the two flux histograms with their
  Gaussian predictions from the MAP covariance.

Run: ``python examples/07_freeze_thaw.py --out example-out/07_freeze_thaw`` (about 20-40 s,
mostly JAX compilation).
"""

import argparse
import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from tractor_prob import *  # noqa: E402,F403

NAME = os.path.splitext(os.path.basename(__file__))[0]

# the truth (pixels, counts)
X0, Y0, FLUX = 12.3, 12.9, 50.0
PSF_SIGMA, SKY = 2.0, 0.5

SIGMA_PATH = "image0.psf.sigmas.param0"
SKY_PATH = "image0.sky.sky"
FLUX_PATH = "source0.brightness.Flux"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join("example-out", NAME),
                    help="output folder for the figures")
    ap.add_argument("--seed", type=int, default=42, help="noise and sampler random seed")
    ap.add_argument("--noise", type=float, default=0.1, help="noise sigma (counts per pixel)")
    ap.add_argument("--warmup", type=int, default=300, help="NUTS adaptation steps")
    ap.add_argument("--samples", type=int, default=500, help="NUTS draws")
    ap.add_argument("--progress", action="store_true", help="show numpyro's progress bar")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    W = H = 25

    # --- simulate ---
    tim = Image(data=np.zeros((H, W)), invvar=np.full((H, W), 1.0 / args.noise**2),
                psf=NCircularGaussianPSF([PSF_SIGMA], [1.0]), wcs=NullWCS(),
                photocal=NullPhotoCal(), sky=ConstantSky(SKY))
    star = PointSource(PixPos(X0, Y0), Flux(FLUX))
    tractor = Tractor([tim], [star])
    tim.psf.freezeParam("weights")  # degenerate with the flux
    truth = dict(zip(tractor.getParamNames(), tractor.getParams()))
    tim.data = np.asarray(tractor.getModelImage(0)) + args.noise * rng.normal(size=(H, W))

    # --- 1. joint: PSF sigma, sky and the star, from a poor start ---
    tim.psf.setParams([1.25 * PSF_SIGMA])
    tim.sky.setParams([0.0])
    star.pos.setParams([W / 2.0, H / 2.0])
    star.brightness.setParams([0.6 * FLUX])
    print("thawed:", tractor.getParamNames())
    print("model sites (joint):", tractor.model().sites)
    fit = tractor.fit_map()
    print(fit)
    joint = tractor.sample(num_warmup=args.warmup, num_samples=args.samples, seed=args.seed,
                           progress_bar=args.progress)
    print(joint)
    jmed, jsd = joint.median(), joint.std()

    # the Gaussian (MAP covariance) prediction of the flux's conditional width
    k = fit.paths.index(FLUX_PATH)
    precision = np.linalg.inv(fit.covariance)
    sd_cond_pred = 1.0 / math.sqrt(precision[k, k])
    # ... and of its conditional mean had the calibrations been frozen at their true values
    c = [fit.paths.index(p) for p in (SIGMA_PATH, SKY_PATH)]
    dc = np.array([truth[p] - fit.values[p] for p in (SIGMA_PATH, SKY_PATH)])
    C = fit.covariance
    mean_at_true_cal = fit.values[FLUX_PATH] + C[k, c] @ np.linalg.solve(C[np.ix_(c, c)], dc)

    # --- 2. frozen: PSF and sky conditioned on their current (MAP) values ---
    tractor.freezeParam("images")
    frozen_at = {SIGMA_PATH: tim.psf.getParams()[0], SKY_PATH: tim.sky.getParams()[0]}
    model = tractor.model()
    print("model sites (frozen):", model.sites, "- frozen values conditioned:",
          {p: round(v, 5) for p, v in frozen_at.items()})
    # the model's log density is still the Tractor's log probability
    lp_model, lp_tractor = model.log_density(), tractor.getLogProb()
    print(f"log density: model {lp_model:.6f}, getLogProb {lp_tractor:.6f}")
    cond = tractor.sample(num_warmup=args.warmup, num_samples=args.samples, seed=args.seed + 1,
                          progress_bar=args.progress)
    print(cond)
    cmed, csd = cond.median(), cond.std()

    # --- report ---
    w = max(len(p) for p in joint.paths)
    print(f"{'parameter':<{w}}  {'truth':>8}  {'joint median':>12}  {'sd':>8}  "
          f"{'frozen median':>13}  {'sd':>8}")
    for p in joint.paths:
        fm = f"{cmed[p]:>13.4f}  {csd[p]:>8.4f}" if p in cmed else f"{'(frozen)':>13}  {'':>8}"
        print(f"{p:<{w}}  {truth[p]:>8.4f}  {jmed[p]:>12.4f}  {jsd[p]:>8.4f}  {fm}")
    shrink = csd[FLUX_PATH] / jsd[FLUX_PATH]
    print(f"flux sd: joint {jsd[FLUX_PATH]:.4f} (MAP stderr {fit.stderr[FLUX_PATH]:.4f}), "
          f"frozen {csd[FLUX_PATH]:.4f} (predicted by the joint covariance "
          f"{sd_cond_pred:.4f}): x{shrink:.2f}")
    print(f"(frozen at the true PSF and sky instead, the flux would be {mean_at_true_cal:.3f} "
          f"+- {sd_cond_pred:.3f}, by the same Gaussian)")
    rho = fit.correlation
    print("MAP correlations of the flux: "
          + ", ".join(f"{p} {rho[k, fit.paths.index(p)]:+.2f}" for p in (SIGMA_PATH, SKY_PATH)))
    ndiv = {"joint": int(np.sum(joint.stats["diverging"])),
            "frozen": int(np.sum(cond.stats["diverging"]))}
    print(f"divergences: joint {ndiv['joint']}, frozen {ndiv['frozen']}")

    # --- figures ---
    cal = [SIGMA_PATH, SKY_PATH, FLUX_PATH]
    labels = ["PSF sigma", "sky", "flux"]
    x = np.stack([joint[p].ravel() for p in cal], axis=1)
    tv = np.array([truth[p] for p in cal])
    lo, hi = np.minimum(x.min(axis=0), tv), np.maximum(x.max(axis=0), tv)
    ranges = list(zip(lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo)))  # truths in view
    fig = joint.corner(var_names=cal, truths=truth, labels=labels, range=ranges, smooth=1.0,
                       title_fmt=".3g")
    fig.savefig(os.path.join(args.out, "joint_corner.png"), dpi=80)
    plt.close(fig)

    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    jf = joint[FLUX_PATH].ravel()
    for ax, p, lab in zip(axes[:2], (SIGMA_PATH, SKY_PATH), labels[:2]):
        ax.plot(joint[p].ravel(), jf, ".", ms=3, alpha=0.5, color="C0", label="joint draws")
        ax.axvline(frozen_at[p], color="C1", label="frozen at the MAP value")
        ax.plot(np.full(cond.num_samples, frozen_at[p]), cond[FLUX_PATH].ravel(), "_",
                color="C1", ms=8, alpha=0.3, label="frozen draws")
        ax.plot(truth[p], truth[FLUX_PATH], "k*", ms=12, label="truth")
        ax.set_xlabel(lab)
        ax.set_ylabel("flux")
        ax.legend(fontsize=7)
    ax = axes[2]
    cf = cond[FLUX_PATH].ravel()
    top = max(jf.max(), cf.max(), mean_at_true_cal + 3 * sd_cond_pred)
    bins = np.linspace(min(jf.min(), cf.min()), top, 40)
    ax.hist(jf, bins=bins, density=True, alpha=0.5, color="C0",
            label=f"joint: sd {jsd[FLUX_PATH]:.3f}")
    ax.hist(cf, bins=bins, density=True, alpha=0.5, color="C1",
            label=f"PSF, sky frozen: sd {csd[FLUX_PATH]:.3f}")
    grid = np.linspace(bins[0], bins[-1], 300)
    m0 = fit.values[FLUX_PATH]
    for m, s, c, ls, lab in (
            (m0, fit.stderr[FLUX_PATH], "C0", "-", "Gaussian, MAP stderr"),
            (m0, sd_cond_pred, "C1", "-", "Gaussian, conditional (Schur)"),
            (mean_at_true_cal, sd_cond_pred, "C2", ":", "same, frozen at the true PSF, sky")):
        ax.plot(grid, np.exp(-0.5 * ((grid - m) / s) ** 2) / (s * math.sqrt(2 * math.pi)),
                color=c, lw=1.5, ls=ls, label=lab)
    ax.axvline(truth[FLUX_PATH], color="k", ls="--", label="truth")
    ax.set_xlabel("flux")
    ax.set_title(f"flux sd x{shrink:.2f} when the calibrations are frozen", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "flux_posteriors.png"), dpi=80)
    plt.close("all")

    return dict(truth=truth, map=dict(fit.values), map_stderr=dict(fit.stderr),
                map_correlation=fit.correlation, paths=joint.paths, joint_median=jmed,
                joint_sd=jsd, frozen_paths=cond.paths, frozen_median=cmed, frozen_sd=csd,
                frozen_at=frozen_at, sd_cond_predicted=sd_cond_pred,
                mean_at_true_calibration=float(mean_at_true_cal), shrink=shrink,
                divergences=ndiv, sites_frozen=list(model.sites),
                log_density=(lp_model, lp_tractor), out=args.out)


if __name__ == "__main__":
    main()
