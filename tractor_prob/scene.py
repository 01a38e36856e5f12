"""compile(): the seam between the object layer and the pure render core.

``compile_tractor`` walks a Tractor's images and catalog once and returns

- a :class:`Plan`: hashable static structure: images grouped by kind (same
  calibration specs, shape and stamp sizes; each group is rendered with one
  ``vmap``, so compile time does not grow with the number of images); sources
  grouped by kind with the indices of their parameters in theta;
- ``theta``: every parameter value (frozen included) as one float64 vector;
- ``thawed``: a boolean mask over theta;
- ``priors``: Gaussian priors as (theta index, mu, sigma) rows.

:class:`Compiled` holds the jitted functions of one plan.  Changing parameter
*values* only changes theta, so nothing retraces; changing structure (a new
source kind, an image shape, a stamp radius) makes a new plan.

Theta layout: image parameters first (image 0 psf, wcs, photocal, sky; image
1 ...), then sources in catalog order; within each object the order of
``getAllParams()``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .params import Spec
from .psf import INTERP_CHI2, STAMP_CHI2, component_tails, mog_radii, mog_step
from .render import mog

__all__ = ["Plan", "Compiled", "compile_tractor", "get_compiled", "ImageContext"]


class ImageContext:
    """An image's calibrations bound to (possibly traced) parameter values.

    Handed to source rendering functions: ``pixel(pos_spec, pos_vals)`` ->
    (x, y) pixels; ``counts(br_spec, br_vals)`` -> counts; ``psf_mog()``.
    """

    def __init__(self, spec: Spec, vals):
        self.psf_spec, self.wcs_spec, self.pc_spec, self.sky_spec = spec.children
        self.psf_vals, self.wcs_vals, self.pc_vals, self.sky_vals = spec.split(vals)

    def pixel(self, pos_spec, pos_vals):
        return self.wcs_spec.cls._jax_pixel(self.wcs_spec, self.wcs_vals, pos_spec, pos_vals)

    def counts(self, br_spec, br_vals):
        return self.pc_spec.cls._jax_counts(self.pc_spec, self.pc_vals, br_spec, br_vals)

    def local_cd(self, pos_spec, pos_vals):
        """2x2 (East, North) arcsec -> pixel Jacobian at a position."""
        return self.wcs_spec.cls._jax_local_cd(self.wcs_spec, self.wcs_vals, pos_spec, pos_vals)

    def psf_mog(self):
        return self.psf_spec.cls._jax_mog(self.psf_spec, self.psf_vals)

    def sky(self):
        return self.sky_spec.cls._jax_sky(self.sky_spec, self.sky_vals)


def spec_legal(spec: Spec, vals):
    """True where every object in the tree is in its legal domain (``_jax_legal`` hooks)."""
    hook = getattr(spec.cls, "_jax_legal", None)
    ok = jnp.asarray(True) if hook is None else jnp.asarray(hook(spec, vals))
    for child, v in zip(spec.children, spec.split(vals)):
        ok = ok & spec_legal(child, v)
    return ok


class ImagePlan(NamedTuple):
    """A group of images with identical structure, rendered together (vmap)."""

    spec: Spec  # calibration spec common to the group
    shape: tuple  # (H, W)
    stamps: tuple  # (Sy, Sx) stamp size of each render unit in these images
    steps: tuple  # coarse-grid step of each render unit (1 = every pixel; psf.mog_step)
    windows: tuple  # per render unit: None, or (narrow component indices, (Wy, Wx)) (_unit_window)
    members: tuple  # image indices
    offsets: tuple  # index of each member's first parameter in theta


class GroupPlan(NamedTuple):
    spec: Spec  # common spec of the sources in the group
    members: tuple  # catalog indices
    idx: tuple  # (n, k) theta indices of each member's parameters
    parts: tuple  # component index tuples rendered into separate stamps (None = all)


class Plan(NamedTuple):
    n_theta: int
    n_src: int
    n_images: int
    images: tuple  # ImagePlan per image group
    groups: tuple  # GroupPlan per source kind
    units: tuple  # render units: (source group, part index); one stamp per source each


#: a stamp radius is kept while the wanted radius stays above this fraction of it
STAMP_SHRINK = 0.7
#: stamp radii are rounded up to a multiple of STAMP_ROUND pixels, or of STAMP_ROUND_SMALL up
#: to STAMP_ROUND_LIMIT pixels (point sources: rounding 12.5 to 16 costs 27% more pixels
#: than to 14; on the benchmark field the stars' stamps went from 33 to 29 pixels and the
#: optimize loop 10% faster)
STAMP_ROUND, STAMP_ROUND_SMALL, STAMP_ROUND_LIMIT = 4, 2, 16
#: a stamp covering at least this fraction of its image's pixels is widened to the whole
#: image: it costs at most 1/FULL_AREA_FRACTION times the pixels, and a fitted source
#: growing or shrinking no longer changes the plan (a recompilation each time)
FULL_AREA_FRACTION = 0.25
#: images of at most this many pixels are rendered pixel by pixel (no coarse grid: the
#: interpolation would save little there and add plans to compile)
LATTICE_MIN_PIXELS = 128 * 128
#: a render unit keeps its last stamp size and step while the values of its image and
#: sources are within these tolerances of the ones it was sized for (numpy.allclose).
#: (The absolute one matters for values near 0, e.g. ellipticity components: 1e-3 there
#: changes an axis ratio by ~0.2% and a stamp radius by less; at 1e-4 the benchmark
#: field's fit re-sized every unit in its 4th step for shape changes of 2-6e-4.)
SIZING_RTOL, SIZING_ATOL = 1e-3, 1e-3
#: a render unit's coarse-grid step only grows when the coarser step's estimated
#: interpolation chi^2 is below this fraction of psf.INTERP_CHI2 (it shrinks as soon as
#: the current step's estimate exceeds INTERP_CHI2)
STEP_GROW = 0.25
#: a render unit of many components (a galaxy's profile x PSF) whose narrow components need
#: far less than its stamp evaluates them on a window of the stamp centred on the source:
#: what they leave out beyond the window holds less than WINDOW_CHI2 of chi^2 (a tenth of
#: psf.STAMP_CHI2, so the window adds little to the stamp's own cut) ...
WINDOW_CHI2 = 0.1 * STAMP_CHI2
#: ... where it saves at least this fraction of the unit's pixel evaluations; a window kept
#: from the last sizing stays while it costs at most WINDOW_KEEP times the best split
WINDOW_MIN_SAVING, WINDOW_KEEP = 0.25, 1.25


def _stamp_size(r: float, H: int, W: int) -> tuple:
    # round the radius up to a multiple of STAMP_ROUND_SMALL pixels up to
    # STAMP_ROUND_LIMIT, of STAMP_ROUND above, so that small changes in PSF width,
    # flux or galaxy size while fitting do not change the plan (and retrace); a stamp
    # is never larger than the image, and one covering FULL_AREA_FRACTION of it is the image
    q = STAMP_ROUND_SMALL if r <= STAMP_ROUND_LIMIT else STAMP_ROUND
    R = max(4, q * math.ceil(r / q))
    Sy, Sx = min(2 * R + 1, H), min(2 * R + 1, W)
    return (H, W) if Sy * Sx >= FULL_AREA_FRACTION * H * W else (Sy, Sx)


def _units(group_plans) -> tuple:
    """Render units (source group, part index) of the groups, in order."""
    return tuple((g, p) for g, gp in enumerate(group_plans) for p in range(len(gp.parts)))


def _merge_full_parts(group_plans, units, sizes, img_specs):
    """A source group split into parts (wide wings apart from the core) whose parts all
    cover every image pixel by pixel (full stamps, step 1) renders as one unit: the split
    saves nothing there, and one unit compiles and runs as one program."""
    merge = set()
    for g, gp in enumerate(group_plans):
        us = [u for u, (gu, _) in enumerate(units) if gu == g]
        if len(us) > 1 and all(
                sizes[i][0][u] == tuple(img.shape) and sizes[i][1][u] == 1
                for i, (_, _, img) in enumerate(img_specs) for u in us):
            merge.add(g)
    if not merge:
        return group_plans, units, sizes
    group_plans = tuple(gp._replace(parts=(None,)) if g in merge else gp
                        for g, gp in enumerate(group_plans))
    keep = [u for u, (g, p) in enumerate(units) if g not in merge or p == 0]
    # (a merged unit holds all its group's components: no window sized for one part)
    sizes = [(*([x[u] for u in keep] for x in sz[:2]),
              [None if units[u][0] in merge else sz[2][u] for u in keep]) for sz in sizes]
    return group_plans, _units(group_plans), sizes


def _unit_window(amps, covs, counts, noise, stamp, old=None):
    """Component window of a render unit (see WINDOW_CHI2): None, or (indices of the narrow
    components, (Wy, Wx) window size), for the unit's convolved components ``amps`` (n, K)
    and ``covs`` (n, K, 2, 2) (pixels) at the brightest source's ``counts``.

    Components are ranked by their own radius; of the splits into the narrowest m and the
    rest, the one evaluating the fewest pixels (m Wy Wx + (K - m) Sy Sx) wins, ranked by a
    closed-form bound on each split's window (every component cut where it holds
    WINDOW_CHI2 / m) and sized by psf.mog_radii.  ``old``: the window of the last sizing,
    kept while it still holds its components and costs at most WINDOW_KEEP times the best
    split (a changed window is a new plan: a recompilation)."""
    n, K = amps.shape
    Sy, Sx = stamp
    if K <= 2 or not noise > 0:
        return None
    c, lam = component_tails(amps, covs, counts, noise)
    # r[m - 1, k]: radius beyond which component k holds WINDOW_CHI2 / m (max over sources)
    m = np.arange(1, K)[:, None, None]
    r = np.sqrt(lam * np.log(np.maximum(c * m / WINDOW_CHI2, 1.0))).max(axis=1)
    rank = np.argsort(np.argsort(r[0], kind="stable"), kind="stable")
    narrow = rank[None, :] < m[:, 0]  # (K - 1, K): split m keeps the m narrowest
    bounds = np.where(narrow, r, 0.0).max(axis=1)

    def cost(idx, W):
        return len(idx) * W[0] * W[1] + (K - len(idx)) * Sy * Sx

    splits = [tuple(np.flatnonzero(k).tolist()) for k in narrow]
    best = min(zip(splits, bounds), key=lambda s: cost(s[0], _stamp_size(s[1], Sy, Sx)))[0]

    def window(idx):  # exact window size of components idx (psf.mog_radii)
        i = list(idx)
        r = mog_radii(amps[:, i], np.zeros((n, len(i), 2)), covs[:, i], counts, noise,
                      max(stamp), WINDOW_CHI2)
        return _stamp_size(float(r.max()), Sy, Sx)

    W = window(best)
    if old is not None and max(old[0]) < K:
        W_need = W if old[0] == best else window(old[0])
        if (W_need[0] <= old[1][0] <= Sy and W_need[1] <= old[1][1] <= Sx
                and cost(*old) <= WINDOW_KEEP * cost(best, W)):
            return old
    if cost(best, W) > (1 - WINDOW_MIN_SAVING) * K * Sy * Sx:
        return None
    return best, W


def _unit_sizes(img, srcs, counts, part, cache=None):
    """(stamp radius, coarse-grid step, f() -> step at STEP_GROW x INTERP_CHI2, mogs) of a
    render unit: the largest radius and the smallest step over its sources, all sized at the
    brightest source's ``counts`` (psf.mog_radius, psf.mog_step).  The radius is capped at
    the image's larger side (stamps never exceed the image); images of at most
    LATTICE_MIN_PIXELS pixels get step 1.  ``mogs``: the sources' convolved (amps, means,
    covs) where their kind provides them (``_unit_mogs``), else None."""
    mogs = type(srcs[0])._unit_mogs(img, srcs, part, cache)
    noise = img.noise_sigma
    if mogs is None:
        r = max(s._stamp_radius(img, counts, part) for s in srcs)

        def step(frac=1.0):
            return min(s._stamp_step(img, counts, part, frac) for s in srcs)
    else:
        amps, means, covs = mogs
        rcap = float(max(img.shape))
        r = min(float(np.max(mog_radii(amps, means, covs, counts, noise, rcap))), rcap)

        def step(frac=1.0):
            return mog_step(amps, covs, counts, noise, frac * INTERP_CHI2)
    if img.shape[0] * img.shape[1] <= LATTICE_MIN_PIXELS:
        return r, 1, lambda: 1, mogs
    return r, step(), lambda: step(STEP_GROW), mogs


def compile_tractor(tractor):
    """Walk ``tractor`` once: (plan, theta, thawed mask, prior rows)."""
    values: list = []
    thawed: list = []
    priors: list = []
    images = tractor.images
    catalog = tractor.catalog
    img_thawed = tractor._thawed[0]
    cat_thawed = tractor._thawed[1]

    img_specs = []
    for i, img in enumerate(images.subs):
        off = len(values)
        spec = img._collect(values, thawed, img_thawed and images._thawed[i], priors)
        img_specs.append((spec, off, img))

    groups: dict = {}
    for j, src in enumerate(catalog.subs):
        off = len(values)
        spec = src._collect(values, thawed, cat_thawed and catalog._thawed[j], priors)
        g = groups.setdefault((spec, src._render_parts() or (None,)), ([], []))
        g[0].append(j)
        g[1].append(tuple(range(off, off + spec.size)))
    group_plans = tuple(GroupPlan(spec, tuple(m), tuple(idx), parts)
                        for (spec, parts), (m, idx) in groups.items())
    units = _units(group_plans)

    # nothing changed since the last call (e.g. repeated getModelImage): same plan
    walk_key = (tuple(values), tuple(thawed), tuple(tuple(p) for p in priors), group_plans,
                tuple((id(img), img.__dict__.get("_version")) for img in images.subs))
    last = tractor.__dict__.get("_plan_cache")
    if last is not None and last[0] == walk_key:
        return last[1]

    # stamp radii only shrink when they fall well below what was used before: a
    # fit moving a radius back and forth across a rounding step must not retrace
    memo = tractor.__dict__.setdefault("_stamp_memo", {})
    sized = tractor.__dict__.setdefault("_sizing_memo", {})
    vals = np.asarray(values, dtype=np.float64)
    sizes = []  # per image: (stamps, steps, windows) per render unit
    for i, (spec, off, img) in enumerate(img_specs):
        H, W = img.shape
        stamps, steps, windows = [], [], []
        sizes.append((stamps, steps, windows))
        counts_of, cache = {}, {}
        for g, p in units:
            gp = group_plans[g]
            key = (i, gp.spec, gp.parts[p])
            # sizes depend smoothly on the values: a fit's small steps reuse the last sizing
            inputs = np.concatenate([vals[off : off + spec.size],
                                     vals[np.asarray(gp.idx, dtype=np.int64).ravel()]])
            skey = key + (id(img), img.__dict__.get("_version"), gp.members)
            last = sized.get(skey)
            if last is not None and last[0].shape == inputs.shape and np.allclose(
                    inputs, last[0], rtol=SIZING_RTOL, atol=SIZING_ATOL):
                stamps.append(last[1])
                steps.append(last[2])
                windows.append(last[3])
                continue
            srcs = [catalog.subs[j] for j in gp.members]
            if g not in counts_of:
                counts_of[g] = max(abs(s._stamp_counts(img)) for s in srcs)
            counts = counts_of[g]
            r, b, loose, mogs = _unit_sizes(img, srcs, counts, gp.parts[p], cache)
            r_old = memo.get(key, 0.0)
            if r_old * STAMP_SHRINK <= r < r_old:
                r = r_old
            memo[key] = r
            stamps.append(_stamp_size(r, H, W))
            b_old = memo.get(key + ("step",))
            if b_old is not None and b_old < b:
                b = max(b_old, loose())
            memo[key + ("step",)] = b
            steps.append(b)
            win = None
            if mogs is not None and b == 1:
                win = _unit_window(mogs[0], mogs[2], counts, img.noise_sigma, stamps[-1],
                                   memo.get(key + ("window",)))
            memo[key + ("window",)] = win
            windows.append(win)
            sized[skey] = (inputs, stamps[-1], b, win)
    group_plans, units, sizes = _merge_full_parts(group_plans, units, sizes, img_specs)
    image_groups: dict = {}
    for i, (spec, off, img) in enumerate(img_specs):
        key = (spec, tuple(img.shape)) + tuple(tuple(x) for x in sizes[i])
        members = image_groups.setdefault(key, ([], []))
        members[0].append(i)
        members[1].append(off)
    image_plans = tuple(ImagePlan(spec, shape, stamps, steps, windows, tuple(m), tuple(o))
                        for (spec, shape, stamps, steps, windows), (m, o) in image_groups.items())
    plan = Plan(len(values), len(catalog.subs), len(images.subs), image_plans, group_plans, units)
    theta = np.array(values, dtype=np.float64)
    thawed = np.array(thawed, dtype=bool)
    theta.flags.writeable = thawed.flags.writeable = False  # shared with later calls
    out = plan, theta, thawed, priors
    tractor.__dict__["_plan_cache"] = (walk_key, out)
    return out


_CACHE: dict = {}


def get_compiled(plan: Plan) -> "Compiled":
    c = _CACHE.get(plan)
    if c is None:
        if len(_CACHE) > 64:
            _CACHE.clear()
        c = _CACHE[plan] = Compiled(plan)
    return c


def is_lattice(ip: ImagePlan, u: int) -> bool:
    """Render unit u of image group ip covers the whole image on a coarse grid: its native
    stamps are the coarse nodes (one lattice for all its sources, origin 0)."""
    return tuple(ip.stamps[u]) == tuple(ip.shape) and ip.steps[u] > 1


class Compiled:
    """The jitted render functions of one :class:`Plan`.

    All take ``theta`` (n_theta,) float64.  Per-image arrays are passed and
    returned *per image group*: a tuple over ``plan.images`` of stacked
    (n_images_in_group, H, W) arrays (``split``/``stack`` convert).
    """

    def __init__(self, plan: Plan):
        self.plan = plan
        self.render = jax.jit(self._render)
        #: render(theta) for a batch of parameter vectors (n, n_theta), all sources and sky
        self.render_batch = jax.jit(jax.vmap(
            lambda th: self._render(th, jnp.ones(plan.n_src, th.dtype), 1.0)))
        self.loglik = jax.jit(self._loglik)
        self.chis = jax.jit(self._chis)
        self.origins = jax.jit(self._origins)

    # --- conversions between per-image lists and per-group stacks (numpy) ---
    def stack(self, per_image):
        """List over images -> tuple over image groups of stacked arrays."""
        return tuple(np.stack([np.asarray(per_image[i]) for i in ip.members])
                     for ip in self.plan.images)

    def split(self, per_group):
        """Tuple over image groups of stacked arrays -> list over images."""
        out = [None] * self.plan.n_images
        for ip, arr in zip(self.plan.images, per_group):
            arr = np.asarray(arr)
            for k, i in enumerate(ip.members):
                out[i] = arr[k]
        return out

    # --- building blocks (traced); ig = image group index, img_vals = one image's values ---
    def image_values(self, ig, theta):
        """(n_members, size) calibration values of the images of group ig."""
        ip = self.plan.images[ig]
        idx = np.asarray(ip.offsets)[:, None] + np.arange(ip.spec.size)[None, :]
        return theta[idx.astype(np.int32)]

    def group_values(self, g, theta):
        return theta[np.asarray(self.plan.groups[g].idx, dtype=np.int32)]

    def source_mog(self, ig, g, img_vals, theta):
        """Batched pixel-space MoGs (before PSF) and centres of source group g."""
        gs = self.plan.groups[g].spec
        ctx = ImageContext(self.plan.images[ig].spec, img_vals)

        def one(v):
            amps, means, covs = gs.cls._jax_mog(gs, v, ctx)
            cx, cy = gs.cls._jax_center(gs, v, ctx)
            return amps, means, covs, cx, cy

        return jax.vmap(one)(self.group_values(g, theta))

    def _part(self, u, amps, means, covs):
        """The components of render unit u (a slice of its source group's MoG, last axis)."""
        g, p = self.plan.units[u]
        comps = self.plan.groups[g].parts[p]
        if comps is None:
            return amps, means, covs
        idx = np.asarray(comps)
        return amps[..., idx], means[..., idx, :], covs[..., idx, :, :]

    def stamp_fn(self, ig, u):
        """f(v (k,), img_vals, ox, oy) -> native stamp of one source of render unit u: the
        (Sy, Sx) pixels, or for a lattice unit (``is_lattice``) its coarse nodes."""
        ip = self.plan.images[ig]
        gs = self.plan.groups[self.plan.units[u][0]].spec

        def f(v, img_vals, ox, oy):
            ctx = ImageContext(ip.spec, img_vals)
            amps, means, covs = self._part(u, *gs.cls._jax_mog(gs, v, ctx))
            A, M, C = mog.convolve(amps, means, covs, *ctx.psf_mog())
            cx, cy = gs.cls._jax_center(gs, v, ctx)
            return self._native(ig, u, A, M, C, ox, oy, cx, cy)

        return f

    def _native(self, ig, u, A, M, C, ox, oy, cx, cy):
        """Native stamp of one source centred at (cx, cy) (see stamp_fn) from its
        PSF-convolved MoG; a unit with a component window (``_unit_window``) evaluates its
        narrow components on that window only."""
        ip = self.plan.images[ig]
        (Sy, Sx), step = ip.stamps[u], ip.steps[u]
        if is_lattice(ip, u):
            return mog.eval_stamp(A, M, C, ox - step, oy - step, mog.n_nodes(Sy, step),
                                  mog.n_nodes(Sx, step), step)
        if ip.windows[u] is None:
            return mog.render_stamp(A, M, C, ox, oy, Sy, Sx, step)
        narrow, (Wy, Wx) = ip.windows[u]
        narrow = np.asarray(narrow)
        wide = np.setdiff1d(np.arange(A.shape[0]), narrow)
        stamp = mog.eval_stamp(A[wide], M[wide], C[wide], ox, oy, Sy, Sx)
        wx, wy = mog.stamp_origin(cx - ox, cy - oy, Wy, Wx, Sy, Sx)  # within the stamp
        win = mog.eval_stamp(A[narrow], M[narrow], C[narrow], ox + wx, oy + wy, Wy, Wx)
        return jax.lax.dynamic_update_slice(
            stamp, jax.lax.dynamic_slice(stamp, (wy, wx), (Wy, Wx)) + win, (wy, wx))

    def add_unit(self, ig, u, model, stamps, ox, oy):
        """Add the native stamps (n, ...) of render unit u's sources into the model image:
        lattice units are summed on their nodes and interpolated once; stamps covering the
        image are summed; others are scatter-added."""
        ip = self.plan.images[ig]
        if is_lattice(ip, u):
            return model + mog.upsample(jnp.sum(stamps, axis=0), ip.steps[u], *ip.shape)
        if stamps.shape[1:] == model.shape:
            return model + jnp.sum(stamps, axis=0)
        return mog.add_stamps(model, stamps, ox, oy)

    def unit_origins(self, ig, u, img_vals, theta):
        """(ox, oy, cx, cy): stamp origins and source centres (pixels) of render unit u."""
        ip = self.plan.images[ig]
        _, _, _, cx, cy = self.source_mog(ig, self.plan.units[u][0], img_vals, theta)
        ox, oy = mog.stamp_origin(cx, cy, *ip.stamps[u], *ip.shape)
        return ox, oy, cx, cy

    def model_image(self, ig, img_vals, theta, src_on=None, sky_on=1.0, given=None):
        """Model (H, W) of one image of group ig; ``src_on`` (n_src,) and ``sky_on`` scale
        sources and sky.  ``given``: optional per render unit (stamps, ox, oy) already
        rendered by ``stamp_fn`` (native stamps; the fitter gets them with its
        derivatives), or None to render here."""
        ip = self.plan.images[ig]
        ctx = ImageContext(ip.spec, img_vals)
        psf = ctx.psf_mog()
        model = jnp.zeros(ip.shape, theta.dtype)
        for g, gp in enumerate(self.plan.groups):
            units = [u for u, (gu, _) in enumerate(self.plan.units) if gu == g]
            if given is not None and all(given[u] is not None for u in units):
                for u in units:
                    model = self.add_unit(ig, u, model, *given[u])
                continue
            amps, means, covs, cx, cy = self.source_mog(ig, g, img_vals, theta)
            if src_on is not None:
                amps = amps * src_on[np.asarray(gp.members)][:, None]
            for u in units:
                if given is not None and given[u] is not None:
                    model = self.add_unit(ig, u, model, *given[u])
                    continue
                Sy, Sx = ip.stamps[u]
                ox, oy = mog.stamp_origin(cx, cy, Sy, Sx, *ip.shape)
                A, M, C = mog.convolve(*self._part(u, amps, means, covs), *psf)
                stamps = jax.vmap(lambda *a, u=u: self._native(ig, u, *a))(A, M, C, ox, oy,
                                                                          cx, cy)
                model = self.add_unit(ig, u, model, stamps, ox, oy)
        return model + sky_on * ctx.sky()

    def model_images(self, ig, theta, src_on=None, sky_on=1.0):
        """(n_members, H, W) models of image group ig."""
        return jax.vmap(lambda iv: self.model_image(ig, iv, theta, src_on, sky_on))(
            self.image_values(ig, theta))

    # --- jitted entry points ---
    def _render(self, theta, src_on, sky_on):
        return tuple(self.model_images(ig, theta, src_on, sky_on)
                     for ig in range(len(self.plan.images)))

    def _chis(self, theta, data, weights):
        return tuple((d - self.model_images(ig, theta)) * w
                     for ig, (d, w) in enumerate(zip(data, weights)))

    def _loglik(self, theta, data, weights):
        return -0.5 * sum(jnp.sum(c * c) for c in self._chis(theta, data, weights))

    def legal(self, theta):
        """True if every image calibration and source is in its legal domain."""
        ok = jnp.asarray(True)
        for ig, ip in enumerate(self.plan.images):
            ok = ok & jnp.all(jax.vmap(lambda v, s=ip.spec: spec_legal(s, v))(
                self.image_values(ig, theta)))
        for g, gp in enumerate(self.plan.groups):
            ok = ok & jnp.all(jax.vmap(lambda v, s=gp.spec: spec_legal(s, v))(
                self.group_values(g, theta)))
        return ok

    def _origins(self, theta):
        """Per image group, per render unit: (ox, oy, cx, cy), each (n_images, n_sources)."""
        return tuple(
            tuple(jax.vmap(lambda iv, u=u, ig=ig: self.unit_origins(ig, u, iv, theta))(
                self.image_values(ig, theta)) for u in range(len(self.plan.units)))
            for ig in range(len(self.plan.images)))
