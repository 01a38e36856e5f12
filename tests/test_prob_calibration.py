"""Honesty of the posteriors (slow): calibration of NUTS intervals on simulated images,
MAP errors vs posterior widths, and convergence on the standard single-galaxy problem.

References: the truths of simulated data (drawn with the package's own renderer, whose
accuracy is tested against GalSim in test_galaxies.py) and binomial statistics.
"""

import math

import numpy as np
import pytest

from tractor_prob import (
    ConstantSky,
    Flux,
    Image,
    NCircularGaussianPSF,
    NullWCS,
    PixPos,
    PointSource,
    Tractor,
)
from tractor_prob import _arviz
from tractor_prob.ellipses import EllipseE
from tractor_prob.sersic import SersicGalaxy

pytestmark = pytest.mark.slow


def _simulate(src, H, W, noise, rng, psf_sigma=1.5):
    img = Image(data=np.zeros((H, W)), invvar=np.full((H, W), noise**-2.0),
                psf=NCircularGaussianPSF([psf_sigma], [1.0]), wcs=NullWCS(),
                sky=ConstantSky(0.0))
    tr = Tractor([img], [src.copy()])
    model = tr.getModelImage(0)
    img.data = model + rng.normal(0, noise, model.shape)
    tr.freezeParam("images")
    return tr


def _random_star(rng):
    src = PointSource(PixPos(*rng.uniform(10.5, 13.5, 2)), Flux(rng.uniform(150.0, 800.0)))
    return src, (25, 25), 1.0


def _random_galaxy(rng):
    e = rng.uniform(0.05, 0.4)
    t = rng.uniform(0, np.pi)
    src = SersicGalaxy(PixPos(*rng.uniform(19.5, 21.5, 2)), Flux(rng.uniform(1500.0, 4000.0)),
                       EllipseE(rng.uniform(2.5, 5.0), e * math.cos(2 * t), e * math.sin(2 * t)),
                       rng.uniform(1.0, 4.0))
    return src, (41, 41), 1.0


def _start_near(tr, rng):
    """Perturb the thawed values a little (the fits must not start at the truth)."""
    p = np.array(tr.getParams())
    tr.setParams(list(p + 0.02 * np.abs(p) * rng.normal(size=p.shape) + 0.01))


def test_nuts_intervals_are_calibrated_on_simulated_stars_and_galaxies():
    """36 star and 16 Sersic-galaxy images (3 and 7 parameters each: 220 truths): the 68%
    and 95% central posterior intervals contain the truth at rates within binomial
    3-sigma of 0.68 and 0.95."""
    rng = np.random.default_rng(2024)
    hits68, hits95, n = 0, 0, 0
    per_kind = {}
    for k in range(52):
        src, (H, W), noise = _random_star(rng) if k < 36 else _random_galaxy(rng)
        tr = _simulate(src, H, W, noise, rng)
        truth = dict(zip(tr.getParamNames(), src.getParams()))
        _start_near(tr, rng)
        res = tr.sample(num_warmup=200, num_samples=300, seed=k, progress_bar=False)
        i68, i95 = res.interval(0.68), res.interval(0.95)
        for p, t in truth.items():
            h68 = i68[p][0] <= t <= i68[p][1]
            h95 = i95[p][0] <= t <= i95[p][1]
            hits68 += h68
            hits95 += h95
            n += 1
            kind = p.split(".", 1)[1]
            a = per_kind.setdefault(kind, [0, 0, 0])
            a[0] += h68
            a[1] += h95
            a[2] += 1
    assert n == 36 * 3 + 16 * 7
    r68, r95 = hits68 / n, hits95 / n
    s68, s95 = math.sqrt(0.68 * 0.32 / n), math.sqrt(0.95 * 0.05 / n)
    assert abs(r68 - 0.68) < 3 * s68, (r68, per_kind)
    assert abs(r95 - 0.95) < 3 * s95, (r95, per_kind)


def _standard_galaxy(seed=7):
    """The peers' data set A, simulated with our renderer: 96x96, Sersic n=2.5, r_e=6 px,
    q=0.6, PA=30 deg, flux 2000, Gaussian PSF sigma 1.5 px, noise 1."""
    q, pa = 0.6, math.radians(30.0)
    e = (1 - q) / (1 + q)
    truth = SersicGalaxy(PixPos(47.3, 48.6), Flux(2000.0),
                         EllipseE(6.0, e * math.cos(2 * pa), e * math.sin(2 * pa)), 2.5)
    tr = _simulate(truth, 96, 96, 1.0, np.random.default_rng(seed))
    _start_near(tr, np.random.default_rng(seed + 1))
    return tr, truth


def test_standard_galaxy_nuts_converges_and_map_errors_match_posterior_widths():
    """Two NUTS chains (500 warmup + 1000 draws) on the single-galaxy problem: no divergences
    after warmup, R-hat < 1.01 (split R-hat of 2 x 500 draws scatters by ~0.01 around 1, so
    1000 draws per chain); the MAP's stderr is within 10% of the posterior sd for every
    parameter (a well-constrained problem, S/N ~ 100)."""
    tr, truth = _standard_galaxy()
    res = tr.sample(num_warmup=500, num_samples=1000, num_chains=2, seed=11, progress_bar=False)
    assert int(res.stats["diverging"].sum()) == 0
    idata = res.to_arviz()
    assert _arviz.rhat_max(idata) < 1.01
    assert _arviz.ess_min(idata) > 300
    sd = res.std()
    for p in res.paths:
        ratio = res.map.stderr[p] / sd[p]
        assert abs(ratio - 1) < 0.10, (p, ratio)
    # and the truth sits inside the posterior
    med = res.median()
    for p, t in zip(tr.getParamNames(), truth.getParams()):
        assert abs(med[p] - t) < 4 * sd[p], (p, med[p], t, sd[p])
