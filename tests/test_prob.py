"""The probabilistic layer: priors, the numpyro model, MAP with covariance, sampling.

References: scipy.stats log densities; closed-form Fisher matrices of linear models;
scipy.optimize on getLogProb (an independent optimizer); finite differences (the
unit-disk transform's Jacobian); the truths of simulated data.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
import scipy.optimize
import scipy.stats
from numpyro import handlers

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
from tractor_prob.priors import UnitDiskTransform, unit_disk
from tractor_prob.sersic import SersicGalaxy


def _gauss_img(H, W, x0, y0, s):
    yy, xx = np.mgrid[:H, :W].astype(float)
    return np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * s * s)) / (2 * np.pi * s * s)


def _star_tractor(seed=0, flux=1000.0, sigma_noise=1.0, H=25, W=25, psf_sigma=1.5, sky=0.0):
    rng = np.random.default_rng(seed)
    truth = dict(x=12.3, y=11.8, flux=flux)
    data = flux * _gauss_img(H, W, truth["x"], truth["y"], psf_sigma) + sky
    data = data + rng.normal(0, sigma_noise, data.shape)
    img = Image(data=data, invvar=np.full((H, W), sigma_noise**-2.0),
                psf=NCircularGaussianPSF([psf_sigma], [1.0]), wcs=NullWCS(), sky=ConstantSky(sky))
    tr = Tractor([img], [PointSource(PixPos(12.0, 12.0), Flux(flux * 0.9))])
    tr.freezeParam("images")
    return tr, truth


def _galaxy_tractor(seed=0, flux=3000.0, H=41, W=41, noise=1.0):
    rng = np.random.default_rng(seed)
    psf = NCircularGaussianPSF([1.5], [1.0])
    truth = SersicGalaxy(PixPos(20.2, 19.7), Flux(flux), EllipseE(4.0, 0.2, -0.1), 2.0)
    img = Image(data=np.zeros((H, W)), invvar=np.full((H, W), noise**-2.0), psf=psf,
                wcs=NullWCS(), sky=ConstantSky(0.0))
    tr = Tractor([img], [truth.copy()])
    model = tr.getModelImage(0)
    img.data = model + rng.normal(0, noise, model.shape)
    tr.freezeParam("images")
    return tr, truth


# ----------------------------------------------------------------------------- priors
def test_set_prior_by_path_and_on_object_and_gaussian_alias():
    tr, _ = _star_tractor()
    src = tr.catalog[0]
    tr.set_prior("source0.brightness.Flux", dist.Normal(900.0, 50.0))
    assert isinstance(src.brightness.get_prior("Flux"), dist.Normal)
    src.pos.set_prior("x", dist.Normal(12.0, 0.5))
    assert tr.get_prior("source0.pos.x").scale == 0.5
    want = scipy.stats.norm.logpdf(900.0, 900.0, 50.0) + scipy.stats.norm.logpdf(12.0, 12.0, 0.5)
    assert tr.getLogPrior() == pytest.approx(want, rel=1e-12)
    tr.addGaussianPrior("source0.pos.x", 11.0, 2.0)  # the same mechanism: replaces the prior
    assert isinstance(tr.get_prior("source0.pos.x"), dist.Normal)
    assert tr.get_prior("source0.pos.x").loc == 11.0
    tr.set_prior("source0.pos.x", "default")
    assert tr.get_prior("source0.pos.x") is None


def test_prior_errors_name_the_problem():
    tr, _ = _star_tractor()
    with pytest.raises(ValueError, match="unknown parameter name 'z'"):
        tr.set_prior("source0.pos.z", dist.Normal(0.0, 1.0))
    with pytest.raises(ValueError, match="scalar distribution"):
        tr.set_prior("source0.pos.x", dist.Normal(jnp.zeros(2), 1.0))
    with pytest.raises(TypeError, match="numpyro distribution"):
        tr.set_prior("source0.pos.x", 3.0)
    with pytest.raises(ValueError, match="unknown name 'flat'"):
        tr.set_prior("source0.pos.x", "flat")


def test_non_gaussian_prior_log_density_and_support():
    tr, _ = _star_tractor()
    tr.set_prior("source0.brightness.Flux", dist.Gamma(9.0, 0.01))
    f = tr.catalog[0].brightness.val
    assert tr.getLogPrior() == pytest.approx(scipy.stats.gamma.logpdf(f, 9.0, scale=100.0))
    tr.catalog[0].brightness.val = -5.0  # outside the Gamma's support
    assert tr.getLogPrior() == -np.inf
    assert tr.getLogProb() == -np.inf


# ------------------------------------------------------------------------- unit disk
def test_unit_disk_transform_is_a_bijection_with_the_right_jacobian():
    t = UnitDiskTransform()
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(0, 1.5, (50, 2)))
    y = t(x)
    assert bool(jnp.all(unit_disk(y)))
    np.testing.assert_allclose(t.inv(y), x, rtol=1e-9, atol=1e-12)
    for xi in list(x[:10]) + [jnp.array([1e-6, -2e-6]), jnp.array([0.0, 0.0])]:
        J = jax.jacfwd(t)(xi)
        want = math.log(abs(float(jnp.linalg.det(J))))
        assert float(t.log_abs_det_jacobian(xi, t(xi))) == pytest.approx(want, abs=1e-9)


# ----------------------------------------------------------------------------- model
def _traced(model):
    return handlers.trace(handlers.seed(handlers.substitute(model, data=model.site_values()),
                                        0)).get_trace()


def test_model_sites_are_grouped_and_named_by_path():
    tr, _ = _galaxy_tractor()
    tr.thawParam("images")
    tr.freezeParam("image0.psf")
    tr.set_prior("source0.brightness.Flux", dist.HalfNormal(1e4))
    m = tr.model()
    tra = _traced(m)
    latent = {k: v for k, v in tra.items() if v["type"] == "sample" and not v["is_observed"]}
    assert set(latent) == set(m.sites)
    got = []
    for s in m.sites:
        for p in m.paths[s]:
            got.extend(p if isinstance(p, tuple) else [p])
    assert sorted(got) == sorted(tr.getParamNames())  # every thawed parameter, once
    assert m.paths["thawed.disk"] == [("source0.shape.e1", "source0.shape.e2")]
    assert m.paths["thawed.positive"] == ["source0.shape.re"]
    assert m.paths["thawed.interval(0.5,6.2)"] == ["source0.sersicindex.SersicIndex"]
    assert m.paths["prior.source0.brightness.Flux"] == ["source0.brightness.Flux"]
    # frozen parameters: one conditioned site holding exactly their current values
    frozen = tra["frozen"]
    assert frozen["is_observed"]
    all_vals = np.array(tr.getAllParams())
    names = tr.getAllParamNames()
    thawed = set(tr.getParamNames())
    want = [v for n, v in zip(names, all_vals) if n not in thawed]
    np.testing.assert_array_equal(np.asarray(frozen["value"]), want)
    # thawing makes it latent again
    tr.thawParam("image0.psf")
    m2 = tr.model()
    assert "image0.psf.sigmas.param0" in m2.paths["thawed.positive"]


def test_model_works_when_arviz_was_imported_first():
    """ArviZ 1.x imports numpyro lazily; the model must still trace (numpyro.factor)."""
    import subprocess
    import sys

    code = ("import arviz\n"
            "import numpy as np\n"
            "from tractor_prob import *\n"
            "img = Image(data=np.zeros((9, 9)), invvar=np.ones((9, 9)),\n"
            "            psf=NCircularGaussianPSF([1.0], [1.0]))\n"
            "tr = Tractor([img], [PointSource(PixPos(4.0, 4.0), Flux(5.0))])\n"
            "tr.freezeParam('images')\n"
            "print(tr.model().log_density() - tr.getLogProb())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert abs(float(out.stdout.split()[-1])) < 1e-9


def test_partly_frozen_group_has_a_latent_of_only_its_thawed_entries():
    """Three stars, the middle one's x frozen: the real-valued site holds 5 positions, not 6
    (no obs_mask and no unconstrained full-length latent)."""
    H = W = 40
    img = Image(data=np.zeros((H, W)), invvar=np.ones((H, W)),
                psf=NCircularGaussianPSF([1.5], [1.0]), wcs=NullWCS())
    tr = Tractor([img], [PointSource(PixPos(8.0 + 10 * k, 20.0), Flux(100.0)) for k in range(3)])
    tr.freezeParam("images")
    tr.freezeParam("source1.pos.x")
    m = tr.model()
    tra = _traced(m)
    assert tra["thawed.real"]["value"].shape == (8,)  # 5 positions + 3 fluxes
    assert "source1.pos.x" not in m.paths["thawed.real"]
    assert [k for k in tra if "unobserved" in k] == []


def test_get_log_prob_equals_the_model_log_density():
    """Flat defaults, Gaussian, Gamma and positive priors, frozen priors, bounded shapes,
    masked and NaN pixels: the Tractor's getLogProb() is the model's log density, and both
    equal an independent sum (scipy log-pdfs + -chi^2/2 over unmasked pixels)."""
    tr, _ = _galaxy_tractor()
    img = tr.images[0]
    data = np.array(img.data)
    iv = np.array(img.invvar)
    data[3, 4] = np.nan
    iv[10, 11] = 0.0
    img.data, img.invvar = data, iv
    tr.set_prior("source0.brightness.Flux", dist.Gamma(30.0, 0.01))
    tr.addGaussianPrior("source0.pos.x", 20.0, 0.3)
    tr.set_prior("source0.shape.re", "positive")
    tr.set_prior("image0.sky.sky", dist.Normal(0.0, 1.0))  # frozen: not part of the density
    src = tr.catalog[0]
    src.pos.x, src.brightness.val = 20.1, 2900.0
    lp_model = tr.model().log_density()
    assert lp_model == pytest.approx(tr.getLogProb(), rel=1e-12)
    model = tr.getModelImage(0)
    ok = np.isfinite(data) & (iv > 0)
    want = -0.5 * np.sum(((data - model) ** 2 * iv)[ok])
    want += scipy.stats.gamma.logpdf(2900.0, 30.0, scale=100.0)
    want += scipy.stats.norm.logpdf(20.1, 20.0, 0.3)
    assert lp_model == pytest.approx(want, rel=1e-10)
    # an illegal shape: -inf on both sides
    src.shape.e1 = 0.99
    src.shape.e2 = 0.5
    assert tr.getLogProb() == -np.inf
    assert tr.model().log_density() == -np.inf


# ------------------------------------------------------------------------------- MAP
def test_fit_map_covariance_of_a_linear_model_is_the_exact_inverse_fisher():
    """Fluxes of two blended stars + the sky at fixed positions: a linear model whose
    covariance is (A^T W A)^-1 exactly."""
    H = W = 30
    s, noise = 1.5, 2.0
    x = [(12.0, 14.0), (16.0, 15.0)]
    rng = np.random.default_rng(4)
    cols = [_gauss_img(H, W, a, b, s) for a, b in x] + [np.ones((H, W))]
    data = 500 * cols[0] + 300 * cols[1] + 1.0 + rng.normal(0, noise, (H, W))
    img = Image(data=data, invvar=np.full((H, W), noise**-2.0),
                psf=NCircularGaussianPSF([s], [1.0]), wcs=NullWCS(), sky=ConstantSky(0.0))
    tr = Tractor([img], [PointSource(PixPos(*p), Flux(100.0)) for p in x])
    tr.freezeParamsRecursive("pos", "psf")
    res = tr.fit_map()
    assert res.converged
    assert res.paths == ["image0.sky.sky", "source0.brightness.Flux", "source1.brightness.Flux"]
    # the model's own design matrix: each star rendered alone at unit flux (its stamp leaves
    # out the Gaussian's wings beyond ~4 sigma, < STAMP_CHI2 of chi^2), and the sky
    unit = tr.copy()
    for src in unit.catalog:
        src.brightness.val = 1.0
    cols_model = [unit.getModelImage(0, srcs=[src], sky=False) for src in unit.catalog]
    A = np.stack([c.ravel() for c in [cols[2]] + cols_model], axis=1)
    F = A.T @ A / noise**2
    C = np.linalg.inv(F)
    np.testing.assert_allclose(res.covariance, C, rtol=1e-9)
    best = np.linalg.solve(F, A.T @ data.ravel() / noise**2)
    np.testing.assert_allclose([res.values[p] for p in res.paths], best, rtol=1e-9)
    assert res.stderr["source0.brightness.Flux"] == pytest.approx(math.sqrt(C[1, 1]), rel=1e-9)
    # ... and the untruncated Gaussians' (the stamps cost the sky-flux terms ~2e-5)
    A0 = np.stack([c.ravel() for c in [cols[2], cols[0], cols[1]]], axis=1)
    np.testing.assert_allclose(res.covariance, np.linalg.inv(A0.T @ A0 / noise**2), rtol=1e-4)
    rho = C[1, 2] / math.sqrt(C[1, 1] * C[2, 2])
    assert res.correlation[1, 2] == pytest.approx(rho, rel=1e-6)
    assert rho < -0.1  # blended: anti-correlated fluxes
    assert tr.getParams() == pytest.approx(list(best), rel=1e-7)  # written back


def test_fit_map_with_a_non_gaussian_prior_matches_scipy_optimize():
    """MAP with a Gamma prior on the flux and a Normal prior on x: same optimum as
    scipy.optimize.minimize of -getLogProb()."""
    tr, _ = _star_tractor(flux=60.0, sigma_noise=1.0)
    tr.set_prior("source0.brightness.Flux", dist.Gamma(4.0, 0.1))
    tr.addGaussianPrior("source0.pos.x", 12.0, 0.2)
    res = tr.fit_map()
    ours = np.array(tr.getParams())

    def nlp(p):
        tr.setParams(list(p))
        return -tr.getLogProb()

    ref = scipy.optimize.minimize(nlp, ours + np.array([0.05, -0.05, 3.0]), method="Nelder-Mead",
                                  options=dict(xatol=1e-7, fatol=1e-10, maxiter=4000))
    assert np.all(np.abs(ours - ref.x) < np.array([2e-4, 2e-4, 2e-2])), (ours, ref.x)
    assert res.log_prob >= -ref.fun - 1e-6
    assert res.log_prob == pytest.approx(-ref.fun, abs=1e-5)


def test_fit_map_in_one_program_takes_the_steps_of_the_stepwise_loop(monkeypatch):
    """A galaxy on a small image has a static plan (its stamp is the image, pixel by pixel),
    so fit_map runs its Levenberg-Marquardt loop as one jitted program (Fitter.lm): the same
    steps, optimum and covariance as the loop over Tractor._step (optimize()'s body)."""
    from tractor_prob.engine import Tractor as _Tractor

    tr, _ = _galaxy_tractor(seed=3)
    fitter = tr._fit_inputs()[0]
    assert fitter.static and len(fitter.c.plan.units) == 1  # core + wings merged
    start = np.array(tr.getParams()) * (1 + np.array([0.01, -0.01, -0.2, 0.3, 0.5, -0.4, 0.2]))
    tr.setParams(start)
    fast = tr.fit_map()
    calls = []
    monkeypatch.setattr(_Tractor, "_lm_loop", lambda self, *a: calls.append(1))
    tr.setParams(start)
    slow = tr.fit_map()
    assert calls and fast.converged and slow.converged
    assert fast.n_steps == slow.n_steps > 3
    np.testing.assert_allclose([fast.values[p] for p in fast.paths],
                               [slow.values[p] for p in slow.paths], rtol=1e-9, atol=1e-9)
    assert fast.log_prob == pytest.approx(slow.log_prob, abs=1e-8)
    # the stepwise loop's matrix is at the values before its last (tiny) step, ours at the
    # optimum itself: the same to well within the errors' own precision
    sd = np.sqrt(np.diag(slow.covariance))
    np.testing.assert_array_less(np.abs(fast.covariance - slow.covariance),
                                 1e-3 * np.outer(sd, sd))


def test_chain_started_at_the_map_gets_the_potential_and_gradient_of_the_model():
    """sample() starts one chain at the MAP from the fit's own log-probability and gradient
    (no compile of the potential's gradient): they are numpyro's potential energy of the
    model and its autodiff gradient there, bounded parameters' transforms included."""
    from jax.flatten_util import ravel_pytree
    from numpyro.infer.util import potential_energy

    from tractor_prob import inference
    from tractor_prob.model import SceneModel

    tr, _ = _galaxy_tractor(seed=5)
    tr.set_prior("source0.brightness.Flux", dist.Gamma(9.0, 0.003))  # a non-Gaussian prior
    res = tr.fit_map()
    fitter, theta, pairs, pri = tr._fit_inputs()
    data, weights = tr._pixels(fitter.c)
    _, g_map, lnp_map = fitter.system(theta, data, weights, pairs, pri)
    assert res.log_prob == pytest.approx(float(lnp_map), abs=1e-8)
    np.testing.assert_allclose(res._grad, g_map, atol=1e-8 * np.abs(g_map).max() + 1e-9)
    # the change of variables, checked away from the optimum (where the gradient matters)
    tr.setParams(np.array(tr.getParams()) * (1 + np.array([1, -1, 5, 3, 4, -6, 2]) * 1e-2))
    fitter, theta, pairs, pri = tr._fit_inputs()
    _, grad, lnp = fitter.system(theta, data, weights, pairs, pri)
    model = SceneModel(tr)
    kern = inference._kernel(model, "NUTS", 10, 5, False)
    z0 = kern.unconstrain(model.site_values())
    flat, unravel = ravel_pytree(z0)
    args = (jnp.asarray(model.theta0), model.data, model.weights)
    pe, z_grad = kern.start_info(flat, kern.jacobian(flat, jnp.asarray(model.theta0)), lnp, grad)
    pe_ref, g_ref = jax.value_and_grad(
        lambda f: potential_energy(model, args, {}, unravel(f)))(flat)
    assert float(pe) == pytest.approx(float(pe_ref), rel=1e-10)
    g = ravel_pytree(z_grad)[0]
    assert np.abs(g_ref).min() > 1.0  # away from the optimum in every direction
    np.testing.assert_allclose(g, g_ref, rtol=1e-7)
    assert set(model.site_values()) >= {"thawed.disk", "thawed.interval(0.5,6.2)"}


def test_fit_map_stderr_matches_the_spread_of_fits():
    """Over 60 noise realisations of a galaxy, the MAP's stderr predicts the scatter of
    the fitted values (ratio within sampling error)."""
    fits, errs = [], []
    for seed in range(60):
        tr, truth = _galaxy_tractor(seed=seed, flux=4000.0)
        res = tr.fit_map()
        assert res.converged
        fits.append([res.values[p] for p in res.paths])
        errs.append([res.stderr[p] for p in res.paths])
    fits, errs = np.array(fits), np.array(errs)
    truth_v = np.array(truth.getParams())
    pulls = (fits - truth_v) / errs
    sd = pulls.std(axis=0, ddof=1)
    # sd of 60 unit-normal pulls: 1 +- 0.09 (1 sigma); 3.5 sigma bounds
    assert np.all(np.abs(sd - 1) < 0.32), dict(zip(res.paths, sd))
    assert np.all(np.abs(pulls.mean(axis=0)) < 3.5 / math.sqrt(60) + 0.1)


def test_blended_flux_errors_account_for_correlations():
    """Two stars 1.2 PSF sigma apart: pulls with the full-covariance errors have sd 1 (+-0.1);
    the diagonal (no-correlation) errors the Tractor reports give pulls ~1.2."""
    H = W = 32
    s, noise = 1.5, 1.0
    pos = [(14.5, 16.0), (16.3, 16.0)]
    flux = [400.0, 300.0]
    pulls_full, pulls_diag = [], []
    for seed in range(300):
        rng = np.random.default_rng(100 + seed)
        data = sum(f * _gauss_img(H, W, x, y, s) for f, (x, y) in zip(flux, pos))
        data = data + rng.normal(0, noise, (H, W))
        img = Image(data=data, invvar=np.full((H, W), noise**-2.0),
                    psf=NCircularGaussianPSF([s], [1.0]), wcs=NullWCS())
        tr = Tractor([img], [PointSource(PixPos(x + 0.1, y - 0.1), Flux(f * 1.1))
                             for f, (x, y) in zip(flux, pos)])
        tr.freezeParam("images")
        res = tr.fit_map()
        A_inv = res.covariance
        k = res.paths.index("source0.brightness.Flux")
        diag = 1.0 / math.sqrt(np.linalg.inv(A_inv)[k, k])  # 1/sqrt(Fisher_kk)
        dF = res.values["source0.brightness.Flux"] - flux[0]
        pulls_full.append(dF / res.stderr["source0.brightness.Flux"])
        pulls_diag.append(dF / diag)
    sd_full, sd_diag = np.std(pulls_full, ddof=1), np.std(pulls_diag, ddof=1)
    assert abs(sd_full - 1.0) < 0.1, sd_full
    assert sd_diag > 1.15, sd_diag


# --------------------------------------------------------------------------- sampling
def test_sample_result_api_and_arviz_output(tmp_path):
    tr, truth = _star_tractor(seed=1)
    res = tr.sample(num_warmup=150, num_samples=200, seed=1, progress_bar=False)
    assert res.paths == ["source0.pos.x", "source0.pos.y", "source0.brightness.Flux"]
    assert res.draws.shape == (1, 200, 3)
    assert res.stats["diverging"].shape == (1, 200)
    assert int(res.stats["diverging"].sum()) == 0
    med = res.median()
    for p, t in zip(res.paths, [truth["x"], truth["y"], truth["flux"]]):
        assert abs(med[p] - t) < 4 * res.std()[p]
    idata = res.to_arviz(observed=True, log_likelihood=True)
    assert {"posterior", "sample_stats", "observed_data", "log_likelihood"} <= set(
        _arviz.groups(idata))
    post = _arviz.get_group(idata, "posterior")
    np.testing.assert_array_equal(post["source0.brightness.Flux"].values, res.draws[..., 2])
    ll = _arviz.get_group(idata, "log_likelihood")["image0"].values
    assert ll.shape == (1, 200, 25, 25)
    np.testing.assert_allclose(ll[0, 7].sum(), res.stats["lp"][0, 7], rtol=1e-9)  # flat priors
    summ = res.summary()
    assert list(summ.index) == res.paths
    assert summ.loc["source0.brightness.Flux", "sd"] == pytest.approx(
        res.std()["source0.brightness.Flux"], rel=1e-6)
    fig = res.corner(truths={"source0.pos.x": truth["x"]})
    assert len(fig.axes) == 9
    import matplotlib.pyplot as plt

    plt.close(fig)
    imgs = res.model_images(n=10, noise=True)
    assert imgs[0].shape == (10, 25, 25)
    res.write_back("median")
    assert tr.getParams() == pytest.approx([med[p] for p in res.paths])


def test_sampling_saves_chunks_and_resumes_without_losing_draws(tmp_path):
    path = str(tmp_path / "chains.nc")
    tr, _ = _star_tractor(seed=2)
    first = tr.sample(num_warmup=100, num_samples=60, seed=3, progress_bar=False, save=path,
                      chunk=20)
    saved = _arviz.get_group(_arviz.from_netcdf(path), "posterior")
    np.testing.assert_array_equal(saved["source0.pos.x"].values, first["source0.pos.x"])
    more = tr.sample(num_samples=100, resume=path, progress_bar=False, init="current")
    assert more.draws.shape == (1, 100, 3)
    np.testing.assert_array_equal(more.draws[:, :60], first.draws)  # kept as they were
    assert not np.array_equal(more.draws[:, 60:80], more.draws[:, 40:60])
    again = _arviz.get_group(_arviz.from_netcdf(path), "posterior")
    assert again["source0.pos.x"].values.shape == (1, 100)
    # the continuation samples the same posterior (no new warmup needed)
    for p in first.paths:
        assert abs(np.mean(more[p][:, 60:]) - np.mean(first[p])) < 4 * np.std(first[p]) / 3


def test_sample_refuses_bad_requests():
    tr, _ = _star_tractor()
    with pytest.raises(ValueError, match="kernel"):
        tr.sample(kernel="gibbs")
    with pytest.raises(ValueError, match="init"):
        tr.sample(init="prior")
    tr.freezeAllRecursive()
    with pytest.raises(ValueError, match="no thawed parameters"):
        tr.sample()


def test_fit_map_names_degenerate_parameters():
    """A PSF weight and the flux (NullPhotoCal) scale the model together: the covariance does
    not exist and fit_map says which parameters are to blame."""
    tr, _ = _star_tractor(seed=5)
    tr.thawParam("images")
    tr.freezeParam("image0.sky")
    tr.freezeParam("image0.psf.sigmas")
    with pytest.raises(ValueError, match="degenerate.*image0.psf.weights.param0.*"
                                         "source0.brightness.Flux"):
        tr.fit_map()


def test_negative_psf_width_is_illegal():
    tr, _ = _star_tractor()
    tr.images[0].psf.sigmas.setParams([-0.5])
    assert not tr.images[0].psf.isLegal()
    assert tr.getLogProb() == -np.inf
    assert tr.model().log_density() == -np.inf
    with pytest.raises(ValueError, match="illegal"):
        tr.optimize()
