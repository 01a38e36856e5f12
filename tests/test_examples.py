"""Smoke and recovery tests of the example scripts in ``examples/``.

Each example's ``main()`` runs into a temporary folder; the figures must be
written, and the fits must recover the simulated truth (seed 42).
"""

import importlib.util
import math
import pathlib
import re

import numpy as np
import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def _load(name):
    path = EXAMPLES / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(name, tmp_path, *extra):
    out = tmp_path / name
    res = _load(name).main(["--out", str(out), "--seed", "42", *extra])
    return res, out


def _dlnp_lines(text):
    return [float(m) for m in re.findall(r"^dlnp (\S+)$", text, flags=re.M)]


def test_01_single_star(assert_pngs, tmp_path, capsys):
    res, out = _run("01_single_star", tmp_path)
    assert_pngs(out, ["1.png", "2.png", "3.png"])
    text = capsys.readouterr().out
    # one 'dlnp' line per optimize() step, the last one below the stopping threshold
    dl = _dlnp_lines(text)
    assert len(dl) == res["steps"] == len(res["dlnps"])
    assert 2 <= res["steps"] <= 10 and dl[-1] < 1e-3 and dl[0] > 100
    assert "truth" in text and "fit" in text
    # the original Tractor gets dx=-0.0089 dy=-0.0054 dflux=+0.060 on this data
    cx, cy, flux = 12.8, 14.3, 12.0
    assert abs(res["x"] - cx) < 0.05
    assert abs(res["y"] - cy) < 0.05
    assert abs(res["flux"] - flux) < 0.1
    assert res["param_names"] == ["source0.pos.x", "source0.pos.y",
                                  "source0.brightness.Flux"]
    # chi^2 after the fit is consistent with noise (625 pixels, 3 parameters)
    assert res["chi2"] < 625 + 5 * math.sqrt(2 * 625)
    assert res["chi2_initial"] > 10 * res["chi2"]
    assert len(res["derivative_names"]) == 3


def test_02_two_stars_two_images(assert_pngs, tmp_path, capsys):
    res, out = _run("02_two_stars_two_images", tmp_path)
    assert_pngs(out, ["4.png", "5.png", "6.png"])
    dl = _dlnp_lines(capsys.readouterr().out)
    assert len(dl) == res["steps"] and dl[-1] < 1e-3
    fits = res["sources"]
    stars = [((12.8, 14.3), 12.0), ((15.0, 11.0), 15.0)]
    used = set()
    for (tx, ty), tf in stars:
        d = [np.hypot(fx - tx, fy - ty) for (fx, fy), _ in fits]
        j = int(np.argmin(d))
        assert j not in used, "two true stars matched the same fitted source"
        used.add(j)
        (fx, fy), ff = fits[j]
        assert abs(fx - tx) < 0.1 and abs(fy - ty) < 0.1, (fits[j], (tx, ty))
        assert abs(ff - tf) < 0.3, (fits[j], tf)
    for chi2, n in zip(res["chi2"], res["npix"]):
        assert chi2 < n + 5 * math.sqrt(2 * n)


# the seed's printed values (Python 2 prints floats with 12 significant digits)
SEED_COUNTS, SEED_X, SEED_Y = 15848.9319246, 101.957357071, 106.001652903


def test_03_radec_mags(assert_pngs, tmp_path, capsys):
    res, out = _run("03_radec_mags", tmp_path)
    assert_pngs(out, ["radec.png"])
    text = capsys.readouterr().out

    # the seed's printout, line by line
    lines = text.splitlines()
    assert lines[0] == ("source PointSource at RaDecPos: RA, Dec = (42.30000, 9.70000) "
                        "with Mags: i=11.3, r=12")
    assert lines[1] == "photocal MagsPhotoCal(band=r, zp=22.500)"
    assert lines[2] == ("wcs FitsWcs: x0,y0 0.000,0.000, WCS TAN: crpix (100.0, 100.0), "
                        "crval (42, 9), cd (0.1, 0, 0, 0.1), image 200 x 200")
    m = re.match(r"^counts (\S+) x,y (\S+) (\S+)$", lines[3])
    assert m, lines[3]
    printed = [float(v) for v in m.groups()]
    for got, want in zip(printed + [res["counts"], res["x"], res["y"]],
                         [SEED_COUNTS, SEED_X, SEED_Y] * 2):
        assert got == pytest.approx(want, rel=1e-8)

    # the fit: RA/Dec within 0.1 pixel of the truth, r mag within 0.01
    from tractor_prob import FitsWcs, RaDecPos, Tan

    wcs = FitsWcs(Tan(42.0, 9.0, 100.0, 100.0, 0.1, 0.0, 0.0, 0.1, 200.0, 200.0))
    tx, ty = wcs.positionToPixel(RaDecPos(42.3, 9.7))
    fx, fy = wcs.positionToPixel(RaDecPos(res["ra"], res["dec"]))
    sx, sy = res["start_pixel"]
    assert 0.5 < math.hypot(sx - tx, sy - ty) < 1.5  # the start really was ~1 pixel off
    assert abs(fx - tx) < 0.1 and abs(fy - ty) < 0.1, ((fx, fy), (tx, ty))
    assert abs(res["mag_r"] - 12.0) < 0.01
    assert res["mag_i"] == 11.3  # frozen: an r-band image says nothing about i
    assert res["param_names"] == ["source0.pos.ra", "source0.pos.dec", "source0.brightness.r"]
    dl = _dlnp_lines(text)
    assert len(dl) == res["steps"] and dl[-1] < 1e-3
    assert res["chi2"] < res["npix"] + 5 * math.sqrt(2 * res["npix"])
