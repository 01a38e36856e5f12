"""Linearized least squares on the render core: Gauss-Newton steps with a line search.

The Jacobian is never a dense pixels x parameters matrix.  Each source's
derivatives are computed on its own stamp (``vmap`` of ``jacfwd`` over the
sources of a kind), and the normal matrix J^T W J is assembled from

- per-source diagonal blocks (stamp x stamp),
- blocks for pairs of sources whose stamps overlap (a list built from the
  current stamp origins, padded to a power-of-two length so that it rarely
  changes shape),
- dense columns only for thawed image calibration parameters (sky, PSF, WCS),
  which touch every pixel, and their cross terms with the stamps.

Gaussian priors add their own residuals.  ``Fitter.step`` runs one complete
step (system, solve, line search over alpha) inside one jitted call.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .render import mog
from .scene import Compiled

__all__ = ["Fitter", "get_fitter", "build_pairs"]

#: extra pixels of stamp overlap tolerated when listing source pairs, so that a
#: pair list stays valid while sources move a little during a fit
PAIR_MARGIN = 2

#: line search: step fractions tried in turn until the log-probability improves
ALPHAS = (1.0, 0.5, 0.25, 0.1, 0.03, 0.01, 1e-3, 1e-4)


def _bucket(n: int, possible: bool) -> int:
    """Padded length of a pair list: a power of two >= 8 (0 only if no pair can exist), so
    that sources drifting into or out of overlap rarely change shapes (and retrace)."""
    if not possible:
        return 0
    return max(8, 1 << math.ceil(math.log2(max(n, 1))))


def build_pairs(plan, origins, source_free):
    """Pairs of sources whose stamps overlap, per image group and pair of render units.

    ``origins``: what ``Compiled.origins`` returns (numpy); ``source_free``:
    bool (n_src,) whether a source has any thawed parameter.  Returns, per
    image group, a tuple over units (u1 <= u2) of (p1, p2, valid) arrays of shape
    (n_images_in_group, P), padded to a common power-of-two length P.
    """
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
                possible = bool(f1.any() and f2.any()) and (u1 != u2 or f1.sum() >= 2)
                n = _bucket(max(len(p[0]) for p in found), possible)
                p1 = np.zeros((len(found), n), np.int32)
                p2 = np.zeros((len(found), n), np.int32)
                valid = np.zeros((len(found), n))
                for k, (a, b) in enumerate(found):
                    p1[k, : len(a)] = a
                    p2[k, : len(b)] = b
                    valid[k, : len(a)] = 1.0
                per.append((p1, p2, valid))
        out.append(tuple(per))
    return tuple(out)


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
        self.system = jax.jit(self._system)
        self.step = jax.jit(self._step)
        self.derivs = jax.jit(self._derivs)

    # --- pieces (one image: ig, its calibration values iv) ---
    def _source_jacobians(self, ig, iv, theta):
        """Per render unit: (J (n, Sy, Sx, k) unweighted stamp derivatives, ox, oy) or None."""
        c = self.c
        out = []
        for u, (g, _) in enumerate(c.plan.units):
            if not self.unit_free[u]:
                out.append(None)
                continue
            ox, oy, _, _ = c.unit_origins(ig, u, iv, theta)
            jac = jax.jacfwd(c.stamp_fn(ig, u), argnums=0)
            J = jax.vmap(jac, (0, None, 0, 0))(c.group_values(g, theta), iv, ox, oy)
            out.append((J, ox, oy))
        return out

    def _cal_jacobian(self, fg, iv, theta):
        """d model / d thawed calibration parameters of one image: (H, W, nc), or None."""
        if len(fg.cal_local) == 0:
            return None
        cal = fg.cal_local

        def f(cv):
            return self.c.model_image(fg.ig, iv.at[cal].set(cv), theta)

        return jax.jacfwd(f)(iv[cal])

    def _log_prior(self, theta, pri):
        tidx, mu, sig = pri
        return -0.5 * jnp.sum(((theta[tidx] - mu) / sig) ** 2)

    def _image_terms(self, fg, carry, x, theta):
        """Add one image's J^T W J, J^T W r and log-likelihood to carry=(A, grad, lnl)."""
        A, grad, lnl = carry
        iv, d, w, pairs_i, ct = x
        c = self.c
        ip = c.plan.images[fg.ig]
        chi = (d - c.model_image(fg.ig, iv, theta)) * w
        lnl = lnl - 0.5 * jnp.sum(chi * chi)
        Jc = self._cal_jacobian(fg, iv, theta)
        if Jc is not None:
            Jc = Jc * w[..., None]
            A = A.at[ct[:, None], ct[None, :]].add(jnp.einsum("hwa,hwb->ab", Jc, Jc))
            grad = grad.at[ct].add(jnp.einsum("hwa,hw->a", Jc, chi))
        stamps = []
        for u, sj in enumerate(self._source_jacobians(fg.ig, iv, theta)):
            if sj is None:
                stamps.append(None)
                continue
            J, ox, oy = sj
            Sy, Sx = ip.stamps[u]
            Jw = J * mog.gather_stamps(w, ox, oy, Sy, Sx)[..., None]
            cols = self.unit_cols[u]
            chi_st = mog.gather_stamps(chi, ox, oy, Sy, Sx)
            grad = grad.at[cols].add(jnp.einsum("nyxk,nyx->nk", Jw, chi_st))
            A = A.at[cols[:, :, None], cols[:, None, :]].add(jnp.einsum("nyxa,nyxb->nab", Jw, Jw))
            if Jc is not None:
                cross = jnp.einsum("nyxk,nyxc->nkc", Jw, mog.gather_stamps(Jc, ox, oy, Sy, Sx))
                A = A.at[cols[:, :, None], ct[None, None, :]].add(cross)
                A = A.at[ct[None, :, None], cols[:, None, :]].add(jnp.swapaxes(cross, 1, 2))
            stamps.append((Jw, ox, oy, cols))
        A = self._add_pairs(A, stamps, pairs_i, ip.shape)
        return A, grad, lnl

    def _system(self, theta, data, weights, pairs, pri):
        """(A = J^T W J + prior, g = J^T W r + prior gradient, log-probability).

        ``data``, ``weights``: per image group stacks; ``pairs``: from build_pairs.
        """
        nt = self.nt
        carry = (jnp.zeros((nt + 1, nt + 1), theta.dtype), jnp.zeros(nt + 1, theta.dtype),
                 jnp.zeros((), theta.dtype))
        for fg in self.fit_groups:
            pos = fg.pos
            xs = (self.c.image_values(fg.ig, theta)[pos], data[fg.ig][pos], weights[fg.ig][pos],
                  tuple(tuple(a[pos] for a in pr) for pr in pairs[fg.ig]), jnp.asarray(fg.cal_t))

            def body(carry, x, fg=fg):
                return self._image_terms(fg, carry, x, theta), None

            carry, _ = jax.lax.scan(body, carry, xs)
        A, grad, lnl = carry
        tidx, mu, sig = pri
        pt = jnp.asarray(self.t_of)[tidx]
        A = A.at[pt, pt].add(1.0 / sig**2)
        grad = grad.at[pt].add((mu - theta[tidx]) / sig**2)
        lnp = lnl + self._log_prior(theta, pri)
        return A[:nt, :nt], grad[:nt], lnp

    def _add_pairs(self, A, stamps, pairs_i, shape):
        U = len(stamps)
        k = 0
        for u1 in range(U):
            for u2 in range(u1, U):
                p1, p2, valid = pairs_i[k]
                k += 1
                if stamps[u1] is None or stamps[u2] is None or p1.shape[0] == 0:
                    continue
                a, b = stamps[u1], stamps[u2]
                pa, pb = p1, p2
                if a[0].shape[1] * a[0].shape[2] > b[0].shape[1] * b[0].shape[2]:
                    a, b, pa, pb = b, a, p2, p1  # sum over the smaller stamp's pixels
                if a[0].shape[1:3] == b[0].shape[1:3] == tuple(shape):
                    B = _pair_blocks_full(a, b, pa, pb, valid)
                else:
                    B = _pair_blocks(a, b, pa, pb, valid)
                ca, cb = jnp.asarray(a[3])[pa], jnp.asarray(b[3])[pb]
                A = A.at[ca[:, :, None], cb[:, None, :]].add(B)
                A = A.at[cb[:, :, None], ca[:, None, :]].add(jnp.swapaxes(B, 1, 2))
        return A

    def log_prob(self, theta, data, weights, pri):
        """Log likelihood + Gaussian priors; -inf outside the parameters' legal domain."""
        lnp = self.c._loglik(theta, data, weights) + self._log_prior(theta, pri)
        return jnp.where(self.c.legal(theta), lnp, -jnp.inf)

    def _step(self, theta, data, weights, pairs, pri, alphas, damp):
        """One Gauss-Newton step with a line search.

        ``alphas``: step fractions tried in turn until one improves the
        log-probability; ``damp``: Levenberg-Marquardt damping added to the
        Jacobi-scaled normal matrix (0 = Gauss-Newton).
        Returns (theta_new, dlnp, X, alpha, lnp0): X the full step on the
        thawed parameters, alpha the fraction taken (0 and theta unchanged if
        no fraction improved the log-probability).
        """
        A, g, lnp0 = self._system(theta, data, weights, pairs, pri)
        X = solve_normal(A, g, damp)
        T = jnp.asarray(self.T)

        def lnp_at(alpha):
            return self.log_prob(theta.at[T].add(alpha * X), data, weights, pri)

        def cond(state):
            j, best = state
            return (j < alphas.shape[0]) & ~(best > lnp0)

        def body(state):
            j, _ = state
            return j + 1, lnp_at(alphas[j])

        j, best = jax.lax.while_loop(cond, body, (0, -jnp.inf))
        improved = best > lnp0
        alpha = jnp.where(improved, alphas[jnp.maximum(j - 1, 0)], 0.0)
        theta_new = theta.at[T].add(alpha * X)
        dlnp = jnp.where(improved, best - lnp0, 0.0)
        return theta_new, dlnp, X, alpha, lnp0

    def _derivs(self, theta):
        """Unweighted model derivatives, per fit group, stacked over its images:
        (per render unit (J, ox, oy) or None, calibration Jacobian or None)."""
        out = []
        for fg in self.fit_groups:
            ivs = self.c.image_values(fg.ig, theta)[fg.pos]
            out.append(jax.vmap(lambda iv, fg=fg: (
                tuple(self._source_jacobians(fg.ig, iv, theta)),
                self._cal_jacobian(fg, iv, theta)))(ivs))
        return tuple(out)

    def prior_arrays(self, priors, thawed):
        rows = [p for p in priors if thawed[p[0]]]
        if not rows:
            return (np.zeros(0, np.int32), np.zeros(0), np.ones(0))
        idx, mu, sig = zip(*rows)
        return (np.asarray(idx, np.int32), np.asarray(mu, float), np.asarray(sig, float))


def _pair_blocks(a, b, pa, pb, valid):
    """sum over stamp a's pixels of Ja^T Jb for the listed pairs: (P, ka, kb).

    ``a``, ``b``: (weighted J (n, Sy, Sx, k), ox, oy, cols) of two render units;
    stamp b's Jacobian is read at stamp a's pixels (0 where b has no stamp) by a
    windowed gather from a zero-padded copy of it.
    """
    Ja, oxa, oya, _ = a
    Jb, oxb, oyb, _ = b
    Sya, Sxa = Ja.shape[1:3]
    Syb, Sxb, kb = Jb.shape[1:4]
    Jb_pad = jnp.pad(Jb, ((0, 0), (Sya, Sya), (Sxa, Sxa), (0, 0)))
    # row/column of padded stamp b that lies under stamp a's first pixel
    y0 = jnp.clip(oya[pa] - oyb[pb] + Sya, 0, Syb + Sya)
    x0 = jnp.clip(oxa[pa] - oxb[pb] + Sxa, 0, Sxb + Sxa)
    win = jax.vmap(lambda j, y, x: jax.lax.dynamic_slice(Jb_pad[j], (y, x, jnp.zeros_like(y)), (Sya, Sxa, kb)))(
        pb, y0, x0)
    return jnp.einsum("pyxa,pyxb->pab", Ja[pa], win) * valid[:, None, None]


def _pair_blocks_full(a, b, pa, pb, valid):
    """As _pair_blocks when both stamps cover the whole image (same pixels, no shift)."""
    return jnp.einsum("pyxa,pyxb->pab", a[0][pa], b[0][pb]) * valid[:, None, None]


def solve_normal(A, g, damp=0.0):
    """Solve (A + damp) x = g for a symmetric positive semi-definite A, robust to degeneracy.

    Jacobi-scaled so that parameters of different units are comparable; ``damp``
    (Levenberg-Marquardt) plus a tiny ridge (1e-10) is added to the scaled
    diagonal, which damps exactly degenerate directions.
    """
    d = jnp.sqrt(jnp.diag(A))
    d = jnp.where(d > 0, d, 1.0)
    As = A / (d[:, None] * d[None, :]) + (1e-10 + damp) * jnp.eye(A.shape[0], dtype=A.dtype)
    L = jnp.linalg.cholesky(As)
    y = jax.scipy.linalg.cho_solve((L, True), g / d)
    y = jax.lax.cond(jnp.all(jnp.isfinite(y)), lambda: y,
                     lambda: jnp.linalg.lstsq(As, g / d)[0])
    return y / d
