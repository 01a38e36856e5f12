"""Point-spread functions as mixtures of Gaussians (sizes in pixels, sigmas not FWHM).

The PSF is the *effective* PSF (pixel response included), as in the Tractor:
model pixels are the PSF-convolved profile evaluated at pixel centres.
"""

from __future__ import annotations


import functools

import jax.numpy as jnp
import numpy as np

from .params import MultiParams, ParamList

__all__ = ["NCircularGaussianPSF", "GaussianMixturePSF"]

#: A source's stamp is cut where what it leaves out would change chi^2 by less
#: than STAMP_CHI2 (at the true parameters: the log-likelihood by STAMP_CHI2/2):
#: for a Gaussian component of peak p (in units of the pixel noise) and
#: variance s^2, the pixels beyond radius r hold chi^2 = p^2 pi s^2 exp(-r^2/s^2).
STAMP_CHI2 = 0.01
#: ... but a stamp extends at least STAMP_NSIGMA_MIN flux-weighted RMS sigmas of
#: the profile (so model images hold > 98.9% of a faint source's flux) and at
#: most STAMP_NSIGMA_MAX widest sigmas; without a flux, STAMP_NSIGMA widest sigmas
#: (a Gaussian loses exp(-18) = 1.5e-8 of its flux outside 6 sigma).
STAMP_NSIGMA_MIN, STAMP_NSIGMA, STAMP_NSIGMA_MAX = 3.0, 6.0, 8.0


def _cov_terms(covs):
    """Largest eigenvalue and determinant of 2x2 covariances (..., 2, 2), closed form."""
    a, b, c = covs[..., 0, 0], covs[..., 0, 1], covs[..., 1, 1]
    return 0.5 * (a + c) + np.sqrt((0.5 * (a - c)) ** 2 + b * b), a * c - b * b


def component_tails(amps, covs, flux, noise):
    """(c, lam) of Gaussian components of ``amps`` x ``flux`` counts and covariances ``covs``
    (..., K, 2, 2) (pixels) in pixel ``noise``: component k beyond radius r from its centre
    holds at most chi^2 = c_k exp(-r^2 / lam_k) (lam_k its largest eigenvalue), c_k =
    p_k^2 pi sqrt(det C_k) for its peak p_k in units of the noise."""
    lam, det = _cov_terms(np.asarray(covs, float))
    peak = np.abs(np.asarray(amps, float)) * abs(flux) / (2 * np.pi * np.sqrt(det) * noise)
    return peak**2 * np.pi * np.sqrt(det), lam


def mog_radius(amps, means, covs, flux=None, noise=None) -> float:
    """Stamp radius (pixels) of a MoG profile of total ``flux`` (counts) in pixel ``noise``.

    The smallest radius r beyond which the profile's components carry less than
    STAMP_CHI2 of chi^2: sum_k (a_k flux / (2 pi sqrt(det C_k) noise))^2 pi
    sqrt(det C_k) exp(-(r - |mu_k|)^2 / lambda_max,k) <= STAMP_CHI2, clipped to
    [STAMP_NSIGMA_MIN RMS sigmas, STAMP_NSIGMA_MAX widest sigmas].  Without flux
    and noise: STAMP_NSIGMA widest sigmas.
    """
    return float(mog_radii(np.asarray(amps, float)[None], np.asarray(means, float)[None],
                           np.asarray(covs, float)[None], flux, noise)[0])


def mog_radii(amps, means, covs, flux=None, noise=None, rcap=None, chi2=STAMP_CHI2):
    """``mog_radius`` of n profiles at once: amps (n, K), means (n, K, 2), covs (n, K, 2, 2).

    The radius is found on a 0.25-pixel grid (the last grid radius whose outside chi^2
    exceeds ``chi2`` (STAMP_CHI2), plus 0.25), searched between bounds from the single
    components; with ``rcap`` the search stops there (radii above it come out >= rcap, for
    callers that cap them at rcap)."""
    amps = np.abs(np.asarray(amps, float))
    means = np.asarray(means, float)
    lam, det = _cov_terms(np.asarray(covs, float))
    off = np.hypot(means[..., 0], means[..., 1])
    off_max = off.max(axis=-1)
    smax = np.sqrt(lam.max(axis=-1))
    if flux is None or noise is None or not noise > 0:
        return STAMP_NSIGMA * smax + off_max
    rms = np.sqrt(np.sum(amps * lam, axis=-1) / np.maximum(np.sum(amps, axis=-1), 1e-300))
    rmin = STAMP_NSIGMA_MIN * rms + off_max
    rmax = STAMP_NSIGMA_MAX * smax + off_max
    c, _ = component_tails(amps, covs, flux, noise)

    def above(i):  # chi^2 beyond r = 0.25 i (n, ...) exceeds ``chi2`` (non-increasing in i)
        e = (slice(None),) + (None,) * (i.ndim - 1)  # per-profile arrays against i's axes
        d = np.maximum(0.25 * i[..., None] - off[e], 0.0)
        return np.sum(c[e] * np.exp(-(d**2) / lam[e]), axis=-1) > chi2

    # bracket from single components: below the largest radius at which one component alone
    # holds chi2 beyond it, the sum does too (above); where every component holds at most
    # chi2 / K, the sum holds at most chi2 (not above).  One grid point of safety each side.
    K = c.shape[-1]
    r1 = np.where(c > chi2, off + np.sqrt(lam * np.log(np.maximum(c / chi2, 1.0))), -1.0)
    rK = off + np.sqrt(lam * np.log(np.maximum(K * c / chi2, 1.0)))
    top = rmax.max() if rcap is None else min(rmax.max(), rcap)
    hi_cap = int(np.ceil(top / 0.25)) + 2  # not above (clipped to rmax or rcap anyway)
    hi = np.minimum(np.ceil(4 * rK.max(axis=-1)).astype(int) + 1, hi_cap)
    lo = np.minimum(np.maximum(np.ceil(4 * r1.max(axis=-1)).astype(int) - 2, -1), hi - 1)
    width = int((hi - lo).max()) - 1
    if width > 0 and len(lo) * width * K <= 40000:  # the bracket's grid at once
        i = lo[:, None] + 1 + np.arange(width)[None, :]
        ab = above(np.maximum(i, 0)) & (i < hi[:, None])
        lo = np.where(ab.any(axis=1), lo + width - np.argmax(ab[:, ::-1], axis=1), lo)
        hi = lo + 1
    while np.any(hi - lo > 1):
        mid = (lo + hi) // 2
        a = above(np.maximum(mid, 0))
        lo, hi = np.where(a, mid, lo), np.where(a, hi, mid)
    r_cut = np.where(lo >= 0, 0.25 * (lo + 1), 0.0)
    return np.clip(r_cut, rmin, rmax)


#: Wide, smooth render units are evaluated on a coarser grid, every ``step``-th
#: pixel per axis, and interpolated to the pixel centres by separable 4-point
#: (cubic) Lagrange interpolation (``render.mog.render_stamp``): the step of a
#: unit is the largest power of two <= STEP_MAX for which the estimated chi^2 of
#: the interpolation error (at the brightest member's flux, in the image's median
#: pixel noise) stays below INTERP_CHI2 (see ``interp_chi2``).  The model *is*
#: the interpolated render (getModelImage, likelihood and derivatives alike).
INTERP_CHI2 = 0.01
STEP_MAX = 8


@functools.lru_cache(maxsize=None)
def _lagrange_phase_moments(step: int):
    """Mean and mean square over the pixel phases t = r/step (r = 0..step-1) of the
    4-point Lagrange error polynomial (t+1) t (t-1) (t-2)."""
    t = np.arange(step) / step
    p = (t + 1) * t * (t - 1) * (t - 2)
    return float(np.mean(p)), float(np.mean(p * p))


def interp_chi2(amps, covs, flux, noise, step: int) -> float:
    """Estimated chi^2 of the error made by rendering a MoG on a grid of ``step``
    pixels and interpolating (4-point Lagrange per axis), for ``flux`` counts in
    pixel ``noise``.

    Per axis the interpolation error is -(step^4 / 24) pi(t) d^4 f / dx^4 with
    pi(t) = (t+1) t (t-1) (t-2) at the pixel's phase t between nodes.  For a
    Gaussian component of flux a and covariance C, Parseval gives
    sum_pixels (d^4_x G)^2 = a^2 105 S_xx^4 / (4 pi sqrt(det C)) and
    sum (d^4_x G)(d^4_y G) = a^2 (9 S_xx^2 S_yy^2 + 72 S_xx S_yy S_xy^2 + 24 S_xy^4)
    / (4 pi sqrt(det C)), with S = (2C)^-1; phases are averaged over the pixels.  The
    errors of the components add coherently: chi^2 <= (sum_k sqrt(chi^2_k))^2.  This
    leading-order estimate overestimates the exact error (tests/test_render.py
    compares the two), also where step is comparable to the width.
    """
    return float(interp_chi2s(np.asarray(amps, float)[None], np.asarray(covs, float)[None],
                              flux, noise, step)[0])


def interp_chi2s(amps, covs, flux, noise, step: int):
    """``interp_chi2`` of n profiles at once: amps (n, K), covs (n, K, 2, 2)."""
    amps = np.abs(np.asarray(amps, float)) * abs(flux)
    if step <= 1:
        return np.zeros(amps.shape[0])
    covs = np.asarray(covs, float)
    det = covs[..., 0, 0] * covs[..., 1, 1] - covs[..., 0, 1] ** 2
    sxx = covs[..., 1, 1] / (2 * det)
    syy = covs[..., 0, 0] / (2 * det)
    sxy = -covs[..., 0, 1] / (2 * det)
    m1, m2 = _lagrange_phase_moments(step)
    k8 = 105.0 * (sxx**4 + syy**4)
    k44 = 9 * sxx**2 * syy**2 + 72 * sxx * syy * sxy**2 + 24 * sxy**4
    per = ((step**8 / 576.0) * amps**2 / (4 * np.pi * np.sqrt(det) * noise**2)
           * (m2 * k8 + 2 * m1 * m1 * k44))
    return np.sum(np.sqrt(per), axis=-1) ** 2


def mog_step(amps, covs, flux=None, noise=None, chi2=None) -> int:
    """Coarse-grid step (1, 2, 4, ... <= STEP_MAX) for rendering a MoG of ``flux`` counts in
    pixel ``noise``: the largest whose ``interp_chi2`` is below ``chi2`` (INTERP_CHI2);
    1 without flux and noise.  With amps (n, K) and covs (n, K, 2, 2): the largest step
    below ``chi2`` for all n profiles."""
    amps = np.asarray(amps, float)
    if flux is None or noise is None or not noise > 0 or amps.shape[-1] == 0:
        return 1
    covs = np.asarray(covs, float)
    if amps.ndim == 1:
        amps, covs = amps[None], covs[None]
    chi2 = INTERP_CHI2 if chi2 is None else chi2
    step = 1
    while step * 2 <= STEP_MAX and interp_chi2s(amps, covs, flux, noise, step * 2).max() <= chi2:
        step *= 2
    return step


class _MoGRadius:
    """getRadius() shared by the MoG PSFs, cached on the current values."""

    def getRadius(self, flux=None, noise=None) -> float:
        """Stamp radius in pixels for a source of ``flux`` counts in pixel ``noise`` (see mog_radius)."""
        key = (tuple(self.getAllParams()), flux, noise)
        cache = self.__dict__.get("_radius_cache")
        if cache is None or cache[0] != key:
            cache = (key, mog_radius(*self.getMixtureOfGaussians(), flux, noise))
            self.__dict__["_radius_cache"] = cache
        return cache[1]


def _check_normalised(weights, owner):
    total = float(np.sum(weights))
    if abs(total - 1.0) > 1e-6:
        raise ValueError(
            f"{owner}: PSF not normalised: weights sum to {total:.8g}, expected 1 "
            "(the PSF must integrate to one; put the flux in the source brightness)"
        )


class NCircularGaussianPSF(_MoGRadius, MultiParams):
    """Sum of concentric circular Gaussians: ``NCircularGaussianPSF(sigmas, weights)``.

    sigmas in pixels; weights must sum to 1.  Parameters ``sigmas.param<i>`` and
    ``weights.param<i>``.
    """

    @staticmethod
    def getNamedParams():
        return dict(sigmas=0, weights=1)

    def __init__(self, sigmas, weights):
        sigmas = [float(s) for s in sigmas]
        weights = [float(w) for w in weights]
        if len(sigmas) != len(weights) or not sigmas:
            raise ValueError("NCircularGaussianPSF: need as many weights as sigmas (at least one)")
        if min(sigmas) <= 0:
            raise ValueError(f"NCircularGaussianPSF: sigmas must be > 0 pixels, got {sigmas}")
        _check_normalised(weights, "NCircularGaussianPSF")
        s, w = ParamList(*sigmas), ParamList(*weights)
        s.stepsizes = [0.01] * len(sigmas)
        w.stepsizes = [0.01] * len(weights)
        s.supports = ["positive"] * len(sigmas)
        super().__init__(s, w)

    def __str__(self):
        return "NCircularGaussianPSF: sigmas [%s], weights [%s]" % (
            ", ".join("%g" % v for v in self.sigmas.vals),
            ", ".join("%g" % v for v in self.weights.vals))

    def isLegal(self):
        return min(self.sigmas.vals) > 0

    @staticmethod
    def _jax_legal(spec, vals):
        return jnp.all(vals[: spec.children[0].size] > 0)

    def getMixtureOfGaussians(self):
        k = len(self.sigmas.vals)
        v = np.array(self.sigmas.vals) ** 2
        return np.array(self.weights.vals), np.zeros((k, 2)), v[:, None, None] * np.eye(2)

    @staticmethod
    def _jax_mog(spec, vals):
        k = spec.children[0].size
        sig, w = vals[:k], vals[k:]
        covs = (sig**2)[:, None, None] * jnp.eye(2)
        return w, jnp.zeros((k, 2), vals.dtype), covs


class GaussianMixturePSF(_MoGRadius, ParamList):
    """General mixture of K Gaussians: ``GaussianMixturePSF(amps, means, vars)``.

    amps (K,) must sum to 1; means (K, 2) pixel offsets (x, y); vars (K, 2, 2)
    covariances in pixels^2.  Parameters: amp<k>, meanx<k>, meany<k>, varxx<k>,
    varyy<k>, varxy<k>.
    """

    def __init__(self, amps, means, vars):
        amps = np.atleast_1d(np.asarray(amps, float))
        means = np.asarray(means, float).reshape(-1, 2)
        vars = np.asarray(vars, float).reshape(-1, 2, 2)
        K = len(amps)
        if means.shape[0] != K or vars.shape[0] != K:
            raise ValueError(
                f"GaussianMixturePSF: shape mismatch: {K} amps, means {means.shape}, vars {vars.shape}"
            )
        if not np.allclose(vars, np.swapaxes(vars, 1, 2)):
            raise ValueError("GaussianMixturePSF: covariance matrices must be symmetric")
        if np.any(np.linalg.eigvalsh(vars) <= 0):
            raise ValueError("GaussianMixturePSF: covariance matrices must be positive definite")
        _check_normalised(amps, "GaussianMixturePSF")
        self.__dict__["K"] = K
        vals = (list(amps) + list(means[:, 0]) + list(means[:, 1]) + list(vars[:, 0, 0])
                + list(vars[:, 1, 1]) + list(vars[:, 0, 1]))
        super().__init__(*vals)
        names = []
        for pre in ("amp", "meanx", "meany", "varxx", "varyy", "varxy"):
            names += [f"{pre}{k}" for k in range(K)]
        self.addParamAliases(*names)
        self.stepsizes = [0.001] * K + [0.001] * 2 * K + [0.001] * 3 * K

    def __str__(self):
        a, m, v = self.getMixtureOfGaussians()
        return "GaussianMixturePSF: amps=%s, means=%s, vars=%s" % (
            np.array2string(a), np.array2string(m.ravel()), np.array2string(v.ravel()))

    def _static(self):
        return self.K

    def getMixtureOfGaussians(self):
        K = self.K
        v = np.array(self.vals).reshape(6, K)
        covs = np.stack([np.stack([v[3], v[5]], -1), np.stack([v[5], v[4]], -1)], -2)
        return v[0], np.stack([v[1], v[2]], -1), covs

    @staticmethod
    def _jax_mog(spec, vals):
        K = spec.static
        v = vals.reshape(6, K)
        covs = jnp.stack([jnp.stack([v[3], v[5]], -1), jnp.stack([v[5], v[4]], -1)], -2)
        return v[0], jnp.stack([v[1], v[2]], -1), covs


