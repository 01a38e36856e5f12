"""The Params machinery beyond the seed: freezing, names, copies, priors, errors, masking."""

import math

import numpy as np
import pytest

from tractor_prob import (
    Catalog,
    ConstantSky,
    Flux,
    GaussianMixturePSF,
    Image,
    Mags,
    MagsPhotoCal,
    NCircularGaussianPSF,
    NullWCS,
    ParamList,
    PixPos,
    PointSource,
    RaDecPos,
    Tractor,
)


def _src(x=10.0, y=12.0, flux=100.0):
    return PointSource(PixPos(x, y), Flux(flux))


def _image(H=24, W=20, sky=0.0, seed=0, **kw):
    rng = np.random.default_rng(seed)
    kw.setdefault("invvar", np.full((H, W), 4.0))
    return Image(data=rng.normal(size=(H, W)), psf=NCircularGaussianPSF([1.5], [1.0]),
                 sky=ConstantSky(sky), **kw)


def _tractor(**kw):
    return Tractor([_image(**kw)], [_src(), _src(5.0, 6.0, 50.0)])


# --------------------------------------------------------------------------------------
# freezing


def test_frozen_params_vanish_from_views():
    """Frozen params are absent from getParams/Names/numberOfParams/getStepSizes."""
    src = _src()
    src.pos.freezeParam("x")
    assert src.getParams() == [12.0, 100.0]
    assert src.getParamNames() == ["pos.y", "brightness.Flux"]
    assert src.numberOfParams() == 2
    assert src.getStepSizes() == [0.1, 0.1]
    src.freezeParam("brightness")
    assert src.getParams() == [12.0]
    assert src.numberOfParams() == 1
    assert len(src.getStepSizes()) == 1


def test_setparams_skips_frozen():
    """setParams writes only the thawed params, in order."""
    src = _src()
    src.pos.freezeParam("x")
    src.setParams([7.0, 42.0])
    assert src.pos.x == 10.0
    assert src.pos.y == 7.0
    assert src.brightness.getValue() == 42.0


def test_setparam_indexes_thawed_params():
    """setParam(i) counts only thawed params and returns the old value."""
    pos = PixPos(1.0, 2.0)
    pos.freezeParam("x")
    old = pos.setParam(0, 5.0)
    assert old == 2.0
    assert pos.getAllParams() == [1.0, 5.0]
    with pytest.raises(IndexError):
        pos.setParam(1, 3.0)


def test_all_params_see_frozen():
    """getAllParams/getAllParamNames/setAllParams include frozen params."""
    src = _src()
    src.freezeParam("pos")
    assert src.getAllParams() == [10.0, 12.0, 100.0]
    assert src.getAllParamNames() == ["pos.x", "pos.y", "brightness.Flux"]
    src.setAllParams([1.0, 2.0, 3.0])
    assert src.pos.getAllParams() == [1.0, 2.0]
    assert src.getParams() == [3.0]


def test_freeze_all_but():
    """freezeAllBut leaves only the named entries thawed."""
    src = _src()
    src.freezeAllBut("brightness")
    assert src.getParamNames() == ["brightness.Flux"]
    src.pos.freezeAllBut("y")
    src.thawParam("pos")
    assert src.getParamNames() == ["pos.y", "brightness.Flux"]


def test_freeze_and_thaw_params_recursive():
    """freezeParamsRecursive/thawParamsRecursive act on the named entry at every level."""
    cat = Catalog(_src(), _src(3.0, 4.0, 5.0))
    cat.freezeParamsRecursive("pos")
    assert cat.getParamNames() == ["source0.brightness.Flux", "source1.brightness.Flux"]
    cat.thawParamsRecursive("pos")
    assert cat.numberOfParams() == 6
    cat.freezeParamsRecursive("x")
    assert "source0.pos.x" not in cat.getParamNames()
    assert "source1.pos.y" in cat.getParamNames()
    cat.freezeParamsRecursive("*")
    assert cat.numberOfParams() == 0
    cat.thawParamsRecursive("*")
    assert cat.numberOfParams() == 6


def test_is_param_frozen_thawed():
    """isParamFrozen / isParamThawed report the entry's own state."""
    src = _src()
    assert src.isParamThawed("pos") and not src.isParamFrozen("pos")
    src.freezeParam("pos")
    assert src.isParamFrozen("pos") and not src.isParamThawed("pos")
    # the parent is frozen, the child keeps its own state
    assert src.pos.isParamThawed("x")


def test_thaw_paths_to_nothing_matching():
    """thawPathsTo returns False and thaws nothing when no parameter has the name."""
    cat = Catalog(PointSource(RaDecPos(42.3, 9.7), Mags(r=20.0)))
    cat.freezeAllRecursive()
    assert cat.thawPathsTo("z") is False
    assert cat.numberOfParams() == 0
    assert cat.thawPathsTo("dec") is True
    assert cat.getParamNames() == ["source0.pos.dec"]


def test_tractor_level_names_and_freezing_images():
    """Tractor names are image<i>.* and source<j>.*; freezeParam('images') hides image params."""
    tr = _tractor()
    names = tr.getParamNames()
    assert "image0.sky.sky" in names
    assert "image0.psf.sigmas.param0" in names
    assert "source0.pos.x" in names and "source1.brightness.Flux" in names
    assert all(n.startswith(("image0.", "source0.", "source1.")) for n in names)
    assert len(names) == tr.numberOfParams() == len(tr.getParams())
    tr.freezeParam("images")
    names = tr.getParamNames()
    assert names and all(n.startswith("source") for n in names)
    assert tr.numberOfParams() == 6
    tr.thawParam("images")
    tr.freezeParam("catalog")
    assert all(n.startswith("image0.") for n in tr.getParamNames())


# --------------------------------------------------------------------------------------
# ParamList subclasses, names, attributes


class _LensingMass(ParamList):
    @staticmethod
    def getNamedParams():
        return dict(mass=0, radius=1)

    def getStepSizes(self):
        return [1e12, 0.1]


def test_paramlist_subclass_names_and_steps():
    """A ParamList subclass gets its names from getNamedParams and its own step sizes."""
    m = _LensingMass(1e14, 0.1)
    assert m.getParamNames() == ["mass", "radius"]
    assert m.getStepSizes() == [1e12, 0.1]
    assert m.mass == 1e14 and m.radius == 0.1
    m.radius = 0.3
    assert m.getParams() == [1e14, 0.3]
    m.freezeParam("mass")
    assert m.getParamNames() == ["radius"]


def test_paramlist_default_names():
    """Unnamed ParamList entries are called param0, param1, ..."""
    p = ParamList(1.0, 2.0, 3.0)
    assert p.getParamNames() == ["param0", "param1", "param2"]
    p.freezeParam("param1")
    assert p.getParams() == [1.0, 3.0]


def test_attribute_get_set_by_name():
    """Setting a named attribute (src.pos.x = 3.) changes getParams; a sub-object can be swapped."""
    src = _src()
    src.pos.x = 3.0
    assert src.getParams()[0] == 3.0
    src.brightness = Flux(7.0)
    assert src.getParams() == [3.0, 12.0, 7.0]
    with pytest.raises(ValueError, match="not finite"):
        src.pos.y = float("nan")
    with pytest.raises(AttributeError):
        _ = src.pos.z


# --------------------------------------------------------------------------------------
# copies


def test_source_copy_is_deep():
    """Changing or freezing a copied source leaves the original alone."""
    src = _src()
    c = src.copy()
    c.pos.x = 99.0
    c.setParams([1.0, 2.0, 3.0])
    c.freezeParam("pos")
    assert src.getParams() == [10.0, 12.0, 100.0]
    assert src.numberOfParams() == 3
    assert c.getParams() == [3.0]


def test_catalog_copy_is_deep():
    """A copied Catalog has its own sources."""
    cat = Catalog(_src(), _src(1.0, 2.0, 3.0))
    c = cat.copy()
    c[0].pos.x = -5.0
    c[1].freezeParam("brightness")
    assert cat[0].pos.x == 10.0
    assert cat.numberOfParams() == 6
    assert c.numberOfParams() == 5


def test_image_copy_is_deep():
    """A copied Image has its own calibrations (and pixels)."""
    im = _image(sky=1.5)
    c = im.copy()
    c.sky.setParams([3.0])
    c.freezeParam("psf")
    assert im.sky.getValue() == 1.5
    assert "psf.sigmas.param0" in im.getParamNames()
    assert "psf.sigmas.param0" not in c.getParamNames()
    c.data = np.zeros(im.shape)
    assert np.any(im.data != 0)


def test_tractor_copy_is_deep():
    """A copied Tractor's params, freezing and model are independent of the original."""
    tr = _tractor()
    before = tr.getParams()
    c = tr.copy()
    c.freezeParam("images")
    c.catalog[0].pos.x = 3.0
    assert tr.getParams() == before
    assert tr.numberOfParams() == len(before)
    assert c.catalog[0].pos.x == 3.0
    assert not np.allclose(c.getModelImage(0), tr.getModelImage(0))


# --------------------------------------------------------------------------------------
# brightness and position details


def test_mags_order():
    """Mags(order=...) keeps that order; the default order is sorted band names."""
    m = Mags(r=17.4, g=18.9, order=["r", "g"])
    assert m.getParamNames() == ["r", "g"]
    assert m.getParams() == [17.4, 18.9]
    d = Mags(r=17.4, g=18.9, i=16.0)
    assert d.getParamNames() == ["g", "i", "r"]
    assert d.getParams() == [18.9, 16.0, 17.4]


@pytest.mark.parametrize("dec", [0.0, 9.7, 60.0, -75.0])
def test_radecpos_step_sizes(dec):
    """RaDecPos steps: 1e-4 deg in Dec, 1e-4/cos(Dec) in RA; frozen RA drops its step."""
    pos = RaDecPos(10.0, dec)
    ra_step, dec_step = pos.getStepSizes()
    assert ra_step == pytest.approx(1e-4 / math.cos(math.radians(dec)), rel=1e-12)
    assert dec_step == 1e-4
    pos.freezeParam("ra")
    assert pos.getStepSizes() == [1e-4]


# --------------------------------------------------------------------------------------
# Gaussian priors


def _lp(v, mu, sig):
    """log N(v; mu, sig), normalised (scipy-independent closed form)."""
    return -0.5 * ((v - mu) / sig) ** 2 - math.log(sig * math.sqrt(2 * math.pi))


def test_prior_on_pixpos():
    """addGaussianPrior on PixPos gives the analytic log prior; frozen params drop out."""
    pos = PixPos(3.0, 4.0)
    assert pos.getLogPrior() == 0.0
    pos.addGaussianPrior("x", 2.0, 0.5)
    pos.addGaussianPrior("y", 5.0, 2.0)
    assert pos.getLogPrior() == pytest.approx(_lp(3.0, 2.0, 0.5) + _lp(4.0, 5.0, 2.0))
    pos.freezeParam("x")
    assert pos.getLogPrior() == pytest.approx(_lp(4.0, 5.0, 2.0))


def test_prior_on_source_by_path():
    """src.addGaussianPrior('pos.x', ...) puts the prior on the sub-object; frozen subs excluded."""
    src = _src()
    src.addGaussianPrior("pos.x", 9.0, 0.5)
    src.addGaussianPrior("brightness", 90.0, 5.0)
    want = _lp(10.0, 9.0, 0.5) + _lp(100.0, 90.0, 5.0)
    assert src.getLogPrior() == pytest.approx(want)
    assert src.pos.getLogPrior() == pytest.approx(_lp(10.0, 9.0, 0.5))
    src.freezeParam("pos")
    assert src.getLogPrior() == pytest.approx(_lp(100.0, 90.0, 5.0))
    # the scalar brightness can also be named by its full path (replaces the prior above)
    src.addGaussianPrior("brightness.Flux", 95.0, 2.0)
    assert src.getLogPrior() == pytest.approx(_lp(100.0, 95.0, 2.0))


def test_prior_on_constant_sky():
    """ConstantSky takes a prior by its parameter name 'sky'."""
    sky = ConstantSky(3.0)
    sky.addGaussianPrior("sky", 1.0, 2.0)
    assert sky.getLogPrior() == pytest.approx(_lp(3.0, 1.0, 2.0))


def test_tractor_log_prob_is_likelihood_plus_prior():
    """Tractor.getLogPrior sums thawed priors; getLogProb = getLogLikelihood + getLogPrior."""
    tr = _tractor(sky=0.2)
    tr.catalog[0].addGaussianPrior("pos.y", 11.0, 0.5)
    tr.images[0].sky.addGaussianPrior("sky", 0.0, 0.1)
    want = _lp(12.0, 11.0, 0.5) + _lp(0.2, 0.0, 0.1)
    assert tr.getLogPrior() == pytest.approx(want)
    lnl = tr.getLogLikelihood()
    assert lnl < 0
    assert tr.getLogProb() == pytest.approx(lnl + want, rel=1e-12)
    tr.freezeParam("images")
    assert tr.getLogPrior() == pytest.approx(_lp(12.0, 11.0, 0.5))


# --------------------------------------------------------------------------------------
# errors with clear messages


def test_unknown_names_are_errors():
    """freezeParam/thawParam/addGaussianPrior with an unknown name raise, naming it."""
    src = _src()
    with pytest.raises(ValueError, match="'bogus'"):
        src.freezeParam("bogus")
    with pytest.raises(ValueError, match="'bogus'"):
        src.thawParam("bogus")
    with pytest.raises(ValueError, match="'bogus'"):
        src.addGaussianPrior("bogus", 0.0, 1.0)
    with pytest.raises(ValueError, match="'z'"):
        src.addGaussianPrior("pos.z", 0.0, 1.0)
    with pytest.raises(ValueError, match="'bogus'"):
        ConstantSky(1.0).addGaussianPrior("bogus", 0.0, 1.0)
    with pytest.raises(ValueError, match="'tx'"):
        _tractor().freezeParam("tx")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_values_rejected(bad):
    """NaN/inf in constructors and setParams raise 'not finite'."""
    with pytest.raises(ValueError, match="not finite"):
        PixPos(bad, 1.0)
    with pytest.raises(ValueError, match="not finite"):
        Flux(bad)
    with pytest.raises(ValueError, match="not finite"):
        RaDecPos(bad, 1.0)
    with pytest.raises(ValueError, match="not finite"):
        Mags(r=bad)
    src = _src()
    with pytest.raises(ValueError, match="not finite"):
        src.setParams([1.0, bad, 3.0])
    with pytest.raises(ValueError, match="not finite"):
        ConstantSky(0.0).setParams([bad])


def test_setparams_wrong_length():
    """setParams with the wrong number of values raises ValueError."""
    src = _src()
    with pytest.raises(ValueError, match="3 thawed parameters, got 2"):
        src.setParams([1.0, 2.0])
    with pytest.raises(ValueError):
        src.pos.setParams([1.0, 2.0, 3.0])
    tr = _tractor()
    with pytest.raises(ValueError):
        tr.setParams(tr.getParams() + [1.0])


def test_image_noise_errors():
    """Image rejects invvar of the wrong shape, negative invvar, and invvar+inverr together."""
    psf = NCircularGaussianPSF([1.0], [1.0])
    data = np.zeros((5, 6))
    with pytest.raises(ValueError, match="shape"):
        Image(data=data, invvar=np.ones((6, 5)), psf=psf)
    with pytest.raises(ValueError, match="negative"):
        Image(data=data, invvar=-np.ones((5, 6)), psf=psf)
    with pytest.raises(ValueError, match="negative"):
        Image(data=data, inverr=-np.ones((5, 6)), psf=psf)
    with pytest.raises(ValueError, match="not both"):
        Image(data=data, invvar=np.ones((5, 6)), inverr=np.ones((5, 6)), psf=psf)


def test_psf_errors():
    """PSF weights must sum to 1; GaussianMixturePSF covariances must be positive definite."""
    with pytest.raises(ValueError, match="not normalised"):
        NCircularGaussianPSF([1.0, 2.0], [0.5, 0.6])
    with pytest.raises(ValueError, match="not normalised"):
        GaussianMixturePSF([0.5, 0.6], np.zeros((2, 2)), [np.eye(2), np.eye(2)])
    with pytest.raises(ValueError, match="positive definite"):
        GaussianMixturePSF([1.0], np.zeros((1, 2)), [[[1.0, 0.0], [0.0, -1.0]]])
    with pytest.raises(ValueError, match="positive definite"):
        GaussianMixturePSF([1.0], np.zeros((1, 2)), [[[1.0, 2.0], [2.0, 1.0]]])


def test_mags_order_mismatch():
    """Mags order that does not list exactly the given bands is an error."""
    with pytest.raises(ValueError, match="order"):
        Mags(r=1.0, i=2.0, order=["r", "g"])
    with pytest.raises(ValueError, match="order"):
        Mags(r=1.0, i=2.0, order=["r"])


def test_missing_band_when_rendering():
    """Rendering a source without the MagsPhotoCal's band raises ValueError naming the band."""
    im = Image(data=np.zeros((20, 20)), psf=NCircularGaussianPSF([1.0], [1.0]),
               photocal=MagsPhotoCal("g", 22.5))
    tr = Tractor([im], [PointSource(PixPos(10.0, 10.0), Mags(r=20.0, i=19.0))])
    with pytest.raises(ValueError, match="'g'"):
        tr.getModelImage(0)


def test_radecpos_with_nullwcs_when_rendering():
    """A RaDecPos source on a NullWCS image raises TypeError mentioning RaDecPos."""
    im = Image(data=np.zeros((20, 20)), psf=NCircularGaussianPSF([1.0], [1.0]), wcs=NullWCS())
    tr = Tractor([im], [PointSource(RaDecPos(10.0, 10.0), Flux(20.0))])
    with pytest.raises(TypeError, match="RaDecPos"):
        tr.getModelImage(0)


def test_optimize_with_source_off_every_image():
    """optimize() refuses a thawed source far off every image, naming it."""
    tr = Tractor([_image()], [_src(), _src(1000.0, 10.0, 20.0)])
    tr.freezeParam("images")
    before = tr.getParams()
    with pytest.raises(ValueError, match="source1 .*off every image"):
        tr.optimize()
    assert tr.getParams() == before


# --------------------------------------------------------------------------------------
# masking


def test_masked_pixels_do_not_count():
    """NaN data, NaN/inf invvar and invvar == 0 are ignored by the likelihood; chi is 0 there."""
    H, W = 24, 20
    rng = np.random.default_rng(3)
    data = rng.normal(size=(H, W))
    invvar = rng.uniform(0.5, 2.0, size=(H, W))
    bad = np.zeros((H, W), bool)
    data_b, invvar_b = data.copy(), invvar.copy()
    for (y, x), kind in zip([(3, 4), (10, 10), (12, 11), (20, 2), (0, 0), (11, 9)],
                            ["nan_data", "nan_iv", "inf_iv", "zero_iv", "nan_data", "inf_iv"]):
        bad[y, x] = True
        if kind == "nan_data":
            data_b[y, x] = np.nan
        elif kind == "nan_iv":
            invvar_b[y, x] = np.nan
        elif kind == "inf_iv":
            invvar_b[y, x] = np.inf
        else:
            invvar_b[y, x] = 0.0
    psf = NCircularGaussianPSF([1.5], [1.0])
    im = Image(data=data_b, invvar=invvar_b, psf=psf, sky=ConstantSky(0.1))
    tr = Tractor([im], [_src(), _src(5.0, 6.0, 50.0)])
    model = tr.getModelImage(0)
    assert np.all(np.isfinite(model))
    good = ~bad
    chi2 = np.sum((data[good] - model[good]) ** 2 * invvar[good])
    assert tr.getLogLikelihood() == pytest.approx(-0.5 * chi2, rel=1e-10)
    assert np.array_equal(im.getMask(), good)
    chi = tr.getChiImage(0)
    assert np.all(np.isfinite(chi))
    assert np.all(chi[bad] == 0.0)
    np.testing.assert_allclose(chi[good], (data[good] - model[good]) * np.sqrt(invvar[good]),
                               rtol=1e-10)
    # the masked pixels' values do not matter at all
    im2 = Image(data=np.where(bad, 1e6, data), invvar=np.where(bad, 0.0, invvar), psf=psf,
                sky=ConstantSky(0.1))
    tr2 = Tractor([im2], [_src(), _src(5.0, 6.0, 50.0)])
    assert tr2.getLogLikelihood() == pytest.approx(tr.getLogLikelihood(), rel=1e-12)
