"""The probabilistic examples: ``examples/06_sample_galaxy.py`` (NUTS on a Sersic galaxy),
``examples/07_freeze_thaw.py`` (freezing calibrations = conditioning on them) and the
notebook ``examples/diagnostics.ipynb`` (ArviZ diagnostics, on ArviZ 0.23 and 1.x).

Recovery criteria, stated once: over noise realizations the truth's squared Mahalanobis
distance from the posterior mean (posterior covariance) is ~ chi^2 with as many degrees of
freedom as parameters; we require it inside the 99.9% quantile, and every marginal
|median - truth| < 4.5 posterior sd (a 7e-6 two-sided tail per parameter).  Seed 42's noise
happens to be a ~1% tail draw in both scripts (D^2 = 19 of 7 for the galaxy, 14 of 5 for the
star), which is why no tighter per-parameter bound is used.  Sampler checks do not depend on
the noise: no divergences, the NUTS median and sd agree with the MAP and its Fisher stderr.
"""

from __future__ import annotations

import importlib.util
import json
import math
import pathlib
import re

import numpy as np
import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"

# chi^2 99.9% quantiles (scipy.stats.chi2.ppf(0.999, k))
CHI2_999 = {5: 20.515, 6: 22.458, 7: 24.322}


def _load(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _mahalanobis2(truth, mean, cov, paths):
    d = np.array([truth[p] - mean[p] for p in paths])
    return float(d @ np.linalg.solve(cov, d))


def test_chi2_helper():
    """The example's closed-form chi^2 survival function (no scipy at run time)."""
    stats = pytest.importorskip("scipy.stats")
    chi2_sf = _load("06_sample_galaxy").chi2_sf
    for k in (1, 2, 3, 5, 6, 7, 8):
        for x in (0.1, 2.0, 7.0, 19.07, 40.0):
            assert chi2_sf(x, k) == pytest.approx(stats.chi2.sf(x, k), rel=1e-10, abs=1e-300)
    for k, q in CHI2_999.items():
        assert q == pytest.approx(stats.chi2.ppf(0.999, k), abs=1e-3)


def test_06_galsim_truth_matches_model():
    """The --render galsim data and the package's rendering of the truth agree (the same
    galaxy: GalSim's round hlr = re sqrt(q), shear g = |e| at the same angle)."""
    pytest.importorskip("galsim")
    from tractor_prob import (ConstantSky, Flux, Image, NCircularGaussianPSF, NullPhotoCal,
                              NullWCS, PixPos, Tractor)
    from tractor_prob.sersic import SersicGalaxy, SersicIndex

    ex = _load("06_sample_galaxy")
    W = H = 48
    tim = Image(data=np.zeros((H, W)), invvar=np.ones((H, W)),
                psf=NCircularGaussianPSF([ex.PSF_SIGMA], [1.0]), wcs=NullWCS(),
                photocal=NullPhotoCal(), sky=ConstantSky(0.0))
    gal = SersicGalaxy(PixPos(ex.X0, ex.Y0), Flux(ex.FLUX), ex.truth_shape(),
                       SersicIndex(ex.SERSIC_N))
    assert gal.shape.ab == pytest.approx(ex.Q) and gal.shape.theta == pytest.approx(ex.THETA)
    ours = np.asarray(Tractor([tim], [gal]).getModelImage(0))
    theirs = ex.render_galsim(gal.shape, W, H)
    peak = theirs.max()
    # mixture-of-Gaussians Sersic vs GalSim's exact profile: within 1% of the peak per pixel
    assert np.max(np.abs(ours - theirs)) < 0.01 * peak
    assert ours.sum() == pytest.approx(theirs.sum(), rel=2e-3)


@pytest.mark.slow  # ~35-50 s on 2 shared cores, mostly compiling the Sersic model
def test_06_sample_galaxy(assert_pngs, tmp_path, capsys):
    out = tmp_path / "06"
    res = _load("06_sample_galaxy").main(["--out", str(out), "--seed", "42"])
    assert_pngs(out, ["corner.png", "trace.png", "ppc.png"])
    text = capsys.readouterr().out
    assert re.search(r"^parameter\s+truth\s+MAP\s+stderr\s+median\s+sd", text, flags=re.M)
    paths = res["paths"]
    assert paths == ["source0.pos.x", "source0.pos.y", "source0.brightness.Flux",
                     "source0.shape.re", "source0.shape.e1", "source0.shape.e2",
                     "source0.sersicindex.SersicIndex"]
    truth, med, sd = res["truth"], res["median"], res["sd"]
    # sampler health
    assert res["map_converged"]
    assert res["divergences"] == 0
    assert res["ess_bulk_min"] > 100
    assert res["r_hat_max"] is None  # one chain by default
    for p in paths:
        # NUTS agrees with the MAP and its Fisher stderr (near-Gaussian posterior)
        assert abs(med[p] - res["map"][p]) < 0.5 * sd[p], p
        assert 0.75 < sd[p] / res["map_stderr"][p] < 1.33, p
        # recovery
        assert abs(med[p] - truth[p]) < 4.5 * sd[p], (p, med[p], truth[p], sd[p])
    assert res["mahalanobis2"] < CHI2_999[7]
    assert res["mahalanobis_p"] == pytest.approx(
        _load("06_sample_galaxy").chi2_sf(res["mahalanobis2"], 7))
    # the model fits: chi^2 consistent with noise, posterior predictive p not extreme
    n = res["npix"]
    assert abs(res["chi2"] - n) < 5 * math.sqrt(2 * n)
    assert 0.005 < res["ppp"] < 0.995
    # derived axis ratio and angle
    q, sq = res["q"]
    th, sth = res["theta"]
    assert abs(q - 0.6) < 4.5 * sq and abs(th - 30.0) < 4.5 * sth
    assert list(res["summary"].index) == paths


@pytest.mark.slow  # ~30-40 s on 2 shared cores: three compilations (MAP, two NUTS runs)
def test_07_freeze_thaw(assert_pngs, tmp_path, capsys):
    out = tmp_path / "07"
    res = _load("07_freeze_thaw").main(["--out", str(out), "--seed", "42"])
    assert_pngs(out, ["joint_corner.png", "flux_posteriors.png"])
    text = capsys.readouterr().out
    sig, sky, flux = "image0.psf.sigmas.param0", "image0.sky.sky", "source0.brightness.Flux"
    star = ["source0.pos.x", "source0.pos.y", flux]
    assert res["paths"] == [sig, sky, *star]  # the PSF weight stays frozen
    assert res["frozen_paths"] == star
    truth = res["truth"]
    jmed, jsd = res["joint_median"], res["joint_sd"]
    assert res["divergences"] == {"joint": 0, "frozen": 0}
    # joint recovery (5 parameters) and NUTS vs MAP
    for p in res["paths"]:
        assert abs(jmed[p] - truth[p]) < 4.5 * jsd[p], (p, jmed[p], truth[p], jsd[p])
        assert abs(jmed[p] - res["map"][p]) < 0.5 * jsd[p], p
        assert 0.8 < jsd[p] / res["map_stderr"][p] < 1.25, p
    # the flux is correlated with the PSF width: freezing the calibrations narrows it ...
    rho = res["map_correlation"][res["paths"].index(flux), res["paths"].index(sig)]
    assert rho > 0.5
    assert res["shrink"] < 0.85
    assert res["frozen_sd"][flux] < res["joint_sd"][flux]
    # ... to the conditional width the joint Gaussian predicts (1 / sqrt(precision_ff))
    assert res["frozen_sd"][flux] == pytest.approx(res["sd_cond_predicted"], rel=0.15)
    # conditioned at the MAP calibration, the flux centres on the MAP flux
    assert abs(res["frozen_median"][flux] - res["map"][flux]) < 0.3 * res["frozen_sd"][flux]
    # frozen calibrations are constants of the model: no latent site carries them, and its
    # log density is still the Tractor's
    assert res["frozen_at"] == pytest.approx({sig: res["map"][sig], sky: res["map"][sky]})
    assert res["sites_frozen"] == ["thawed.real"]
    lp_model, lp_tractor = res["log_density"]
    assert lp_model == pytest.approx(lp_tractor, rel=1e-10)
    # the Gaussian prediction at the true calibrations recovers the true flux
    assert abs(res["mean_at_true_calibration"] - truth[flux]) < 4.5 * res["sd_cond_predicted"]
    assert "flux sd: joint" in text and "frozen" in text


NOTEBOOK = EXAMPLES / "diagnostics.ipynb"


def test_diagnostics_notebook_is_clean():
    """The committed notebook carries no outputs or execution counts."""
    nb = json.loads(NOTEBOOK.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code
    for c in code:
        assert c["outputs"] == [] and c["execution_count"] is None


@pytest.mark.slow  # ~25-35 s: kernel start, then MAP + 2 NUTS chains of a small galaxy
def test_diagnostics_notebook(assert_pngs, tmp_path):
    nbformat = pytest.importorskip(
        "nbformat", reason="executing the notebook needs nbformat, nbclient and ipykernel")
    nbclient = pytest.importorskip(
        "nbclient", reason="executing the notebook needs nbformat, nbclient and ipykernel")
    pytest.importorskip(
        "ipykernel", reason="executing the notebook needs nbformat, nbclient and ipykernel")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    out = tmp_path / "example-out" / "diagnostics"
    assert_pngs(out, ["trace.png", "sampler.png", "ppc.png"])
    assert (out / "posterior.nc").is_file() and (out / "full.nc").is_file()
    v = json.loads((out / "diagnostics.json").read_text())
    assert v["roundtrip"] is True
    assert v["converged"] is True
    assert v["rhat_max"] < 1.05 and v["ess_bulk_min"] > 100
    assert v["divergences"] == 0
    assert v["e_bfmi_min"] > 0.3
    assert v["max_abs_z"] < 4.5
    assert 0.005 < v["ppp"] < 0.995
    import arviz

    assert v["arviz"] == arviz.__version__
