"""The ``tractor-prob`` command line: the demo's files and fit, errors, entry points.

Tolerances of the demo fit (default seed 1: 8 stars, fluxes 50..2000 counts,
PSF 0.8 x N(1.5 px) + 0.2 x N(4 px), noise sigma 1 count per pixel):

- position: within 0.5 px of the truth (distance) for every star, as asked of the
  demo; for reference an isolated star's per-axis 1-sigma is 13.9 px / flux, so
  0.28 px at the faintest possible flux (50 counts) and 0.01 px at 2000;
- flux: within 5 sigma, sigma_F = noise * sqrt(N_eff) with N_eff = 1 / integral(psf^2)
  = 39 px for this PSF, i.e. sigma_F = 6.25 counts (the isolated-star value with
  position and sky known; ~ sqrt(4 pi) sigma_eff noise with sigma_eff = 1.76 px).
"""

import importlib.metadata
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from astropy.table import Table

from tractor_prob.cli import _atomic_write, _flux_sigma_psf, _position_sigma_psf, main

NOISE = 1.0
SIGMA_F = 6.25  # counts, see the module docstring


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    rc = main(["demo", "--out", str(out), "--quiet"])
    assert rc == 0
    return out


def test_demo_files(demo_out, assert_pngs):
    names = sorted(os.listdir(demo_out))
    # nothing but the three products: no temporary files left behind
    assert names == ["catalog.ecsv", "catalog.fits", "panels.png"]
    assert_pngs(demo_out, ["panels.png"], min_bytes=20000)


@pytest.mark.parametrize("name,fmt", [("catalog.fits", "fits"), ("catalog.ecsv", "ascii.ecsv")])
def test_demo_catalog_recovers_truth(demo_out, name, fmt):
    t = Table.read(demo_out / name, format=fmt)
    assert t.colnames[:7] == ["id", "x", "y", "flux", "x_true", "y_true", "flux_true"]
    assert len(t) == 8
    assert list(t["id"]) == list(range(8))
    assert np.all((t["flux_true"] >= 50) & (t["flux_true"] <= 2000))
    dist = np.hypot(t["x"] - t["x_true"], t["y"] - t["y_true"])
    assert np.all(dist < 0.5), dist
    assert np.all(np.abs(t["flux"] - t["flux_true"]) < 5 * SIGMA_F), t["flux"] - t["flux_true"]
    # and the positions are within 5 sigma (per axis) of the isolated-star uncertainty too
    sx = np.array([_position_sigma_psf(f) for f in t["flux_true"]])
    assert np.all(np.abs(t["x"] - t["x_true"]) < 5 * sx)
    assert np.all(np.abs(t["y"] - t["y_true"]) < 5 * sx)


def test_sigma_formulas():
    assert _flux_sigma_psf() == pytest.approx(SIGMA_F, rel=1e-3)
    # a single Gaussian of sigma s: sigma_F = sqrt(4 pi) s noise, sigma_x = sqrt(8 pi) s^2 noise/F
    assert math.sqrt(4 * math.pi) * 1.76 * NOISE == pytest.approx(SIGMA_F, rel=0.01)
    assert _position_sigma_psf(50.0) == pytest.approx(0.278, abs=0.002)


def test_demo_prints_table(tmp_path, capsys):
    rc = main(["demo", "--out", str(tmp_path / "o"), "--nstars", "2", "--seed", "3"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "x_true" in text and "flux_fit" in text
    assert "steps (converged)" in text and "chi^2/pixel" in text
    assert str(tmp_path / "o" / "catalog.fits") in text
    chi2 = float(text.split("chi^2/pixel = ")[1].split()[0])
    assert 0.9 < chi2 < 1.1
    assert len(Table.read(tmp_path / "o" / "catalog.ecsv")) == 2


def test_quiet_prints_nothing(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--nstars", "1", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""


def test_user_errors_exit_2(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["demo", "--out", str(afile), "--quiet"]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert main(["demo", "--out", str(afile / "sub"), "--quiet"]) == 2
    assert "cannot create output folder" in capsys.readouterr().err
    assert main([]) == 2
    for bad in (["demo", "--nstars", "0"], ["demo", "--seed", "-1"], ["demo", "--seed", "x"],
                ["nosuchcommand"]):
        with pytest.raises(SystemExit) as e:
            main(bad)
        assert e.value.code == 2
        assert "error" in capsys.readouterr().err


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "catalog.fits"
    target.write_text("old")

    def interrupted(p):
        with open(p, "w") as f:
            f.write("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _atomic_write(str(target), interrupted)
    assert os.listdir(tmp_path) == ["catalog.fits"] and target.read_text() == "old"
    _atomic_write(str(target), lambda p: open(p, "w").close())
    assert os.listdir(tmp_path) == ["catalog.fits"] and target.read_text() == ""


def test_console_script_declared():
    eps = importlib.metadata.entry_points(group="console_scripts")
    ep = [e for e in eps if e.name == "tractor-prob"]
    assert ep, "console script 'tractor-prob' is not declared (is the package installed?)"
    assert ep[0].value == "tractor_prob.cli:main"
    assert ep[0].load() is main


def test_python_dash_m_help():
    r = subprocess.run([sys.executable, "-m", "tractor_prob", "demo", "--help"],
                       capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    assert "--nstars" in r.stdout and "--quiet" in r.stdout
