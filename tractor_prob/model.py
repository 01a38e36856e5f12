"""The scene as a numpyro model (``Tractor.model()``).

One model builder for MAP, NUTS/HMC, log densities and posterior predictions:

- every thawed parameter is a latent; parameters of one *family* share one vector
  sample site, so tracing and compiling cost does not grow with the number of
  sources.  Families: the flat defaults of one support (sites ``thawed.real``,
  ``thawed.positive``, ``thawed.disk`` (pairs (e1, e2) of ``EllipseE``),
  ``thawed.interval(lo,hi)``) and user priors of one distribution class
  (``prior.Normal``, ...; a family of one parameter is named ``prior.<path>``);
- frozen parameters are one site ``frozen``, conditioned on their current values
  with ``numpyro.handlers.condition``; its prior is masked, so frozen values
  are constants of the model (the Tractor's convention: getLogPrior() sums thawed
  priors only).  Thawing a parameter moves it to a latent site;
- a factor ``legal`` is -inf outside every object's legal domain;
- the likelihood: per image group, an observed site ``pixels<k>`` (images stacked)
  whose log density is -chi^2/2 with the images' inverse variances (invvar = 0
  pixels excluded).  The Gaussian normalisation sum(log(invvar / 2 pi)) / 2 is a
  constant and is left out, as in the Tractor's getLogLikelihood().

``SceneModel.paths[site]`` gives the parameter path of every entry of a site;
results (``tractor_prob.inference``) name every parameter by its path.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
from numpyro import handlers
from numpyro.distributions import Distribution, ImproperUniform, constraints

from .priors import constraint_of, group_priors, repair_numpyro_modules, support_label

__all__ = ["SceneModel", "PixelGaussian"]


class PixelGaussian(Distribution):
    """Independent Gaussian pixels: mean ``model`` (counts), ``weight`` = sqrt(invvar).

    ``log_prob`` is -sum(((x - model) * weight)^2) / 2 over all pixels (the event);
    pixels with weight 0 contribute nothing and are drawn as the model.
    """

    support = constraints.real
    arg_constraints = {}
    reparametrized_params = []

    def __init__(self, model, weight):
        self.model, self.weight = model, weight
        super().__init__(batch_shape=(), event_shape=jnp.shape(model))

    def log_prob(self, value):
        chi = (value - self.model) * self.weight
        return -0.5 * jnp.sum(chi * chi)

    def sample(self, key, sample_shape=()):
        shape = sample_shape + self.event_shape
        noise = jax.random.normal(key, shape, jnp.result_type(self.model))
        safe = jnp.where(self.weight > 0, self.weight, 1.0)
        return self.model + jnp.where(self.weight > 0, noise / safe, 0.0)


class _Site:
    """One latent sample site: theta indices (n,) or (n, 2) and its distribution."""

    def __init__(self, name, idx, dist):
        self.name, self.idx, self.dist = name, np.asarray(idx, dtype=np.int32), dist


class SceneModel:
    """``tractor.model()``: a numpyro model of the whole scene (call it with no arguments).

    ``model(values, data, weights)`` takes the full parameter vector (frozen
    values are read from it) and the pixels per image group; the defaults are the
    Tractor's current values and images.  Attributes:

    - ``sites``: latent site names; ``paths[site]``: parameter path of each entry
      (a list, or a list of (e1, e2) path pairs for ``thawed.disk``);
    - ``thawed_paths``: all thawed parameter paths, in ``getParamNames()`` order.
    """

    def __init__(self, tractor):
        repair_numpyro_modules()
        comp, theta, thawed, priors = tractor._compile()
        self.comp = comp
        self.theta0 = np.asarray(theta, float)
        self.thawed = np.asarray(thawed, bool)
        self.data, self.weights = tractor._pixels(comp)
        all_paths = tractor.getAllParamNames()
        supports = tractor._supports()
        if len(all_paths) != len(theta) or len(supports) != len(theta):
            raise RuntimeError("parameter names/supports do not match the compiled scene")
        self.all_paths = all_paths
        self.thawed_paths = [p for p, t in zip(all_paths, thawed) if t]
        user = {i: d for i, d in priors if thawed[i]}

        flat: dict = {}  # support -> theta indices (or index pairs for the disk)
        T = np.flatnonzero(self.thawed)
        thawed_set = set(T.tolist())
        done = set()
        for i in T:
            if i in done or i in user:
                continue
            s = supports[i]
            if s == "disk":
                j = i + 1
                if supports[j] == "disk" and j in thawed_set and j not in user:
                    flat.setdefault("disk", []).append((i, j))
                    done.add(j)
                    continue
                s = "real"  # half of a pair: the 'legal' factor keeps |e| < 1
            flat.setdefault(s, []).append(i)
        sites = []
        for s, idx in flat.items():
            name = f"thawed.{support_label(s)}"
            shape = (len(idx), 2) if s == "disk" else (len(idx),)
            sites.append(_Site(name, idx, ImproperUniform(constraint_of(s), (), shape)))
        for idx, d in group_priors(sorted(user.items())):
            name = f"prior.{all_paths[idx[0]]}" if len(idx) == 1 else f"prior.{type(d).__name__}"
            while name in {s.name for s in sites}:
                name += "+"
            sites.append(_Site(name, idx, d.to_event(1)))
        self._sites = sites
        self.sites = [s.name for s in sites]
        self.paths = {s.name: [tuple(all_paths[k] for k in row) if np.ndim(row) else all_paths[row]
                               for row in s.idx] for s in sites}
        self.frozen_idx = np.flatnonzero(~self.thawed).astype(np.int32)

    def structure_key(self):
        """Hashable: equal for scenes whose models differ only in values and pixels (same
        plan, thawed set, sites and priors), which can share compiled samplers."""
        sites = []
        for s in self._sites:
            leaves, tree = jax.tree_util.tree_flatten(s.dist)
            sites.append((s.name, s.idx.tobytes(), s.idx.shape, str(tree), str(s.dist.support),
                          tuple(np.asarray(x).tobytes() for x in leaves)))
        return (self.comp.plan, self.thawed.tobytes(), tuple(sites),
                tuple((np.shape(d), str(d.dtype)) for d in self.data))

    # --- the model ---
    def __call__(self, values=None, data=None, weights=None):
        values = jnp.asarray(self.theta0 if values is None else values)
        data = self.data if data is None else data
        weights = self.weights if weights is None else weights
        comp = self.comp
        if len(self.frozen_idx):
            with handlers.condition(data={"frozen": values[self.frozen_idx]}), \
                    handlers.mask(mask=False):
                numpyro.sample("frozen",
                               ImproperUniform(constraints.real, (), (len(self.frozen_idx),)))
        theta = self.fill(values, {s.name: numpyro.sample(s.name, s.dist) for s in self._sites})
        numpyro.factor("legal", jnp.where(comp.legal(theta), 0.0, -jnp.inf))
        models = comp.render(theta, jnp.ones(comp.plan.n_src, theta.dtype), 1.0)
        for k, (m, d, w) in enumerate(zip(models, data, weights)):
            numpyro.sample(f"pixels{k}", PixelGaussian(m, w), obs=d)

    # --- conversions between sites, theta and flat thawed vectors ---
    def site_values(self, theta=None) -> dict:
        """{latent site: constrained value} at ``theta`` (default: the current values)."""
        theta = self.theta0 if theta is None else np.asarray(theta)
        return {s.name: jnp.asarray(theta[s.idx]) for s in self._sites}

    def fill(self, theta, site_values: dict):
        """``theta`` (..., n_theta) with every latent site's (constrained) values put in
        place; site values carry the same leading axes.  JAX arrays in and out."""
        for s in self._sites:
            theta = theta.at[..., s.idx].set(site_values[s.name])
        return theta

    def theta_of(self, samples: dict, base=None) -> np.ndarray:
        """Full parameter vectors (..., n_theta) from site samples of any leading shape
        (numpy: ``fill`` on the host)."""
        base = self.theta0 if base is None else np.asarray(base)
        lead = np.shape(samples[self._sites[0].name])[: -self._sites[0].idx.ndim] \
            if self._sites else ()
        out = np.broadcast_to(base, lead + base.shape).copy()
        for s in self._sites:
            out[..., s.idx] = np.asarray(samples[s.name])
        return out

    def thawed_of(self, samples: dict) -> np.ndarray:
        """Thawed parameters (..., n_thawed), getParamNames() order, from site samples."""
        return self.theta_of(samples)[..., self.thawed]

    def log_density(self, theta=None) -> float:
        """The model's log joint density at ``theta`` (default: current values)."""
        import warnings

        from numpyro.infer.util import log_density

        with warnings.catch_warnings():  # values outside a prior's support: -inf, as meant
            warnings.filterwarnings("ignore", "Out-of-support", UserWarning)
            lp, _ = log_density(self, (jnp.asarray(self.theta0 if theta is None else theta),
                                       self.data, self.weights), {}, self.site_values(theta))
        return float(lp)
