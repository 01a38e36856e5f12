"""The galaxy examples: ``examples/04_galaxies.py`` (the seed's four-galaxy picture, 7.png) and
``examples/05_galsim_demo12b.py`` (a bulge + disk CompositeGalaxy fitted to GalSim's demo12b
cubes, 6 bands x 3 epochs).

References: GalSim renderings of the same four galaxies (flux inside the 40 x 40 image); the
demo12b simulation's truths (tests/data/galsim-demo12b/PROVENANCE.md): disk exponential
hlr 2.0" sheared g = (0.4, 0.2), bulge deV hlr 0.5" sheared g = (0.12, 0.07), noise 0.02.
GalSim's hlr is that of the round profile before its area-preserving shear, so the semi-major
half-light radius (our re) is hlr / sqrt(q) with q = (1 - |g|) / (1 + |g|).
"""

from __future__ import annotations

import importlib.util
import math
import pathlib
import re

import numpy as np
import pytest

galsim = pytest.importorskip("galsim")

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
GSPARAMS = galsim.GSParams(folding_threshold=1e-3, maxk_threshold=1e-6, kvalue_accuracy=1e-7,
                           maximum_fft_size=16384)  # models/README.md


def _load(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _components(src):
    """[(Sersic n, flux, shape)] of one of the example's sources (its own Flux values)."""
    name = type(src).__name__
    if name == "CompositeGalaxy":
        return [(1.0, src.brightnessExp.val, src.shapeExp),
                (4.0, src.brightnessDev.val, src.shapeDev)]
    if name == "FixedCompositeGalaxy":
        f, F = src.fracDev.val, src.brightness.val
        return [(1.0, (1 - f) * F, src.shapeExp), (4.0, f * F, src.shapeDev)]
    n = {"ExpGalaxy": 1.0, "DevGalaxy": 4.0}.get(name)
    if n is None:
        n = src.getSersicIndex()
    return [(n, src.brightness.val, src.shape)]


def _galsim_counts_in_image(src, W, H, psf_sigma):
    """GalSim no_pixel rendering of the source in a W x H image of 1"/pixel (NullWCS: East = +x):
    (sum of the image, total flux)."""
    parts = []
    for n, flux, shape in _components(src):
        e, re_ = shape.e, shape.getRe()
        q = (1 - e) / (1 + e)
        prof = galsim.Sersic(n, half_light_radius=re_ * math.sqrt(q), flux=flux, gsparams=GSPARAMS)
        parts.append(prof.shear(g=e, beta=shape.theta * galsim.degrees))
    obj = galsim.Convolve([galsim.Add(parts), galsim.Gaussian(sigma=psf_sigma, gsparams=GSPARAMS)],
                          gsparams=GSPARAMS)
    im = galsim.ImageD(W, H, scale=1.0)
    x, y = src.pos.x, src.pos.y
    obj.drawImage(image=im, method="no_pixel", center=galsim.PositionD(x + 1, y + 1))
    return float(im.array.sum()), float(sum(f for _, f, _ in _components(src)))


def test_04_galaxies(assert_pngs, tmp_path, capsys):
    out = tmp_path / "04"
    res = _load("04_galaxies").main(["--out", str(out)])
    assert_pngs(out, ["7.png"])
    text = capsys.readouterr().out
    m = re.search(r"counts in the image per source: (.*)$", text, flags=re.M)
    assert m, text
    printed = [float(v) for v in m.group(1).split(",")]
    np.testing.assert_allclose(printed, res["counts"], atol=1e-3)
    kinds = [type(s).__name__ for s in res["sources"]]
    assert kinds == ["ExpGalaxy", "CompositeGalaxy", "SersicGalaxy", "FixedCompositeGalaxy"]
    H, W = res["model"].shape
    assert (H, W) == (40, 40)
    # the four galaxies' counts sum to the image's
    assert sum(res["counts"]) == pytest.approx(float(res["model"].sum()), rel=1e-10)
    for kind, src, counts in zip(kinds, res["sources"], res["counts"]):
        in_image, total = _galsim_counts_in_image(src, W, H, psf_sigma=1.0)
        assert total == (20.0 if kind == "CompositeGalaxy" else 10.0)
        # GalSim's flux inside the image (96-99.8% of the total here; ours agrees to ~1e-4);
        # ours may also leave out what the stamps cut (worth < STAMP_CHI2 of chi^2 at noise
        # 0.01) and the far wings the mixtures do not carry (< 0.13%)
        assert counts == pytest.approx(in_image, rel=1e-3), (src, counts, in_image)
        if in_image > 0.98 * total:  # the image holds most of the galaxy
            assert counts == pytest.approx(total, rel=0.025), (src, counts)


def _demo12b_truth():
    """Semi-major hlr (arcsec), |g| and position angle (deg) of the demo12b disk and bulge."""
    out = {}
    for name, hlr, g1, g2 in (("disk", 2.0, 0.4, 0.2), ("bulge", 0.5, 0.12, 0.07)):
        g = math.hypot(g1, g2)
        q = (1 - g) / (1 + g)
        out[name] = (hlr / math.sqrt(q), g, math.degrees(0.5 * math.atan2(g2, g1)))
    return out


@pytest.mark.slow  # ~13 s: 18 images x 20 parameters
def test_05_galsim_demo12b(assert_pngs, tmp_path, capsys):
    out = tmp_path / "05"
    res = _load("05_galsim_demo12b").main(["--out", str(out), "--steps", "15"])
    assert_pngs(out, ["8.png", "9.png", "10.png", "11.png"])
    dl = [float(v) for v in re.findall(r"^dlnp (\S+)$", capsys.readouterr().out, flags=re.M)]
    assert dl == res["dlnps"] and dl[-1] < 1e-3 and len(dl) < 15  # converged
    # chi^2 per pixel ~ 1: sd sqrt(2 / 73728) = 0.005; the data were drawn with GalSim's
    # pixel convolution (our PSF model has none), which the small bulge absorbs
    assert res["npix"] == 18 * 64 * 64
    assert abs(res["chi2_per_pixel"] - 1.0) < 0.02, res["chi2_per_pixel"]
    gal = res["galaxy"]
    truth = _demo12b_truth()
    # Fisher errors at this fit (J^T W J from getDerivs, computed once while writing this test):
    # disk logre 0.0037, ee 0.0026 / 0.0019; bulge logre 0.030, ee 0.0071 / 0.0063; x, y 0.005 px
    re_d, g_d, th_d = truth["disk"]
    disk = gal.shapeExp
    assert disk.getRe() == pytest.approx(re_d, rel=0.015)  # 3.236": 4 sigma
    assert abs(disk.e - g_d) < 0.006
    assert abs(disk.theta - th_d) < 0.5  # degrees; (ee1, ee2) parallel to (0.4, 0.2)
    _, _, th_b = truth["bulge"]
    assert abs(gal.shapeDev.theta - th_b) < 5.0  # bulge direction (sigma ~1.4 deg)
    # the galaxy sits at the centre of GalSim's 64 x 64 images: pixel (31.5, 31.5), 0-indexed
    assert abs(gal.pos.x - 31.5) < 0.02 and abs(gal.pos.y - 31.5) < 0.02
    # the disk dominates every band, the bulge is red (u faintest)
    fe, fd = gal.brightnessExp, gal.brightnessDev
    assert all(getattr(fe, b) > getattr(fd, b) for b in "ugrizy")
    assert fd.u < fd.g < fd.r < fd.i
