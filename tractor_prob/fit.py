"""Linearized least squares on the render core: Gauss-Newton steps with a line search.

The Jacobian is never a dense pixels x parameters matrix.  Each source's
derivatives are computed on its own stamp (``vmap`` of ``jacfwd`` over the
sources of a kind), and the normal matrix J^T W J is assembled from

- per-source diagonal blocks (stamp x stamp),
- blocks for pairs of sources whose stamps overlap (a list built from the
  current stamp origins, padded (``_bucket``, ``PAIR_SHRINK``) so that it rarely
  changes shape),
- dense columns only for thawed image calibration parameters (sky, PSF, WCS),
  which touch every pixel, and their cross terms with the stamps.

Gaussian priors add their own residuals; other priors (any numpyro distribution,
batched by family) add their gradient and curvature.  ``Fitter.step`` runs one
complete step (system, solve, line search over alpha) inside one jitted call; near
convergence a step may solve with the previous step's factorization and a fresh gradient
(a chord step, ``CHORD_STEP``), skipping the normal matrix's terms.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.distributions import Normal

from .priors import group_priors
from .render import mog
from .scene import Compiled, is_lattice

__all__ = ["Fitter", "get_fitter", "build_pairs"]

#: extra pixels of stamp overlap tolerated when listing source pairs, so that a
#: pair list stays valid while sources move a little during a fit
PAIR_MARGIN = 2

#: line search: step fractions tried in turn until the log-probability improves
ALPHAS = (1.0, 0.5, 0.25, 0.1, 0.03, 0.01, 1e-3, 1e-4)


#: optimize() reuses the last step's normal matrix (a chord step: only the gradient is
#: computed, most of a step's work is not) when that step was taken whole and moved no
#: thawed parameter by more than this many of its conditional standard deviations
#: (1 / sqrt(A_ii)), where the Jacobians hardly change; after a chord step, only while
#: the steps shrink at least CHORD_SHRINK-fold.  A chord step that does not improve the
#: log-probability is replaced by a fresh step.  (The benchmark field's fit: a fresh normal
#: matrix after a step of 45 sigma made the next steps converge slowly; after one of 5 sigma,
#: reused twice, the same steps as fresh ones to 1e-5 in log-probability; the seed's two
#: blended stars: the same 8 steps.)
CHORD_STEP = 10.0
CHORD_SHRINK = 0.25


def _bucket(n: int, possible: bool) -> int:
    """Padded length of a pair list: the next of 4, 6, 8, 12, 16, 24, ... (2^k and 3 2^(k-1))
    at or above n (0 only if no pair can exist), so that sources drifting into or out of
    overlap rarely change shapes (and retrace), while padding wastes at most a third."""
    if not possible:
        return 0
    k = 4
    while k < n:
        k = k * 3 // 2 if k & (k - 1) == 0 else k * 4 // 3
    return k


#: a pair list keeps its padded length (``_bucket``) while its pairs fill more than this
#: fraction of it: a fit whose pairs drift across a bucket boundary and back (66 -> 64
#: pairs of stars) does not shrink the list's shape, which would recompile its step
PAIR_SHRINK = 0.6


def build_pairs(plan, origins, source_free, memo=None):
    """Pairs of sources whose stamps overlap, per image group and pair of render units.

    ``origins``: what ``Compiled.origins`` returns (numpy); ``source_free``:
    bool (n_src,) whether a source has any thawed parameter.  Returns, per
    image group, a tuple over units (u1 <= u2) of (p1, p2, valid) arrays of shape
    (n_images_in_group, P), padded to a common length P (``_bucket``).  ``memo``: a dict
    kept by the caller across calls, for the PAIR_SHRINK rule and to return the last lists
    again when no stamp origin moved (a fit's small steps); None: no memory.
    """
    if memo is not None:
        same = (plan, source_free.tobytes(),
                tuple(o[k].tobytes() for per in origins for o in per for k in (0, 1)))
        last = memo.get("last")
        if last is not None and last[0] == same:
            return last[1]
    out = []
    U = len(plan.units)
    m = PAIR_MARGIN
    for ig, ip in enumerate(plan.images):
        per = []
        for u1 in range(U):
            for u2 in range(u1, U):
                (Sy1, Sx1), (Sy2, Sx2) = ip.stamps[u1], ip.stamps[u2]
                f1 = source_free[np.asarray(plan.groups[plan.units[u1][0]].members)]
                f2 = source_free[np.asarray(plan.groups[plan.units[u2][0]].members)]
                found = []
                for k in range(len(ip.members)):
                    ox1, oy1 = origins[ig][u1][0][k], origins[ig][u1][1][k]
                    ox2, oy2 = origins[ig][u2][0][k], origins[ig][u2][1][k]
                    dx = ox2[None, :] - ox1[:, None]
                    dy = oy2[None, :] - oy1[:, None]
                    ok = (dx < Sx1 + m) & (dx > -Sx2 - m) & (dy < Sy1 + m) & (dy > -Sy2 - m)
                    ok &= f1[:, None] & f2[None, :]
                    if u1 == u2:
                        ok &= np.triu(np.ones_like(ok), k=1)
                    found.append(np.nonzero(ok))
                # a unit whose stamps cover the image overlaps every source: no list needed
                full = (Sy1, Sx1) == tuple(ip.shape) or (Sy2, Sx2) == tuple(ip.shape)
                possible = (bool(f1.any() and f2.any()) and (u1 != u2 or f1.sum() >= 2)
                            and not full)
                if not possible:
                    found = [(np.zeros(0, np.int64),) * 2 for _ in found]
                need = max(len(p[0]) for p in found)
                n = _bucket(need, possible)
                if memo is not None:
                    if len(memo) > 1024:  # (keys hold plans: keep it bounded)
                        memo.clear()
                    key = (plan, ig, u1, u2)
                    last = memo.get(key, 0)
                    if n < last and need > PAIR_SHRINK * last:
                        n = last
                    memo[key] = n
                p1 = np.zeros((len(found), n), np.int32)
                p2 = np.zeros((len(found), n), np.int32)
                valid = np.zeros((len(found), n))
                for k, (a, b) in enumerate(found):
                    p1[k, : len(a)] = a
                    p2[k, : len(b)] = b
                    valid[k, : len(a)] = 1.0
                per.append((p1, p2, valid))
        out.append(tuple(per))
    out = tuple(out)
    if memo is not None:
        memo["last"] = (same, out)
    return out


_FITTERS: dict = {}


def get_fitter(compiled: Compiled, thawed: np.ndarray) -> "Fitter":
    key = (compiled.plan, thawed.tobytes())
    f = _FITTERS.get(key)
    if f is None:
        if len(_FITTERS) > 64:
            _FITTERS.clear()
        f = _FITTERS[key] = Fitter(compiled, thawed)
    return f


class _FitGroup(NamedTuple):
    """Images of one image group that also share which calibration parameters are thawed."""

    ig: int  # image group
    pos: np.ndarray  # positions of these images within the image group
    cal_local: np.ndarray  # thawed calibration parameters (indices within an image's values)
    cal_t: np.ndarray  # (n, nc) their columns in the thawed system


class Fitter:
    """Jitted Gauss-Newton machinery for one plan and one set of thawed parameters.

    Images of a group are processed by ``lax.scan`` (one trace per group,
    however many images it holds).
    """

    def __init__(self, compiled: Compiled, thawed: np.ndarray):
        self.c = compiled
        plan = compiled.plan
        self.T = np.flatnonzero(thawed)
        self.nt = len(self.T)
        t_of = np.full(plan.n_theta, self.nt, dtype=np.int32)  # nt = "frozen" dump slot
        t_of[self.T] = np.arange(self.nt, dtype=np.int32)
        self.t_of = t_of
        # thawed columns of each source group, (n, k), and whether the group has any
        self.group_cols = [t_of[np.asarray(gp.idx, dtype=np.int64)] for gp in plan.groups]
        self.group_free = [bool((c < self.nt).any()) for c in self.group_cols]
        self.unit_cols = [self.group_cols[g] for g, _ in plan.units]
        self.unit_free = [self.group_free[g] for g, _ in plan.units]
        self.source_free = np.zeros(plan.n_src, bool)
        for gp, cols in zip(plan.groups, self.group_cols):
            self.source_free[np.asarray(gp.members)] = (cols < self.nt).any(axis=1)
        self.fit_groups = []
        for ig, ip in enumerate(plan.images):
            local = np.arange(ip.spec.size)
            by_mask: dict = {}
            for k, off in enumerate(ip.offsets):
                by_mask.setdefault(thawed[off + local].tobytes(), []).append(k)
            for pos in by_mask.values():
                pos = np.asarray(pos)
                cal_local = local[thawed[ip.offsets[pos[0]] + local]]
                offs = np.asarray(ip.offsets)[pos]
                cal_t = t_of[offs[:, None] + cal_local[None, :]]
                self.fit_groups.append(_FitGroup(ig, pos, cal_local, cal_t))
        #: every render unit covers its images pixel by pixel: stamp origins, pair lists and
        #: the plan itself do not depend on the values (see ``lm``)
        self.static = all(tuple(st) == tuple(ip.shape) and sp == 1
                          for ip in plan.images for st, sp in zip(ip.stamps, ip.steps))
        self.system = jax.jit(self._system)
        self._first = jax.jit(self._step_first)
        self.lm = jax.jit(self._lm)
        self._search = jax.jit(self._step_search)
        self.derivs = jax.jit(self._derivs)

    # --- pieces (one image: ig, its calibration values iv) ---
    def _source_jacobians(self, ig, iv, theta, w=None):
        """Per render unit: (J (n, k, ...) stamp derivatives, ox, oy, stamps (n, ...)) on
        native stamps (nodes of lattice units), or None (no thawed parameter).

        With the image's weights ``w``, J is weighted (J w) except for lattice units, and
        each unit is computed in a conditional whose outputs XLA must store: otherwise it
        fuses the Jacobian's computation (exps of every component) into each consumer
        (every pair block's gather) and recomputes it many times over.  Static plans have
        no such consumers (only matmuls, which read stored operands) and skip it.
        """
        c = self.c
        ip = c.plan.images[ig]
        out = []
        for u, (g, _) in enumerate(c.plan.units):
            if not self.unit_free[u]:
                out.append(None)
                continue
            ox, oy, _, _ = c.unit_origins(ig, u, iv, theta)
            f = c.stamp_fn(ig, u)
            Sy, Sx = ip.stamps[u]

            def unit(theta, iv, ox, oy, w, f=f, g=g, u=u, Sy=Sy, Sx=Sx):
                st, J = jax.vmap(lambda v, ox1, oy1: jvp_major(lambda v: f(v, iv, ox1, oy1), v))(
                    c.group_values(g, theta), ox, oy)
                if w is not None and not is_lattice(ip, u):
                    if (Sy, Sx) == tuple(ip.shape):
                        J = J * w
                    else:
                        J = J * mog.gather_stamps(w, ox, oy, Sy, Sx)[:, None]
                return st, J

            args = (theta, iv, ox, oy, w)
            with jax.named_scope(f"jacobian_unit{u}"):
                if w is None or self.static:  # (static: only matmuls consume J)
                    st, J = unit(*args)
                else:
                    st, J = _stored(unit, args, theta[0] == theta[0])
            out.append((J, ox, oy, st))
        return out

    def _cal_jacobian(self, fg, iv, theta):
        """d model / d thawed calibration parameters of one image: (nc, H, W), or None."""
        if len(fg.cal_local) == 0:
            return None
        cal = fg.cal_local

        def f(cv):
            return self.c.model_image(fg.ig, iv.at[cal].set(cv), theta)

        return jacfwd_major(f, iv[cal])

    def _fine(self, ig, u, J):
        """Native stamp Jacobians of unit u -> pixels (interpolated for lattice units)."""
        ip = self.c.plan.images[ig]
        if is_lattice(ip, u):
            return mog.upsample(J, ip.steps[u], *ip.stamps[u])
        return J

    def _log_prior(self, theta, pri):
        """Sum of the thawed parameters' log priors (-inf outside a prior's support)."""
        (tidx, mu, sig), others = pri
        lp = jnp.sum(-0.5 * ((theta[tidx] - mu) / sig) ** 2 - jnp.log(sig)) \
            - 0.5 * math.log(2 * math.pi) * len(mu)
        for idx, d in others:
            x = theta[idx]
            lp = lp + jnp.sum(jnp.where(d.support(x), d.log_prob(x), -jnp.inf))
        return lp

    def _image_terms(self, fg, carry, x, theta, want_A=True):
        """Add one image's J^T W J, J^T W r and log-likelihood to carry=(A, grad, lnl).

        ``want_A``: True, or a traced bool: the normal matrix's terms (Gram matrices, pair
        blocks, lattice normal products: most of the work) are then computed only where it
        is true (a conditional; where false A is passed through unchanged)."""
        A, grad, lnl = carry
        iv, d, w, pairs_i, ct = x
        c = self.c
        ip = c.plan.images[fg.ig]
        sjs = self._source_jacobians(fg.ig, iv, theta, w)
        given = [None if sj is None else (sj[3], sj[1], sj[2]) for sj in sjs]
        with jax.named_scope("model"):
            chi = (d - c.model_image(fg.ig, iv, theta, given=given)) * w
        lnl = lnl - 0.5 * jnp.sum(chi * chi)
        Jc = self._cal_jacobian(fg, iv, theta)
        acc = _Scatter()
        if Jc is not None:
            Jc = Jc * w
            acc.g(ct, jnp.einsum("ahw,hw->a", Jc, chi))
        units = []
        for u, sj in enumerate(sjs):
            if sj is None:
                units.append(None)
                continue
            with jax.named_scope(f"unit{u}"):
                units.append(self._unit_gradient(acc, ip, u, sj, w, chi))
        _, grad = acc.apply(None, grad)

        def normal_terms(A):
            acc = _Scatter()
            if Jc is not None:
                acc.A(ct[:, None], ct[None, :], jnp.einsum("ahw,bhw->ab", Jc, Jc))
            stamps = []
            for u, un in enumerate(units):
                if un is not None:
                    with jax.named_scope(f"unit{u}"):
                        un = self._unit_normal(acc, ip, u, un, w, Jc, ct, theta)
                stamps.append(un)
            self._add_pairs(acc, stamps, pairs_i, ip.shape)
            return acc.apply(A, None)[0]

        if want_A is True:
            A = normal_terms(A)
        else:
            A = jax.lax.cond(want_A, normal_terms, lambda A: A, A)
        return A, grad, lnl

    def _unit_gradient(self, acc, ip, u, sj, w, chi):
        """A render unit's gradient terms; returns its _Unit (Q not yet computed)."""
        J, ox, oy, _ = sj
        n, k = J.shape[:2]
        Sy, Sx = ip.stamps[u]
        cols = jnp.asarray(self.unit_cols[u])
        full = (Sy, Sx) == tuple(ip.shape)  # stamps cover the image: origins are 0
        w_st = w if full else mog.gather_stamps(w, ox, oy, Sy, Sx)
        if is_lattice(ip, u):
            # J: unweighted, on the unit's nodes; every sum over pixels of J times a pixel
            # image becomes a sum over nodes with the interpolation's adjoint U^T applied to
            # that image: J^T W r = J_nodes . U^T (w chi)
            wchi = mog.upsample_adjoint(w * chi, ip.steps[u], Sy, Sx)
            acc.g(cols, (J.reshape(n * k, -1) @ wchi.reshape(-1)).reshape(n, k))
            return _Unit(None, ox, oy, cols, full, w_st, J, None, ip.steps[u])
        if full:
            chi_st = chi.reshape(1, Sy * Sx, 1)
        else:
            chi_st = mog.gather_stamps(chi, ox, oy, Sy, Sx).reshape(n, Sy * Sx, 1)
        F = J.reshape(n, k, Sy * Sx)  # weighted already; flat stamps: XLA:CPU's fast path
        acc.g(cols, jnp.matmul(F, chi_st)[..., 0])
        return _Unit(J, ox, oy, cols, full, w_st, None, None, ip.steps[u])

    def _unit_normal(self, acc, ip, u, un, w, Jc, ct, theta):
        """A render unit's own terms of the normal matrix (Gram matrix, cross terms with
        thawed image parameters); returns its _Unit for the pair blocks (with Q)."""
        cols, full = un.cols, un.full
        cf = cols.reshape(-1)
        if un.Jl is not None:
            # the Gram matrix J^T W J = J_nodes . Q with Q = U^T (w^2 U J_nodes) (per column)
            Jl, step = un.Jl, un.step
            n, k = Jl.shape[:2]
            Sy, Sx = ip.stamps[u]
            Lf = Jl.reshape(n * k, -1)
            Q = _lattice_normal(Jl.reshape(n * k, *Jl.shape[2:]), w * w, step, Sy, Sx,
                                theta[0] == theta[0])
            acc.A(cf[:, None], cf[None, :], Lf @ Q.reshape(n * k, -1).T)
            if Jc is not None:
                D = mog.upsample_adjoint(Jc * w, step, Sy, Sx).reshape(Jc.shape[0], -1)
                cross = (Lf @ D.T).reshape(n, k, Jc.shape[0])
            un = un._replace(Q=Q)
        else:
            n, k, Sy, Sx = un.Jw.shape
            F = un.Jw.reshape(n, k, Sy * Sx)
            if full:  # every pair of members overlaps: one Gram matrix, pairs included
                Ff = F.reshape(n * k, Sy * Sx)
                acc.A(cf[:, None], cf[None, :], Ff @ Ff.T)
            else:
                acc.A(cols[:, :, None], cols[:, None, :], _gram(F, F))
            if Jc is not None:
                nc = Jc.shape[0]
                if full:
                    Jc_st = Jc.reshape(nc, Sy * Sx).T
                else:
                    Jc_st = jnp.swapaxes(mog.gather_stamps(Jc, un.ox, un.oy, Sy, Sx)
                                         .reshape(nc, n, Sy * Sx), 0, 1)
                    Jc_st = jnp.swapaxes(Jc_st, 1, 2)
                cross = jnp.matmul(F, Jc_st)  # (n, k, nc)
        if Jc is not None:
            acc.A(cols[:, :, None], ct[None, None, :], cross, sym=True)
        return un

    def _system(self, theta, data, weights, pairs, pri, want_A=True):
        """(A = J^T W J + prior, g = J^T W r + prior gradient, log-probability).

        ``data``, ``weights``: per image group stacks; ``pairs``: from build_pairs;
        ``want_A``: see _image_terms (where false, A holds only the priors' terms).
        """
        nt = self.nt
        carry = (jnp.zeros((nt + 1, nt + 1), theta.dtype), jnp.zeros(nt + 1, theta.dtype),
                 jnp.zeros((), theta.dtype))
        for fg in self.fit_groups:
            pos = fg.pos
            xs = (self.c.image_values(fg.ig, theta)[pos], data[fg.ig][pos], weights[fg.ig][pos],
                  tuple(tuple(a[pos] for a in pr) for pr in pairs[fg.ig]), jnp.asarray(fg.cal_t))

            def body(carry, x, fg=fg):
                return self._image_terms(fg, carry, x, theta, want_A), None

            if len(pos) == 1:  # no loop: XLA:CPU runs a loop body's fusions on one thread
                carry, _ = body(carry, jax.tree_util.tree_map(lambda a: a[0], xs))
            else:
                carry, _ = jax.lax.scan(body, carry, xs)
        A, grad, lnl = carry
        (tidx, mu, sig), others = pri
        pt = jnp.asarray(self.t_of)[tidx]
        A = A.at[pt, pt].add(1.0 / sig**2)
        grad = grad.at[pt].add((mu - theta[tidx]) / sig**2)
        for idx, d in others:  # elementwise: gradient and (clipped) curvature of log p
            def dlp(x, d=d):
                return jax.grad(lambda x: jnp.sum(d.log_prob(x)))(x)
            g1, g2 = jax.jvp(dlp, (theta[idx],), (jnp.ones(len(idx), theta.dtype),))
            pt = jnp.asarray(self.t_of)[idx]
            A = A.at[pt, pt].add(jnp.maximum(-g2, 0.0))
            grad = grad.at[pt].add(g1)
        lnp = lnl + self._log_prior(theta, pri)
        return A[:nt, :nt], grad[:nt], lnp

    def _add_pairs(self, acc, stamps, pairs_i, shape):
        """Blocks of pairs of sources in different stamps (pairs within a full-image unit are
        in its Gram matrix already)."""
        U = len(stamps)
        k = 0
        for u1 in range(U):
            for u2 in range(u1, U):
                p1, p2, valid = pairs_i[k]
                k += 1
                a, b = stamps[u1], stamps[u2]
                if a is None or b is None:
                    continue
                with jax.named_scope(f"pairs_unit{u1}_unit{u2}"):
                    self._pair_terms(acc, a, b, u1 == u2, p1, p2, valid, shape)

    def _pair_terms(self, acc, a, b, same, p1, p2, valid, shape):
        """Add the blocks of the pairs of sources of units a and b (``same``: one unit)."""
        if a.full and b.full:  # both cover the image: all pairs, no shifts
            if not same:  # (a unit's own pairs are in its Gram matrix already)
                B = _full_blocks(a, b, shape)
                acc.A(a.cols.reshape(-1)[:, None], b.cols.reshape(-1)[None, :], B, sym=True)
            return
        if a.full or b.full:  # one covers the image: every source of the other overlaps it
            if not b.full:
                a, b = b, a
            if b.Jl is not None:
                B = _blocks_with_lattice(a, b, shape)  # (na, ka, nb * kb)
            else:
                B = _blocks_with_full(a, b)
            acc.A(a.cols[:, :, None], b.cols.reshape(-1)[None, None, :], B, sym=True)
            return
        if p1.shape[0] == 0:
            return
        pa, pb = p1, p2
        if a.Jw.shape[2] * a.Jw.shape[3] > b.Jw.shape[2] * b.Jw.shape[3]:
            a, b, pa, pb = b, a, p2, p1  # sum over the smaller stamp's pixels
        B = _pair_blocks(a, b, pa, pb, valid)
        acc.A(a.cols[pa][:, :, None], b.cols[pb][:, None, :], B, sym=True)

    def log_prob(self, theta, data, weights, pri):
        """Log likelihood + Gaussian priors; -inf outside the parameters' legal domain."""
        lnp = self.c._loglik(theta, data, weights) + self._log_prior(theta, pri)
        return jnp.where(self.c.legal(theta), lnp, -jnp.inf)

    def step(self, theta, data, weights, pairs, pri, alphas, damp, factor=None):
        """One Gauss-Newton step with a line search.

        ``alphas``: step fractions tried in turn until one improves the
        log-probability; ``damp``: Levenberg-Marquardt damping added to the
        Jacobi-scaled normal matrix (0 = Gauss-Newton); ``factor``: None, or the
        ``factor`` an earlier step returned, to solve with that step's normal matrix
        instead of building one here (a chord step: only the gradient is computed; if
        its full step does not improve the log-probability, a fresh step is taken).
        Returns (theta_new, dlnp, X, alpha, lnp0, A, factor, size): X the full step on
        the thawed parameters, alpha the fraction taken (0 and theta unchanged if
        no fraction improved the log-probability), A the undamped normal matrix
        at theta (J^T W J + prior curvature: the inverse covariance; None after a
        chord step), factor the factorization used (None if not positive definite),
        size max |X_i| sqrt(A_ii): the step in units of the parameters' conditional
        standard deviations.

        The system, its solution and the first fraction are one jitted call; the other
        fractions (rarely needed) a second one, compiled only when first needed.
        """
        reuse = factor is not None
        if not reuse:
            factor = self._no_factor
        theta_new, dlnp, X, alpha, lnp0, A, L, d, ok, size = self._first(
            theta, data, weights, pairs, pri, alphas[:1], damp, reuse, *factor)
        if reuse:
            if not float(alpha) > 0:
                return self.step(theta, data, weights, pairs, pri, alphas, damp)
            A = None
        elif len(alphas) > 1 and not float(alpha) > 0:
            theta_new, dlnp, alpha = self._search(theta, data, weights, pri, alphas[1:],
                                                  X, lnp0)
        return theta_new, dlnp, X, alpha, lnp0, A, (L, d) if bool(ok) else None, size

    @property
    def _no_factor(self):
        z = self.__dict__.get("_zeros")
        if z is None:
            z = self._zeros = (jnp.zeros((self.nt, self.nt)), jnp.ones(self.nt))
        return z

    def _step_first(self, theta, data, weights, pairs, pri, alphas, damp, reuse, L, d):
        """System (only the gradient if ``reuse``: then L, d are the factorization to solve
        with), solution X and the log-probability at theta + alphas[0] X."""
        A, g, lnp0 = self._system(theta, data, weights, pairs, pri, want_A=~reuse)
        L, d, X = jax.lax.cond(reuse, lambda: (L, d, solve_factored(L, d, g)),
                               lambda: factor_solve(A, g, damp))
        T = jnp.asarray(self.T)
        lnp1 = self.log_prob(theta.at[T].add(alphas[0] * X), data, weights, pri)
        improved = lnp1 > lnp0
        alpha = jnp.where(improved, alphas[0], 0.0)
        theta_new = theta.at[T].add(alpha * X)
        size = jnp.max(jnp.abs(X) * d, initial=0.0)
        return (theta_new, jnp.where(improved, lnp1 - lnp0, 0.0), X, alpha, lnp0, A, L, d,
                jnp.all(jnp.isfinite(L)), size)

    def _lm(self, theta, data, weights, pairs, pri, damp, steps, tol):
        """``inference.fit_map``'s Levenberg-Marquardt loop in one program, for a ``static``
        plan (nothing between steps needs the host): full steps with damping ``damp``
        (/10 after an accepted step, *10 after a rejected one) until an accepted step gains
        less than ``tol`` or the damping exceeds 1e6, at most ``steps`` steps.

        Each iteration evaluates the system at the trial values, so the log-probability
        that decides on the step comes with the next step's normal equations (one render
        per step, and one program holding the system once).  Returns
        (n_steps, theta, converged, A, lnp, g): A the undamped normal matrix at the final
        values, lnp the log-probability there and g its gradient (thawed parameters)."""
        T = jnp.asarray(self.T)
        nt = self.nt

        def body(s):
            n, theta, A, g, lnp, lam, _ = s
            first = n == 0  # the system at the start: a zero step (A, g are zero)
            trial = theta.at[T].add(solve_normal(A, g, lam))
            A1, g1, lnp1 = self._system(trial, data, weights, pairs, pri)
            lnp1 = jnp.where(self.c.legal(trial), lnp1, -jnp.inf)
            ok = lnp1 > lnp  # NaN (a step out of the legal domain): rejected
            lam_new = jnp.where(ok, jnp.where(lam > 1e-9, lam / 10.0, 0.0),
                                jnp.maximum(lam * 10.0, 1e-6))
            done = ~first & jnp.where(ok, lnp1 - lnp < tol, lam_new > 1e6)
            theta, A, g, lnp = (jnp.where(ok, a, b) for a, b in
                                ((trial, theta), (A1, A), (g1, g), (lnp1, lnp)))
            return n + 1, theta, A, g, lnp, jnp.where(first, lam, lam_new), done

        init = (jnp.asarray(0), theta, jnp.zeros((nt, nt), theta.dtype),
                jnp.zeros(nt, theta.dtype), jnp.asarray(-jnp.inf, theta.dtype),
                jnp.asarray(damp, theta.dtype), jnp.asarray(False))
        n, theta, A, g, lnp, _, done = jax.lax.while_loop(
            lambda s: (s[0] <= steps) & ~s[6], body, init)
        return n - 1, theta, done, A, lnp, g

    def _step_search(self, theta, data, weights, pri, alphas, X, lnp0):
        """The line search over the other fractions: (theta_new, dlnp, alpha)."""
        T = jnp.asarray(self.T)

        def cond(state):
            j, best = state
            return (j < alphas.shape[0]) & ~(best > lnp0)

        def body(state):
            j, _ = state
            lnp = self.log_prob(theta.at[T].add(alphas[j] * X), data, weights, pri)
            return j + 1, lnp

        j, best = jax.lax.while_loop(cond, body, (0, -jnp.inf))
        improved = best > lnp0
        alpha = jnp.where(improved, alphas[jnp.maximum(j - 1, 0)], 0.0)
        theta_new = theta.at[T].add(alpha * X)
        return theta_new, jnp.where(improved, best - lnp0, 0.0), alpha

    def _derivs(self, theta):
        """Unweighted model derivatives, per fit group, stacked over its images:
        (per render unit (J, ox, oy) or None, calibration Jacobian or None)."""
        out = []
        for fg in self.fit_groups:
            ivs = self.c.image_values(fg.ig, theta)[fg.pos]
            out.append(jax.vmap(lambda iv, fg=fg: (
                tuple(None if sj is None else (self._fine(fg.ig, u, sj[0]),) + tuple(sj[1:3])
                      for u, sj in enumerate(self._source_jacobians(fg.ig, iv, theta))),
                self._cal_jacobian(fg, iv, theta)))(ivs))
        return tuple(out)

    @staticmethod
    def prior_arrays(priors, thawed):
        """The thawed parameters' priors: ((theta index, mu, sigma) arrays of the Gaussian
        ones, ((theta indices, batched distribution), ...) of the others)."""
        rows = [p for p in priors if thawed[p[0]]]
        gauss = [(i, float(d.loc), float(d.scale)) for i, d in rows if type(d) is Normal]
        others = tuple(group_priors([(i, d) for i, d in rows if type(d) is not Normal]))
        if not gauss:
            return (np.zeros(0, np.int32), np.zeros(0), np.ones(0)), others
        idx, mu, sig = zip(*gauss)
        return (np.asarray(idx, np.int32), np.asarray(mu, float), np.asarray(sig, float)), others


class _Scatter:
    """Contributions to the normal matrix and gradient of one image, added to them with one
    scatter each at the end (not a chain of many small scatters through A)."""

    def __init__(self):
        self.rows, self.cols, self.vals, self.gi, self.gv = [], [], [], [], []

    def A(self, r, c, v, sym=False):
        """A[r, c] += v (r, c broadcast against v); with ``sym`` also A[c, r] += v."""
        r, c = jnp.broadcast_to(r, v.shape).ravel(), jnp.broadcast_to(c, v.shape).ravel()
        self.rows.append(r)
        self.cols.append(c)
        self.vals.append(v.ravel())
        if sym:
            self.rows.append(c)
            self.cols.append(r)
            self.vals.append(v.ravel())

    def g(self, i, v):
        """grad[i] += v."""
        self.gi.append(jnp.broadcast_to(i, v.shape).ravel())
        self.gv.append(v.ravel())

    def apply(self, A, grad):
        if self.vals:
            A = A.at[jnp.concatenate(self.rows), jnp.concatenate(self.cols)].add(
                jnp.concatenate(self.vals))
        if self.gv:
            grad = grad.at[jnp.concatenate(self.gi)].add(jnp.concatenate(self.gv))
        return A, grad


class _Unit(NamedTuple):
    """A render unit's terms in one image, for the pair blocks."""

    Jw: object  # (n, k, Sy, Sx) weighted stamp Jacobians (None for lattice units)
    ox: object  # (n,) stamp origins
    oy: object
    cols: object  # (n, k) columns in the system
    full: bool  # stamps cover the image
    w: object  # (n, Sy, Sx) weights on the stamps ((H, W) if full)
    Jl: object  # lattice units: (n, k, ny, nx) unweighted Jacobians on the nodes, else None
    Q: object  # lattice units: U^T (w^2 U Jl), same shape
    step: int


def _full_blocks(a, b, shape):
    """Blocks (na * ka, nb * kb) between two units whose stamps cover the image."""
    if a.Jl is None and b.Jl is None:
        return a.Jw.reshape(-1, shape[0] * shape[1]) @ b.Jw.reshape(-1, shape[0] * shape[1]).T
    if a.Jl is None:
        return _full_blocks(b, a, shape).T
    H, W = shape
    La = a.Jl.reshape(-1, a.Jl.shape[2] * a.Jl.shape[3])
    if b.Jl is None:  # sum over pixels of (U Ja) w (w Jb) = Ja . U^T (w Jb w)
        D = mog.upsample_adjoint(b.Jw * b.w, a.step, H, W)
    elif b.step == a.step:
        D = b.Q
    else:
        D = mog.upsample_adjoint(b.w * b.w * mog.upsample(b.Jl, b.step, H, W), a.step, H, W)
    return La @ D.reshape(-1, La.shape[1]).T


def _lattice_normal(J, w2, step, Sy, Sx, pred):
    """U^T (w2 U J) for node images J (c, ny, nx) (U = mog.upsample: Uy along rows, Ux along
    columns), without building (c, Sy, Sx) pixel images: U^T diag(w2) U = (Ux^T x I) Mx
    (Ux x I) where, for each pixel column x, Mx = Uy^T diag(w2[:, x]) Uy is a 7-diagonal
    (ny, ny) matrix built from the weights alone.  ``pred``: true (see _stored)."""
    n0 = -(-Sy // step)
    ny = n0 + 3
    Wt = mog._lagrange_weights(step)  # (step, 4): weight of node i0 + s at pixel step i0 + r

    def diagonals(w2):  # Mx[p, p + dp] for dp = -3..3: (7, ny, Sx)
        w2p = jnp.pad(w2, ((0, n0 * step - Sy), (0, 0)))
        rows = [w2p[r::step] for r in range(step)]  # (n0, Sx) each: pixel rows step i0 + r
        out = []
        for dp in range(-3, 4):
            M = jnp.zeros((ny, Sx), w2.dtype)
            for s in range(max(0, -dp), min(4, 4 - dp)):
                T = sum(float(Wt[r, s] * Wt[r, s + dp]) * rows[r] for r in range(step))
                M = M + jnp.pad(T, ((s, ny - n0 - s), (0, 0)))
            out.append(M)
        return jnp.stack(out)

    def banded(M, J):  # Mx applied to the column-interpolated node images: (c, ny, Sx)
        Xp = jnp.pad(mog._upsample_axis(J, step, Sx, -1), ((0, 0), (3, 3), (0, 0)))
        return sum(M[dp + 3] * Xp[:, 3 + dp : 3 + dp + ny, :] for dp in range(-3, 4))

    # stored, not fused into their consumers (which would recompute them many times)
    M = _stored(diagonals, (w2,), pred)
    V = _stored(banded, (M, J), pred)
    return mog._upsample_adjoint_axis(V, step, Sx, -1)


def _phase_tables(step: int, size: int):
    """(step, size, m) matrices: row j of table phi holds the interpolation weights of pixel
    j of a stamp whose first pixel lies phi pixels past a lattice node, on the m nodes
    starting one node before it (see _blocks_with_lattice)."""
    w = mog._lagrange_weights(step)
    m = (size + step - 2) // step + 4
    R = np.zeros((step, size, m))
    for phi in range(step):
        for j in range(size):
            i0, r = divmod(phi + j, step)
            R[phi, j, i0 : i0 + 4] = w[r]
    return R, m


def _blocks_with_lattice(a, b, shape):
    """Blocks of every source of unit a with every source of lattice unit b (whole image,
    coarse nodes): (na, ka, nb * kb).

    sum over a's pixels of (w^2 Ja) (U Jb) = sum over b's nodes of (U^T w^2 Ja) Jb: a's
    weighted Jacobian is carried onto b's nodes by the adjoint of the interpolation U
    restricted to a's stamp (phase tables), and meets b's node Jacobians there.
    """
    Jw, oxa, oya = a.Jw, a.ox, a.oy
    na, ka, Sya, Sxa = Jw.shape
    nb, kb, NY, NX = b.Jl.shape
    step = b.step
    Ry, my = _phase_tables(step, Sya)
    Rx, mx = _phase_tables(step, Sxa)
    X = Jw * (a.w[:, None] if not a.full else a.w)  # w^2 Ja
    Rxi = jnp.asarray(Rx)[oxa % step]  # (na, Sxa, mx)
    Ryi = jnp.asarray(Ry)[oya % step]  # (na, Sya, my)
    D = jnp.matmul(X.reshape(na, ka * Sya, Sxa), Rxi).reshape(na, ka, Sya, mx)
    D = jnp.matmul(jnp.swapaxes(Ryi, 1, 2)[:, None], D)  # (na, ka, my, mx)
    H, W = shape
    pad_y = max(0, (H - Sya) // step + my - NY)
    pad_x = max(0, (W - Sxa) // step + mx - NX)
    Jl = jnp.pad(b.Jl.reshape(nb * kb, NY, NX), ((0, 0), (0, pad_y), (0, pad_x)))
    win = jax.vmap(lambda x, y: jax.lax.dynamic_slice(
        Jl, (jnp.zeros_like(y), y, x), (nb * kb, my, mx)))(oxa // step, oya // step)
    return _gram(D.reshape(na, ka, my * mx), win.reshape(na, nb * kb, my * mx))


def _stored(f, args, pred):
    """f(*args), computed once into stored buffers: a conditional (``pred`` is true; XLA
    cannot know) is a fusion boundary, which XLA:CPU keeps (it drops optimization
    barriers).  The other branch returns zeros."""
    shapes = jax.eval_shape(f, *args)

    def zeros(*_):
        return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    return jax.lax.cond(pred, f, zeros, *args)


def _gram(Fa, Fb):
    """(n, ka, P) x (n, kb, P) -> (n, ka, kb): per-source sums over stamp pixels."""
    return jnp.matmul(Fa, jnp.swapaxes(Fb, 1, 2))


#: relative cost per element of an element-wise gather vs. a block copy on XLA:CPU, for
#: choosing how pair blocks read the other stamp (measured; only speed depends on it)
GATHER_COST = 5.0


def _pair_blocks(a, b, pa, pb, valid):
    """sum over stamp a's pixels of Ja^T Jb for the listed pairs: (P, ka, kb).

    ``a``, ``b``: the _Unit terms of two render units.  Stamp b's weighted Jacobian is read
    at stamp a's pixels either as one block per pair (dynamic slice) from a copy of it
    padded with zeros, or, when that copy would cost more, element by element with
    clamped indices, masking stamp a's pixels that stamp b does not cover.
    """
    Ja, oxa, oya = a.Jw, a.ox, a.oy
    Jb, oxb, oyb = b.Jw, b.ox, b.oy
    ka, Sya, Sxa = Ja.shape[1:4]
    nb, kb, Syb, Sxb = Jb.shape
    P = pa.shape[0]
    dy, dx = oya[pa] - oyb[pb], oxa[pa] - oxb[pb]  # stamp a's origin within stamp b
    Fa = Ja[pa].reshape(P, ka, Sya * Sxa)
    if GATHER_COST * P * kb * Sya * Sxa < nb * kb * (Syb + 2 * Sya) * (Sxb + 2 * Sxa):
        ry = dy[:, None] + jnp.arange(Sya)
        rx = dx[:, None] + jnp.arange(Sxa)
        mask = ((ry >= 0) & (ry < Syb))[:, :, None] & ((rx >= 0) & (rx < Sxb))[:, None, :]
        ryc, rxc = jnp.clip(ry, 0, Syb - 1), jnp.clip(rx, 0, Sxb - 1)
        win = Jb[pb[:, None, None, None], jnp.arange(kb)[None, :, None, None],
                 ryc[:, None, :, None], rxc[:, None, None, :]]
        Fa = Fa * mask.reshape(P, 1, Sya * Sxa)
    else:
        Jb_pad = jnp.pad(Jb, ((0, 0), (0, 0), (Sya, Sya), (Sxa, Sxa)))
        y0 = jnp.clip(dy + Sya, 0, Syb + Sya)  # row/column of padded stamp b under a's first
        x0 = jnp.clip(dx + Sxa, 0, Sxb + Sxa)
        win = jax.vmap(lambda j, y, x: jax.lax.dynamic_slice(
            Jb_pad, (j, jnp.zeros_like(y), y, x), (1, kb, Sya, Sxa))[0])(pb, y0, x0)
    B = _gram(Fa, win.reshape(P, kb, Sya * Sxa))
    return B * valid[:, None, None]


def _blocks_with_full(a, b):
    """Blocks of every source of unit a with every source of a unit b whose stamps cover the
    whole image: (na, ka, nb * kb), sums over stamp a's pixels."""
    Ja, oxa, oya = a.Jw, a.ox, a.oy
    Jb = b.Jw
    na, ka, Sya, Sxa = Ja.shape
    nb, kb, H, W = Jb.shape
    Jb = Jb.reshape(nb * kb, H, W)
    win = jax.vmap(lambda x, y: jax.lax.dynamic_slice(Jb, (jnp.zeros_like(y), y, x), (nb * kb, Sya, Sxa)))(oxa, oya)
    return _gram(Ja.reshape(na, ka, Sya * Sxa), win.reshape(na, nb * kb, Sya * Sxa))


def jvp_major(f, x):
    """(f(x), Jacobian with the parameter axis first) in one forward pass (see jacfwd_major)."""
    basis = jnp.eye(x.shape[0], dtype=x.dtype)
    return jax.vmap(lambda t: jax.jvp(f, (x,), (t,)), out_axes=(None, 0))(basis)


def jacfwd_major(f, x):
    """Forward-mode Jacobian of f at x (1-D) with the parameter axis FIRST: (k, *f(x).shape).

    Same values as ``jnp.moveaxis(jax.jacfwd(f)(x), -1, 0)``; XLA:CPU is slow at
    moving a short parameter axis to the minor position, so it is never put there.
    """
    basis = jnp.eye(x.shape[0], dtype=x.dtype)
    return jax.vmap(lambda t: jax.jvp(f, (x,), (t,))[1])(basis)


def solve_normal(A, g, damp=0.0):
    """Solve (A + damp) x = g for a symmetric positive semi-definite A, robust to degeneracy
    (see factor_solve)."""
    return factor_solve(A, g, damp)[2]


def factor_solve(A, g, damp=0.0):
    """Solve (A + damp) x = g for a symmetric positive semi-definite A, robust to degeneracy:
    (L, d, x), L the Cholesky factor of the scaled matrix (NaN where not positive
    definite), d the scales (see solve_factored).

    Jacobi-scaled so that parameters of different units are comparable; ``damp``
    (Levenberg-Marquardt) plus a tiny ridge (1e-10) is added to the scaled
    diagonal, which damps exactly degenerate directions.
    """
    d = jnp.sqrt(jnp.diag(A))
    d = jnp.where(d > 0, d, 1.0)
    As = A / (d[:, None] * d[None, :]) + (1e-10 + damp) * jnp.eye(A.shape[0], dtype=A.dtype)
    if CHOLESKY_LAPACK_SMALL < A.shape[0] <= CHOLESKY_LOOP_MAX:
        y, L = _cho_solve_loop(As, g / d)
    else:
        L = jnp.linalg.cholesky(As)
        y = jax.scipy.linalg.cho_solve((L, True), g / d)
    y = jax.lax.cond(jnp.all(jnp.isfinite(y)), lambda: y,
                     lambda: jnp.linalg.lstsq(As, g / d)[0])
    return L, d, y / d


def solve_factored(L, d, g):
    """x with (A + damp) x = g, given factor_solve's (L, d) of A + damp."""
    if CHOLESKY_LAPACK_SMALL < L.shape[0] <= CHOLESKY_LOOP_MAX:
        return _substitute(L, g / d) / d
    return jax.scipy.linalg.cho_solve((L, True), g / d) / d


#: systems up to this size are solved by the Cholesky loops below rather than LAPACK:
#: LAPACK's (OpenBLAS) threads contend with XLA's own thread pool when called inside a
#: jitted program after multithreaded work, which made a 210x210 factorization take
#: 50-300 ms instead of 0.5 ms
CHOLESKY_LOOP_MAX = 1024
#: ... except systems this small, too small for LAPACK to use threads; its factorization
#: compiles in a third of the loops' time
CHOLESKY_LAPACK_SMALL = 16


def _cho_solve_loop(A, b):
    """Solve A x = b by Cholesky (A = L L^T, column by column) and two triangular
    substitutions, as XLA loops (NaN if A is not positive definite): (x, L)."""
    n = A.shape[0]
    idx = jnp.arange(n)

    def col(j, state):  # column j of L, then y_j of L y = b (row j of L is complete)
        L, y = state
        v = A[:, j] - L @ L[j, :]  # L's columns >= j are still zero
        cj = jnp.where(idx >= j, v / jnp.sqrt(v[j]), 0.0)
        L = L.at[:, j].set(cj)
        return L, y.at[j].set((b[j] - L[j, :] @ y) / cj[j])

    L, y = jax.lax.fori_loop(0, n, col, (jnp.zeros_like(A), jnp.zeros_like(b)))
    return _back_substitute(L, y), L


def _substitute(L, b):
    """Solve L L^T x = b for a lower triangular L, as XLA loops."""

    def forward(j, y):  # L y = b
        return y.at[j].set((b[j] - L[j, :] @ y) / L[j, j])

    return _back_substitute(L, jax.lax.fori_loop(0, L.shape[0], forward, jnp.zeros_like(b)))


def _back_substitute(L, y):
    """Solve L^T x = y for a lower triangular L, as an XLA loop."""
    n = L.shape[0]

    def back(k, x):
        i = n - 1 - k
        return x.at[i].set((y[i] - L[:, i] @ x) / L[i, i])

    return jax.lax.fori_loop(0, n, back, jnp.zeros_like(y))
