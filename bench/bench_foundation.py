"""Foundation benchmark: the seed's single-star and two-star fits and the 256x256 field of
50 point sources of ../shared/bench/tractor/bench_big.py --ngal 0, timed like the original
Tractor's figures in ../shared/bench/tractor/RESULTS.md.

Each case runs in its own process so that "cold" (the first optimize-to-convergence
loop, compilation included, after imports) is honest; "warm" is the median of repeats
from the same perturbed start.

    python bench/bench_foundation.py            # all cases, writes bench/results/foundation.json
    python bench/bench_foundation.py --case big # one case, prints JSON
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

# The original Tractor (C extensions + Cython build) on this machine kind, from
# ../shared/bench/tractor/RESULTS.md and results/*.json: warm optimize loop (s).
TRACTOR = {
    "single_star": dict(optimize_loop_s=0.0078, nsteps=4),
    "two_stars": dict(optimize_loop_s=0.0292, nsteps=8),
    "big_stars": dict(optimize_loop_s=0.2934, nsteps=6, lnp_fit=-32778.20478993414,
                      lnp_fit_from_truth=-32778.191477161025),
}


def case_single_star(nrep):
    from common import optimize_until, timeit
    from tractor_prob import (ConstantSky, Flux, Image, NCircularGaussianPSF, NullPhotoCal,
                              NullWCS, PixPos, PointSource, Tractor)

    np.random.seed(42)
    W, H = 25, 25
    cx, cy, flux, psfsigma, noisesigma = 12.8, 14.3, 12.0, 2.0, 0.01
    G = np.exp(((np.arange(W) - cx)[None, :] ** 2 + (np.arange(H) - cy)[:, None] ** 2)
               / (-2.0 * psfsigma**2))
    image = flux * G / G.sum() + noisesigma * np.random.normal(size=(H, W))
    tim = Image(data=image, inverr=np.ones_like(image) / noisesigma,
                psf=NCircularGaussianPSF([psfsigma], [1.0]), wcs=NullWCS(),
                photocal=NullPhotoCal(), sky=ConstantSky(0.0))
    tractor = Tractor([tim], [PointSource(PixPos(W / 2.0, H / 2.0), Flux(10.0))])
    tractor.freezeParam("images")
    p0 = tractor.getParams()
    t0 = time.perf_counter()
    optimize_until(tractor)
    cold = time.perf_counter() - t0
    warm, ts, (nsteps, _) = timeit(lambda: optimize_until(tractor), nrep,
                                   setup=lambda: tractor.setParams(p0))
    p = tractor.getParams()
    tmod, _, _ = timeit(lambda: tractor.getModelImage(0), 50)
    return dict(cold_s=cold, optimize_loop_s=warm, optimize_loop_all_s=ts, nsteps=nsteps,
                getModelImage_s=tmod, final=dict(x=p[0], y=p[1], flux=p[2]),
                err=dict(dx=p[0] - cx, dy=p[1] - cy, dflux=p[2] - flux),
                lnp_fit=tractor.getLogProb())


def case_two_stars(nrep):
    from common import optimize_until, timeit
    from tractor_prob import (ConstantSky, Flux, Image, NCircularGaussianPSF, NullPhotoCal,
                              NullWCS, PixPos, PointSource, Tractor)

    np.random.seed(42)
    W, H = 25, 25
    stars = [((12.8, 14.3), 12.0), ((15.0, 11.0), 15.0)]
    images = []
    for psfsigma, noisesigma in zip([2.0, 1.0], [0.01, 0.02]):
        true = np.zeros((H, W))
        for (cx, cy), flux in stars:
            G = np.exp(((np.arange(W) - cx)[None, :] ** 2 + (np.arange(H) - cy)[:, None] ** 2)
                       / (-2.0 * psfsigma**2))
            true += flux * G / G.sum()
        images.append(true + noisesigma * np.random.normal(size=true.shape))
    tims = [Image(data=im, inverr=np.ones_like(im) / ns, psf=NCircularGaussianPSF([ps], [1.0]),
                  wcs=NullWCS(), photocal=NullPhotoCal(), sky=ConstantSky(0.0))
            for im, ns, ps in zip(images, [0.01, 0.02], [2.0, 1.0])]
    cat = [PointSource(PixPos(W / 2.0 - 1, H / 2.0 - 1), Flux(10.0)),
           PointSource(PixPos(W / 2.0 + 1, H / 2.0 + 1), Flux(10.0))]
    tractor = Tractor(tims, cat)
    tractor.freezeParam("images")
    p0 = tractor.getParams()
    t0 = time.perf_counter()
    optimize_until(tractor)
    cold = time.perf_counter() - t0
    warm, ts, (nsteps, _) = timeit(lambda: optimize_until(tractor), nrep,
                                   setup=lambda: tractor.setParams(p0))
    p = tractor.getParams()
    errs = []
    for i in range(2):
        x, y, f = p[3 * i: 3 * i + 3]
        j = int(np.argmin([np.hypot(x - sx, y - sy) for (sx, sy), _ in stars]))
        (sx, sy), sf = stars[j]
        errs.append(dict(src=i, star=j, dx=x - sx, dy=y - sy, dflux=f - sf))
    return dict(cold_s=cold, optimize_loop_s=warm, optimize_loop_all_s=ts, nsteps=nsteps,
                final=list(map(float, p)), err=errs, lnp_fit=tractor.getLogProb())


def make_big_stars(seed=1, ngal=0):
    """The scene of bench_big.py --ngal NGAL --psf mog --wcs tan, with the same random draws
    (NGAL/2 ExpGalaxy then NGAL/2 DevGalaxy, EllipseE shapes)."""
    from tractor_prob import (ConstantFitsWcs, ConstantSky, GaussianMixturePSF, Image,
                              LinearPhotoCal, NanoMaggies, PointSource, RaDecPos, Tan, Tractor)
    from tractor_prob.galaxy import DevGalaxy, EllipseE, ExpGalaxy

    rng = np.random.RandomState(seed)
    W = H = 256
    pixscale = 0.262
    wcs = ConstantFitsWcs(Tan(150.0, 2.0, (W + 1) / 2.0, (H + 1) / 2.0,
                              -pixscale / 3600.0, 0.0, 0.0, pixscale / 3600.0, float(W), float(H)))

    def mkpos(x, y):
        rd = wcs.pixelToPosition(x, y)
        return RaDecPos(rd.ra, rd.dec)

    var = np.zeros((2, 2, 2))
    var[:, 0, 0] = var[:, 1, 1] = np.array([1.6, 3.5]) ** 2
    psf = GaussianMixturePSF(np.array([0.8, 0.2]), np.zeros((2, 2)), var)
    tim = Image(data=np.zeros((H, W)), inverr=np.ones((H, W)), psf=psf, wcs=wcs,
                photocal=LinearPhotoCal(1.0, band="r"), sky=ConstantSky(0.0), name="bench")

    def rand_xy(n, existing, minsep=4.0, margin=12):
        out = []
        while len(out) < n:
            x, y = rng.uniform(margin, W - 1 - margin, size=2)
            if all(np.hypot(x - a, y - b) > minsep for a, b in existing + out):
                out.append((x, y))
        return out

    xy_ps = rand_xy(50, [])
    xy_gal = rand_xy(ngal, xy_ps, minsep=8.0)
    truth = []
    for x, y in xy_ps:
        f = float(np.exp(rng.uniform(np.log(100.0), np.log(3000.0))))
        truth.append(PointSource(mkpos(x, y), NanoMaggies(r=f)))
    for i, (x, y) in enumerate(xy_gal):
        f = float(np.exp(rng.uniform(np.log(500.0), np.log(5000.0))))
        re = float(rng.uniform(0.5, 1.5))
        e1, e2 = rng.uniform(-0.3, 0.3, size=2)
        cls = ExpGalaxy if i < ngal // 2 else DevGalaxy
        truth.append(cls(mkpos(x, y), NanoMaggies(r=f), EllipseE(re, float(e1), float(e2))))
    model_true = Tractor([tim], [s.copy() for s in truth]).getModelImage(0)
    tim.data = (model_true + rng.normal(size=(H, W))).astype(np.float32)
    start = []
    for s in truth:
        c = s.copy()
        x, y = wcs.positionToPixel(s.pos)
        c.pos = mkpos(x + rng.normal(0, 0.5), y + rng.normal(0, 0.5))
        c.brightness = NanoMaggies(r=float(s.brightness.r * (1 + rng.normal(0, 0.1))))
        if hasattr(c, "shape"):
            e1 = float(np.clip(s.shape.e1 + rng.normal(0, 0.05), -0.6, 0.6))
            e2 = float(np.clip(s.shape.e2 + rng.normal(0, 0.05), -0.6, 0.6))
            c.shape = EllipseE(float(s.shape.re * (1 + rng.normal(0, 0.1))), e1, e2)
        start.append(c)
    return tim, truth, start, wcs


def case_big(nrep):
    from common import optimize_until, timeit
    from tractor_prob import Tractor

    tim, truth, start, wcs = make_big_stars()
    tractor = Tractor([tim], start)
    tractor.freezeParam("images")
    p0 = tractor.getParams()
    lnp_start = tractor.getLogProb()
    t0 = time.perf_counter()
    optimize_until(tractor)
    cold = time.perf_counter() - t0
    warm, ts, (nsteps, dls) = timeit(lambda: optimize_until(tractor), nrep,
                                     setup=lambda: tractor.setParams(p0))
    lnp_fit = tractor.getLogProb()
    p_fit = np.array(tractor.getParams())
    tmod, _, _ = timeit(lambda: tractor.getModelImage(0), 20)
    tlnp, _, _ = timeit(lambda: tractor.getLogProb(), 20)
    tstep, _, _ = timeit(lambda: tractor.optimize(), 5, setup=lambda: tractor.setParams(p0))

    ref = Tractor([tim], [s.copy() for s in truth])
    ref.freezeParam("images")
    lnp_truth = ref.getLogProb()
    nref, _ = optimize_until(ref)
    lnp_ref = ref.getLogProb()
    p_true = np.array(Tractor([tim], truth).catalog.getParams())
    pos_err, flux_err = [], []
    for k in range(len(truth)):
        x1, y1 = wcs.positionToPixel(tractor.catalog[k].pos)
        x0, y0 = wcs.positionToPixel(truth[k].pos)
        pos_err.append(np.hypot(x1 - x0, y1 - y0))
        flux_err.append(abs(p_fit[3 * k + 2] / p_true[3 * k + 2] - 1))
    return dict(nparams=len(p0), cold_s=cold, optimize_loop_s=warm, optimize_loop_all_s=ts,
                nsteps=nsteps, last_dlnps=[float(d) for d in dls[-3:]],
                getModelImage_s=tmod, getLogProb_s=tlnp, one_optimize_step_s=tstep,
                lnp_start=lnp_start, lnp_fit=lnp_fit, lnp_truth=lnp_truth,
                lnp_fit_from_truth=lnp_ref, nsteps_from_truth=nref,
                pos_err_pix_median=float(np.median(pos_err)), pos_err_pix_max=float(np.max(pos_err)),
                flux_frac_err_median=float(np.median(flux_err)))


CASES = {"single_star": case_single_star, "two_stars": case_two_stars, "big_stars": case_big}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", choices=list(CASES))
    ap.add_argument("--nrep", type=int, default=7)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "foundation.json"))
    args = ap.parse_args(argv)
    if args.case:
        t0 = time.perf_counter()
        import tractor_prob  # noqa: F401

        res = CASES[args.case](args.nrep)
        res["import_s"] = None
        res["process_s"] = time.perf_counter() - t0
        print(json.dumps(res))
        return res
    from common import machine_notes

    out = dict(machine=machine_notes(), cases={})
    for name in CASES:
        r = subprocess.run([sys.executable, __file__, "--case", name, "--nrep", str(args.nrep)],
                           capture_output=True, text=True, check=True)
        res = json.loads(r.stdout.strip().splitlines()[-1])
        ref = TRACTOR[name]
        res["tractor_optimize_loop_s"] = ref["optimize_loop_s"]
        res["speedup_vs_tractor"] = ref["optimize_loop_s"] / res["optimize_loop_s"]
        out["cases"][name] = res
        print(f"{name}: warm {res['optimize_loop_s'] * 1e3:.2f} ms ({res['nsteps']} steps), "
              f"cold {res['cold_s']:.2f} s, Tractor {ref['optimize_loop_s'] * 1e3:.1f} ms "
              f"-> {res['speedup_vs_tractor']:.1f}x")
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(out, f, indent=1)
    os.replace(tmp, args.out)
    md = os.path.splitext(args.out)[0] + ".md"
    with open(md + ".tmp", "w") as f:
        f.write(markdown(out))
    os.replace(md + ".tmp", md)
    return out


def markdown(out) -> str:
    """The results as a Markdown table with machine notes."""
    m = out["machine"]
    rows = [
        "| case | warm optimize loop (median) | steps | cold (1st loop incl. compile) | "
        "original Tractor warm | speed-up | result |",
        "|---|---|---|---|---|---|---|",
    ]
    desc = {"single_star": "seed single star, 25x25", "two_stars": "seed two stars, two 25x25 images",
            "big_stars": "256x256, 50 stars, TAN + RaDecPos + NanoMaggies, 2-comp MoG PSF"}
    for name, r in out["cases"].items():
        if name == "big_stars":
            res = (f"lnp fit {r['lnp_fit']:.2f} (from truth {r['lnp_fit_from_truth']:.2f}; "
                   f"Tractor {TRACTOR[name]['lnp_fit']:.2f} on the same data, lnp at truth "
                   f"{r['lnp_truth']:.2f})")
        elif name == "single_star":
            e = r["err"]
            res = f"dx={e['dx']:+.4f} dy={e['dy']:+.4f} px, dflux={e['dflux']:+.3f}"
        else:
            res = "; ".join(f"dx={e['dx']:+.4f},dy={e['dy']:+.4f},dF={e['dflux']:+.3f}"
                            for e in r["err"])
        rows.append(
            f"| {desc[name]} | {r['optimize_loop_s'] * 1e3:.2f} ms | {r['nsteps']} | "
            f"{r['cold_s']:.2f} s | {r['tractor_optimize_loop_s'] * 1e3:.1f} ms "
            f"({TRACTOR[name]['nsteps']} steps) | {r['speedup_vs_tractor']:.1f}x | {res} |")
    notes = (f"\nMachine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, JAX {m['jax']} "
             f"({m['backend']}, float64), commit {m['commit']}, {m['date']}. Warm = median of "
             f"repeated optimize()-until-dlnp<1e-3 loops from the same start; cold = the first such "
             f"loop in a fresh process (JAX compilation included, imports excluded). Tractor "
             f"figures: ../shared/bench/tractor/RESULTS.md (C extensions + Cython build, same "
             f"machine kind).\n")
    return "\n".join(rows) + "\n" + notes


if __name__ == "__main__":
    main()
