"""Sources in RA/Dec with magnitudes, on an image with a TAN WCS and a
magnitude zero point: the tutorial's "Sources, positions, and brightnesses"
snippet, then a small fit with it.

Part 1 (the seed's snippet): a PointSource at RaDecPos(42.3, 9.7) degrees with
Mags(r=12, i=11.3); an r-band MagsPhotoCal with zero point 22.5 turns its
brightness into counts and a FitsWcs (TAN, CRVAL (42, 9) deg, CRPIX (100, 100),
CD 0.1 deg/pixel) its position into pixels.  Printed as the seed prints them.

Part 2 (a real use): a 200 x 200 r-band image with that WCS and photocal and a
circular Gaussian PSF of sigma 2 pixels; the source is rendered with a Tractor,
Gaussian noise is added, and a copy of the source with RA/Dec moved by about
one pixel and its r mag by +0.2 is fitted (RA, Dec, r mag thawed; the image
calibrations and the i mag frozen -- an r-band image says nothing about i)
by calling ``optimize()`` until the log-probability stops improving.

Figure (in ``--out``): ``radec.png``, image / model / chi of the initial
(perturbed) source on the top row and of the fit on the bottom row, zoomed on
the 30 x 30 pixels around the star (true position circled, source crossed).

Run: ``python examples/03_radec_mags.py --out example-out/03_radec_mags``
"""

import argparse
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from tractor_prob import *  # noqa: E402,F403

NAME = os.path.splitext(os.path.basename(__file__))[0]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join("example-out", NAME),
                        help="output folder for the figures")
    parser.add_argument("--seed", type=int, default=42, help="noise random seed")
    parser.add_argument("--noise", type=float, default=2.0,
                        help="per-pixel noise sigma (counts)")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.RandomState(args.seed)

    # --- Part 1: the seed's snippet ---
    source = PointSource(RaDecPos(42.3, 9.7), Mags(r=12.0, i=11.3))

    photocal = MagsPhotoCal("r", 22.5)
    wcs = FitsWcs(Tan(42.0, 9.0, 100.0, 100.0, 0.1, 0.0, 0.0, 0.1, 200.0, 200.0))

    counts = photocal.brightnessToCounts(source.getBrightness())
    x, y = wcs.positionToPixel(source.getPosition())

    print("source", source)
    print("photocal", photocal)
    print("wcs", wcs)
    # '%.12g' is how Python 2 printed floats, so these lines match the seed's
    print("counts", "%.12g" % counts, "x,y", "%.12g" % x, "%.12g" % y)

    # --- Part 2: an image with that WCS and photocal, and a fit ---
    W, H = 200, 200
    psfsigma = 2.0  # pixels
    noisesigma = args.noise  # counts per pixel
    truth = PointSource(RaDecPos(42.3, 9.7), Mags(r=12.0, i=11.3))
    tim = Image(data=np.zeros((H, W)), invvar=np.full((H, W), 1.0 / noisesigma**2),
                psf=NCircularGaussianPSF([psfsigma], [1.0]),
                wcs=wcs, photocal=photocal, sky=ConstantSky(0.0), name="r-band")
    trueimage = Tractor([tim], [truth]).getModelImage(0)
    tim.data = trueimage + noisesigma * rng.normal(size=trueimage.shape)

    # Start from a source about one pixel off and 0.2 mag too faint
    start = wcs.pixelToPosition(x + 0.8, y - 0.6)
    src = PointSource(RaDecPos(start.ra, start.dec), Mags(r=12.2, i=11.3))
    src.brightness.freezeParam("i")
    tractor = Tractor([tim], [src])
    tractor.freezeParam("images")
    print("fitting", tractor.getParamNames())

    mod0 = tractor.getModelImage(0)
    chi0 = tractor.getChiImage(0)
    x0, y0 = wcs.positionToPixel(src.getPosition())

    dlnps = []
    for i in range(20):
        dlnp, X, alpha = tractor.optimize()
        print("dlnp", dlnp)
        dlnps.append(dlnp)
        if dlnp < 1e-3:
            break

    mod = tractor.getModelImage(0)
    chi = tractor.getChiImage(0)
    fx, fy = wcs.positionToPixel(src.getPosition())
    fit_ra, fit_dec = src.getPosition().ra, src.getPosition().dec
    fit_r = src.getBrightness().getMag("r")
    print("truth: RA, Dec = (%.7f, %.7f) deg, r = %.4f, pixel (%.4f, %.4f)"
          % (truth.pos.ra, truth.pos.dec, truth.brightness.r, x, y))
    print("fit:   RA, Dec = (%.7f, %.7f) deg, r = %.4f, pixel (%.4f, %.4f);  "
          "dx %+.4f dy %+.4f pixels, dmag %+.4f"
          % (fit_ra, fit_dec, fit_r, fx, fy, fx - x, fy - y, fit_r - 12.0))

    # Plots: image / model / chi before (top) and after (bottom), zoomed on the star
    ima = dict(interpolation="nearest", origin="lower", cmap="gray",
               vmin=-2 * noisesigma, vmax=0.3 * trueimage.max())
    imchi = dict(interpolation="nearest", origin="lower", cmap="gray", vmin=-5, vmax=5)
    zoom = [x - 15, x + 15, y - 15, y + 15]
    plt.figure(figsize=(9, 6))
    for row, (m, c, (px, py), label) in enumerate(
            [(mod0, chi0, (x0, y0), "initial"), (mod, chi, (fx, fy), "fit")]):
        for col, (im, kw, title) in enumerate(
                [(tim.data, ima, "Image"), (m, ima, f"Tractor model ({label})"),
                 (c, imchi, f"Chi ({label})")]):
            plt.subplot(2, 3, 3 * row + col + 1)
            plt.imshow(im, **kw)
            plt.plot([x], [y], "o", mec="r", mfc="none", ms=12)
            plt.plot([px], [py], "r+", ms=12)
            plt.axis(zoom)
            plt.title(title)
    plt.suptitle("r-band image with a TAN WCS: source fitted in RA, Dec and r mag")
    plt.savefig(os.path.join(args.out, "radec.png"))
    plt.close("all")

    return dict(counts=counts, x=x, y=y, truth=(42.3, 9.7, 12.0),
                ra=fit_ra, dec=fit_dec, mag_r=fit_r, mag_i=src.getBrightness().getMag("i"),
                fit_pixel=(fx, fy), start=(start.ra, start.dec, 12.2), start_pixel=(x0, y0),
                steps=len(dlnps), dlnps=dlnps,
                params=list(tractor.getParams()), param_names=list(tractor.getParamNames()),
                chi2=float(np.sum(chi**2)), chi2_initial=float(np.sum(chi0**2)),
                npix=chi.size, out=args.out)


if __name__ == "__main__":
    main()
