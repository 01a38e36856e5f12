"""Fit one star in one image: the tutorial's "Optimization / Fitting" example.

A 25 x 25 image of a Gaussian star (centre (12.8, 14.3) pixels, flux 12 counts,
PSF sigma 2 pixels) with Gaussian noise of 0.01 counts per pixel.  A Tractor
with one PointSource started at the image centre with flux 10 is fitted by
calling ``optimize()`` until the log-probability stops improving.

Figures (in ``--out``):

- ``1.png``: true image, noisy image, initial Tractor model and chi image
  (the misplaced initial model leaves the star in the chi image);
- ``2.png``: the same after fitting (chi looks like noise);
- ``3.png``: the initial model and the model derivatives with respect to
  the three thawed parameters (source0.pos.x, source0.pos.y, source0.brightness).

Run: ``python examples/01_single_star.py --out example-out/01_single_star``
"""

import argparse
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from tractor_prob import *  # noqa: E402,F403

NAME = os.path.splitext(os.path.basename(__file__))[0]


def showpatch(patch, ima):
    """Show a derivative Patch at its place in the image, titled with its name."""
    im = patch.patch
    h, w = im.shape
    ext = [patch.x0, patch.x0 + w, patch.y0, patch.y0 + h]
    plt.imshow(im, extent=ext, **ima)
    plt.title(patch.name)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join("example-out", NAME),
                        help="output folder for the figures")
    parser.add_argument("--seed", type=int, default=42, help="noise random seed")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.RandomState(args.seed)

    # Size of image, centroid and flux of source
    W, H = 25, 25
    cx, cy = 12.8, 14.3
    flux = 12.0
    # PSF size (pixels)
    psfsigma = 2.0
    # Per-pixel image noise (counts)
    noisesigma = 0.01
    # Create synthetic Gaussian star image
    G = np.exp(((np.arange(W) - cx)[np.newaxis, :] ** 2
                + (np.arange(H) - cy)[:, np.newaxis] ** 2) / (-2.0 * psfsigma**2))
    trueimage = flux * G / G.sum()
    image = trueimage + noisesigma * rng.normal(size=trueimage.shape)

    # Create Tractor Image
    tim = Image(data=image, invvar=np.ones_like(image) / (noisesigma**2),
                psf=NCircularGaussianPSF([psfsigma], [1.0]),
                wcs=NullWCS(), photocal=NullPhotoCal(),
                sky=ConstantSky(0.0))

    # Create Tractor source with approximate position and flux
    src = PointSource(PixPos(W / 2.0, H / 2.0), Flux(10.0))

    # Create Tractor object itself
    tractor = Tractor([tim], [src])

    # Render the model image
    mod0 = tractor.getModelImage(0)
    chi0 = tractor.getChiImage(0)

    # Plots
    ima = dict(interpolation="nearest", origin="lower", cmap="gray",
               vmin=-2 * noisesigma, vmax=5 * noisesigma)
    imchi = dict(interpolation="nearest", origin="lower", cmap="gray", vmin=-5, vmax=5)

    def four_panels(mod, chi, fn):
        plt.clf()
        plt.subplot(2, 2, 1)
        plt.imshow(trueimage, **ima)
        plt.title("True image")
        plt.subplot(2, 2, 2)
        plt.imshow(image, **ima)
        plt.title("Image")
        plt.subplot(2, 2, 3)
        plt.imshow(mod, **ima)
        plt.title("Tractor model")
        plt.subplot(2, 2, 4)
        plt.imshow(chi, **imchi)
        plt.title("Chi")
        plt.savefig(os.path.join(args.out, fn))

    plt.figure()
    four_panels(mod0, chi0, "1.png")

    # Freeze all image calibration params -- just fit source params
    tractor.freezeParam("images")

    # Save derivatives for later plotting...
    derivs = tractor.getDerivs()

    # Take several linearized least squares steps
    dlnps = []
    for i in range(10):
        dlnp, X, alpha = tractor.optimize()
        print("dlnp", dlnp)
        dlnps.append(dlnp)
        if dlnp < 1e-3:
            break

    # Get the fit model and residual images for plotting
    mod = tractor.getModelImage(0)
    chi = tractor.getChiImage(0)
    four_panels(mod, chi, "2.png")

    # Plot the derivatives we saved earlier
    imderiv = dict(interpolation="nearest", origin="lower", cmap="gray", vmin=-0.05, vmax=0.05)
    plt.clf()
    plt.subplot(2, 2, 1)
    plt.imshow(mod0, **ima)
    ax = plt.axis()
    plt.title("Initial Tractor model")
    for i in range(3):
        plt.subplot(2, 2, 2 + i)
        showpatch(derivs[i][0][0], imderiv)
        plt.axis(ax)
    plt.savefig(os.path.join(args.out, "3.png"))
    plt.close("all")

    fx, fy = src.getPosition().x, src.getPosition().y
    fflux = src.getBrightness().getValue()
    print("truth: x,y = (%.4f, %.4f) flux %.4f;  fit: x,y = (%.4f, %.4f) flux %.4f;  "
          "dx %+.4f dy %+.4f dflux %+.4f"
          % (cx, cy, flux, fx, fy, fflux, fx - cx, fy - cy, fflux - flux))
    return dict(x=fx, y=fy, flux=fflux, truth=(cx, cy, flux), steps=len(dlnps), dlnps=dlnps,
                params=list(tractor.getParams()), param_names=list(tractor.getParamNames()),
                chi2=float(np.sum(chi**2)), chi2_initial=float(np.sum(chi0**2)),
                derivative_names=[derivs[i][0][0].name for i in range(3)],
                out=args.out)


if __name__ == "__main__":
    main()
