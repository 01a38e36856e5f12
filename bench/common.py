"""Shared helpers of the benchmarks: timing with medians, the Tractor's optimize loop, machine notes."""

from __future__ import annotations

import os
import platform
import subprocess
import time

import numpy as np


def timeit(fn, nrep=5, setup=None):
    """Run fn() nrep times (setup() before each, untimed): (median_s, all_s, last_result)."""
    ts, res = [], None
    for _ in range(nrep):
        if setup is not None:
            setup()
        t0 = time.perf_counter()
        res = fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)), ts, res


def optimize_until(tractor, tol=1e-3, maxsteps=100):
    """The tutorial's loop: optimize() until dlnp < tol. Returns (nsteps, [dlnp...])."""
    dl = []
    for i in range(maxsteps):
        dlnp, X, alpha = tractor.optimize()
        dl.append(dlnp)
        if dlnp < tol:
            break
    return i + 1, dl


def machine_notes() -> dict:
    import jax

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, cwd=os.path.dirname(__file__)).stdout.strip()
    except OSError:
        rev = ""
    return dict(cpu=cpu, cores=os.cpu_count(), python=platform.python_version(),
                jax=jax.__version__, backend=jax.default_backend(), commit=rev,
                date=time.strftime("%Y-%m-%d"))
