"""Mixture-of-Gaussians (MoG) fits to circular Sersic profiles: the library behind ``fit_profiles.py``.

Conventions (used everywhere in ``models/`` and in ``tractor_prob/profiles.py``):

* radii are in units of the half-light radius r_e, so variances are in units of r_e**2;
* the exact profile has unit total flux: I(r) = A exp(-b_n r**(1/n)) with
  b_n = gammaincinv(2n, 1/2) and A = b_n**(2n) / (2 pi n Gamma(2n));
* a mixture is ``(amps, vars)``: component k is a circular 2-D Gaussian of total flux
  ``amps[k]`` and variance ``vars[k]`` per axis, i.e. the profile is
  sum_k amps[k] / (2 pi vars[k]) exp(-r**2 / (2 vars[k])).  ``sum(amps)`` is the fraction of the
  exact profile's total flux that the mixture carries (the far wings are not represented).

Nothing here uses JAX: the fits are plain numpy/scipy and deterministic (fixed initialisations,
no random numbers).  See ``models/README.md`` for the derivation.
"""

from __future__ import annotations

import numpy as np
from scipy.interpolate import BSpline
from scipy.optimize import least_squares
from scipy.special import gammainc, gammainccinv, gammaincinv, gammaln, i0e

# ----------------------------------------------------------------------------------------------
# Exact profile
# ----------------------------------------------------------------------------------------------


def sersic_b(n):
    """b_n such that r = 1 (= r_e) encloses half of the total flux."""
    return gammaincinv(2.0 * np.asarray(n, float), 0.5)


def sersic_intensity(r, n):
    """Exact Sersic surface brightness I(r) at radius r (units of r_e), unit total flux."""
    r = np.asarray(r, float)
    b = sersic_b(n)
    log_a = 2.0 * n * np.log(b) - np.log(2.0 * np.pi * n) - gammaln(2.0 * n)
    return np.exp(log_a - b * r ** (1.0 / n))


def sersic_enclosed(r, n):
    """Exact flux of the unit-flux Sersic profile inside radius r."""
    return gammainc(2.0 * n, sersic_b(n) * np.asarray(r, float) ** (1.0 / n))


def sersic_radius_outside(frac, n):
    """Radius (units of r_e) outside which the exact profile has a fraction ``frac`` of its flux."""
    return float((gammainccinv(2.0 * n, frac) / sersic_b(n)) ** n)


def convolved_profile(R, intensity, s, npts=4000):
    """Radial profile of a circular profile ``intensity(r)`` convolved with a Gaussian of sigma s.

    (I * G_s)(R) = int_0^inf I(r) (r / s^2) exp(-(R - r)^2 / (2 s^2)) i0e(R r / s^2) dr,
    integrated with the trapezoidal rule in u = ln r over [ln max(R - 20 s, 1e-14), ln(R + 20 s)]
    (spectrally accurate for smooth profiles: the integrand is smooth in u and negligible at both
    ends; checked against the Gaussian case n = 1/2 to 1e-14 relative).
    """
    R = np.atleast_1d(np.asarray(R, float))
    lo = np.log(np.maximum(R - 20.0 * s, 1e-14))
    hi = np.log(R + 20.0 * s)
    t = np.linspace(0.0, 1.0, npts)
    out = np.empty(len(R))
    for i0 in range(0, len(R), 64):  # chunks keep memory small
        sl = slice(i0, i0 + 64)
        u = lo[sl, None] + (hi[sl] - lo[sl])[:, None] * t[None, :]
        r = np.exp(u)
        Rr = R[sl, None]
        f = intensity(r) * (r * r / (s * s)) * np.exp(-((Rr - r) ** 2) / (2 * s * s)) \
            * i0e(Rr * r / (s * s))
        du = (hi[sl] - lo[sl]) / (npts - 1)
        out[sl] = (f.sum(1) - 0.5 * (f[:, 0] + f[:, -1])) * du
    return out


def sersic_convolved(R, n, s, npts=4000):
    """Exact unit-flux Sersic(n) profile convolved with a circular Gaussian of sigma s (r_e units)."""
    return convolved_profile(R, lambda r: sersic_intensity(r, n), s, npts)


# ----------------------------------------------------------------------------------------------
# Mixtures
# ----------------------------------------------------------------------------------------------


def mog_intensity(r, amps, vars_, s=0.0):
    """Radial profile of the mixture, optionally convolved with a circular Gaussian of sigma s."""
    r = np.asarray(r, float)[..., None]
    v = np.asarray(vars_, float) + s * s
    return np.sum(np.asarray(amps) / (2 * np.pi * v) * np.exp(-r * r / (2 * v)), -1)


def mog_enclosed(r, amps, vars_):
    """Flux of the mixture inside radius r."""
    r = np.asarray(r, float)[..., None]
    return np.sum(np.asarray(amps) * -np.expm1(-r * r / (2 * np.asarray(vars_))), -1)


def half_light_radius(amps, vars_, total=1.0):
    """Radius enclosing ``total / 2`` of the flux (``total=1``: half the exact profile's flux)."""
    lo, hi = 1e-3, 1e3
    for _ in range(200):
        mid = np.sqrt(lo * hi)
        if mog_enclosed(mid, amps, vars_) < 0.5 * total:
            lo = mid
        else:
            hi = mid
    return np.sqrt(lo * hi)


# ----------------------------------------------------------------------------------------------
# The objective
# ----------------------------------------------------------------------------------------------

#: Everything that defines the fits.  Changing any value changes the tables: regenerate.
CONFIG = {
    # image-level term: Gaussian PSF sigmas (units of r_e) probed; 0.02 r_e = a PSF of FWHM 2 px
    # on a galaxy of r_e = 40 px (twice the largest r_e the issue asks for)
    "s_min": 0.02,
    "s_max": 3.0,
    "n_s": 8,
    "tol_peak": 5e-4,  # target |model - exact| / peak of the convolved profile
    "tol_flux": 5e-4,  # target |enclosed flux error| (fraction of the total flux)
    "tol_prof": 2e-3,  # target error in flux per ln r of the unconvolved profile
    "r_min": 1e-3,  # innermost radius of the unconvolved-profile term
    "miss": 1e-3,  # fit out to the radius outside which the exact profile has this flux fraction
    "n_core": 8,  # radii per PSF sigma block inside R < 2 s
    "n_outer": 40,  # log-spaced radii per PSF sigma block from 2 s to r_out
    "n_prof": 150,
    "n_fluxrows": 60,
    # dedicated mixtures
    "K_exp": 8,
    "K_dev": 10,
    # Sersic mixture: K components, cubic B-splines in ln n
    "K_ser": 12,
    "n_lo": 0.5,
    "n_hi": 6.2,
    "n_intervals": 20,  # spline intervals in ln n ...
    "knot_power": 2.0,  # ... breakpoints at ln n_lo + (ln n_hi - ln n_lo) (j / n_intervals)**knot_power
    "grid_per_interval": 4,  # fit n values per interval (plus the end)
    "smooth": 1e-3,  # weight of the second-difference penalty on the spline coefficients
    "chain_prior": 1e-2,  # weight tying each chain fit to its neighbour (identity of components)
    "joint_max_iter": 200,
    "joint_rtol": 1e-4,
}


def targets(n, cfg=CONFIG):
    """Rows of the objective at Sersic index n.

    Returns a dict with "density" rows (radius R, added PSF variance s2, exact value, weight)
    and "flux" rows (radius, exact enclosed flux, weight).  Density rows are
    (a) the profile convolved with Gaussians of sigma s in [s_min, s_max], errors relative to the
        convolved peak (what a PSF-convolved image of the galaxy sees), for R in [0, r_out];
    (b) the unconvolved profile (s2 = 0), errors in flux per ln r, 2 pi r^2 dI, r in [r_min, r_out].
    Flux rows are the enclosed flux F(<R), R in [0.01, r_out].
    """
    r_out = sersic_radius_outside(cfg["miss"], n)
    R_, S2, T, W = [], [], [], []
    ns = cfg["n_s"]
    for s in np.geomspace(cfg["s_min"], cfg["s_max"], ns):
        R = np.concatenate([
            np.linspace(0.0, 2 * s, cfg["n_core"], endpoint=False),
            np.geomspace(2 * s, max(r_out, 10 * s), cfg["n_outer"]),
        ])
        ce = sersic_convolved(R, n, s)
        R_.append(R)
        S2.append(np.full(len(R), s * s))
        T.append(ce)
        W.append(np.full(len(R), 1.0 / (ce[0] * cfg["tol_peak"] * np.sqrt(len(R) * ns))))
    r = np.geomspace(cfg["r_min"], r_out, cfg["n_prof"])
    R_.append(r)
    S2.append(np.zeros(len(r)))
    T.append(sersic_intensity(r, n))
    W.append(2 * np.pi * r * r / (cfg["tol_prof"] * np.sqrt(len(r))))
    rf = np.geomspace(0.01, r_out, cfg["n_fluxrows"])
    return {
        "n": float(n), "r_out": r_out,
        "R": np.concatenate(R_), "s2": np.concatenate(S2), "t": np.concatenate(T),
        "w": np.concatenate(W),
        "rf": rf, "tf": sersic_enclosed(rf, n),
        "wf": np.full(len(rf), 1.0 / (cfg["tol_flux"] * np.sqrt(len(rf)))),
    }


def residuals(x, T, jac=False):
    """Weighted residuals (and Jacobian w.r.t. x = [ln amps, ln vars]) of a mixture at one n."""
    K = len(x) // 2
    a, v = np.exp(x[:K]), np.exp(x[K:])
    vv = v[None, :] + T["s2"][:, None]
    q = T["R"][:, None] ** 2 / (2 * vv)
    g = a / (2 * np.pi * vv) * np.exp(-q)
    e = np.exp(-T["rf"][:, None] ** 2 / (2 * v))
    res = np.concatenate([T["w"] * (g.sum(1) - T["t"]), T["wf"] * ((a * (1 - e)).sum(1) - T["tf"])])
    if not jac:
        return res
    Jd = T["w"][:, None] * np.concatenate([g, g * (q - 1) * (v / vv)], 1)
    Jf = T["wf"][:, None] * np.concatenate([a * (1 - e), -a * e * T["rf"][:, None] ** 2 / (2 * v)], 1)
    return res, np.concatenate([Jd, Jf], 0)


def fit_one(T, x0, prior=None, prior_weight=0.0):
    """Levenberg-Marquardt (MINPACK) fit of one mixture to the rows ``T`` from start ``x0``.

    With ``prior`` (a parameter vector) rows ``sqrt(prior_weight) (x - prior)`` are added: a weak
    tie that keeps components in place where the fit is degenerate.
    """
    def fun(x):
        r = residuals(x, T)
        return r if prior is None else np.concatenate([r, np.sqrt(prior_weight) * (x - prior)])

    def jac(x):
        J = residuals(x, T, jac=True)[1]
        return J if prior is None else np.concatenate([J, np.sqrt(prior_weight) * np.eye(len(x))])

    sol = least_squares(fun, x0, jac=jac, method="lm", xtol=1e-13, ftol=1e-13, gtol=1e-13,
                        max_nfev=4000)
    return sol.x, float(np.sum(residuals(sol.x, T) ** 2))


def start_points(K, r_out):
    """Deterministic starting mixtures: equal amplitudes, log-spaced variances (3 inner limits)."""
    out = []
    for vlo in (1e-5, 1e-4, 1e-3):
        v0 = np.geomspace(vlo, (r_out / 3.0) ** 2, K)
        out.append(np.concatenate([np.full(K, np.log(1.0 / K)), np.log(v0)]))
    return out


def sort_components(x):
    K = len(x) // 2
    o = np.argsort(x[K:])
    return np.concatenate([x[:K][o], x[K:][o]])


def fit_dedicated(n, K, cfg=CONFIG):
    """Best of the deterministic starts for a fixed-n mixture; returns (amps, vars, cost)."""
    T = targets(n, cfg)
    best = None
    for x0 in start_points(K, T["r_out"]):
        x, c = fit_one(T, x0)
        if best is None or c < best[1]:
            best = (x, c)
    x = sort_components(best[0])
    return np.exp(x[:K]), np.exp(x[K:]), best[1]


# ----------------------------------------------------------------------------------------------
# Sersic mixture smooth in n: cubic B-splines in ln n
# ----------------------------------------------------------------------------------------------


def spline_knots(cfg=CONFIG):
    """Breakpoints in x = ln n and the clamped cubic knot vector.

    The breakpoints crowd towards n_lo = 1/2, where the profile becomes a single Gaussian and the
    components merge (their parameters vary like sqrt(n - 1/2) there).
    """
    u = np.linspace(0.0, 1.0, cfg["n_intervals"] + 1) ** cfg["knot_power"]
    br = np.log(cfg["n_lo"]) + (np.log(cfg["n_hi"]) - np.log(cfg["n_lo"])) * u
    t = np.concatenate([[br[0]] * 3, br, [br[-1]] * 3])
    return br, t


def fit_grid(cfg=CONFIG):
    """The n values at which the joint objective is evaluated (includes all breakpoints)."""
    br, _ = spline_knots(cfg)
    m = cfg["grid_per_interval"]
    x = np.concatenate([np.linspace(br[i], br[i + 1], m, endpoint=False) for i in range(len(br) - 1)]
                       + [br[-1:]])
    return np.exp(x)


def chain_fit(ns, Ts, K, cfg=CONFIG, log=print):
    """Fits at each n of ``ns`` (descending), each started from (and weakly tied to) the previous."""
    xs = [None] * len(ns)
    best = None
    for x0 in start_points(K, Ts[0]["r_out"]):
        x, c = fit_one(Ts[0], x0)
        if best is None or c < best[1]:
            best = (x, c)
    xs[0] = sort_components(best[0])
    for i in range(1, len(ns)):
        xs[i], c = fit_one(Ts[i], xs[i - 1], prior=xs[i - 1], prior_weight=cfg["chain_prior"])
        log(f"  chain n={ns[i]:.4f} cost={c:.4g}")
    return np.array(xs)


def design(ns, cfg=CONFIG):
    _, t = spline_knots(cfg)
    x = np.clip(np.log(ns), t[0], t[-1])
    return BSpline.design_matrix(x, t, 3).toarray()


def second_diff(nb):
    D = np.zeros((nb - 2, nb))
    for i in range(nb - 2):
        D[i, i:i + 3] = (1.0, -2.0, 1.0)
    return D


def joint_cost(C, B, Ts, lam):
    pen = lam * np.sum((second_diff(len(C)) @ C) ** 2)
    per = np.array([np.sum(residuals(B[i] @ C, Ts[i]) ** 2) for i in range(len(Ts))])
    return per.sum() + pen, per


def joint_fit(C0, B, Ts, cfg=CONFIG, log=print):
    """Levenberg-Marquardt on the spline coefficients C (nb, 2K), all n at once.

    The normal matrix is assembled block by block (each n touches 4 B-splines), plus the
    second-difference penalty ``cfg["smooth"] * |D2 C|^2``.  The problem has long flat valleys
    (a 1500-iteration run gains only 1% more than 150 iterations), so it stops after
    ``cfg["joint_max_iter"]`` iterations or when 10 iterations together gain less than
    ``cfg["joint_rtol"]`` (relative).
    """
    nb, P = C0.shape
    lam = cfg["smooth"]
    D = second_diff(nb)
    DtD = np.kron(D.T @ D, np.eye(P))
    C = C0.copy()
    mu = 1e-3
    cost, _ = joint_cost(C, B, Ts, lam)
    history = [cost]
    for it in range(cfg["joint_max_iter"]):
        H = np.zeros((nb * P, nb * P))
        g = np.zeros(nb * P)
        for i, T in enumerate(Ts):
            r, J = residuals(B[i] @ C, T, jac=True)
            idx = np.nonzero(B[i])[0]
            JtJ, Jtr = J.T @ J, J.T @ r
            for a in idx:
                g[a * P:(a + 1) * P] += B[i, a] * Jtr
                for b in idx:
                    H[a * P:(a + 1) * P, b * P:(b + 1) * P] += B[i, a] * B[i, b] * JtJ
        H += lam * DtD
        g += lam * DtD @ C.ravel()
        dH = np.diag(H).copy()
        while True:
            step = np.linalg.solve(H + mu * np.diag(dH), -g)
            Cn = C + step.reshape(nb, P)
            cn, _ = joint_cost(Cn, B, Ts, lam)
            if cn < cost:
                break
            mu *= 4.0
            if mu > 1e12:
                log(f"  joint: no further decrease at it={it}")
                return C, cost
        C, cost = Cn, cn
        mu = max(mu / 3.0, 1e-9)
        history.append(cost)
        log(f"  joint it={it} cost={cost:.8g} mu={mu:.2g}")
        if len(history) > 10 and history[-11] - cost < cfg["joint_rtol"] * cost:
            break
    return C, cost


def to_ppoly(C, cfg=CONFIG):
    """Piecewise-cubic coefficients (4, intervals, 2K) of the B-spline, highest power first.

    On interval j, p(x) = sum_m coef[m, j] (x - br[j])**(3 - m), x = ln n.
    """
    br, t = spline_knots(cfg)
    spl = BSpline(t, C, 3)
    xl = br[:-1]
    c = np.stack([spl(xl, 3) / 6.0, spl(xl, 2) / 2.0, spl(xl, 1), spl(xl, 0)])
    return br, c


def eval_ppoly(br, coef, n):
    """numpy twin of ``tractor_prob.profiles.sersic_mog``: (amps, vars) at index n."""
    x = np.clip(np.log(n), br[0], br[-1])
    j = int(np.clip(np.searchsorted(br, x, side="right") - 1, 0, len(br) - 2))
    d = x - br[j]
    p = ((coef[0, j] * d + coef[1, j]) * d + coef[2, j]) * d + coef[3, j]
    K = len(p) // 2
    return np.exp(p[:K]), np.exp(p[K:])
