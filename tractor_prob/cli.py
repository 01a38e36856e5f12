"""The ``tractor-prob`` command line.

Subcommands:

- ``demo``: simulate a small star field (embedded defaults, no data files),
  fit it with the Tractor's ``optimize_loop()`` and write a figure and a
  catalog (FITS and ECSV) of truth versus fit.

``main(argv)`` returns the exit status (0 on success, 2 on a usage error such
as an output path that cannot be written); ``python -m tractor_prob`` and the
``tractor-prob`` console script both call it.
"""

from __future__ import annotations

import argparse
import math
import os
import secrets
import sys

__all__ = ["main", "run_demo", "UsageError"]

PROG = "tractor-prob"

# --- the embedded default star field -----------------------------------------------------------
DEMO_SHAPE = (96, 96)            # image (H, W) in pixels
DEMO_NSTARS = 8
DEMO_FLUX_RANGE = (50.0, 2000.0)  # counts, drawn log-uniformly
DEMO_PSF_SIGMAS = (1.5, 4.0)      # pixels
DEMO_PSF_WEIGHTS = (0.8, 0.2)
DEMO_SKY = 10.0                   # counts per pixel
DEMO_NOISE = 1.0                  # Gaussian noise sigma, counts per pixel
DEMO_MARGIN = 8.0                 # pixels kept free at the image edges
DEMO_MIN_SEP = 10.0               # pixels between any two stars
DEMO_POS_JITTER = 0.7             # starting positions: moved this far (pixels), random direction
DEMO_FLUX_JITTER = 0.15           # starting fluxes: off by this fraction, random sign
DEMO_MAX_STARS = 40               # what fits in 96x96 at DEMO_MIN_SEP


class UsageError(Exception):
    """A mistake in what the user asked for: reported in one line, exit status 2."""


def _int_in(lo, hi=None):
    """argparse type: an integer in [lo, hi] (hi None: no upper bound)."""
    def parse(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if v < lo or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(
                f"must be >= {lo}, got {v}" if hi is None else f"must be {lo}..{hi}, got {v}")
        return v
    return parse


def _build_parser():
    from . import __version__

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="The Tractor's forward model of astronomical images, in JAX/numpyro.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser(
        "demo", help="fit a simulated star field and write a figure and a catalog",
        description=(
            "Simulate a %dx%d image of point sources (2-Gaussian PSF, sky %g, noise sigma %g, "
            "fluxes log-uniform in %g..%g counts), start from a perturbed catalog, fit with "
            "optimize_loop(), and write panels.png, catalog.fits and catalog.ecsv."
            % (DEMO_SHAPE[1], DEMO_SHAPE[0], DEMO_SKY, DEMO_NOISE, *DEMO_FLUX_RANGE)))
    demo.add_argument("--out", default="demo-out", metavar="DIR",
                      help="output folder, created if missing (default: %(default)s)")
    demo.add_argument("--seed", type=_int_in(0), default=1, metavar="N",
                      help="random seed for the star field and the noise (default: %(default)s)")
    demo.add_argument("--nstars", type=_int_in(1, DEMO_MAX_STARS), default=DEMO_NSTARS, metavar="N",
                      help="number of stars, 1..%d (default: %%(default)s)" % DEMO_MAX_STARS)
    demo.add_argument("--quiet", "-q", action="store_true",
                      help="print nothing (errors still go to stderr)")
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv=None):
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    parser = _build_parser()
    args = parser.parse_args(argv)   # usage errors: argparse prints them and exits with 2
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.func(args)
    except UsageError as e:
        print(f"{PROG} {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


# --- demo --------------------------------------------------------------------------------------
def _prepare_out(path):
    """Create the output folder (and parents); UsageError if that is impossible."""
    if not path:
        raise UsageError("--out must not be empty")
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"--out {path!r} exists and is not a folder")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create output folder {path!r}: {e.strerror or e}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UsageError(f"output folder {path!r} is not writable")


def _atomic_write(path, write):
    """Call ``write(tmp_path)`` on a temporary name in the target folder, then rename it
    onto ``path`` (so an interrupted run never leaves a half-written file).  The writer
    creates the temporary file itself, so it gets the usual permissions (umask)."""
    folder, base = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{base}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _draw_field(rng, nstars):
    """Positions (x, y) at least DEMO_MIN_SEP apart and DEMO_MARGIN from the edges, and
    log-uniform fluxes."""
    H, W = DEMO_SHAPE
    xs, ys = [], []
    tries = 0
    while len(xs) < nstars:
        tries += 1
        if tries > 200000:
            raise UsageError(f"could not place {nstars} stars {DEMO_MIN_SEP:g} px apart "
                             f"in a {W}x{H} image; use fewer --nstars")
        x = rng.uniform(DEMO_MARGIN, W - 1 - DEMO_MARGIN)
        y = rng.uniform(DEMO_MARGIN, H - 1 - DEMO_MARGIN)
        if all((x - a) ** 2 + (y - b) ** 2 >= DEMO_MIN_SEP**2 for a, b in zip(xs, ys)):
            xs.append(x)
            ys.append(y)
    lo, hi = DEMO_FLUX_RANGE
    fluxes = list(math.exp(v) for v in rng.uniform(math.log(lo), math.log(hi), size=nstars))
    return xs, ys, fluxes


def _flux_sigma_psf():
    """Flux uncertainty (counts) of an isolated star with known position and sky:
    noise * sqrt(N_eff), N_eff = 1 / integral(psf^2) for the demo's Gaussian-mixture PSF."""
    s2 = 0.0
    for wi, si in zip(DEMO_PSF_WEIGHTS, DEMO_PSF_SIGMAS):
        for wj, sj in zip(DEMO_PSF_WEIGHTS, DEMO_PSF_SIGMAS):
            s2 += wi * wj / (2 * math.pi * (si**2 + sj**2))
    return DEMO_NOISE / math.sqrt(s2)


def _position_sigma_psf(flux):
    """Per-axis position uncertainty (pixels) of an isolated star of ``flux`` counts:
    noise / (flux * sqrt(integral((dpsf/dx)^2))); for Gaussians of variances a, b the
    integral of the product of their x-derivatives is 1 / (2 pi (a + b)^2)."""
    s2 = 0.0
    for wi, si in zip(DEMO_PSF_WEIGHTS, DEMO_PSF_SIGMAS):
        for wj, sj in zip(DEMO_PSF_WEIGHTS, DEMO_PSF_SIGMAS):
            s2 += wi * wj / (2 * math.pi * (si**2 + sj**2) ** 2)
    return DEMO_NOISE / (flux * math.sqrt(s2))


def run_demo(out="demo-out", seed=1, nstars=DEMO_NSTARS, quiet=False):
    """Simulate, fit and write the demo; return a dict of what was done.

    Keys: ``truth`` and ``fit`` (lists of (x, y, flux)), ``steps``, ``converged``,
    ``chi2_per_pixel``, ``files`` (written paths).
    """
    if not 1 <= nstars <= DEMO_MAX_STARS:
        raise UsageError(f"--nstars must be between 1 and {DEMO_MAX_STARS}, got {nstars}")
    _prepare_out(out)

    import numpy as np

    from . import (ConstantSky, Flux, Image, NCircularGaussianPSF, NullPhotoCal, NullWCS,
                   PixPos, PointSource, Tractor)

    rng = np.random.default_rng(seed)
    H, W = DEMO_SHAPE
    xs, ys, fluxes = _draw_field(rng, nstars)

    def make_image(data):
        return Image(data=data, invvar=np.full((H, W), 1.0 / DEMO_NOISE**2),
                     psf=NCircularGaussianPSF(list(DEMO_PSF_SIGMAS), list(DEMO_PSF_WEIGHTS)),
                     wcs=NullWCS(), photocal=NullPhotoCal(), sky=ConstantSky(DEMO_SKY),
                     name="demo")

    # truth: render with the same Tractor, add Gaussian noise
    truth = Tractor([make_image(np.zeros((H, W)))],
                    [PointSource(PixPos(x, y), Flux(f)) for x, y, f in zip(xs, ys, fluxes)])
    clean = truth.getModelImage(0)
    data = clean + DEMO_NOISE * rng.normal(size=(H, W))

    # start: every star moved DEMO_POS_JITTER px in a random direction, flux off by 15%
    angles = rng.uniform(0, 2 * np.pi, size=nstars)
    signs = rng.choice([-1.0, 1.0], size=nstars)
    start = [PointSource(PixPos(x + DEMO_POS_JITTER * np.cos(a), y + DEMO_POS_JITTER * np.sin(a)),
                         Flux(f * (1 + DEMO_FLUX_JITTER * s)))
             for x, y, f, a, s in zip(xs, ys, fluxes, angles, signs)]
    tim = make_image(data)
    tractor = Tractor([tim], start)
    tractor.freezeParam("images")
    init_pos = [(s.getPosition().x, s.getPosition().y) for s in start]
    mod0 = tractor.getModelImage(0)

    res = tractor.optimize_loop()
    mod = tractor.getModelImage(0)
    chi = tractor.getChiImage(0)
    chi2_pp = float(np.sum(chi**2) / chi.size)
    fit = [(s.getPosition().x, s.getPosition().y, s.getBrightness().getValue())
           for s in tractor.getCatalog().getSources()]

    files = dict(panels=os.path.join(out, "panels.png"),
                 fits=os.path.join(out, "catalog.fits"),
                 ecsv=os.path.join(out, "catalog.ecsv"))
    _write_catalogs(files, xs, ys, fluxes, fit, seed)
    _write_panels(files["panels"], data, mod0, mod, chi, xs, ys, init_pos, fit, res["steps"])

    result = dict(truth=list(zip(xs, ys, fluxes)), fit=fit, steps=res["steps"],
                  converged=res["converged"], chi2_per_pixel=chi2_pp, files=files)
    if not quiet:
        _print_summary(result)
    return result


def _write_catalogs(files, xs, ys, fluxes, fit, seed):
    import numpy as np
    from astropy.table import Table

    fit = np.asarray(fit, dtype=float).reshape(-1, 3)
    t = Table()
    t["id"] = np.arange(len(xs), dtype=np.int32)
    t["x"], t["y"], t["flux"] = fit[:, 0], fit[:, 1], fit[:, 2]
    for c, v in (("x_true", xs), ("y_true", ys), ("flux_true", fluxes)):
        t[c] = np.asarray(v, dtype=float)
    for c in ("x", "y", "x_true", "y_true"):
        t[c].unit = "pix"
        t[c].format = ".4f"
    for c in ("flux", "flux_true"):
        t[c].format = ".3f"
    t["x"].description = "fitted x pixel position (0 = centre of the first pixel)"
    t["y"].description = "fitted y pixel position"
    t["flux"].description = "fitted flux, counts"
    t["x_true"].description = "simulated x pixel position"
    t["y_true"].description = "simulated y pixel position"
    t["flux_true"].description = "simulated flux, counts"
    t.meta["ORIGIN"] = "tractor-prob demo"
    t.meta["SEED"] = int(seed)
    t.meta["SKY"] = DEMO_SKY
    t.meta["NOISE"] = DEMO_NOISE
    _atomic_write(files["fits"], lambda p: t.write(p, format="fits", overwrite=True))
    _atomic_write(files["ecsv"], lambda p: t.write(p, format="ascii.ecsv", overwrite=True))


def _write_panels(path, data, mod0, mod, chi, xs, ys, init_pos, fit, steps):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(14, 4.2))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 4)
    ima = dict(interpolation="nearest", origin="lower", cmap="gray",
               vmin=DEMO_SKY - 3 * DEMO_NOISE, vmax=DEMO_SKY + 30 * DEMO_NOISE)
    imchi = dict(interpolation="nearest", origin="lower", cmap="RdBu_r", vmin=-5, vmax=5)
    panels = [(data, ima, "data"), (mod0, ima, "initial model"),
              (mod, ima, "fitted model (%d steps)" % steps),
              (chi, imchi, "chi = (data - model) / sigma")]
    fx = [f[0] for f in fit]
    fy = [f[1] for f in fit]
    for k, (ax, (img, kw, title)) in enumerate(zip(axes, panels)):
        im = ax.imshow(img, **kw)
        ax.set_title(title)
        ax.plot(xs, ys, "o", mfc="none", mec="tab:green", ms=11, mew=1.2,
                label="truth" if k == 0 else None)
        if k == 1:
            ax.plot([p[0] for p in init_pos], [p[1] for p in init_pos], "x", color="tab:orange",
                    ms=6, label="start")
            ax.legend(loc="upper right", fontsize=7, framealpha=0.7)
        if k >= 2:
            ax.plot(fx, fy, "+", color="tab:red", ms=9, mew=1.2, label="fit")
        if k == 2:
            ax.legend(loc="upper right", fontsize=7, framealpha=0.7)
        ax.set_xlim(-0.5, DEMO_SHAPE[1] - 0.5)
        ax.set_ylim(-0.5, DEMO_SHAPE[0] - 0.5)
        if k == 3:
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    axes[0].legend(loc="upper right", fontsize=7, framealpha=0.7)
    fig.tight_layout()
    _atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=90))


def _print_summary(r):
    sig = _flux_sigma_psf()
    print("tractor-prob demo: %d stars, %dx%d image, PSF sigmas %s px (weights %s), "
          "sky %g, noise sigma %g"
          % (len(r["truth"]), DEMO_SHAPE[1], DEMO_SHAPE[0],
             "/".join("%g" % s for s in DEMO_PSF_SIGMAS),
             "/".join("%g" % w for w in DEMO_PSF_WEIGHTS), DEMO_SKY, DEMO_NOISE))
    head = "%3s  %8s %8s %7s  %8s %8s %7s  %9s %9s %7s" % (
        "id", "x_true", "x_fit", "dx", "y_true", "y_fit", "dy", "flux_true", "flux_fit", "dflux")
    print(head)
    print("-" * len(head))
    for i, ((xt, yt, ft), (x, y, f)) in enumerate(zip(r["truth"], r["fit"])):
        print("%3d  %8.3f %8.3f %+7.3f  %8.3f %8.3f %+7.3f  %9.2f %9.2f %+7.2f"
              % (i, xt, x, x - xt, yt, y, y - yt, ft, f, f - ft))
    print("(1-sigma for an isolated star with this PSF and noise: flux %.2f counts, "
          "position %.1f px / flux per axis)" % (sig, _position_sigma_psf(1.0)))
    print("optimize_loop: %d steps (%s); final chi^2/pixel = %.4f"
          % (r["steps"], "converged" if r["converged"] else "NOT converged",
             r["chi2_per_pixel"]))
    f = r["files"]
    print("wrote %s, %s, %s" % (f["panels"], f["fits"], f["ecsv"]))


def _cmd_demo(args):
    run_demo(out=args.out, seed=args.seed, nstars=args.nstars, quiet=args.quiet)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
