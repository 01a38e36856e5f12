"""Tests of the ArviZ 0.23 / 1.x compatibility layer."""

import arviz as az
import numpy as np
import pytest
import xarray as xr

from tractor_prob import _arviz

NAMES = ["source0.pos.x", "image0.sky.sky"]
LOC = {"source0.pos.x": 3.0, "image0.sky.sky": -1.5}
SCALE = {"source0.pos.x": 2.0, "image0.sky.sky": 0.25}


def _idata(seed=0, n_draw=50):
    rng = np.random.default_rng(seed)
    posterior = {n: rng.normal(LOC[n], SCALE[n], (2, n_draw)) for n in NAMES}
    posterior["source0.flux"] = rng.normal(size=(2, n_draw, 3))
    return _arviz.make_idata(
        posterior,
        sample_stats={"diverging": np.zeros((2, n_draw), bool), "lp": rng.normal(size=(2, n_draw))},
        observed_data={"image0.data": rng.normal(size=(4, 5))},
        log_likelihood={"image0.data": rng.normal(size=(2, n_draw, 4, 5))},
        dims={"source0.flux": ["band"]},
        coords={"band": ["g", "r", "z"]},
        attrs={"run": "test", "seed": seed},
    )


@pytest.fixture
def idata():
    return _idata()


def test_make_idata_groups_and_names(idata):
    assert set(_arviz.groups(idata)) == {
        "posterior",
        "sample_stats",
        "observed_data",
        "log_likelihood",
    }
    post = _arviz.get_group(idata, "posterior")
    assert isinstance(post, xr.Dataset)
    assert set(post.data_vars) == {*NAMES, "source0.flux"}
    assert post["source0.pos.x"].dims == ("chain", "draw")
    assert post["source0.flux"].sel(band="r").shape == (2, 50)
    assert _arviz.get_group(idata, "observed_data")["image0.data"].shape == (4, 5)
    assert idata.attrs["run"] == "test"
    with pytest.raises(KeyError):
        _arviz.get_group(idata, "prior")


def test_summary_matches_numpy(idata):
    df = _arviz.summary(idata, var_names=NAMES, hdi_prob=0.9)
    assert list(df.columns) == _arviz.SUMMARY_COLUMNS
    assert list(df.index) == NAMES
    post = _arviz.get_group(idata, "posterior")
    for name in NAMES:
        x = post[name].values.ravel()
        assert df.loc[name, "mean"] == pytest.approx(x.mean(), rel=1e-10)
        assert df.loc[name, "sd"] == pytest.approx(x.std(ddof=1), rel=1e-10)
        assert x.min() <= df.loc[name, "hdi_low"] < df.loc[name, "mean"]
        assert df.loc[name, "mean"] < df.loc[name, "hdi_high"] <= x.max()
        # i.i.d. draws: estimates within a few standard errors of the truth
        assert abs(df.loc[name, "mean"] - LOC[name]) < 4 * SCALE[name] / 10
    assert (df["ess_bulk"] > 20).all()
    assert (df["r_hat"] < 1.1).all()
    # ess_tail: same 5% / 95% quantile definition in both ArviZ versions
    tail = az.ess(post, var_names=NAMES, method="tail", prob=(0.05, 0.95))
    np.testing.assert_allclose(df["ess_tail"], [float(tail[n]) for n in NAMES], rtol=1e-10)
    full = _arviz.summary(idata)
    assert list(full.index[2:]) == ["source0.flux[g]", "source0.flux[r]", "source0.flux[z]"]


def test_ess_min_rhat_max(idata):
    df = _arviz.summary(idata, var_names=NAMES)
    assert _arviz.ess_min(idata, NAMES) == pytest.approx(df["ess_bulk"].min())
    assert _arviz.rhat_max(idata, NAMES) == pytest.approx(df["r_hat"].max())
    assert _arviz.ess_min(idata) <= _arviz.ess_min(idata, NAMES)
    assert 0.9 < _arviz.rhat_max(idata) < 1.1


def test_netcdf_round_trip(idata, tmp_path):
    path = tmp_path / "fit.nc"
    assert _arviz.to_netcdf(idata, path) == str(path)
    assert [p.name for p in tmp_path.iterdir()] == ["fit.nc"]
    back = _arviz.from_netcdf(path)
    assert type(back) is type(idata)
    assert set(_arviz.groups(back)) == set(_arviz.groups(idata))
    for group in _arviz.groups(idata):
        xr.testing.assert_equal(_arviz.get_group(back, group), _arviz.get_group(idata, group))
    assert back.attrs["run"] == "test"
    assert list(_arviz.summary(back, var_names=NAMES).index) == NAMES

    # fully loaded: the file can be replaced and removed under the object
    _arviz.to_netcdf(_idata(seed=1), path)
    again = _arviz.get_group(_arviz.from_netcdf(path), "posterior")["source0.pos.x"].values
    path.unlink()
    np.testing.assert_array_equal(
        _arviz.get_group(back, "posterior")["source0.pos.x"].values,
        _arviz.get_group(idata, "posterior")["source0.pos.x"].values,
    )
    assert not np.array_equal(again, _arviz.get_group(idata, "posterior")["source0.pos.x"].values)


def test_concat_draws(idata):
    b = _idata(seed=1, n_draw=30)
    both = _arviz.concat_draws(idata, b)
    assert set(_arviz.groups(both)) == set(_arviz.groups(idata))
    for group in ("posterior", "sample_stats", "log_likelihood"):
        ds = _arviz.get_group(both, group)
        assert ds.sizes["chain"] == 2 and ds.sizes["draw"] == 80
        np.testing.assert_array_equal(ds["draw"].values, np.arange(80))
    post = _arviz.get_group(both, "posterior")["source0.pos.x"].values
    np.testing.assert_array_equal(
        post[:, :50], _arviz.get_group(idata, "posterior")["source0.pos.x"].values
    )
    np.testing.assert_array_equal(
        post[:, 50:], _arviz.get_group(b, "posterior")["source0.pos.x"].values
    )
    xr.testing.assert_equal(
        _arviz.get_group(both, "observed_data"), _arviz.get_group(idata, "observed_data")
    )
    assert both.attrs["seed"] == 0
    assert _arviz.summary(both, var_names=NAMES).shape == (2, len(_arviz.SUMMARY_COLUMNS))


def test_plot_trace(idata, tmp_path, assert_pngs):
    import matplotlib.pyplot as plt

    before = set(plt.get_fignums())
    path = tmp_path / "trace.png"
    assert _arviz.plot_trace(idata, NAMES + ["source0.flux"], path) == path
    assert_pngs(tmp_path, ["trace.png"])
    assert set(plt.get_fignums()) == before  # its figure is closed


def test_to_netcdf_failure_keeps_old_file(idata, tmp_path):
    path = tmp_path / "fit.nc"
    _arviz.to_netcdf(idata, path)
    bad = _idata(seed=1)
    bad.attrs["nested"] = {"not": "netcdf"}
    with pytest.raises((TypeError, ValueError)):
        _arviz.to_netcdf(bad, path)
    assert [p.name for p in tmp_path.iterdir()] == ["fit.nc"]
    assert _arviz.from_netcdf(path).attrs["seed"] == 0
