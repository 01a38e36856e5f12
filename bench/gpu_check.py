"""Smoke check of the package on a GPU (or any JAX device): data set A's MAP fit and NUTS run,
compared with the CPU figures recorded in bench/results/prob.json.  Prints only.

    python bench/gpu_check.py            # from the repo root; NDRAW=30 for a quick run

Recorded in bench/RESULTS.md ("On a GPU").  JAX places arrays on its default device, so the
same code runs on a CUDA build of jaxlib unchanged (float64 throughout).
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def main():
    t0 = time.perf_counter()
    import bench_prob as B
    import jax

    import tractor_prob  # noqa: F401  (turns float64 on)

    n = int(os.environ.get("NDRAW", "500"))
    print("devices", jax.devices(), "x64", jax.config.jax_enable_x64,
          f"import {time.perf_counter() - t0:.2f} s", flush=True)
    arrays, truth = B.load_A()
    tr = B.make_tractor_A(arrays)
    p0 = tr.getParams()
    t = time.perf_counter()
    res = tr.fit_map()
    cold = time.perf_counter() - t
    ts = []
    for _ in range(15):
        tr.setParams(p0)
        t = time.perf_counter()
        res = tr.fit_map()
        ts.append(time.perf_counter() - t)
    with open(os.path.join(HERE, "results", "prob.json")) as f:
        cpu = json.load(f)["cases"]["map"]
    print(f"MAP cold {cold:.2f} s, warm {1e3 * np.median(ts):.2f} ms, {res.n_steps} steps, "
          f"lnp {res.log_prob:.6f} (CPU {cpu['log_prob']:.6f})")
    print("fit", B.params_of(tr), "\ncpu", cpu["fit"])
    model = np.asarray(B.make_tractor_A(arrays, truth).getModelImage(0))
    print(f"render at the truth vs GalSim: max|res|/peak "
          f"{np.abs(model - arrays['model']).max() / arrays['model'].max():.2e} "
          f"(CPU {cpu['render_at_truth']['max_abs_resid_over_peak']:.2e})", flush=True)
    wall = []
    for _ in range(2):  # cold, then warm (the compiled sampler reused)
        tr.setParams(p0)
        t = time.perf_counter()
        s = tr.sample(num_warmup=n, num_samples=n, progress_bar=False)
        wall.append(time.perf_counter() - t)
    ess = float(s.summary()["ess_bulk"].min())
    print(f"NUTS {n}+{n}: cold {wall[0]:.2f} s, warm {wall[1]:.2f} s, min bulk ESS {ess:.0f} "
          f"-> {ess / wall[1]:.1f} min-ESS/s warm, {int(s.stats['diverging'].sum())} divergences")
    print("posterior sd", {p: round(float(v), 4) for p, v in zip(s.paths, s.draws.std((0, 1)))})
    print("MAP stderr  ", {p: round(v, 4) for p, v in res.stderr.items()})


if __name__ == "__main__":
    main()
