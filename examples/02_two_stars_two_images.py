"""Fit two blended stars in two images at once: the tutorial's "Multi-Image
Optimization / Fitting" example.

Two stars ((12.8, 14.3) with flux 12 and (15.0, 11.0) with flux 15; pixels and
counts) a few pixels apart are imaged twice: with PSF sigma 2 pixels and noise
0.01, and with PSF sigma 1 pixel and noise 0.02.  Two PointSources, started
one pixel either side of the image centre with flux 10, are fitted jointly to
both images by calling ``optimize()`` until the log-probability stops improving.

Figures (in ``--out``), one row per image:

- ``4.png``: true image, noisy image (true positions circled), initial model
  and chi (current source positions as red crosses);
- ``5.png``: initial model and the derivatives of each image's model with
  respect to the six thawed parameters (x, y, flux of each source);
- ``6.png``: as 4.png after fitting (crosses inside the circles; chi is noise).

Run: ``python examples/02_two_stars_two_images.py --out example-out/02_two_stars_two_images``
"""

import argparse
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from tractor_prob import *  # noqa: E402,F403

NAME = os.path.splitext(os.path.basename(__file__))[0]


def imshow(x, **kwa):
    plt.imshow(x, **kwa)
    plt.xticks([])
    plt.yticks([])


def plot_src_pos(srcs):
    ax = plt.axis()
    plt.plot([src.getPosition().x for src in srcs],
             [src.getPosition().y for src in srcs], "r+")
    plt.axis(ax)


def plot_true_pos(stars):
    ax = plt.axis()
    plt.plot([cx for (cx, cy), flux in stars],
             [cy for (cx, cy), flux in stars], "o", mec="r", mfc="none")
    plt.axis(ax)


def showpatch(patch, ima):
    """Show a derivative Patch at its place in the image, titled with its name."""
    im = patch.patch
    h, w = im.shape
    ext = [patch.x0 - 0.5, patch.x0 + w - 0.5, patch.y0 - 0.5, patch.y0 + h - 0.5]
    imshow(im, extent=ext, **ima)
    plt.title(patch.name.replace("d(ptsrc)", "d"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join("example-out", NAME),
                        help="output folder for the figures")
    parser.add_argument("--seed", type=int, default=42, help="noise random seed")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.RandomState(args.seed)

    # Size of image, centroids and fluxes of sources
    W, H = 25, 25
    stars = [((12.8, 14.3), 12.0), ((15.0, 11.0), 15.0)]
    # PSF sizes (pixels)
    psfsigmas = [2.0, 1.0]
    # Per-pixel image noise (counts)
    noisesigmas = [0.01, 0.02]
    # Create synthetic Gaussian star images
    trueimages = []
    images = []
    for psfsigma, noisesigma in zip(psfsigmas, noisesigmas):
        trueimage = np.zeros((H, W))
        for (cx, cy), flux in stars:
            G = np.exp(((np.arange(W) - cx)[np.newaxis, :] ** 2
                        + (np.arange(H) - cy)[:, np.newaxis] ** 2) / (-2.0 * psfsigma**2))
            trueimage += flux * G / G.sum()
        image = trueimage + noisesigma * rng.normal(size=trueimage.shape)
        trueimages.append(trueimage)
        images.append(image)

    # Create Tractor Images
    tims = [Image(data=image, invvar=np.ones_like(image) / (noisesigma**2),
                  psf=NCircularGaussianPSF([psfsigma], [1.0]),
                  wcs=NullWCS(), photocal=NullPhotoCal(),
                  sky=ConstantSky(0.0))
            for image, noisesigma, psfsigma in zip(images, noisesigmas, psfsigmas)]

    # Create Tractor sources with approximate position and flux
    cat = [PointSource(PixPos(W / 2.0 - 1, H / 2.0 - 1), Flux(10.0)),
           PointSource(PixPos(W / 2.0 + 1, H / 2.0 + 1), Flux(10.0))]

    # Create Tractor object itself
    tractor = Tractor(tims, cat)

    # Render the model images
    mods0 = [tractor.getModelImage(i) for i in range(2)]
    chis0 = [tractor.getChiImage(i) for i in range(2)]

    # Plots (as in the seed, the display range uses the last image's noise)
    noisesigma = noisesigmas[-1]
    ima = dict(interpolation="nearest", origin="lower", cmap="gray",
               vmin=-2 * noisesigma, vmax=20 * noisesigma)
    imchi = dict(interpolation="nearest", origin="lower", cmap="gray", vmin=-5, vmax=5)

    def panels(mods, chis, fn, true_on_model):
        plt.clf()
        for i, (trueim, im, mod, chi) in enumerate(zip(trueimages, images, mods, chis)):
            plt.subplot(2, 4, 4 * i + 1)
            imshow(trueim, **ima)
            plot_true_pos(stars)
            plt.title("True image")
            plt.subplot(2, 4, 4 * i + 2)
            imshow(im, **ima)
            plot_true_pos(stars)
            plt.title("Image")
            plt.subplot(2, 4, 4 * i + 3)
            imshow(mod, **ima)
            plot_src_pos(cat)
            if true_on_model:
                plot_true_pos(stars)
            plt.title("Tractor model")
            plt.subplot(2, 4, 4 * i + 4)
            imshow(chi, **imchi)
            plot_src_pos(cat)
            plt.title("Chi")
        plt.savefig(os.path.join(args.out, fn))

    plt.figure()
    panels(mods0, chis0, "4.png", False)

    # Freeze all image calibration params -- just fit source params
    tractor.freezeParam("images")

    # Plot derivatives...
    derivs = tractor.getDerivs()
    imderiv = dict(interpolation="nearest", origin="lower", cmap="gray", vmin=-0.05, vmax=0.05)
    plt.clf()
    for i, mod0 in enumerate(mods0):
        plt.subplot(4, 4, 8 * i + 1)
        imshow(mod0, **ima)
        plot_src_pos(cat)
        ax = plt.axis()
        plt.title("Initial Tractor model")
        for j in range(6):
            plt.subplot(4, 4, 8 * i + (j // 3) * 4 + j % 3 + 2)
            showpatch(derivs[j][i][0], imderiv)
            plt.axis(ax)
            plot_src_pos([cat[j // 3]])
    plt.savefig(os.path.join(args.out, "5.png"))

    # Take several linearized least squares steps
    dlnps = []
    for i in range(10):
        dlnp, X, alpha = tractor.optimize()
        print("dlnp", dlnp)
        dlnps.append(dlnp)
        if dlnp < 1e-3:
            break

    # Get the fit model and residual images for plotting
    mods = [tractor.getModelImage(i) for i in range(2)]
    chis = [tractor.getChiImage(i) for i in range(2)]
    panels(mods, chis, "6.png", True)
    plt.close("all")

    fits = [((src.getPosition().x, src.getPosition().y), src.getBrightness().getValue())
            for src in cat]
    # the fit does not know which source is which star: pair each true star
    # with the nearest fitted source
    for (tx, ty), tf in stars:
        j = int(np.argmin([np.hypot(fx - tx, fy - ty) for (fx, fy), _ in fits]))
        (fx, fy), ff = fits[j]
        print("truth: x,y = (%.4f, %.4f) flux %.4f;  fit (source%d): x,y = (%.4f, %.4f) "
              "flux %.4f;  dx %+.4f dy %+.4f dflux %+.4f"
              % (tx, ty, tf, j, fx, fy, ff, fx - tx, fy - ty, ff - tf))
    return dict(sources=fits, truth=stars, steps=len(dlnps), dlnps=dlnps,
                params=list(tractor.getParams()), param_names=list(tractor.getParamNames()),
                chi2=[float(np.sum(c**2)) for c in chis],
                chi2_initial=[float(np.sum(c**2)) for c in chis0],
                npix=[c.size for c in chis], out=args.out)


if __name__ == "__main__":
    main()
