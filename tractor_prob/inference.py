"""MAP fits with full covariances, and NUTS/HMC sampling of the scene model.

Both go through the one model (``tractor_prob.model.SceneModel``) and the one render core:

- :func:`fit_map` iterates the Gauss-Newton / Levenberg-Marquardt step of
  ``Tractor.optimize()`` (stamp Jacobians, pair blocks, the priors' gradient and
  curvature) to convergence, writes the values back and inverts the normal matrix
  J^T W J + prior curvature at the optimum: the full inverse Fisher matrix.  The MAP
  is the mode of the posterior density in the parameters' own space.
- :func:`sample` runs numpyro's NUTS or HMC on the model's potential (bounded
  parameters in unconstrained space through numpyro's transforms), started at
  the MAP with a dense mass matrix from the MAP covariance, and returns a
  :class:`SampleResult` (ArviZ data, summary, corner plots, write-back,
  posterior-predictive images).  Draws can be saved to netCDF as they come, and a
  saved run resumed or extended.
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["MapResult", "SampleResult", "fit_map", "sample"]


def _arviz():
    """tractor_prob._arviz, imported on first use: ArviZ takes ~1 s to import, which a MAP fit
    in a fresh process should not pay."""
    from . import _arviz

    return _arviz


# --------------------------------------------------------------------------------------
# MAP


class MapResult:
    """The result of ``Tractor.fit_map()``.

    Attributes
    ----------
    paths : list of str
        Thawed parameter paths (``getParamNames()`` order).
    values : dict
        path -> value at the optimum (also written into the Tractor's objects).
    covariance : (n, n) ndarray
        Inverse of J^T W J + prior curvature at the optimum (units of the parameters).
    stderr : dict
        path -> sqrt of the covariance diagonal.
    correlation : (n, n) ndarray
    converged : bool
        The last step improved the log-probability by less than ``tol``.
    n_steps : int
    log_prob : float
        ``Tractor.getLogProb()`` at the optimum (``priors=False``: without the priors).
    """

    def __init__(self, paths, values, covariance, converged, n_steps, log_prob, grad=None):
        self.paths = list(paths)
        self.values = dict(zip(self.paths, map(float, values)))
        self.covariance = covariance
        sd = np.sqrt(np.clip(np.diag(covariance), 0.0, None))
        self.stderr = dict(zip(self.paths, map(float, sd)))
        with np.errstate(invalid="ignore", divide="ignore"):
            self.correlation = covariance / np.outer(sd, sd)
        self.converged = bool(converged)
        self.n_steps = int(n_steps)
        self.log_prob = float(log_prob)
        #: d log_prob / d thawed parameters at the optimum where the fit left it (one-program
        #: fits with priors), else None: lets sample() start a chain there without compiling
        #: the potential's gradient again
        self._grad = grad

    def __repr__(self):
        w = max([len(p) for p in self.paths] + [9])
        lines = [f"MapResult: converged={self.converged} after {self.n_steps} steps, "
                 f"log_prob={self.log_prob:.6g}",
                 f"  {'parameter':<{w}}  {'value':>14}  {'stderr':>10}"]
        lines += [f"  {p:<{w}}  {self.values[p]:>14.7g}  {self.stderr[p]:>10.4g}"
                  for p in self.paths]
        return "\n".join(lines)


def fit_map(tractor, steps: int = 100, tol: float = 1e-6, damp: float = 0.1,
            priors: bool = True) -> MapResult:
    """Optimize the thawed parameters to the posterior mode; full covariance at the end.

    Levenberg-Marquardt on the ``Tractor.optimize()`` machinery: each step solves the
    normal equations with damping ``lam`` (added to the Jacobi-scaled diagonal) and takes
    the full step if it improves the log-probability (then ``lam /= 10``), else retries
    with ``lam *= 10``.  Damping keeps the first steps from a poor start from overshooting
    (e.g. a Sersic index jumping across its range).

    Parameters
    ----------
    steps : int
        Most linearized steps (tried steps, accepted or not).
    tol : float
        Converged when an accepted step improves the log-probability by less than this,
        or when no damping finds an improvement (at the optimum, to rounding).
    damp : float
        Initial damping (0: start as plain Gauss-Newton).
    priors : bool
        Include the priors (as ``optimize(priors=...)``).
    """
    if tractor.numberOfParams() == 0:
        raise ValueError("fit_map(): no thawed parameters")
    # scenes whose render plan cannot change with the values run the loop below as one
    # jitted program (the same iterations)
    fast = tractor._lm_loop(steps, tol, damp, priors)
    grad = None
    if fast is not None:
        n, converged, A, lnp, grad = fast
    else:
        converged, n, lam = False, 0, float(damp)
        for n in range(1, steps + 1):
            dlnp, _, alpha, A, lnp = tractor._step(alphas=[1.0], damp=lam, priors=priors)
            if alpha > 0:
                lam = lam / 10.0 if lam > 1e-9 else 0.0
                if dlnp < tol:
                    converged = True
                    break
            else:
                lam = max(lam * 10.0, 1e-6)
                if lam > 1e6:  # no step of any length improves: at the optimum
                    converged = True
                    break
    # A: the stepwise loop's last normal matrix is at the values before its last step, which
    # moved them by less than tol in log-probability (or not at all); the one-program
    # loop's is at the final values
    cov = covariance(tractor, priors=priors, A=A)
    return MapResult(tractor.getParamNames(), tractor.getParams(), cov, converged, n, lnp,
                     grad=grad if priors else None)


def covariance(tractor, priors: bool = True, A=None) -> np.ndarray:
    """(n, n) inverse of J^T W J + prior curvature at the current thawed values (``A``: that
    matrix if already computed, e.g. by the last optimize() step)."""
    names = tractor.getParamNames()
    if A is None:
        fitter, theta, pairs, pri = tractor._fit_inputs()
        if not priors:
            pri = fitter.prior_arrays([], np.zeros(0, bool))
        data, weights = tractor._pixels(fitter.c)
        A = fitter.system(theta, data, weights, pairs, pri)[0]
    A = np.asarray(A)
    d = np.sqrt(np.diag(A))
    if np.any(d <= 0):
        bad = [n for n, v in zip(names, d) if v <= 0]
        raise ValueError(f"the data do not constrain {bad}: freeze them or give them priors")
    As = A / np.outer(d, d)  # Jacobi-scaled: eigenvalues compare parameters of any units
    w, V = np.linalg.eigh(As)
    if w[0] < DEGENERATE * w[-1]:
        v = V[:, 0]
        bad = [n for n, c in zip(names, v) if abs(c) > 0.2]
        raise ValueError(
            f"degenerate parameters: the data constrain only a combination of {bad} "
            f"(scaled normal matrix eigenvalue {w[0]:.2g}); freeze one of them or give "
            "it a prior")
    return np.linalg.inv(As) / np.outer(d, d)


#: covariance(): a Jacobi-scaled normal matrix whose eigenvalues span more than 1/DEGENERATE
#: is treated as singular (parameters the data cannot tell apart)
DEGENERATE = 1e-10


# --------------------------------------------------------------------------------------
# sampling


class SampleResult:
    """Posterior draws of the thawed parameters, named by path.

    Attributes
    ----------
    paths : list of str
    draws : (chains, draws, n) ndarray
        Thawed parameter values (``getParamNames()`` order).
    stats : dict
        Per-draw sampler statistics, each (chains, draws): ``diverging``,
        ``tree_depth``, ``n_steps`` (leapfrog steps), ``acceptance_rate``, ``energy``
        (Hamiltonian, for E-BFMI) and ``lp``: the log density in the sampler's
        unconstrained space (transform Jacobians included, so not getLogProb()).
    map : MapResult or None
        The MAP fit the chains started from (``init='map'``).
    seconds : float
        Wall time of the sampling call, compilation included.
    """

    def __init__(self, tractor, model, draws, stats, map_result=None, seconds=float("nan")):
        self.tractor, self.model = tractor, model
        self.paths = list(model.thawed_paths)
        self.draws = np.asarray(draws)
        self.stats = {k: np.asarray(v) for k, v in stats.items()}
        self.map = map_result
        self.seconds = seconds

    @property
    def num_chains(self) -> int:
        return self.draws.shape[0]

    @property
    def num_samples(self) -> int:
        return self.draws.shape[1]

    def __getitem__(self, path) -> np.ndarray:
        """(chains, draws) of one parameter."""
        return self.draws[..., self._index(path)]

    def _index(self, path) -> int:
        try:
            return self.paths.index(path)
        except ValueError:
            raise KeyError(f"unknown parameter {path!r}; sampled: {self.paths}") from None

    def _thetas(self, n=None, seed=0):
        """Full parameter vectors of n draws (all if None), (n, n_theta)."""
        flat = self.draws.reshape(-1, len(self.paths))
        if n is not None and n < len(flat):
            flat = flat[np.random.default_rng(seed).choice(len(flat), n, replace=False)]
        theta = np.broadcast_to(self.model.theta0, (len(flat), len(self.model.theta0))).copy()
        theta[:, self.model.thawed] = flat
        return theta

    def to_arviz(self, observed: bool = False, log_likelihood: bool = False):
        """ArviZ data: posterior (one variable per parameter path), sample_stats; with
        ``observed`` the images' pixels (``image<i>``); with ``log_likelihood`` the
        pointwise (per pixel) log-likelihood -chi^2/2 of every draw."""
        post = {p: self.draws[..., k] for k, p in enumerate(self.paths)}
        obs = ll = None
        if observed or log_likelihood:
            images = self.tractor.images.subs
            obs = {f"image{i}": np.asarray(im.data) for i, im in enumerate(images)}
        if log_likelihood:
            models = self.model_images()
            C, D = self.draws.shape[:2]
            data = self.model.comp.split(self.model.data)  # masked pixels: weight 0
            weights = self.model.comp.split(self.model.weights)
            ll = {}
            for i in range(len(models)):
                chi = (data[i] - models[i]) * weights[i]
                ll[f"image{i}"] = (-0.5 * chi * chi).reshape((C, D) + chi.shape[1:])
        return _arviz().make_idata(post, sample_stats=dict(self.stats),
                                   observed_data=obs if observed or log_likelihood else None,
                                   log_likelihood=ll,
                                   attrs={"sampling_seconds": self.seconds,
                                          "paths": json.dumps(self.paths)})

    def summary(self, var_names=None, hdi_prob: float = 0.94):
        """pandas DataFrame: mean, sd, HDI, ESS, R-hat per parameter path."""
        return _arviz().summary(self.to_arviz(), var_names=var_names, hdi_prob=hdi_prob)

    def median(self) -> dict:
        return {p: float(np.median(self.draws[..., k])) for k, p in enumerate(self.paths)}

    def mean(self) -> dict:
        return {p: float(np.mean(self.draws[..., k])) for k, p in enumerate(self.paths)}

    def std(self) -> dict:
        return {p: float(np.std(self.draws[..., k], ddof=1)) for k, p in enumerate(self.paths)}

    def interval(self, prob: float = 0.68) -> dict:
        """path -> (low, high) central interval holding ``prob`` of the draws."""
        q = [(1 - prob) / 2 * 100, (1 + prob) / 2 * 100]
        return {p: tuple(map(float, np.percentile(self.draws[..., k], q)))
                for k, p in enumerate(self.paths)}

    def write_back(self, stat: str = "median") -> None:
        """Set the Tractor's thawed parameters to the posterior median (or ``'mean'``)."""
        if stat not in ("median", "mean"):
            raise ValueError(f"write_back: stat must be 'median' or 'mean', got {stat!r}")
        vals = self.median() if stat == "median" else self.mean()
        names = self.tractor.getParamNames()
        if names != self.paths:
            raise ValueError("write_back: the Tractor's thawed parameters changed since sampling")
        self.tractor.setParams([vals[p] for p in self.paths])

    def model_images(self, n: int | None = None, noise: bool = False, seed: int = 0):
        """Posterior-predictive images: a list over images of (n_draws, H, W) arrays,
        the model at ``n`` random draws (all draws if None), with pixel noise drawn from
        the images' inverse variances if ``noise``."""
        comp = self.model.comp
        per_group = comp.render_batch(jnp.asarray(self._thetas(n, seed)))
        out = comp.split(tuple(np.moveaxis(np.asarray(a), 0, 1) for a in per_group))
        if noise:  # masked pixels (weight 0) get none
            rng = np.random.default_rng(seed)
            for i, w in enumerate(comp.split(self.model.weights)):
                sd = np.where(w > 0, 1.0 / np.where(w > 0, w, 1.0), 0.0)
                out[i] = out[i] + rng.normal(size=out[i].shape) * sd
        return out

    def corner(self, var_names=None, truths=None, **kwargs):
        """Corner plot (``corner`` package) of the chosen paths (default all);
        ``truths``: dict path -> value or a list.  Returns the matplotlib figure."""
        import corner

        names = list(var_names) if var_names is not None else self.paths
        cols = [self._index(p) for p in names]
        x = self.draws.reshape(-1, len(self.paths))[:, cols]
        if isinstance(truths, dict):
            truths = [truths.get(p) for p in names]
        kwargs.setdefault("labels", names)
        kwargs.setdefault("show_titles", True)
        return corner.corner(x, truths=truths, **kwargs)

    def plot_trace(self, path, var_names=None):
        """Trace plot (PNG at ``path``) of the chosen parameters."""
        return _arviz().plot_trace(self.to_arviz(), var_names or self.paths, path)

    def save(self, path) -> None:
        """Write the draws (ArviZ netCDF) atomically."""
        _arviz().to_netcdf(self.to_arviz(), path)

    def __repr__(self):
        div = int(np.sum(self.stats.get("diverging", 0)))
        return (f"SampleResult: {self.num_chains} chain(s) x {self.num_samples} draws of "
                f"{len(self.paths)} parameters, {div} divergences, {self.seconds:.2f} s")


class _Kernel:
    """numpyro's functional NUTS/HMC (``numpyro.infer.hmc.hmc``) on a model structure: the
    potential takes the parameter values and pixels as arguments, so the jitted chunk
    runner compiles once per structure and serves every later sampling of a scene of the
    same structure (new data, new values, other chains)."""

    def __init__(self, model, algo, num_warmup, chunk, vectorized):
        from numpyro.distributions.transforms import biject_to
        from numpyro.infer.hmc import hmc
        from numpyro.infer.util import potential_energy

        self.transforms = transforms = {s.name: biject_to(s.dist.support) for s in model._sites}
        potential = jax.jit(lambda z, args: potential_energy(model, args, {}, z))
        init, sample_kernel = hmc(
            potential_fn_gen=lambda *args: (lambda z: potential(z, args)), algo=algo)
        # one program instead of dozens of small eager ones (it evaluates the potential's
        # gradient at the start unless given one, see sample()); safe with
        # potential_fn_gen: the sample kernel rebuilds its integrator from the model
        # arguments on every call
        self.init = jax.jit(init, static_argnames=("num_warmup", "dense_mass",
                                                   "target_accept_prob"))
        #: site values <-> the sampler's unconstrained space, each one jitted program
        self.unconstrain = jax.jit(lambda z: {k: transforms[k].inv(v) for k, v in z.items()})
        self.constrain = jax.jit(lambda z: {k: transforms[k](v) for k, v in z.items()})

        def run(state, args):
            def body(s, _):
                s = sample_kernel(s, model_args=args)
                return s, (s.z, s.diverging, s.num_steps, s.accept_prob, s.potential_energy,
                       s.energy)

            return jax.lax.scan(body, state, None, length=chunk)

        self.run = jax.jit(jax.vmap(run, in_axes=(0, None)) if vectorized else run)

        from jax.flatten_util import ravel_pytree

        _, unravel = ravel_pytree({s.name: jnp.zeros(s.idx.shape) for s in model._sites})
        thawed_idx = np.flatnonzero(model.thawed)

        def thawed_of(flat, theta0):  # constrained thawed values from a flat unconstrained z
            z = unravel(flat)
            return model.fill(theta0, {k: transforms[k](v) for k, v in z.items()})[
                thawed_idx]

        self.jacobian = jax.jit(jax.jacfwd(thawed_of))

        def log_det(flat):  # log |d constrained / d unconstrained| of all sites
            return sum(jnp.sum(transforms[k].log_abs_det_jacobian(v, transforms[k](v)))
                       for k, v in unravel(flat).items())

        def start_info(flat, jac, lnp, grad):
            # potential energy and its gradient at flat from the log-probability lnp and
            # its gradient ``grad`` (thawed parameters) there, ``jac`` = self.jacobian
            # there: the change of variables
            ld, dld = jax.value_and_grad(log_det)(flat)
            return -(lnp + ld), unravel(-(jac.T @ grad + dld))

        self.start_info = jax.jit(start_info)


_KERNELS: dict = {}


def _kernel(model, algo, num_warmup, chunk, vectorized) -> _Kernel:
    key = (model.structure_key(), algo, num_warmup, chunk, vectorized)
    k = _KERNELS.get(key)
    if k is None:
        if len(_KERNELS) > 16:
            _KERNELS.clear()
        k = _KERNELS[key] = _Kernel(model, algo, num_warmup, chunk, vectorized)
    return k


def _inverse_mass(J, cov_thawed):
    """Dense inverse mass matrix in the sampler's flat unconstrained order from the MAP
    covariance: Jinv C Jinv^T with J = d(constrained thawed)/d(unconstrained)."""
    Jinv = np.linalg.inv(J)
    M = Jinv @ cov_thawed @ Jinv.T
    return 0.5 * (M + M.T)


def sample(tractor, num_warmup: int = 500, num_samples: int = 500, num_chains: int = 1,
           kernel: str = "nuts", init: str = "map", seed: int = 0, progress_bar: bool = True,
           chain_method: str = "sequential", dense_mass: bool = True, save=None,
           resume=None, chunk: int = 50, target_accept_prob: float = 0.8):
    """Sample the posterior of the thawed parameters with NUTS or HMC (numpyro kernels).

    The chains advance ``chunk`` iterations per call of one jitted loop (compiled once,
    reused for warmup, draws and every chain); progress is reported per chunk.

    Parameters
    ----------
    num_warmup, num_samples, num_chains : int
        Adaptation iterations, then draws per chain.
    kernel : {'nuts', 'hmc'}
    init : {'map', 'current'}
        Start at the MAP (``fit_map()``; its covariance seeds a dense mass matrix) or at
        the current values.
    seed : int
        Random seed; with several chains each gets its own stream and a jittered start.
    progress_bar : bool
        A tqdm progress bar over all iterations of all chains.
    chain_method : {'sequential', 'vectorized'}
        Chains one after the other within each chunk (no wasted work), or in lockstep
        under ``vmap`` (every NUTS tree as long as the longest chain's).
    dense_mass : bool
        Adapt a dense (True) or diagonal mass matrix.
    save : path or None
        After every chunk, write the draws so far (ArviZ netCDF) and the sampler state
        (``<save>.state.npz``), each atomically: an interrupted run keeps what it finished.
    resume : path or None
        Continue a saved run: its draws are kept and the chains go on from the saved
        state (no new warmup) until they hold ``num_samples`` draws.
    chunk : int
        Iterations per jitted call (and per save).
    """
    from .model import SceneModel

    t0 = time.perf_counter()
    if kernel not in ("nuts", "hmc"):
        raise ValueError(f"sample(): kernel must be 'nuts' or 'hmc', got {kernel!r}")
    if init not in ("map", "current"):
        raise ValueError(f"sample(): init must be 'map' or 'current', got {init!r}")
    if chain_method not in ("sequential", "vectorized"):
        raise ValueError(f"sample(): chain_method must be 'sequential' or 'vectorized', "
                         f"got {chain_method!r}")
    if min(num_samples, num_chains, chunk) < 1 or num_warmup < 0:
        raise ValueError("sample(): num_samples, num_chains and chunk must be >= 1, "
                         "num_warmup >= 0")
    if tractor.numberOfParams() == 0:
        raise ValueError("sample(): no thawed parameters")
    bad = tractor._illegal_objects()
    if bad:
        raise ValueError("cannot sample from illegal parameter values: " + "; ".join(bad[:5]))
    done, saved_state = None, None
    if resume is not None:
        done, saved_state, saved_paths = _load(resume)
        if saved_paths != tractor.getParamNames():
            raise ValueError(f"resume: {resume} holds parameters {saved_paths}, the Tractor "
                             f"has {tractor.getParamNames()}")
        if done[0].shape[0] != num_chains:
            raise ValueError(f"resume: {resume} has {done[0].shape[0]} chains, "
                             f"asked for {num_chains}")
        save = resume if save is None else save
        num_warmup = 0
    map_result = fit_map(tractor) if init == "map" and resume is None else None
    model = SceneModel(tractor)
    vectorized = chain_method == "vectorized" and num_chains > 1
    kern = _kernel(model, kernel.upper(), num_warmup, chunk, vectorized)
    args = (jnp.asarray(model.theta0), model.data, model.weights)
    z0 = kern.unconstrain(model.site_values())
    keys = jax.random.split(jax.random.PRNGKey(seed), num_chains)
    starts = [z0] if num_chains == 1 else _jitter(z0, num_chains, jax.random.PRNGKey(seed + 1))
    imm = None
    if map_result is not None:
        from jax.flatten_util import ravel_pytree
        from numpyro.infer.util import ParamInfo

        flat0 = ravel_pytree(z0)[0]
        J = kern.jacobian(flat0, jnp.asarray(model.theta0))  # d thawed / d unconstrained
        if dense_mass:
            imm = _inverse_mass(np.asarray(J), map_result.covariance)
        if num_chains == 1 and map_result._grad is not None:
            # one chain from the MAP, whose fit left the log-probability and its gradient
            # there: numpyro's init then needs no gradient of the potential (a compile)
            pe, z_grad = kern.start_info(flat0, J, map_result.log_prob,
                                         jnp.asarray(map_result._grad))
            starts = [ParamInfo(z0, pe, z_grad)]
    states = [kern.init(starts[c], num_warmup, inverse_mass_matrix=imm, dense_mass=dense_mass,
                        target_accept_prob=target_accept_prob, model_args=args,
                        rng_key=keys[c]) for c in range(num_chains)]
    if saved_state is not None:
        states = [_restore_state(states[c], [leaf[c] for leaf in saved_state])
                  for c in range(num_chains)]
    if vectorized:
        states = [jax.tree_util.tree_map(lambda *x: jnp.stack(x), *states)]
    run = kern.run

    draws, stats = ([done[0]], [done[1]]) if done is not None else ([], [])
    n_have = 0 if done is None else done[0].shape[1]
    total = num_warmup + num_samples - n_have
    bar = _progress(total * num_chains, progress_bar)
    it = 0  # iterations run per chain (warmup included)
    while n_have < num_samples:
        outs = []
        for c, st in enumerate(states):
            states[c], out = run(st, args)
            outs.append(out)
        bar.update(chunk * num_chains)
        outs = _stack_chains(outs, vectorized)
        first = max(0, num_warmup - it)  # this chunk's first post-warmup iteration
        keep = slice(first, min(chunk, first + num_samples - n_have))
        it += chunk
        if keep.start >= keep.stop:
            continue
        d, st = _constrain(outs, keep, model, kern.constrain)
        draws.append(d)
        stats.append(st)
        n_have += d.shape[1]
        if save is not None:
            _save(save, draws, stats, states, vectorized, tractor, model, map_result)
    bar.close()
    all_draws = np.concatenate(draws, axis=1)
    all_stats = {k: np.concatenate([s[k] for s in stats], axis=1) for k in stats[0]}
    return SampleResult(tractor, model, all_draws, all_stats, map_result,
                        time.perf_counter() - t0)


def _progress(total, show):
    """A tqdm bar (or a no-op when ``show`` is False)."""
    if show:
        from tqdm.auto import tqdm

        return tqdm(total=total, desc="sampling", unit="it")

    class _Quiet:
        def update(self, n):
            pass

        def close(self):
            pass

    return _Quiet()


def _jitter(z0, num_chains, key):
    """num_chains starting points: z0 plus N(0, 0.1^2) offsets in unconstrained space."""
    out = [dict() for _ in range(num_chains)]
    for k, v in z0.items():
        key, sub = jax.random.split(key)
        noise = 0.1 * jax.random.normal(sub, (num_chains,) + jnp.shape(v))
        for c in range(num_chains):
            out[c][k] = v + noise[c]
    return out


def _stack_chains(outs, vectorized):
    """Per-chunk outputs -> one pytree of numpy arrays with a leading chain axis, then
    iterations."""
    if vectorized:
        return jax.tree_util.tree_map(np.asarray, outs[0])
    return jax.tree_util.tree_map(lambda *x: np.stack([np.asarray(a) for a in x]), *outs)


def _constrain(outs, keep, model, constrain):
    """(draws (chains, n, n_thawed), stats (chains, n)) from a chunk's outputs;
    ``constrain``: unconstrained site values -> constrained (_Kernel.constrain)."""
    z, diverging, n_steps, accept, pe, energy = jax.tree_util.tree_map(
        lambda a: a[:, keep], outs)
    cons = {k: np.asarray(v) for k, v in constrain(z).items()}
    stats = {
        "diverging": np.asarray(diverging, bool),
        "n_steps": np.asarray(n_steps),
        "tree_depth": np.ceil(np.log2(np.asarray(n_steps) + 1)).astype(int),
        "acceptance_rate": np.asarray(accept),
        "lp": -np.asarray(pe),
        "energy": np.asarray(energy),
    }
    return model.thawed_of(cons), stats


def _save(path, draws, stats, states, vectorized, tractor, model, map_result):
    """Draws so far -> netCDF (atomic); sampler states -> <path>.state.npz (atomic)."""
    res = SampleResult(tractor, model, np.concatenate(draws, axis=1),
                       {k: np.concatenate([s[k] for s in stats], axis=1) for k in stats[0]},
                       map_result)
    res.save(path)
    per_chain = [jax.tree_util.tree_leaves(st) for st in states]
    if vectorized:
        leaves = [np.asarray(x) for x in per_chain[0]]
    else:
        leaves = [np.stack([np.asarray(ch[i]) for ch in per_chain])
                  for i in range(len(per_chain[0]))]
    tmp = f"{path}.state.tmp.npz"
    np.savez(tmp, paths=json.dumps(model.thawed_paths), n=len(leaves),
             **{f"leaf{i}": x for i, x in enumerate(leaves)})
    os.replace(tmp, f"{path}.state.npz")


def _load(path):
    """((draws, stats), state leaves with a leading chain axis, paths) of a saved run."""
    idata = _arviz().from_netcdf(path)
    post = _arviz().get_group(idata, "posterior")
    st = _arviz().get_group(idata, "sample_stats")
    with np.load(f"{path}.state.npz") as f:
        paths = json.loads(str(f["paths"]))
        leaves = [f[f"leaf{i}"] for i in range(int(f["n"]))]
    draws = np.stack([np.asarray(post[p].values) for p in paths], axis=-1)
    stats = {k: np.asarray(st[k].values) for k in st.data_vars}
    return (draws, stats), leaves, paths


def _restore_state(template, leaves):
    """The template state's structure with the saved leaves of one chain."""
    tl, treedef = jax.tree_util.tree_flatten(template)
    if len(tl) != len(leaves):
        raise ValueError("resume: the saved sampler state does not match this sampler")
    out = [jnp.asarray(v, dtype=t.dtype).reshape(jnp.shape(t)) for t, v in zip(tl, leaves)]
    return jax.tree_util.tree_unflatten(treedef, out)

