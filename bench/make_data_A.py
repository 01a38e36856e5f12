"""Regenerate the peers' data set A (A_gauss) into bench/data/A_gauss.npz with GalSim.

A verbatim copy of ``make_A(out, 'gauss')`` and its helpers from the peers' generator
(../shared/bench/peers/make_data.py, GalSim 2.8.5): same seed (20240601), same draw calls in
the same order, so the noise realisation is the same.  Needs galsim (the package's ``test``
extra); the benchmark itself only reads the .npz.  See bench/data/PROVENANCE.md.

    python bench/make_data_A.py [--check]   # --check: regenerate and compare with the stored file
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "data", "A_gauss.npz")

SEED = 20240601
PSF_N = 25
GAL_A = dict(n=2.5, r_e=6.0, q=0.6, pa_deg=30.0, flux=2000.0, x0=47.3, y0=48.6)


def psf_image(psf, method="auto"):
    im = psf.drawImage(nx=PSF_N, ny=PSF_N, scale=1.0, method=method)
    a = im.array.astype(np.float64)
    return a / a.sum()


def sersic_obj(galsim, n, re_major, q, pa_deg, flux, gsparams=None):
    gal = galsim.Sersic(n=n, half_light_radius=re_major * np.sqrt(q), flux=flux, gsparams=gsparams)
    return gal.shear(q=q, beta=pa_deg * galsim.degrees)


def draw(galsim, obj, nx, ny, x0, y0, method="auto"):
    """Draw obj centred at 0-indexed numpy position (x0, y0) on an nx x ny image."""
    im = galsim.ImageD(nx, ny, scale=1.0)
    off = galsim.PositionD(x0 + 1 - im.true_center.x, y0 + 1 - im.true_center.y)
    obj.drawImage(image=im, offset=off, method=method, add_to_image=False)
    return im.array.copy()


def make_A_gauss():
    import galsim

    rng = np.random.default_rng(SEED)
    g = GAL_A
    psf = galsim.Gaussian(sigma=1.5)
    gal = sersic_obj(galsim, g["n"], g["r_e"], g["q"], g["pa_deg"], g["flux"])
    model = draw(galsim, galsim.Convolve(gal, psf), 96, 96, g["x0"], g["y0"])
    sigma = 1.0
    image = model + rng.normal(0, sigma, model.shape)
    truth = dict(g, psf="gauss", psf_sigma=1.5, noise_sigma=sigma, seed=SEED, shape=[96, 96],
                 ellip=1 - g["q"], theta_rad=float(np.deg2rad(g["pa_deg"])),
                 convention="0-indexed numpy (x=col,y=row); r_e semi-major; PA ccw from +x",
                 galsim=galsim.__version__)
    return dict(image=image, model=model, psf=psf_image(psf),
                psf_nopix=psf_image(psf, "no_pixel")), truth


def digest(arrays) -> str:
    h = hashlib.sha256()
    for k in sorted(arrays):
        h.update(k.encode())
        h.update(np.ascontiguousarray(arrays[k], dtype=np.float64).tobytes())
    return h.hexdigest()[:16]


def load(path=OUT):
    """(arrays dict, truth dict) of the stored data set."""
    with np.load(path) as d:
        arrays = {k: d[k] for k in d.files if k != "truth_json"}
        truth = json.loads(str(d["truth_json"]))
    return arrays, truth


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with the stored file")
    args = ap.parse_args(argv)
    arrays, truth = make_A_gauss()
    if args.check:
        old, _ = load()
        same = all(np.array_equal(old[k], arrays[k]) for k in arrays)
        print(f"stored {digest(old)}, regenerated {digest(arrays)}: "
              f"{'identical' if same else 'DIFFERENT'}")
        return 0 if same else 1
    np.savez_compressed(OUT, **arrays, truth_json=json.dumps(truth))
    print(f"wrote {OUT} (sha256[:16] of arrays {digest(arrays)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
