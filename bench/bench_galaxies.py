"""Galaxy benchmark: rendering the seed's four-galaxy image (../shared/bench/tractor/ex3_galaxies.py)
and fitting the 256x256 field of 50 stars + 5 exp + 5 deV galaxies of
../shared/bench/tractor/bench_big.py (default --ngal 10), against the original Tractor's recorded
figures (RESULTS.md there: 273 us render, 0.96 s warm optimize loop).

Each case runs in its own process ("cold" = first call incl. JAX compilation, after imports).

    python bench/bench_galaxies.py              # writes bench/results/galaxies.{json,md}
    python bench/bench_galaxies.py --case field # one case, prints JSON
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

TRACTOR = {
    "four_galaxies": dict(getModelImage_s=273e-6, sums=dict(ExpGalaxy=9.9969, CompositeGalaxy=19.7100,
                                                             SersicGalaxy=9.8815,
                                                             FixedCompositeGalaxy=9.9958)),
    "field": dict(optimize_loop_s=0.9557, nsteps=6, lnp_fit=-32728.630743328213,
                  lnp_fit_from_truth=-32728.61308844606, lnp_truth=-32833.58498437896),
}


def case_four_galaxies(nrep):
    from common import timeit
    from tractor_prob import Flux, Image, NCircularGaussianPSF, PixPos, Tractor
    from tractor_prob.galaxy import (CompositeGalaxy, EllipseE, EllipseESoft, ExpGalaxy,
                                     FixedCompositeGalaxy, GalaxyShape)
    from tractor_prob.sersic import SersicGalaxy, SersicIndex

    W, H = 40, 40
    tim = Image(data=np.zeros((H, W)), inverr=np.ones((H, W)) / 0.01,
                psf=NCircularGaussianPSF([1.0], [1.0]))
    srcs = [ExpGalaxy(PixPos(10, 10), Flux(10.0), GalaxyShape(3.0, 0.5, 45.0)),
            CompositeGalaxy(PixPos(10, 30), Flux(10.0), EllipseE(3.0, 0.5, 0.0),
                            Flux(10.0), EllipseE(3.0, 0.0, -0.5)),
            SersicGalaxy(PixPos(30, 10), Flux(10.0), EllipseESoft(1.0, 0.5, 0.5), SersicIndex(3.0)),
            FixedCompositeGalaxy(PixPos(30, 30), Flux(10.0), 0.8,
                                 EllipseE(2.0, 0.0, 0.0), EllipseE(1.0, 0.0, 0.0))]
    tractor = Tractor([tim], srcs)
    t0 = time.perf_counter()
    tractor.getModelImage(0)
    cold = time.perf_counter() - t0
    warm, ts, _ = timeit(lambda: tractor.getModelImage(0), nrep)
    sums = {type(s).__name__: float(tractor.getModelImage(0, srcs=[s], sky=False).sum())
            for s in srcs}
    return dict(cold_s=cold, getModelImage_s=warm, all_s=ts, sums_in_image=sums)


def case_field(nrep):
    from bench_foundation import make_big_stars
    from common import optimize_until, timeit
    from tractor_prob import Tractor

    tim, truth, start, wcs = make_big_stars(ngal=10)
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
    tmod, _, _ = timeit(lambda: tractor.getModelImage(0), 20)
    tstep, _, _ = timeit(lambda: tractor.optimize(), 5, setup=lambda: tractor.setParams(p0))
    ref = Tractor([tim], [s.copy() for s in truth])
    ref.freezeParam("images")
    lnp_truth = ref.getLogProb()
    nref, _ = optimize_until(ref)
    return dict(nparams=len(p0), cold_s=cold, optimize_loop_s=warm, optimize_loop_all_s=ts,
                nsteps=nsteps, last_dlnps=[float(d) for d in dls[-3:]], getModelImage_s=tmod,
                one_optimize_step_s=tstep, lnp_start=lnp_start, lnp_fit=lnp_fit,
                lnp_truth=lnp_truth, lnp_fit_from_truth=ref.getLogProb(), nsteps_from_truth=nref)


CASES = {"four_galaxies": case_four_galaxies, "field": case_field}


def markdown(out) -> str:
    m = out["machine"]
    fg = out["cases"]["four_galaxies"]
    fd = out["cases"]["field"]
    T = TRACTOR
    lines = [
        "| case | tractor-prob (median, warm) | cold (1st call incl. compile) | original Tractor | "
        "speed-up | result |",
        "|---|---|---|---|---|---|",
        f"| render the seed's 4 galaxies, 40x40 | {fg['getModelImage_s'] * 1e6:.0f} us | "
        f"{fg['cold_s']:.2f} s | {T['four_galaxies']['getModelImage_s'] * 1e6:.0f} us | "
        f"{T['four_galaxies']['getModelImage_s'] / fg['getModelImage_s']:.1f}x | counts in image: "
        + ", ".join(f"{k} {v:.3f} (Tractor {T['four_galaxies']['sums'][k]:.3f})"
                    for k, v in fg["sums_in_image"].items()) + " |",
        f"| 256x256, 50 stars + 5 exp + 5 deV, {fd['nparams']} params, optimize loop to "
        f"dlnp<1e-3 | {fd['optimize_loop_s'] * 1e3:.1f} ms ({fd['nsteps']} steps) | "
        f"{fd['cold_s']:.2f} s | {T['field']['optimize_loop_s'] * 1e3:.0f} ms "
        f"({T['field']['nsteps']} steps) | "
        f"{T['field']['optimize_loop_s'] / fd['optimize_loop_s']:.1f}x | lnp fit "
        f"{fd['lnp_fit']:.2f}, from truth {fd['lnp_fit_from_truth']:.2f}, at truth "
        f"{fd['lnp_truth']:.2f} (Tractor on the same data: fit {T['field']['lnp_fit']:.2f}, "
        f"from truth {T['field']['lnp_fit_from_truth']:.2f}, at truth "
        f"{T['field']['lnp_truth']:.2f}) |",
    ]
    notes = (f"\nMachine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, JAX {m['jax']} "
             f"({m['backend']}, float64), commit {m['commit']}, {m['date']}. Tractor figures: "
             "../shared/bench/tractor/RESULTS.md (C extensions + Cython build, same machine kind). "
             "The counts in the 40x40 image differ from the Tractor's where our profile "
             "mixtures carry the untruncated Sersic wings (the Tractor's are truncated): "
             "see models/accuracy.md.\n")
    return "\n".join(lines) + "\n" + notes


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", choices=list(CASES))
    ap.add_argument("--nrep", type=int, default=7)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "galaxies.json"))
    args = ap.parse_args(argv)
    if args.case:
        import tractor_prob  # noqa: F401

        res = CASES[args.case](args.nrep)
        print(json.dumps(res))
        return res
    from common import machine_notes

    out = dict(machine=machine_notes(), cases={})
    for name in CASES:
        r = subprocess.run([sys.executable, __file__, "--case", name, "--nrep", str(args.nrep)],
                           capture_output=True, text=True, check=True)
        out["cases"][name] = json.loads(r.stdout.strip().splitlines()[-1])
    for path, text in ((args.out, json.dumps(out, indent=1)),
                       (os.path.splitext(args.out)[0] + ".md", markdown(out))):
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.replace(path + ".tmp", path)
    print(markdown(out))
    return out


if __name__ == "__main__":
    main()
