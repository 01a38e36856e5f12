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


def _bucket(n: int) -> int:
    return 0 if n == 0 else max(8, 1 << math.ceil(math.log2(n)))


def build_pairs(plan, origins, source_free):
    """Pairs of sources whose stamps overlap, per image and per pair of groups.

    ``origins``: what ``Compiled.origins`` returns (numpy); ``source_free``:
    bool (n_src,) whether a source has any thawed parameter.  Returns, per
    image, a tuple over (g1 <= g2) of (p1, p2, valid) int arrays, padded.
    """
    out = []
    G = len(plan.groups)
    for i, ip in enumerate(plan.images):
        per = []
        for g1 in range(G):
            for g2 in range(g1, G):
                S1, S2 = 2 * ip.radii[g1] + 1, 2 * ip.radii[g2] + 1
                ox1, oy1 = np.asarray(origins[i][g1][0]), np.asarray(origins[i][g1][1])
                ox2, oy2 = np.asarray(origins[i][g2][0]), np.asarray(origins[i][g2][1])
                dx = ox2[None, :] - ox1[:, None]
                dy = oy2[None, :] - oy1[:, None]
                m = PAIR_MARGIN
                ok = (dx < S1 + m) & (dx > -S2 - m) & (dy < S1 + m) & (dy > -S2 - m)
                f1 = source_free[np.asarray(plan.groups[g1].members)]
                f2 = source_free[np.asarray(plan.groups[g2].members)]
                ok &= f1[:, None] & f2[None, :]
                if g1 == g2:
                    ok &= np.triu(np.ones_like(ok), k=1)
                p1, p2 = np.nonzero(ok)
                n = _bucket(len(p1))
                pad = n - len(p1)
                valid = np.concatenate([np.ones(len(p1)), np.zeros(pad)])
                p1 = np.concatenate([p1, np.zeros(pad, int)]).astype(np.int32)
                p2 = np.concatenate([p2, np.zeros(pad, int)]).astype(np.int32)
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


class Fitter:
    """Jitted Gauss-Newton machinery for one plan and one set of thawed parameters."""

    def __init__(self, compiled: Compiled, thawed: np.ndarray):
        self.c = compiled
        plan = compiled.plan
        self.T = np.flatnonzero(thawed)
        self.nt = len(self.T)
        t_of = np.full(plan.n_theta, self.nt, dtype=np.int32)  # nt = "frozen" dump slot
        t_of[self.T] = np.arange(self.nt, dtype=np.int32)
        self.t_of = t_of
        # thawed columns of each group, (n, k), and whether the group has any
        self.group_cols = [t_of[np.asarray(gp.idx, dtype=np.int64)] for gp in plan.groups]
        self.group_free = [bool((c < self.nt).any()) for c in self.group_cols]
        self.cal = []
        for ip in plan.images:
            idx = np.arange(ip.offset, ip.offset + ip.spec.size)
            idx = idx[thawed[idx]]
            self.cal.append(idx)
        self.source_free = np.zeros(plan.n_src, bool)
        for gp, cols in zip(plan.groups, self.group_cols):
            self.source_free[np.asarray(gp.members)] = (cols < self.nt).any(axis=1)
        self.system = jax.jit(self._system)
        self.step = jax.jit(self._step)
        self.derivs = jax.jit(self._derivs)

    # --- pieces ---
    def _source_jacobians(self, i, theta):
        """Per group: (J (n,S,S,k) unweighted stamp derivatives, ox, oy)."""
        c = self.c
        ip = c.plan.images[i]
        img_vals = theta[ip.offset : ip.offset + ip.spec.size]
        out = []
        for g in range(len(c.plan.groups)):
            if not self.group_free[g]:
                out.append(None)
                continue
            ox, oy, _, _ = c.group_origins(i, g, theta)
            jac = jax.jacfwd(c.stamp_fn(i, g), argnums=0)
            J = jax.vmap(jac, (0, None, 0, 0))(c.group_values(g, theta), img_vals, ox, oy)
            out.append((J, ox, oy))
        return out

    def _cal_jacobian(self, i, theta):
        cal = self.cal[i]
        if len(cal) == 0:
            return None

        def f(cv):
            return self.c.model_image(i, theta.at[cal].set(cv))

        return jax.jacfwd(f)(theta[cal])  # (H, W, nc)

    def _log_prior(self, theta, pri):
        tidx, mu, sig = pri
        return -0.5 * jnp.sum(((theta[tidx] - mu) / sig) ** 2)

    def _system(self, theta, data, weights, pairs, pri):
        """(A = J^T W J + prior, g = J^T W r + prior gradient, log-probability)."""
        nt = self.nt
        A = jnp.zeros((nt + 1, nt + 1), theta.dtype)
        grad = jnp.zeros(nt + 1, theta.dtype)
        lnl = 0.0
        for i, ip in enumerate(self.c.plan.images):
            chi = (data[i] - self.c.model_image(i, theta)) * weights[i]
            lnl = lnl - 0.5 * jnp.sum(chi * chi)
            Jc = self._cal_jacobian(i, theta)
            if Jc is not None:
                ct = self.t_of[self.cal[i]]
                Jc = Jc * weights[i][..., None]
                A = A.at[ct[:, None], ct[None, :]].add(jnp.einsum("hwa,hwb->ab", Jc, Jc))
                grad = grad.at[ct].add(jnp.einsum("hwa,hw->a", Jc, chi))
            stamps = []
            for g, sj in enumerate(self._source_jacobians(i, theta)):
                if sj is None:
                    stamps.append(None)
                    continue
                J, ox, oy = sj
                S = J.shape[1]
                Jw = J * mog.gather_stamps(weights[i], ox, oy, S)[..., None]
                cols = self.group_cols[g]
                chi_st = mog.gather_stamps(chi, ox, oy, S)
                grad = grad.at[cols].add(jnp.einsum("nyxk,nyx->nk", Jw, chi_st))
                A = A.at[cols[:, :, None], cols[:, None, :]].add(
                    jnp.einsum("nyxa,nyxb->nab", Jw, Jw))
                if Jc is not None:
                    cross = jnp.einsum("nyxk,nyxc->nkc", Jw, mog.gather_stamps(Jc, ox, oy, S))
                    ct = self.t_of[self.cal[i]]
                    A = A.at[cols[:, :, None], ct[None, None, :]].add(cross)
                    A = A.at[ct[None, :, None], cols[:, None, :]].add(
                        jnp.swapaxes(cross, 1, 2))
                stamps.append((Jw, ox, oy, cols))
            A = self._add_pairs(A, stamps, pairs[i])
        tidx, mu, sig = pri
        pt = jnp.asarray(self.t_of)[tidx]
        A = A.at[pt, pt].add(1.0 / sig**2)
        grad = grad.at[pt].add((mu - theta[tidx]) / sig**2)
        lnp = lnl + self._log_prior(theta, pri)
        return A[:nt, :nt], grad[:nt], lnp

    def _add_pairs(self, A, stamps, pairs_i):
        G = len(stamps)
        k = 0
        for g1 in range(G):
            for g2 in range(g1, G):
                p1, p2, valid = pairs_i[k]
                k += 1
                if stamps[g1] is None or stamps[g2] is None or p1.shape[0] == 0:
                    continue
                J1, ox1, oy1, c1 = stamps[g1]
                J2, ox2, oy2, c2 = stamps[g2]
                S1, S2 = J1.shape[1], J2.shape[1]
                Ja, Jb = J1[p1], J2[p2]
                dx = ox2[p2] - ox1[p1]
                dy = oy2[p2] - oy1[p1]
                r = jnp.arange(S1)
                rows = r[None, :] - dy[:, None]  # row in stamp b of each row of stamp a
                cols = r[None, :] - dx[:, None]
                ok = (((rows >= 0) & (rows < S2))[:, :, None]
                      & ((cols >= 0) & (cols < S2))[:, None, :]
                      & (valid[:, None, None] > 0))
                P = jnp.arange(p1.shape[0])[:, None, None]
                Jb_shift = Jb[P, jnp.clip(rows, 0, S2 - 1)[:, :, None],
                              jnp.clip(cols, 0, S2 - 1)[:, None, :]]
                Jb_shift = jnp.where(ok[..., None], Jb_shift, 0.0)
                B = jnp.einsum("pyxa,pyxb->pab", Ja, Jb_shift)
                ca, cb = jnp.asarray(c1)[p1], jnp.asarray(c2)[p2]
                A = A.at[ca[:, :, None], cb[:, None, :]].add(B)
                A = A.at[cb[:, :, None], ca[:, None, :]].add(jnp.swapaxes(B, 1, 2))
        return A

    def log_prob(self, theta, data, weights, pri):
        """Log likelihood + Gaussian priors; -inf outside the parameters' legal domain."""
        lnp = self.c._loglik(theta, data, weights) + self._log_prior(theta, pri)
        return jnp.where(self.c.legal(theta), lnp, -jnp.inf)

    def _step(self, theta, data, weights, pairs, pri):
        """One Gauss-Newton step with a line search.

        Returns (theta_new, dlnp, X, alpha): X the full step on the thawed
        parameters, alpha the fraction taken (0 and theta unchanged if no
        fraction improved the log-probability).
        """
        A, g, lnp0 = self._system(theta, data, weights, pairs, pri)
        X = solve_normal(A, g)
        T = jnp.asarray(self.T)

        def lnp_at(alpha):
            return self.log_prob(theta.at[T].add(alpha * X), data, weights, pri)

        alphas = jnp.asarray(ALPHAS)

        def cond(state):
            j, best = state
            return (j < len(ALPHAS)) & ~(best > lnp0)

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
        """Unweighted model derivatives: per image, (per-group stamp Jacobians, cal Jacobian)."""
        return tuple(
            (tuple(self._source_jacobians(i, theta)), self._cal_jacobian(i, theta))
            for i in range(len(self.c.plan.images))
        )

    def prior_arrays(self, priors, thawed):
        rows = [p for p in priors if thawed[p[0]]]
        if not rows:
            return (np.zeros(0, np.int32), np.zeros(0), np.ones(0))
        idx, mu, sig = zip(*rows)
        return (np.asarray(idx, np.int32), np.asarray(mu, float), np.asarray(sig, float))


def solve_normal(A, g):
    """Solve A x = g for a symmetric positive semi-definite A, robust to degeneracy.

    Jacobi-scaled so that parameters of different units are comparable; a tiny
    ridge (1e-10 of the scaled diagonal) damps exactly degenerate directions.
    """
    d = jnp.sqrt(jnp.diag(A))
    d = jnp.where(d > 0, d, 1.0)
    As = A / (d[:, None] * d[None, :]) + 1e-10 * jnp.eye(A.shape[0], dtype=A.dtype)
    L = jnp.linalg.cholesky(As)
    y = jax.scipy.linalg.cho_solve((L, True), g / d)
    y = jax.lax.cond(jnp.all(jnp.isfinite(y)), lambda: y,
                     lambda: jnp.linalg.lstsq(As, g / d)[0])
    return y / d
