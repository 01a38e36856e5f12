"""Fit a bulge + disk galaxy across 6 bands x 3 epochs of GalSim images.

The tutorial's "Using the Tractor with GalSim images": GalSim demo12b cubes
(simulated; tests/data/galsim-demo12b, see its PROVENANCE.md), 64 x 64 pixels,
0.2"/pixel, Gaussian PSF sigma 1.5 px, noise 0.02 per pixel.  One
CompositeGalaxy with per-band Fluxes (FluxesPhotoCal per image) and
EllipseESoft shapes starts from a deliberately poor guess and is fitted with
``optimize()`` steps.  The true galaxy: deV bulge hlr 0.5" sheared
g = (0.12, 0.07) and exponential disk hlr 2.0" sheared g = (0.4, 0.2).

Figures (in ``--out``): ``8.png`` the images, ``9.png`` the initial models,
``10.png`` the optimized models, ``11.png`` the optimized models + noise.

Run: ``python examples/05_galsim_demo12b.py --out example-out/05_galsim_demo12b``
"""

import argparse
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from astropy.io import fits  # noqa: E402

from tractor_prob import *  # noqa: E402,F403
from tractor_prob.galaxy import *  # noqa: E402,F403

NAME = os.path.splitext(os.path.basename(__file__))[0]
DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data",
                    "galsim-demo12b")


def plot_grid(ims, bands, nepochs, ima, title, fn):
    plt.clf()
    plt.subplots_adjust(left=0.05, right=0.95, bottom=0.05, top=0.92)
    for i, band in enumerate(bands):
        for e in range(nepochs):
            plt.subplot(nepochs, len(bands), e * len(bands) + i + 1)
            plt.imshow(ims[nepochs * i + e], **ima)
            plt.xticks([])
            plt.yticks([])
            plt.title("%s #%i" % (band, e + 1))
    plt.suptitle(title)
    plt.savefig(fn)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join("example-out", NAME))
    ap.add_argument("--data", default=DATA, help="folder with demo12b_<band>.fits")
    ap.add_argument("--steps", type=int, default=20, help="maximum optimize() steps")
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.RandomState(args.seed)

    # These match the values in GalSim demo12.py
    pixnoise = 0.02
    psf_sigma = 1.5
    bands = "ugrizy"
    nepochs = 3

    tims = []
    for band in bands:
        fn = os.path.join(args.data, "demo12b_%s.fits" % band)
        with fits.open(fn) as hdul:
            cube = hdul[0].data.astype(float)
            pixscale = hdul[0].header["GS_SCALE"]
        nims, h, w = cube.shape
        assert nims == nepochs
        for i in range(nims):
            image = cube[i, :, :]
            tims.append(Image(data=image, invvar=np.ones_like(image) / pixnoise**2,
                              photocal=FluxesPhotoCal(band), wcs=NullWCS(pixscale=pixscale),
                              psf=NCircularGaussianPSF([psf_sigma], [1.0]), name=f"{band}{i}"))

    # A dev+exp galaxy with made-up initial parameters.
    galaxy = CompositeGalaxy(PixPos(w / 2, h / 2),
                             Fluxes(**dict([(band, 10.0) for band in bands])),
                             EllipseESoft(0.0, 0.0, 0.0),
                             Fluxes(**dict([(band, 10.0) for band in bands])),
                             EllipseESoft(0.0, 0.0, 0.0))
    tractor = Tractor(tims, [galaxy])

    ima = dict(interpolation="nearest", origin="lower", cmap="gray",
               vmin=-5.0 * pixnoise, vmax=20.0 * pixnoise)
    plot_grid([t.getImage() for t in tims], bands, nepochs, ima, "Images",
              os.path.join(args.out, "8.png"))
    mods = tractor.getModelImages()
    plot_grid(mods, bands, nepochs, ima, "Initial models", os.path.join(args.out, "9.png"))

    tractor.freezeParam("images")
    dlnps = []
    for i in range(args.steps):
        dlnp, X, alpha = tractor.optimize()
        print("dlnp", dlnp)
        dlnps.append(dlnp)
        if dlnp < 1e-3:
            break

    mods = tractor.getModelImages()
    plot_grid(mods, bands, nepochs, ima, "Optimized models", os.path.join(args.out, "10.png"))
    noisy = [m + pixnoise * rng.normal(size=m.shape) for m in mods]
    plot_grid(noisy, bands, nepochs, ima, "Optimized models + noise",
              os.path.join(args.out, "11.png"))
    chi2 = float(sum(np.sum(c**2) for c in tractor.getChiImages()))
    npix = sum(t.getImage().size for t in tims)
    print(galaxy)
    print("chi^2 / pixel: %.4f over %i pixels" % (chi2 / npix, npix))
    return dict(galaxy=galaxy, dlnps=dlnps, chi2_per_pixel=chi2 / npix, npix=npix)


if __name__ == "__main__":
    main()
