"""Probabilistic-layer benchmark: MAP (``fit_map``) and NUTS (``sample``) on the peers' data set A
(one Sersic galaxy, 96x96, ../shared/bench/peers), the build/compile cost of the numpyro model's
log density for scenes of 10-1000 sources, and where the time of NUTS and of a warm MAP fit goes.

Peers' recorded figures (../shared/bench/peers/RESULTS.md, same machine kind): AstroPhot MAP
0.24 s warm / 1.7 s first call; pysersic MAP 2.6 s warm / 14 s first call; pysersic NUTS 500+500
in 22 s incl. compile, min ESS 189 (8.6 min-ESS/s).

Data set A is read from bench/data/A_gauss.npz (regenerate / check it with bench/make_data_A.py,
which needs galsim; see bench/data/PROVENANCE.md).  Our model evaluates the galaxy's
mixture of Gaussians at pixel centres, so the PSF given to it is the *effective* (pixel-
convolved) PSF: for the Gaussian PSF of sigma 1.5 px that is a Gaussian of variance
1.5^2 + 1/12 px^2 (the second moment of the data set's 25x25 effective-PSF image is 2.33333,
i.e. exactly that).

Each case runs in its own process ("cold" = first call incl. JAX compilation, after imports).

    python bench/bench_prob.py                 # all cases, writes bench/results/prob.{json,md}
    python bench/bench_prob.py --quick         # smoke run (short chains, small scenes), prints only
    python bench/bench_prob.py --scenes "" --out bench/results/prob_threads.json
                                               # MAP + NUTS only (recorded with default threads)
    python bench/bench_prob.py --case map      # one case, prints JSON
    python bench/bench_prob.py --case scale --scene mix1000 --what vg
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import math
import os
import subprocess
import sys
import time

import numpy as np

T_START = time.perf_counter()
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

PEERS = {  # ../shared/bench/peers/RESULTS.md (main table and raw summary), medians of n=3 processes
    "map": {
        "AstroPhot 0.18 (LM)": dict(cold_s=1.70, warm_s=0.242, dx=+0.055, dy=-0.036, dflux=-0.014,
                                    dre=-0.011, dn=+0.06, dq=-0.020, dpa=-0.77),
        "pysersic 0.1.5 (find_MAP)": dict(cold_s=14.0, warm_s=2.59, dx=+0.048, dy=-0.032,
                                          dflux=-0.026, dre=-0.038, dn=-0.09, dq=-0.013,
                                          dpa=-0.75),
        "scarlet2 0.5.1 (Adam)": dict(cold_s=5.41, warm_s=4.45, dx=+0.046, dy=-0.035,
                                      dflux=-0.038, dre=-0.050, dn=-0.43, dq=+0.025, dpa=-0.95),
    },
    "nuts": {
        "pysersic 0.1.5 NUTS": dict(seconds=22.1, min_ess=189, min_ess_per_s=8.6, divergences=0,
                                    dx=+0.044, dy=-0.031, dflux=-0.022, dre=-0.032, dn=-0.06,
                                    dq=-0.012, dpa=-0.77),
        "scarlet2 0.5.1 NUTS (validation off)": dict(seconds=7.23, min_ess=139, min_ess_per_s=19,
                                                     divergences=0, dx=+0.048, dy=-0.036,
                                                     dflux=-0.033, dre=-0.049, dn=-0.42,
                                                     dq=+0.026, dpa=-0.97),
        "AstroPhot 0.18 HMC (pyro, L=10)": dict(seconds=7.49, min_ess=11, min_ess_per_s=1.5,
                                                divergences=None),
    },
}
TARGETS = dict(map_warm_s=0.010, map_cold_s=2.0, nuts_min_ess_per_s=150.0)

# the fit's starting point (truth frame): like the peers' crowded-field start
# (crowded_init.py: position +-0.3 px, flux -20 %, r_e 3, q 0.8, n 2)
START = dict(x0=47.6, y0=48.3, flux=1600.0, r_e=3.0, q=0.8, pa_deg=0.0, n=2.0)
PSF_SIGMA_EFF = math.sqrt(1.5**2 + 1.0 / 12.0)
NUTS_SEED = 0

# ---------------------------------------------------------------------------------------------
# helpers


_COMPILE_EVENTS = {"/jax/core/compile/jaxpr_trace_duration": "trace",
                   "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
                   "/jax/core/compile/backend_compile_duration": "backend"}


class CompileClock:
    """Sums JAX's trace / lower / backend-compile durations, into the current phase."""

    def __init__(self):
        import jax

        self.phase = "other"
        self.sums = collections.defaultdict(lambda: collections.defaultdict(float))
        jax.monitoring.register_event_duration_secs_listener(self._on)

    def _on(self, name, dur, **kw):
        k = _COMPILE_EVENTS.get(name)
        if k is not None:
            self.sums[self.phase][k] += dur
            if k == "backend":
                self.sums[self.phase]["n_compiles"] += 1

    @contextlib.contextmanager
    def in_phase(self, phase):
        old, self.phase = self.phase, phase
        try:
            yield
        finally:
            self.phase = old

    def take(self, phase) -> dict:
        d = self.sums.pop(phase, {})
        out = {k: float(d.get(k, 0.0)) for k in ("trace", "lower", "backend")}
        out["total"] = sum(out.values())
        out["n_compiles"] = int(d.get("n_compiles", 0))
        return out


def med(ts):
    return float(np.median(ts))


def block(x):
    import jax

    return jax.block_until_ready(x)


def load_A():
    from make_data_A import load

    return load()


def ellipse(re, q, pa_deg):
    from tractor_prob.ellipses import EllipseE

    e = (1 - q) / (1 + q)
    th = math.radians(pa_deg)
    return EllipseE(re, e * math.cos(2 * th), e * math.sin(2 * th))


def truth_frame(x, y, flux, re, e1, e2, n):
    """Our parameters -> (x0, y0, flux, r_e, q, PA deg ccw from +x, n) (arrays allowed)."""
    e = np.hypot(e1, e2)
    return dict(x0=x, y0=y, flux=flux, r_e=re, q=(1 - e) / (1 + e),
                pa_deg=np.degrees(0.5 * np.arctan2(e2, e1)), n=n)


def errors(p, t):
    return dict(dx=float(p["x0"] - t["x0"]), dy=float(p["y0"] - t["y0"]),
                dflux=float(p["flux"] / t["flux"] - 1), dre=float(p["r_e"] / t["r_e"] - 1),
                dn=float(p["n"] - t["n"]), dq=float(p["q"] - t["q"]),
                dpa=float((p["pa_deg"] - t["pa_deg"] + 90.0) % 180.0 - 90.0))


def make_tractor_A(arrays, p=START):
    from tractor_prob import (ConstantSky, Flux, Image, NCircularGaussianPSF, NullWCS, PixPos,
                              Tractor)
    from tractor_prob.sersic import SersicGalaxy

    tim = Image(data=arrays["image"], invvar=np.ones_like(arrays["image"]),
                psf=NCircularGaussianPSF([PSF_SIGMA_EFF], [1.0]), wcs=NullWCS(),
                sky=ConstantSky(0.0))
    gal = SersicGalaxy(PixPos(p["x0"], p["y0"]), Flux(p["flux"]),
                       ellipse(p["r_e"], p["q"], p["pa_deg"]), p["n"])
    tractor = Tractor([tim], [gal])
    tractor.freezeParam("images")
    return tractor


def params_of(tractor):
    return truth_frame(*tractor.getParams())


def split_rhat_ess(samples):
    """The peers' ESS (../shared/bench/peers/common.py, copied): Geyer initial positive
    sequence on one chain, so our chains can be compared with their figures like for like."""
    x = np.asarray(samples, dtype=float)
    n = len(x) // 2
    chains = np.stack([x[:n], x[n:2 * n]])
    m = chains.mean(1)
    v = chains.var(1, ddof=1)
    W = v.mean()
    B = n * m.var(ddof=1)
    var = (n - 1) / n * W + B / n
    rhat = float(np.sqrt(var / W)) if W > 0 else float("nan")
    y = x - x.mean()
    N = len(y)
    f = np.fft.rfft(y, 2 * N)
    ac = np.fft.irfft(f * np.conj(f))[:N]
    ac = ac / ac[0] if ac[0] > 0 else ac
    tau = -1.0
    for t in range(0, N - 1, 2):
        p = ac[t] + ac[t + 1]
        if p < 0:
            break
        tau += 2 * p
    return rhat, float(N / max(tau, 1e-12))


# ---------------------------------------------------------------------------------------------
# case: MAP on data set A


def case_map(args):
    clock = CompileClock()
    t_import = time.perf_counter() - T_START
    arrays, truth = load_A()
    tractor = make_tractor_A(arrays)
    p0 = tractor.getParams()

    from tractor_prob import fit as _fit

    n_fitters = len(_fit._FITTERS)
    with clock.in_phase("cold"):
        t0 = time.perf_counter()
        res = tractor.fit_map()
        cold = time.perf_counter() - t0
    cold_compile = clock.take("cold")
    cold_compile["n_fitters_built"] = len(_fit._FITTERS) - n_fitters
    # render at the truth vs the noiseless GalSim image (checks conventions + PSF choice)
    ref = make_tractor_A(arrays, truth)
    mod = np.asarray(ref.getModelImage(0))
    render = dict(max_abs_resid_over_peak=float(np.abs(mod - arrays["model"]).max()
                                                / arrays["model"].max()),
                  flux_ratio=float(mod.sum() / arrays["model"].sum()),
                  lnp_truth=ref.getLogProb(),
                  chi2_per_pix_truth=float(-2 * ref.getLogProb() / mod.size))

    clock.take("other")
    fit = params_of(tractor)
    stderr = dict(zip(("x", "y", "flux", "re", "e1", "e2", "n"), res.stderr.values()))
    out = dict(import_s=t_import, cold_s=cold, cold_compile=cold_compile, n_steps=res.n_steps,
               converged=res.converged, log_prob=res.log_prob,
               chi2_per_pix=float(-2 * res.log_prob / mod.size), fit=fit,
               errors=errors(fit, truth), stderr=stderr, render_at_truth=render)

    def reset():
        tractor.setParams(p0)

    ts = []
    for _ in range(args.nrep):
        reset()
        t0 = time.perf_counter()
        r = tractor.fit_map()
        ts.append(time.perf_counter() - t0)
    out.update(warm_s=med(ts), warm_all_s=ts, warm_n_steps=r.n_steps,
               warm_log_prob=r.log_prob, warm_compile=clock.take("other"))
    # the MAP from the truth (same optimum?)
    ref.fit_map()
    out["log_prob_from_truth"] = ref.getLogProb()

    # --- warm breakdown of the real fit_map(): its one-program loop (Tractor._lm_loop) or,
    # for scenes whose plan can change, its optimize() steps (Tractor._step), and its
    # covariance() call, each timed by wrapping; the rest is fit_map's own work ---
    from tractor_prob import inference

    timed = collections.defaultdict(list)
    orig = dict(_step=tractor._step, _lm_loop=tractor._lm_loop)
    orig_cov = inference.covariance

    def wrap(name, fn):
        def f(*a, **k):
            t0 = time.perf_counter()
            r = fn(*a, **k)
            timed[name][-1].append(time.perf_counter() - t0)
            return r
        return f

    for name, fn in orig.items():
        tractor.__dict__[name] = wrap(name, fn)
    inference.covariance = wrap("covariance", orig_cov)
    t_tot = []
    try:
        for _ in range(args.nrep):
            reset()
            for name in ("_step", "_lm_loop", "covariance"):
                timed[name].append([])
            t0 = time.perf_counter()
            r = tractor.fit_map()
            t_tot.append(time.perf_counter() - t0)
    finally:
        for name in orig:
            del tractor.__dict__[name]
        inference.covariance = orig_cov
    sums = {name: [sum(run) for run in timed[name]] for name in timed}
    rest = [t - sum(sums[n][i] for n in sums) for i, t in enumerate(t_tot)]
    loop = dict(total_s=med(t_tot), n_steps=r.n_steps, one_program=bool(timed["_lm_loop"][-1]),
                lm_loop_s=med(sums["_lm_loop"]), n_optimize_calls=len(timed["_step"][-1]),
                optimize_calls_sum_s=med(sums["_step"]), covariance_s=med(sums["covariance"]),
                rest_of_fit_map_s=med(rest))

    # inside the one-program fit: its host-side inputs and the jitted loop, each timed alone
    acc = collections.defaultdict(list)

    def tick(name, t0):
        t1 = time.perf_counter()
        acc[name].append(t1 - t0)
        return t1

    for _ in range(max(4, args.nrep)):
        reset()
        t = time.perf_counter()
        tractor._require_legal()
        t = tick("illegal_objects_s", t)
        fitter, theta, pairs, pri = tractor._fit_inputs()
        t = tick("fit_inputs_s", t)  # plan (stamp sizing), origins, pairs, priors
        data, weights = tractor._pixels(fitter.c)
        t = tick("pixels_s", t)
        if fitter.static:
            res_lm = fitter.lm(theta, data, weights, pairs, pri, 0.1, 100, 1e-6)
            np.asarray(res_lm[1])
            t = tick("jitted_loop_s", t)
            tractor.setAllParams(np.asarray(res_lm[1]).tolist())
            tick("setAllParams_s", t)
    inside = {k: med(v) for k, v in acc.items()}
    inside["static_plan"] = bool(fitter.static)
    out.update(warm_breakdown=dict(loop=loop, inside=inside))
    # the device floor: the jitted loop alone (one-program fits)
    out["device_floor_s"] = inside.get("jitted_loop_s")
    return out


def timeit_med(fn, n, setup=None):
    ts = []
    for _ in range(n):
        if setup is not None:
            setup()
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return med(ts)


# ---------------------------------------------------------------------------------------------
# case: NUTS on data set A, with the phase profile


def potential_setup(model, pe=None):
    """(potential(flat, args), flat z0, args): the model's potential energy in numpyro's
    unconstrained space, built from public numpyro calls (the same density NUTS sees;
    ``args`` = (values, pixels, weights) passed as arguments, as ``inference`` does)."""
    import jax
    import jax.numpy as jnp
    from jax.flatten_util import ravel_pytree
    from numpyro import handlers
    from numpyro.distributions.transforms import biject_to
    from numpyro.infer import util

    vals = model.site_values()
    sites = getattr(model, "_sites", None)
    if sites is not None:
        supports = {st.name: st.dist.support for st in sites}
    else:  # trace the model abstractly (running it eagerly would compile every op)
        supports = {}

        def f():
            tr = handlers.trace(handlers.substitute(model, data=vals)).get_trace()
            supports.update({k: tr[k]["fn"].support for k in vals})
            return 0.0

        jax.make_jaxpr(f)()
    transforms = {k: biject_to(supports[k]) for k in vals}
    z0 = {k: transforms[k].inv(v) for k, v in vals.items()}
    flat0, unravel = ravel_pytree(z0)
    args = (jnp.asarray(model.theta0), model.data, model.weights)
    pe = pe or util.potential_energy

    def potential(flat, args):
        return pe(model, args, {}, unravel(flat))

    return potential, flat0, args


class SamplePhases:
    """Wall clocks (and JAX compile durations) of the pieces of ``inference.sample``.

    Wraps, where they exist: ``inference.fit_map``, ``SceneModel.__init__``,
    ``inference._inverse_mass``, the sampler's construction (``inference._kernel``; older
    code: ``_unconstrained_setup``) and its initial state (the kernel's ``init``; older code
    ``HMC.init``), inside an outer clock on ``inference.sample``.  What is left of
    ``sample`` is the sampling loop: compilation of the jitted NUTS loop, its execution
    (JAX dispatches asynchronously: execution completes when the draws are converted,
    which is part of the loop) and eager-op compiles there.

    Modes (the potential is replaced through ``numpyro.infer.util.potential_energy``, which
    ``inference`` looks up when it builds a sampler; compiled samplers cached by
    ``inference`` are dropped around these runs): ``count`` makes the potential count its
    evaluations with a jax.debug.callback (every leapfrog step, step-size search and the
    start evaluate it once); ``trivial`` replaces it by the Gaussian 0.5 d^T H d, H the
    Hessian of the real potential at the MAP (the posterior's shape to second order), so
    the same code runs with a nearly free potential: numpyro's and the loop's own cost.
    """

    INNER = ("fit_map", "SceneModel", "build_sampler", "inverse_mass", "kernel_init")

    def __init__(self, clock):
        from numpyro.infer import util
        from numpyro.infer.hmc import HMC

        from tractor_prob import inference, model

        self.clock = clock
        self.inference = inference
        self.wall = collections.defaultdict(float)
        self.mode = None
        self.count = 0
        self.gauss = None  # (flat0, H) for the trivial mode
        self.missing = []
        self._undo = []
        me = self

        def timed(fn, phase):
            def f(*a, **k):
                with clock.in_phase(phase):
                    t0 = time.perf_counter()
                    try:
                        return fn(*a, **k)
                    finally:
                        me.wall[phase] += time.perf_counter() - t0

            f._bench_wrapped = True
            return f

        def wrap(owner, name, phase, post=None):
            orig = getattr(owner, name, None)
            if orig is None:
                self.missing.append(f"{getattr(owner, '__name__', owner)}.{name}")
                return
            t = timed(orig, phase)
            setattr(owner, name, (lambda *a, **k: post(t(*a, **k))) if post else t)
            self._undo.append((owner, name, orig))

        def wrap_init(kern):  # the kernel object's own functions (cached kernels: once)
            for attr, phase in (("init", "kernel_init"), ("start_info", "kernel_init"),
                                ("jacobian", "inverse_mass")):
                fn = getattr(kern, attr, None)
                if fn is not None and not getattr(fn, "_bench_wrapped", False):
                    setattr(kern, attr, timed(fn, phase))
            return kern

        wrap(inference, "sample", "sample_loop")
        wrap(inference, "fit_map", "fit_map")
        wrap(model.SceneModel, "__init__", "SceneModel")
        wrap(inference, "_inverse_mass", "inverse_mass")
        if hasattr(inference, "_kernel"):
            wrap(inference, "_kernel", "build_sampler", post=wrap_init)
        else:
            wrap(inference, "_unconstrained_setup", "build_sampler")
            wrap(HMC, "init", "kernel_init")

        orig_pe = util.potential_energy

        def potential_energy(model_, args, kwargs, params, *a, **k):
            if me.mode in ("trivial", "trivial_count"):
                from jax.flatten_util import ravel_pytree

                flat0, H = me.gauss
                d = ravel_pytree(params)[0] - flat0
                e = 0.5 * d @ (H @ d)
            else:
                e = orig_pe(model_, args, kwargs, params, *a, **k)
            if me.mode in ("count", "trivial_count"):
                import jax

                def inc():
                    me.count += 1

                jax.debug.callback(inc)
            return e

        util.potential_energy = potential_energy
        self._undo.append((util, "potential_energy", orig_pe))
        self.orig_potential_energy = orig_pe

    def drop_cached_samplers(self):
        for name in ("_KERNELS",):
            cache = getattr(self.inference, name, None)
            if isinstance(cache, dict):
                cache.clear()

    def reset(self, mode=None):
        if mode != self.mode:  # a sampler built for another potential must not be reused
            self.drop_cached_samplers()
        self.mode, self.count = mode, 0
        self.wall.clear()
        for p in self.INNER + ("sample_loop", "other"):
            self.clock.take(p)

    def report(self, total):
        out = {}
        for p in self.INNER + ("sample_loop",):
            c = self.clock.take(p)
            w = float(self.wall.get(p, 0.0))
            if p == "sample_loop":  # exclusive of the inner pieces
                w -= sum(float(self.wall.get(q, 0.0)) for q in self.INNER)
            out[p] = dict(wall_s=w, compile=c, execute_s=w - c["total"])
        out["outside_sample_s"] = float(total - self.wall.get("sample_loop", 0.0))
        out["not_wrapped"] = self.missing
        return out

    def close(self):
        self.drop_cached_samplers()
        for owner, name, orig in reversed(self._undo):
            setattr(owner, name, orig)


def nuts_summary(res, truth, seconds):
    from tractor_prob import _arviz

    idata = res.to_arviz()
    ess = {p: _arviz.ess_min(idata, var_names=[p]) for p in res.paths}
    d = res.draws[0]
    tf = truth_frame(*[d[:, k] for k in range(7)])
    post = {k: np.asarray(v)[None] for k, v in tf.items()}
    idt = _arviz.make_idata(post)
    ess_tf = {k: _arviz.ess_min(idt, var_names=[k]) for k in post}
    geyer_tf = {k: split_rhat_ess(np.asarray(v))[1] for k, v in tf.items()}
    mean = {k: float(np.mean(v)) for k, v in tf.items()}
    std = {k: float(np.std(v, ddof=1)) for k, v in tf.items()}
    div = int(np.sum(res.stats["diverging"]))
    min_ess = float(min(ess.values()))
    return dict(seconds=seconds, sample_seconds_attr=res.seconds, min_ess_bulk=min_ess,
                min_ess_per_s=min_ess / seconds, ess_bulk=ess,
                min_ess_bulk_truth_frame=float(min(ess_tf.values())), ess_bulk_truth_frame=ess_tf,
                min_ess_geyer_truth_frame=float(min(geyer_tf.values())),
                ess_geyer_truth_frame=geyer_tf,
                divergences=div, mean_leapfrog_steps=float(np.mean(res.stats["n_steps"])),
                draw_leapfrog_steps=int(np.sum(res.stats["n_steps"])),
                mean_accept=float(np.mean(res.stats["acceptance_rate"])),
                post_mean=mean, post_std=std, errors=errors(mean, truth),
                map_n_steps=res.map.n_steps if res.map is not None else None)


def case_nuts(args):
    import jax

    clock = CompileClock()
    t_import = time.perf_counter() - T_START
    arrays, truth = load_A()
    tractor = make_tractor_A(arrays)
    p0 = tractor.getParams()
    clock.take("other")
    phases = SamplePhases(clock)
    out = dict(import_s=t_import, num_warmup=args.warmup, num_samples=args.samples)

    def one(mode, seed=NUTS_SEED):
        tractor.setParams(p0)
        phases.reset(mode)
        t0 = time.perf_counter()
        res = tractor.sample(num_warmup=args.warmup, num_samples=args.samples, num_chains=1,
                             kernel="nuts", init="map", seed=seed, progress_bar=False)
        dt = time.perf_counter() - t0
        return res, dt, phases.report(dt), phases.count

    res_c, dt, ph, _ = one(None)
    out["cold"] = dict(nuts_summary(res_c, truth, dt), phases=ph)
    res_w, dt, ph, _ = one(None)
    out["warm"] = dict(nuts_summary(res_w, truth, dt), phases=ph)
    # the min ESS of one 500-draw chain scatters by tens of percent from seed to seed:
    # more warm runs with other seeds
    seeds = []
    for seed in range(NUTS_SEED + 1, NUTS_SEED + 1 + args.seeds):
        r, dt, _, _ = one(None, seed)
        sm = nuts_summary(r, truth, dt)
        seeds.append({k: sm[k] for k in ("seconds", "min_ess_bulk", "min_ess_per_s",
                                         "min_ess_geyer_truth_frame", "divergences",
                                         "mean_leapfrog_steps")} | dict(seed=seed))
    allw = [out["warm"]] + seeds
    out["warm_seeds"] = dict(
        runs=seeds, seeds=[NUTS_SEED] + [r["seed"] for r in seeds],
        median_min_ess_per_s=med([r["min_ess_per_s"] for r in allw]),
        min_ess_per_s_range=[float(min(r["min_ess_per_s"] for r in allw)),
                             float(max(r["min_ess_per_s"] for r in allw))],
        median_min_ess_bulk=med([r["min_ess_bulk"] for r in allw]),
        median_seconds=med([r["seconds"] for r in allw]),
        divergences=[r["divergences"] for r in allw])
    res_n, dt, _, n = one("count")
    out["potential_evaluations"] = n
    out["count_run_s"] = dt
    out["count_draws_identical"] = bool(np.array_equal(res_n.draws, res_w.draws))

    # the potential alone (built with public numpyro calls at the MAP): jit(value_and_grad)
    phases.reset(None)
    tractor.setParams(p0)
    tractor.fit_map()
    model = tractor.model()
    pot, flat, pargs = potential_setup(model, phases.orig_potential_energy)
    vg = jax.jit(jax.value_and_grad(pot))
    val = jax.jit(pot)
    with clock.in_phase("vg"):
        t0 = time.perf_counter()
        block(vg(flat, pargs))
        vg_first = time.perf_counter() - t0
    vg_c = clock.take("vg")
    vg_warm = timeit_med(lambda: block(vg(flat, pargs)), 200)
    val_warm = timeit_med(lambda: block(val(flat, pargs)), 200)
    jaxpr = jax.make_jaxpr(vg)(flat, pargs)
    hlo = vg.lower(flat, pargs).as_text()
    out["potential"] = dict(
        value_and_grad_first_call_s=vg_first, value_and_grad_compile=vg_c,
        value_and_grad_warm_s=vg_warm, value_warm_s=val_warm,
        jaxpr_eqns=count_eqns(jaxpr.jaxpr), stablehlo_lines=hlo.count("\n"),
        gradient_floor_s=out["potential_evaluations"] * vg_warm)

    # the same sample() on a Gaussian of the posterior's shape (Hessian at the MAP)
    H = jax.hessian(lambda x: pot(x, pargs))(flat)
    phases.gauss = (flat, H)
    triv = {}
    for label in ("cold", "warm"):
        r, dt, ph, _ = one("trivial")
        triv[label] = dict(seconds=dt, phases=ph, mean_leapfrog_steps=float(
            np.mean(r.stats["n_steps"])), divergences=int(np.sum(r.stats["diverging"])),
            draws_differ_from_real=not np.array_equal(r.draws, res_w.draws))
    r, dt, _, n = one("trivial_count")
    triv["potential_evaluations"] = n
    for label in ("cold", "warm"):
        ex = triv[label]["phases"]["sample_loop"]["execute_s"]
        triv[label]["loop_execute_per_evaluation_us"] = 1e6 * ex / max(n, 1)
    out["trivial_gaussian"] = triv
    phases.close()
    out["breakdown"] = breakdown(out)
    return out


def count_eqns(jaxpr) -> int:
    """Equations of a jaxpr, sub-jaxprs (pjit, while, cond, custom_jvp, ...) included."""
    def subs(v):
        if isinstance(v, (list, tuple)):
            for x in v:
                yield from subs(x)
        elif hasattr(v, "eqns"):
            yield v
        elif hasattr(getattr(v, "jaxpr", None), "eqns"):
            yield v.jaxpr

    n = 0
    for eq in jaxpr.eqns:
        n += 1
        for v in eq.params.values():
            n += sum(count_eqns(j) for j in subs(v))
    return n


def breakdown(o) -> dict:
    """Where the seconds of one sample() call go (cold and warm)."""
    res = {}
    grad = o["potential"]["gradient_floor_s"]
    for label in ("cold", "warm"):
        ph = o[label]["phases"]
        loop = ph["sample_loop"]
        tl = o["trivial_gaussian"][label]["phases"]["sample_loop"]
        res[label] = dict(
            total_s=o[label]["seconds"],
            fit_map_s=ph["fit_map"]["wall_s"],
            fit_map_compile_s=ph["fit_map"]["compile"]["total"],
            model_setup_inverse_mass_s=sum(ph[k]["wall_s"] for k in (
                "SceneModel", "build_sampler", "inverse_mass")),
            kernel_init_s=ph["kernel_init"]["wall_s"],
            kernel_init_compile_s=ph["kernel_init"]["compile"]["total"],
            loop_compile_s=loop["compile"]["total"],
            loop_compile_trace_lower_s=loop["compile"]["trace"] + loop["compile"]["lower"],
            loop_compile_xla_s=loop["compile"]["backend"],
            loop_execute_s=loop["execute_s"],
            potential_gradients_standalone_s=grad,
            loop_minus_standalone_gradients_s=loop["execute_s"] - grad,
            outside_sample_s=ph["outside_sample_s"],
            trivial_gaussian_total_s=o["trivial_gaussian"][label]["seconds"],
            trivial_gaussian_loop_compile_s=tl["compile"]["total"],
            trivial_gaussian_loop_execute_s=tl["execute_s"],
        )
    return res


# ---------------------------------------------------------------------------------------------
# case: build + compile cost of the log density vs scene size

SCENES = {"stars10": (10, 0), "stars100": (100, 0), "stars1000": (1000, 0),
          "mix100": (90, 10), "mix1000": (900, 100), "gal1": (0, 1)}
SCALE_SIZE = 512


def make_scene(name):
    """A 512x512 image with n_star point sources and n_gal galaxies (exp/deV/Sersic in turn,
    EllipseE shapes, r_e 1-4 px) at random positions, Gaussian PSF sigma 1.5, sigma=1 noise.
    The pixels are stars drawn with numpy + noise: only for timing (galaxies not drawn)."""
    from tractor_prob import (ConstantSky, Flux, Image, NCircularGaussianPSF, NullWCS, PixPos,
                              PointSource, Tractor)
    from tractor_prob.galaxy import DevGalaxy, ExpGalaxy
    from tractor_prob.sersic import SersicGalaxy

    n_star, n_gal = SCENES[name]
    N = n_star + n_gal
    S = SCALE_SIZE
    rng = np.random.default_rng(1)
    xs, ys = rng.uniform(10, S - 10, (2, N))
    fl = 10 ** rng.uniform(np.log10(200), np.log10(5000), N)
    img = rng.normal(size=(S, S))
    xx = np.arange(S)
    for x, y, f in zip(xs[:n_star], ys[:n_star], fl[:n_star]):
        gx = np.exp(-0.5 * ((xx - x) / 1.5) ** 2)
        gy = np.exp(-0.5 * ((xx - y) / 1.5) ** 2)
        img += f * np.outer(gy, gx) / (2 * np.pi * 1.5**2)
    srcs = [PointSource(PixPos(x, y), Flux(f))
            for x, y, f in zip(xs[:n_star], ys[:n_star], fl[:n_star])]
    for k in range(n_gal):
        i = n_star + k
        shape = ellipse(rng.uniform(1, 4), rng.uniform(0.4, 0.95), rng.uniform(0, 180))
        pos, br = PixPos(xs[i], ys[i]), Flux(fl[i])
        srcs.append([ExpGalaxy(pos, br, shape), DevGalaxy(pos, br, shape),
                     SersicGalaxy(pos, br, shape, rng.uniform(1, 4))][k % 3])
    tim = Image(data=img, invvar=np.ones_like(img), psf=NCircularGaussianPSF([1.5], [1.0]),
                wcs=NullWCS(), sky=ConstantSky(0.0))
    tractor = Tractor([tim], srcs)
    tractor.freezeParam("images")
    return tractor


def case_scale(args):
    import cProfile
    import pstats

    import jax

    clock = CompileClock()
    t_import = time.perf_counter() - T_START
    t0 = time.perf_counter()
    tractor = make_scene(args.scene)
    t_scene = time.perf_counter() - t0
    clock.take("other")
    prof = cProfile.Profile() if args.profile else None
    with clock.in_phase("model"):
        if prof:
            prof.enable()
        t0 = time.perf_counter()
        model = tractor.model()
        t_model = time.perf_counter() - t0
        t0 = time.perf_counter()
        pot, flat, pargs = potential_setup(model)
        t_setup = time.perf_counter() - t0
        if prof:
            prof.disable()
    c_model = clock.take("model")
    f = jax.jit(jax.value_and_grad(pot) if args.what == "vg" else pot)
    with clock.in_phase("first"):
        t0 = time.perf_counter()
        v = block(f(flat, pargs))
        t_first = time.perf_counter() - t0
    c_first = clock.take("first")
    warm = timeit_med(lambda: block(f(flat, pargs)), args.nrep_scale)
    out = dict(scene=args.scene, what=args.what, n_sources=sum(SCENES[args.scene]),
               n_star=SCENES[args.scene][0], n_gal=SCENES[args.scene][1],
               n_params=tractor.numberOfParams(), sites=list(model.sites),
               import_s=t_import, scene_build_s=t_scene, model_s=t_model,
               potential_setup_s=t_setup, model_compile=c_model, first_call_s=t_first,
               first_call_compile=c_first, warm_s=warm,
               value=float(v[0] if args.what == "vg" else v))
    plan = model.comp.plan
    out["plan"] = dict(source_groups=len(plan.groups), render_units=len(plan.units),
                       stamps=sorted({tuple(st) for ip in plan.images for st in ip.stamps}))
    out["jaxpr_eqns"] = count_eqns(jax.make_jaxpr(f)(flat, pargs).jaxpr)
    if prof:
        st = pstats.Stats(prof)
        rows = sorted(((k, v) for k, v in st.stats.items() if "tractor_prob" in k[0]),
                      key=lambda kv: -kv[1][3])[:10]  # the package's functions, by cumtime
        out["model_profile_cumtime"] = [
            dict(fn=f"{os.path.basename(k[0])}:{k[1]}:{k[2]}", ncalls=v[1], tottime_s=v[2],
                 cumtime_s=v[3]) for k, v in rows]
    return out


CASES = {"map": case_map, "nuts": case_nuts, "scale": case_scale}


# ---------------------------------------------------------------------------------------------
# driver and report


def fmt_err(e):
    return (f"dx {e['dx']:+.3f} dy {e['dy']:+.3f} dF/F {e['dflux'] * 100:+.1f}% "
            f"dRe/Re {e['dre'] * 100:+.1f}% dn {e['dn']:+.2f} dq {e['dq']:+.3f} "
            f"dPA {e['dpa']:+.2f} deg")


def met(ok):
    return "met" if ok else "MISSED"


def ms(s):
    return f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s"


def _cached_lines(C):
    """The fresh-process figures with the persistent compilation cache populated."""
    L = []
    mc, nc = C.get("map_cached"), C.get("nuts_cached")
    if mc and "error" not in mc:
        L.append(f"- MAP `fit_map()` first call in a new process: {mc['cold_s']:.2f} s "
                 f"(target <= {TARGETS['map_cold_s']:.0f} s: "
                 f"{'met' if mc['cold_s'] <= TARGETS['map_cold_s'] else 'MISSED'}); "
                 f"warm {ms(mc['warm_s'])}.")
    if nc and "error" not in nc and "cold" in nc:
        c = nc["cold"]
        L.append(f"- NUTS 500+500 in a new process, incl. MAP: {c['seconds']:.2f} s, min ESS "
                 f"{c['min_ess_bulk']:.0f}, {c['min_ess_bulk'] / c['seconds']:.1f} min-ESS/s "
                 f"(target >= {TARGETS['nuts_min_ess_per_s']:.0f}).")
    if L:
        L = ["", "With the package's persistent compilation cache (on by default) populated by "
             "the runs above, a new process skips XLA compilation of the programs seen before "
             "(tracing and lowering still run):", ""] + L + [""]
    return L


def markdown(out) -> str:
    m = out["machine"]
    C = out["cases"]
    L = []
    mp = C.get("map")
    if mp and "error" not in mp:
        L += ["### MAP on data set A (one Sersic, 96x96, 7 parameters)", "",
              "| code | cold (1st call incl. compile) | warm (median) | accuracy vs truth |",
              "|---|---|---|---|",
              (f"| tractor-prob `fit_map()` ({mp['warm_n_steps']} steps + covariance) | "
               f"{ms(mp['cold_s'])} (compile {mp['cold_compile']['total']:.2f} s) | "
               f"{ms(mp['warm_s'])} | {fmt_err(mp['errors'])} |")]
        for k, p in PEERS["map"].items():
            L.append(f"| {k} | {ms(p['cold_s'])} | {ms(p['warm_s'])} | {fmt_err(p)} |")
        r = mp["render_at_truth"]
        L += ["", (f"Targets: warm <= {ms(TARGETS['map_warm_s'])}: "
                   f"{'met' if mp['warm_s'] <= TARGETS['map_warm_s'] else 'MISSED'} "
                   f"({mp['warm_s'] / TARGETS['map_warm_s']:.2f}x the target); cold <= "
                   f"{TARGETS['map_cold_s']:.0f} s: "
                   f"{'met' if mp['cold_s'] <= TARGETS['map_cold_s'] else 'MISSED'} "
                   f"({mp['cold_s'] / TARGETS['map_cold_s']:.2f}x). Imports took "
                   f"{mp['import_s']:.2f} s before that."),
              (f"Fit: log-prob {mp['log_prob']:.2f} (chi^2/pix {mp['chi2_per_pix']:.4f}; from "
               f"the truth {mp['log_prob_from_truth']:.2f}; at the truth {r['lnp_truth']:.2f}, "
               f"chi^2/pix {r['chi2_per_pix_truth']:.4f}). Stderr: "
               + ", ".join(f"{k} {v:.3g}" for k, v in mp["stderr"].items()) + "."),
              (f"Render at the truth vs GalSim's noiseless image: max|res|/peak "
               f"{r['max_abs_resid_over_peak']:.1e}, flux ratio {r['flux_ratio']:.5f} "
               f"(pysersic 1.1e-3, AstroPhot 1.9e-2)."), ""]
        lp, ins = mp["warm_breakdown"]["loop"], mp["warm_breakdown"]["inside"]
        how = ("one jitted Levenberg-Marquardt loop (`Tractor._lm_loop`: the plan cannot "
               f"change with the values) {ms(lp['lm_loop_s'])}" if lp["one_program"] else
               f"{lp['n_optimize_calls']} `optimize()` steps {ms(lp['optimize_calls_sum_s'])}")
        L += [("Warm `fit_map()` breakdown (medians; the real fit_map with its calls timed): "
               f"{lp['n_steps']} steps as {how} + `covariance()` {ms(lp['covariance_s'])} + "
               f"the rest of fit_map {ms(lp['rest_of_fit_map_s'])} = {ms(lp['total_s'])}."),
              "", "| inside the one-program fit | median |", "|---|---|"]
        for k, v in ins.items():
            if k.endswith("_s"):
                L.append(f"| {k.removesuffix('_s')} | {v * 1e3:.3f} ms |")
            else:
                L.append(f"| {k} | {v} |")
        L.append("")
    nu = C.get("nuts")
    if nu and "error" not in nu:
        L += [(f"### NUTS on data set A: 1 chain, {nu['num_warmup']} warmup + "
               f"{nu['num_samples']} draws, init='map' (dense mass from the MAP covariance)"), "",
              ("| code | wall time | min bulk ESS | min-ESS/s | min Geyer ESS/s (the peers' "
               "way) | divergences | leapfrog/draw | posterior mean vs truth |"),
              "|---|---|---|---|---|---|---|---|"]
        for label, what in (("cold", "fresh process, incl. MAP + compile"),
                            ("warm", "2nd call, same process, same start")):
            s = nu[label]
            L.append(f"| tractor-prob `sample()` {label} ({what}) | {s['seconds']:.2f} s | "
                     f"{s['min_ess_bulk']:.0f} (x, y, flux, r_e, q, PA, n: "
                     f"{s['min_ess_bulk_truth_frame']:.0f}) | {s['min_ess_per_s']:.1f} | "
                     f"{s['min_ess_geyer_truth_frame'] / s['seconds']:.1f} (ESS "
                     f"{s['min_ess_geyer_truth_frame']:.0f}) | {s['divergences']} | "
                     f"{s['mean_leapfrog_steps']:.2f} | {fmt_err(s['errors'])} |")
        for k, p in PEERS["nuts"].items():
            err = fmt_err(p) if "dx" in p else "-"
            L.append(f"| {k} | {p['seconds']:.1f} s | - | - | {p['min_ess_per_s']} (ESS "
                     f"{p['min_ess']}) | {p['divergences']} | - | {err} |")
        s = nu["warm"]
        ws = nu["warm_seeds"]
        L += ["", (f"Warm runs with seeds {ws['seeds']}: median {ws['median_min_ess_per_s']:.1f} "
                   f"min-ESS/s (range {ws['min_ess_per_s_range'][0]:.1f}-"
                   f"{ws['min_ess_per_s_range'][1]:.1f}; median min bulk ESS "
                   f"{ws['median_min_ess_bulk']:.0f}, median {ws['median_seconds']:.2f} s; "
                   f"divergences {ws['divergences']}).")]
        L += ["", f"Target >= {TARGETS['nuts_min_ess_per_s']:.0f} min-ESS/s: "
              + ", ".join(f"{lab} {nu[lab]['min_ess_per_s']:.1f} "
                          f"({met(nu[lab]['min_ess_per_s'] >= TARGETS['nuts_min_ess_per_s'])},"
                          f" {nu[lab]['min_ess_per_s'] / TARGETS['nuts_min_ess_per_s']:.2f}x)"
                          for lab in ("cold", "warm"))
              + (f", warm median over seeds {ws['median_min_ess_per_s']:.1f} "
                 f"({met(ws['median_min_ess_per_s'] >= TARGETS['nuts_min_ess_per_s'])}, "
                 f"{ws['median_min_ess_per_s'] / TARGETS['nuts_min_ess_per_s']:.2f}x)")
              + ". Posterior std (truth frame): "
              + ", ".join(f"{k} {v:.3g}" for k, v in s["post_std"].items()) + ".", ""]
        b = nu["breakdown"]
        pot = nu["potential"]
        tv = nu["trivial_gaussian"]
        L += ["Where one `sample()` call goes (s):", "",
              "| | cold | warm |", "|---|---|---|"]
        for k in b["cold"]:
            L.append(f"| {k.removesuffix('_s')} | {b['cold'][k]:.3f} | "
                     f"{b['warm'][k]:.3f} |")
        tc = tv["cold"]["phases"]["sample_loop"]["compile"]
        n_ev = nu["potential_evaluations"]
        L += ["", (f"The potential: {n_ev} evaluations in one run "
                   "(leapfrog steps, step-size searches, start; counted by a callback in a third, "
                   f"untimed run{' with identical draws' if nu['count_draws_identical'] else ''})"
                   f" x {pot['value_and_grad_warm_s'] * 1e3:.3f} ms per jitted value_and_grad "
                   f"(value alone {pot['value_warm_s'] * 1e3:.3f} ms) = "
                   f"{pot['gradient_floor_s']:.2f} s; the warm loop's execution is "
                   f"{1e3 * b['warm']['loop_execute_s'] / n_ev:.3f} ms per evaluation (a "
                   "standalone call adds its dispatch, so 'potential_gradients_standalone' is "
                   "an upper bound; both are noisy at the 10-20 % level on this shared machine). "
                   f"Compiling that value_and_grad alone: "
                   f"{pot['value_and_grad_first_call_s']:.2f} s "
                   f"(trace {pot['value_and_grad_compile']['trace']:.2f}, lower "
                   f"{pot['value_and_grad_compile']['lower']:.2f}, XLA "
                   f"{pot['value_and_grad_compile']['backend']:.2f}); its jaxpr has "
                   f"{pot['jaxpr_eqns']} equations, its StableHLO {pot['stablehlo_lines']} "
                   "lines."),
              ("The same `sample()` code on a Gaussian potential of the posterior's shape "
               "(precision = Hessian of the real potential at the MAP; "
               f"{tv['potential_evaluations']} "
               f"evaluations): cold {tv['cold']['seconds']:.2f} s (loop compile "
               f"{tc['total']:.2f} s), warm {tv['warm']['seconds']:.2f} s; loop execution "
               f"{tv['warm']['loop_execute_per_evaluation_us']:.1f} us per evaluation, i.e. "
               "numpyro's NUTS bookkeeping per leapfrog step."), ""]
    L += _cached_lines(C)
    sc = [r for r in C.get("scale", []) if "error" not in r]
    if sc:
        L += [f"### Log density build + compile vs scene size ({SCALE_SIZE}x{SCALE_SIZE} image)",
              "", ("| scene | params | render units | jaxpr eqns | `model()` | "
                   "z0 + potential setup | first call (compile: trace / lower / XLA) | "
                   "warm call |"),
              "|---|---|---|---|---|---|---|---|"]
        for r in sc:
            c = r["first_call_compile"]
            what = "value_and_grad" if r["what"] == "vg" else "value"
            L.append(f"| {r['n_star']} stars + {r['n_gal']} galaxies, {what} | {r['n_params']} | "
                     f"{r['plan']['render_units']} | {r['jaxpr_eqns']} | {ms(r['model_s'])} | "
                     f"{ms(r['potential_setup_s'])} | "
                     f"{ms(r['first_call_s'])} ({c['trace']:.2f} / {c['lower']:.2f} / "
                     f"{c['backend']:.2f} s) | {ms(r['warm_s'])} |")
        L.append("")
        for r in sc:
            if r.get("model_profile_cumtime"):
                c = r["model_compile"]
                L.append(f"`model()` + z0/potential setup of {r['scene']}: "
                         f"{r['model_s'] + r['potential_setup_s']:.2f} s, of which "
                         f"{c['total']:.2f} s compiling {c['n_compiles']} eager JAX ops; the "
                         "package's functions by cumulative time (cProfile): "
                         + "; ".join(f"{p['fn']} {p['cumtime_s']:.3f} s ({p['ncalls']} calls)"
                                     for p in r["model_profile_cumtime"][:8]) + ".")
        L.append("")
    errs = [f"{k}: {v['error']}" for k, v in C.items() if isinstance(v, dict) and "error" in v]
    errs += [f"scale {r.get('scene')}: {r['error']}" for r in C.get("scale", []) if "error" in r]
    if errs:
        L += ["Failed cases:", ""] + [f"- {e}" for e in errs] + [""]
    changed = out["env"].get("package_files_changed_since_commit")
    L.append(f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, JAX {m['jax']} "
             f"({m['backend']}, float64), commit {m['commit']}"
             + (f" + uncommitted changes to {', '.join(changed)}" if changed else "")
             + f", {m['date']}; XLA_FLAGS="
             f"{out['env']['XLA_FLAGS'] or '(unset)'}, CPU affinity {out['env']['affinity']}; "
             f"load average (1/5/15 min) at start {out['env']['load_start']}, at end "
             f"{out['env']['load_end']}. PSF: Gaussian sigma sqrt(1.5^2 + 1/12) = "
             f"{PSF_SIGMA_EFF:.4f} px (the effective PSF). Start of every fit: {START}. "
             "Peers' figures: ../shared/bench/peers/RESULTS.md (float32 JAX / float64 torch, "
             "same machine kind, not pinned); ours are float64.")
    return "\n".join(L) + "\n"


def run_case(args, case, *extra, cache=None):
    """Run one case in a fresh process; ``cache``: the JAX persistent compilation cache
    directory it gets (TRACTOR_PROB_JAX_CACHE; an empty one = nothing compiled before)."""
    cmd = [sys.executable, __file__, "--case", case, "--nrep", str(args.nrep),
           "--warmup", str(args.warmup), "--samples", str(args.samples),
           "--nrep-scale", str(args.nrep_scale), "--seeds", str(args.seeds), *extra]
    env = dict(os.environ, TRACTOR_PROB_JAX_CACHE=cache or "0")
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip().splitlines()[-5:]
        print(f"case {case} {' '.join(extra)} FAILED:\n" + "\n".join(tail), file=sys.stderr)
        return dict(error=" | ".join(tail), process_s=wall)
    res = json.loads(r.stdout.strip().splitlines()[-1])
    res["process_s"] = wall
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", choices=list(CASES))
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 100+100 draws, few repeats, small scenes; prints only")
    ap.add_argument("--nrep", type=int, default=15, help="warm MAP repeats")
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--nrep-scale", type=int, default=10, help="warm calls per scene")
    ap.add_argument("--seeds", type=int, default=4, help="NUTS: warm runs with other seeds")
    ap.add_argument("--scene", choices=list(SCENES), default="stars10")
    ap.add_argument("--what", choices=["vg", "value"], default="vg")
    ap.add_argument("--profile", action="store_true", help="scale: cProfile model() + setup")
    ap.add_argument("--scenes", default="stars10,stars100,stars1000,mix100,mix1000")
    ap.add_argument("--out", default=None, help="JSON path (default bench/results/prob.json; "
                                                "--quick writes nothing unless given)")
    args = ap.parse_args(argv)
    if args.case:
        import tractor_prob  # noqa: F401

        res = CASES[args.case](args)
        print(json.dumps(res, default=float))
        return res
    if args.quick:
        args.nrep, args.warmup, args.samples, args.nrep_scale, args.seeds = 3, 100, 100, 3, 1
        if args.scenes == ap.get_default("scenes"):
            args.scenes = "stars10,stars100,mix100"
    out_path = args.out or (None if args.quick else os.path.join(HERE, "results", "prob.json"))
    from common import machine_notes

    try:  # the package is edited live: record whether the tree differs from the commit
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "tractor_prob"],
                               capture_output=True, text=True, cwd=os.path.dirname(HERE),
                               check=False).stdout.split("\n")
        dirty = [ln[3:] for ln in dirty if ln.strip()]
    except OSError:
        dirty = None
    env = dict(package_files_changed_since_commit=dirty,
               XLA_FLAGS=os.environ.get("XLA_FLAGS", ""),
               affinity=sorted(os.sched_getaffinity(0)),
               load_start=[round(x, 2) for x in os.getloadavg()])
    out = dict(machine=machine_notes(), env=env, quick=args.quick, cases={})
    # cold = compiled from nothing (an empty persistent cache); then the same cases again in
    # new processes that find the first run's programs in the cache (the package's default)
    import tempfile

    with tempfile.TemporaryDirectory() as cache:
        out["cases"]["map"] = run_case(args, "map", cache=cache)
        out["cases"]["nuts"] = run_case(args, "nuts", cache=cache)
        out["cases"]["map_cached"] = run_case(args, "map", cache=cache)
        out["cases"]["nuts_cached"] = run_case(args, "nuts", cache=cache)
    out["cases"]["scale"] = []
    for sc in filter(None, args.scenes.split(",")):  # --scenes "": no scaling cases
        whats = ["vg"] if args.quick else ["vg", "value"]
        for w in whats:
            extra = ["--scene", sc, "--what", w] + (["--profile"] if sc == "mix1000"
                                                     and w == "vg" else [])
            r = run_case(args, "scale", *extra)
            r.setdefault("scene", sc)
            out["cases"]["scale"].append(r)
    env["load_end"] = [round(x, 2) for x in os.getloadavg()]
    text = markdown(out)
    if out_path:
        for path, t in ((out_path, json.dumps(out, indent=1, default=float)),
                        (os.path.splitext(out_path)[0] + ".md", text)):
            with open(path + ".tmp", "w") as f:
                f.write(t)
            os.replace(path + ".tmp", path)
    print(text)
    return out


if __name__ == "__main__":
    main()
