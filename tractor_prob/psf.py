"""Point-spread functions as mixtures of Gaussians (sizes in pixels, sigmas not FWHM).

The PSF is the *effective* PSF (pixel response included), as in the Tractor:
model pixels are the PSF-convolved profile evaluated at pixel centres.
"""

from __future__ import annotations


import jax.numpy as jnp
import numpy as np

from .params import MultiParams, ParamList

__all__ = ["NCircularGaussianPSF", "GaussianMixturePSF"]

#: stamps extend this many (largest) PSF sigmas from the centre; the flux a
#: Gaussian loses outside radius 6 sigma is exp(-18) = 1.5e-8 of the total.
STAMP_NSIGMA = 6.0


def _check_normalised(weights, owner):
    total = float(np.sum(weights))
    if abs(total - 1.0) > 1e-6:
        raise ValueError(
            f"{owner}: PSF not normalised: weights sum to {total:.8g}, expected 1 "
            "(the PSF must integrate to one; put the flux in the source brightness)"
        )


class NCircularGaussianPSF(MultiParams):
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
        super().__init__(s, w)

    def __str__(self):
        return "NCircularGaussianPSF: sigmas [%s], weights [%s]" % (
            ", ".join("%g" % v for v in self.sigmas.vals),
            ", ".join("%g" % v for v in self.weights.vals))

    def getRadius(self) -> float:
        """Stamp radius in pixels (STAMP_NSIGMA largest sigmas)."""
        return STAMP_NSIGMA * max(abs(s) for s in self.sigmas.vals)

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


class GaussianMixturePSF(ParamList):
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

    def getRadius(self) -> float:
        """Stamp radius in pixels: STAMP_NSIGMA sigmas of the widest component."""
        a, m, c = self.getMixtureOfGaussians()
        ev = np.linalg.eigvalsh(c).max(axis=1)
        return float(np.max(STAMP_NSIGMA * np.sqrt(ev) + np.hypot(m[:, 0], m[:, 1])))

    @staticmethod
    def _jax_mog(spec, vals):
        K = spec.static
        v = vals.reshape(6, K)
        covs = jnp.stack([jnp.stack([v[3], v[5]], -1), jnp.stack([v[5], v[4]], -1)], -2)
        return v[0], jnp.stack([v[1], v[2]], -1), covs


