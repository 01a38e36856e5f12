"""The Tractor: images + catalog, model images, likelihood, and linearized fitting.

Every model pixel comes from the one render core (``tractor_prob.scene`` /
``tractor_prob.render``); derivatives are JAX autodiff of it.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .fit import ALPHAS, CHORD_SHRINK, CHORD_STEP, build_pairs, get_fitter
from .image import Image, Images
from .params import MultiParams
from .patch import Patch
from .scene import compile_tractor, get_compiled
from .source import Catalog

__all__ = ["Tractor"]


class _LastStep(NamedTuple):
    """What an optimize() step leaves for a chord step after it (see fit.CHORD_STEP)."""

    key: tuple  # fitter, weights, priors, damping: the next step must have the same
    theta: np.ndarray  # the values the step produced
    factor: tuple  # the factorization it solved with (fit.Fitter.step)
    size: float  # its size in conditional standard deviations
    keep: tuple  # (weights, priors): kept alive, so that the ids in key stay theirs


class Tractor(MultiParams):
    """``Tractor(images, catalog)``: the parameters of both, and what they predict.

    Parameter names are ``image<i>.<...>`` and ``source<j>.<...>``; freeze all
    image calibrations with ``tractor.freezeParam('images')`` (or ``'catalog'``).
    """

    @staticmethod
    def getNamedParams():
        return dict(images=0, catalog=1)

    def __init__(self, images=(), catalog=(), optimizer=None):
        if not isinstance(images, Images):
            images = Images(*images)
        if not isinstance(catalog, Catalog):
            catalog = Catalog(*catalog)
        for i, im in enumerate(images.subs):
            if not isinstance(im, Image):
                raise TypeError(f"image {i} is a {type(im).__name__}, not an Image")
        super().__init__(images, catalog)
        self.optimizer = optimizer

    def __str__(self):
        return (f"Tractor with {len(self.images.subs)} images, {len(self.catalog.subs)} sources, "
                f"{self.numberOfParams()} thawed parameters")

    # names: drop the 'images.' / 'catalog.' level (source0.pos.x, image0.sky.sky)
    def _names(self, thawed_only):
        out = []
        for i, s in enumerate(self.subs):
            if thawed_only and not self._thawed[i]:
                continue
            out.extend(s.getParamNames() if thawed_only else s.getAllParamNames())
        return out

    def _route(self, name):
        """(container, name) for a Tractor-level name: 'source3...' goes to the
        catalog, 'image0...' to the images, 'images'/'catalog' stay here."""
        if isinstance(name, str) and name not in ("images", "catalog"):
            head = name.split(".", 1)[0]
            if head.startswith("source"):
                return self.catalog, name
            if head.startswith("image"):
                return self.images, name
        return None, name

    def _routed(method):
        def f(self, name, *args):
            target, name = self._route(name)
            if target is None:
                return getattr(MultiParams, method)(self, name, *args)
            if "." in name and method not in ("addGaussianPrior", "set_prior", "get_prior"):
                head, rest = name.rsplit(".", 1)
                obj = target
                for part in head.split("."):
                    obj = obj._getThing(obj._index(part))
                return getattr(obj, method)(rest, *args)
            return getattr(target, method)(name, *args)

        f.__name__ = method
        f.__doc__ = f"{method} by Tractor-level name ('images', 'catalog', 'source0', 'source0.pos', ...)."
        return f

    freezeParam = _routed("freezeParam")
    thawParam = _routed("thawParam")
    isParamFrozen = _routed("isParamFrozen")
    isParamThawed = _routed("isParamThawed")
    addGaussianPrior = _routed("addGaussianPrior")
    set_prior = _routed("set_prior")
    get_prior = _routed("get_prior")
    del _routed

    # --- accessors ---
    def getImages(self):
        return self.images

    def getImage(self, i):
        return self.images.subs[i]

    def getNImages(self) -> int:
        return len(self.images.subs)

    def getCatalog(self):
        return self.catalog

    def setCatalog(self, catalog):
        self.catalog = catalog if isinstance(catalog, Catalog) else Catalog(*catalog)

    def setImages(self, images):
        self.images = images if isinstance(images, Images) else Images(*images)

    def addSource(self, src):
        self.catalog.append(src)

    def addSources(self, srcs):
        self.catalog.extend(srcs)

    def removeSource(self, src):
        self.catalog.remove(src)

    def _image_index(self, img) -> int:
        if isinstance(img, (int, np.integer)):
            if not 0 <= img < len(self.images.subs):
                raise IndexError(f"image index {img} out of range ({len(self.images.subs)} images)")
            return int(img)
        for i, im in enumerate(self.images.subs):
            if im is img:
                return i
        raise ValueError("that Image is not one of this Tractor's images")

    # --- compile ---
    def _compile(self):
        plan, theta, thawed, priors = compile_tractor(self)
        return get_compiled(plan), theta, thawed, priors

    def _pixels(self, comp):
        """(data, weights) stacked per image group of ``comp.plan`` (JAX arrays, cached)."""
        imgs = self.images.subs
        key = (comp.plan.images, tuple(im._version for im in imgs))
        cache = self.__dict__.get("_pixel_cache")
        if cache is not None and cache[0] == key and all(a is b for a, b in zip(cache[1], imgs)) \
                and len(cache[1]) == len(imgs):
            return cache[2]
        import jax.numpy as jnp

        arrs = [im._device_arrays() for im in imgs]
        data = tuple(jnp.stack([arrs[i][0] for i in ip.members]) for ip in comp.plan.images)
        weights = tuple(jnp.stack([arrs[i][1] for i in ip.members]) for ip in comp.plan.images)
        self.__dict__["_pixel_cache"] = (key, tuple(imgs), (data, weights))
        return data, weights

    # --- models and likelihood ---
    def getModelImage(self, img, srcs=None, sky=True):
        """Model image (H, W) in counts for image ``img`` (index or Image).

        ``srcs``: render only these sources (default all); ``sky``: include the sky.
        """
        i = self._image_index(img)
        comp, theta, _, _ = self._compile()
        src_on = np.ones(len(self.catalog.subs))
        if srcs is not None:
            chosen = {id(s) for s in srcs}
            src_on = np.array([1.0 if id(s) in chosen else 0.0 for s in self.catalog.subs])
        return comp.split(comp.render(theta, src_on, 1.0 if sky else 0.0))[i]

    def getModelImages(self):
        comp, theta, _, _ = self._compile()
        return comp.split(comp.render(theta, np.ones(len(self.catalog.subs)), 1.0))

    def getChiImages(self):
        """(data - model) * sqrt(invvar) per image; masked pixels are 0."""
        comp, theta, _, _ = self._compile()
        return comp.split(comp.chis(theta, *self._pixels(comp)))

    def getChiImage(self, img):
        return self.getChiImages()[self._image_index(img)]

    def getLogLikelihood(self) -> float:
        """-chi^2 / 2 summed over unmasked pixels of all images."""
        comp, theta, _, _ = self._compile()
        return float(comp.loglik(theta, *self._pixels(comp)))

    def getLogProb(self) -> float:
        """Log likelihood + log prior (Gaussian priors on thawed parameters);
        -inf when a parameter is outside its legal domain (e.g. |e| >= 1)."""
        lp = self.getLogPrior()
        if not np.isfinite(lp) or not self.isLegal():
            return -np.inf
        return self.getLogLikelihood() + lp

    def _illegal_objects(self):
        """Paths of sources/calibrations whose (thawed or frozen) values are illegal."""
        out = [f"image{i}" for i, im in enumerate(self.images.subs) if not im.isLegal()]
        out += [f"source{j} ({s})" for j, s in enumerate(self.catalog.subs) if not s.isLegal()]
        return out

    # --- derivatives ---
    def getDerivs(self):
        """Model derivatives per thawed parameter: a list (one per parameter) of
        lists of ``(Patch, Image)`` (one per image), from autodiff of the render core."""
        comp, theta, thawed, _ = self._compile()
        fitter = get_fitter(comp, thawed)
        names = self.getParamNames()
        plan = comp.plan
        per_image = {}  # image index -> {t: Patch}
        for fg, (units, Jc) in zip(fitter.fit_groups, fitter.derivs(theta)):
            ip = plan.images[fg.ig]
            H, W = ip.shape
            for n, pos in enumerate(fg.pos):
                i = ip.members[pos]
                items = per_image.setdefault(i, {})
                if Jc is not None:
                    Jn = np.asarray(Jc[n])
                    for c, t in enumerate(fg.cal_t[n]):
                        items[t] = Patch(0, 0, Jn[c], f"d(image)/d({names[t]})")
                for u, sj in enumerate(units):
                    if sj is None:
                        continue
                    J, ox, oy = (np.asarray(a[n]) for a in sj)
                    label = plan.groups[plan.units[u][0]].spec.cls.deriv_label
                    for m, cols in enumerate(fitter.unit_cols[u]):
                        for k, t in enumerate(cols):
                            if t < fitter.nt:
                                local = names[t].split(".", 1)[1]
                                p = _clipped_patch(J[m, k], ox[m], oy[m], H, W,
                                                   f"d({label})/d({local})")
                                items[t] = _merge_patches(items.get(t), p)
        out = [[] for _ in range(fitter.nt)]
        for i in range(plan.n_images):
            for t, patch in sorted(per_image.get(i, {}).items()):
                out[t].append((patch, self.images.subs[i]))
        return out

    # --- fitting ---
    def _fit_inputs(self):
        comp, theta, thawed, priors = self._compile()
        fitter = get_fitter(comp, thawed)
        origins = jax_to_numpy(comp.origins(theta))
        self._check_on_images(comp.plan, origins, fitter.source_free)
        pairs = build_pairs(comp.plan, origins, fitter.source_free,
                            self.__dict__.setdefault("_pair_memo", {}))
        pri = fitter.prior_arrays(priors, thawed)
        return fitter, theta, pairs, pri

    def _check_on_images(self, plan, origins, free):
        on = np.zeros(plan.n_src, bool)
        for ig, ip in enumerate(plan.images):
            H, W = ip.shape
            for u, (g, _) in enumerate(plan.units):
                gp = plan.groups[g]
                _, _, cx, cy = origins[ig][u]  # (n_images, n_sources)
                ry, rx = (s // 2 for s in ip.stamps[u])
                inside = (cx > -rx) & (cx < W - 1 + rx) & (cy > -ry) & (cy < H - 1 + ry)
                on[np.asarray(gp.members)] |= inside.any(axis=0)
        bad = np.flatnonzero(free & ~on)
        if len(bad):
            j = int(bad[0])
            raise ValueError(
                f"source{j} ({self.catalog.subs[j]}) is off every image: its parameters "
                f"cannot be fitted ({len(bad)} such source(s)); remove or freeze them"
            )

    def optimize(self, alphas=None, damp=0.0, priors=True):
        """One linearized least-squares step on the thawed parameters, with a line search.

        ``alphas``: step fractions to try, in order, until one improves the
        log-probability (default 1, 1/2, 1/4, 0.1, 0.03, 0.01, 1e-3, 1e-4);
        ``damp``: Levenberg-Marquardt damping of the (Jacobi-scaled) normal
        equations; ``priors=False`` ignores the Gaussian priors.

        Returns ``(dlnp, X, alpha)``: the improvement in log-probability, the
        full step X (one entry per thawed parameter) and the fraction alpha of
        it that was taken (0 and no change if no fraction improved).
        """
        return self._step(alphas, damp, priors, chord=True)[:3]

    def _require_legal(self):
        bad = self._illegal_objects()
        if bad:
            raise ValueError(
                "cannot optimize from illegal parameter values (log-probability -inf): "
                + "; ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else ""))

    def _lm_loop(self, steps, tol, damp, priors=True):
        """fit_map's Levenberg-Marquardt iterations as one jitted program (``Fitter.lm``),
        for scenes whose render plan cannot change with the values (``Fitter.static``).
        Returns (n_steps, converged, A, lnp, g) as fit_map's own loop would (g: the
        gradient of lnp at the final values), or None (not such a scene: fit_map steps
        through ``_step`` instead)."""
        self._require_legal()
        fitter, theta, pairs, pri = self._fit_inputs()
        if fitter.nt == 0 or not fitter.static:
            return None
        if not priors:
            pri = fitter.prior_arrays([], None)
        data, weights = self._pixels(fitter.c)
        n, theta_new, converged, A, lnp, g = fitter.lm(theta, data, weights, pairs, pri,
                                                       float(damp), int(steps), float(tol))
        self.setAllParams(np.asarray(theta_new).tolist())
        return int(n), bool(converged), np.asarray(A), float(lnp), np.asarray(g)

    def _step(self, alphas=None, damp=0.0, priors=True, chord=False):
        """optimize(), also returning (A, lnp): the undamped normal matrix at the values
        before the step (None after a chord step) and the log-probability after it (for
        fit_map).  ``chord``: a step may reuse the last step's normal matrix (see
        CHORD_STEP)."""
        self._require_legal()
        fitter, theta, pairs, pri = self._fit_inputs()
        if fitter.nt == 0:
            return 0.0, np.zeros(0), 0.0, np.zeros((0, 0)), self.getLogProb()
        if not priors:
            pri = fitter.prior_arrays([], None)
        alphas = np.asarray(ALPHAS if alphas is None else alphas, dtype=float)
        if alphas.ndim != 1 or len(alphas) == 0 or np.any(alphas <= 0):
            raise ValueError(f"optimize(): alphas must be a non-empty list of positive numbers, got {alphas}")
        if not damp >= 0:
            raise ValueError(f"optimize(): damp must be >= 0, got {damp}")
        data, weights = self._pixels(fitter.c)
        # the normal matrix depends on the values, the weights, the thawed set, the priors
        # and the damping: a chord step needs all of them as the last step left them
        key = (fitter, id(weights), pri[0][0].tobytes(), pri[0][2].tobytes(),
               tuple((i.tobytes(), id(d)) for i, d in pri[1]), float(damp))
        last = self.__dict__.pop("_chord", None)
        factor = None
        if chord and last is not None and last.key == key and np.array_equal(last.theta, theta):
            factor = last.factor
        theta_new, dlnp, X, alpha, lnp0, A, used, size = fitter.step(
            theta, data, weights, pairs, pri, alphas, float(damp), factor)
        alpha = float(alpha)
        if alpha > 0:
            theta_new = np.asarray(theta_new)
            self.setAllParams(theta_new.tolist())
            size = float(size)
            # the next step may reuse this step's factorization if this step was small and,
            # after a chord step, shrank fast (the chord converges at least that fast)
            chord_ok = size <= CHORD_STEP and (A is not None or size <= CHORD_SHRINK * last.size)
            if chord and alpha == 1.0 and used is not None and chord_ok:
                self.__dict__["_chord"] = _LastStep(key, theta_new, used, size, (weights, pri))
        return float(dlnp), np.asarray(X), alpha, A, float(lnp0) + float(dlnp)

    # --- the probabilistic program ---
    def model(self):
        """The scene as a numpyro model (a callable; tractor_prob.model.SceneModel): a prior
        for every parameter, frozen ones conditioned on their current values, the render
        core and the pixels' Gaussian likelihood.  Its log density at the current values is
        ``getLogProb()``."""
        from .model import SceneModel

        return SceneModel(self)

    def fit_map(self, steps=100, tol=1e-6, damp=0.1, priors=True):
        """Optimize to the posterior mode and return a MapResult with the full covariance
        (``.covariance``, ``.stderr[path]``, ``.correlation``); values are written back.
        See tractor_prob.inference.fit_map."""
        from .inference import fit_map

        return fit_map(self, steps=steps, tol=tol, damp=damp, priors=priors)

    def sample(self, num_warmup=500, num_samples=500, num_chains=1, kernel="nuts", init="map",
               seed=0, progress_bar=True, chain_method="sequential", **kwargs):
        """NUTS/HMC posterior draws of the thawed parameters -> SampleResult
        (``.to_arviz()``, ``.summary()``, ``.corner()``, ``.write_back()``, ...).
        See tractor_prob.inference.sample for saving, resuming and the other options."""
        from .inference import sample

        return sample(self, num_warmup=num_warmup, num_samples=num_samples,
                      num_chains=num_chains, kernel=kernel, init=init, seed=seed,
                      progress_bar=progress_bar, chain_method=chain_method, **kwargs)

    def optimize_loop(self, dchisq=1e-3, steps=50, **kwargs):
        """Call optimize() until dlnp < dchisq (or ``steps`` times).

        Returns a dict: ``steps`` taken, ``dlnp`` total improvement, ``converged``.
        """
        total = 0.0
        for step in range(1, steps + 1):
            dlnp, X, alpha = self.optimize(**kwargs)
            total += dlnp
            if dlnp < dchisq:
                return dict(steps=step, dlnp=total, converged=True)
        return dict(steps=steps, dlnp=total, converged=False)


def _merge_patches(a, b):
    """Sum of two Patches (the parts of one source's derivative) on their joint extent."""
    if a is None:
        return b
    x0, y0 = min(a.x0, b.x0), min(a.y0, b.y0)
    x1 = max(a.x0 + a.getWidth(), b.x0 + b.getWidth())
    y1 = max(a.y0 + a.getHeight(), b.y0 + b.getHeight())
    out = np.zeros((y1 - y0, x1 - x0))
    for p in (a, b):
        out[p.y0 - y0 : p.y0 - y0 + p.getHeight(), p.x0 - x0 : p.x0 - x0 + p.getWidth()] += p.patch
    return Patch(x0, y0, out, a.name)


def _clipped_patch(arr, ox, oy, H, W, name):
    h, w = arr.shape
    x0, y0 = max(int(ox), 0), max(int(oy), 0)
    x1, y1 = min(int(ox) + w, W), min(int(oy) + h, H)
    if x1 <= x0 or y1 <= y0:
        return Patch(x0, y0, np.zeros((0, 0)), name)
    return Patch(x0, y0, arr[y0 - oy : y1 - oy, x0 - ox : x1 - ox], name)


def jax_to_numpy(tree):
    import jax

    return jax.tree_util.tree_map(np.asarray, tree)
