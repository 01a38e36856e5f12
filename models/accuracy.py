"""Accuracy report for the profile mixtures: writes ``models/accuracy.md`` and ``models/plots/``.

Usage (from the repository root; run by ``fit_profiles.py`` after the fits)::

    python models/accuracy.py [--quick]

Reads the package table ``tractor_prob/data/profiles.json`` (through the numpy twin of the
package evaluator, ``profile_fit.eval_ppoly``) and compares it with

* the exact profile (radial residuals, enclosed flux, half-light radius);
* the exact profile convolved with circular Gaussian PSFs, computed by 1-D quadrature
  (``profile_fit.sersic_convolved``): this is exactly what a ``no_pixel`` image of a round galaxy
  samples at pixel centres, so max |diff| / peak over radii bounds the image-level error;
* GalSim (``galsim.Sersic`` convolved with ``galsim.Gaussian`` or a 3-Gaussian PSF, drawn with
  ``method='no_pixel'``), round and elliptical;
* Hogg & Lang (2013) exp (6 components) and dev (8 components) mixtures, as shipped in The
  Tractor's ``mixture_profiles.py`` (numbers below; amplitudes normalised to sum 1 as there).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import profile_fit as pf  # noqa: E402

TABLE = ROOT / "tractor_prob" / "data" / "profiles.json"
PLOTS = HERE / "plots"
REPORT = HERE / "accuracy.md"

FWHM2SIG = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))

#: PSF sigmas (units of r_e) for the radial image-level metric.  0.0425 = FWHM 2 px on r_e 20 px
#: (the issue's hardest corner); 0.02 = FWHM 2 px on r_e 40 px; 2.55 = FWHM 6 px on r_e 1 px.
S_LIST = (0.02, 0.0425, 0.1, 0.3, 1.0, 2.55)
GALSIM_GSPARAMS = dict(folding_threshold=1e-3, maxk_threshold=1e-6, kvalue_accuracy=1e-7,
                       maximum_fft_size=16384)

# Hogg & Lang (2013, PASP 125, 719) mixtures as published in The Tractor
# (tractor/mixture_profiles.py, exp_amp/exp_var/dev_amp/dev_var; variances in r_e^2,
# amplitudes normalised to unit sum there).  Reference data for the comparison only.
HL_EXP_AMP = np.array([2.34853813e-03, 3.07995260e-02, 2.23364214e-01, 1.17949102e+00,
                       4.33873750e+00, 5.99820770e+00])
HL_EXP_VAR = np.array([1.20078965e-03, 8.84526493e-03, 3.91463084e-02, 1.39976817e-01,
                       4.60962500e-01, 1.50159566e+00])
HL_DEV_AMP = np.array([4.26347652e-02, 2.40127183e-01, 6.85907632e-01, 1.51937350e+00,
                       2.83627243e+00, 4.46467501e+00, 5.72440830e+00, 5.60989349e+00])
HL_DEV_VAR = np.array([2.23759216e-04, 1.00220099e-03, 4.18731126e-03, 1.69432589e-02,
                       6.84850479e-02, 2.87207080e-01, 1.33320254e+00, 8.40215071e+00])
HL_EXP_AMP = HL_EXP_AMP / HL_EXP_AMP.sum()
HL_DEV_AMP = HL_DEV_AMP / HL_DEV_AMP.sum()


def _taper(r, inner, outer):
    """1 inside ``inner``, (1 - ((r - inner) / (outer - inner))^2)^2 between, 0 beyond ``outer``."""
    x = np.clip((r - inner) / (outer - inner), 0.0, 1.0)
    return (1.0 - x * x) ** 2


def _unit_flux(f):
    r = np.geomspace(1e-9, 50.0, 200001)
    tot = np.trapezoid(2 * np.pi * r * f(r), r)
    return lambda r: f(r) / tot


#: The truncated SDSS-style targets of Hogg & Lang (their "lux" and "luv", as described in the
#: paper: the exponential tapered to zero between 3 and 4 r_e; the de Vaucouleurs profile with a
#: softened core, (r^2 + 4e-4)^(1/8), tapered to zero between 7 and 8 r_e), normalised here to
#: unit total flux like the mixtures.  The Tractor's H&L mixtures fit these, not the pure profiles.
LUX = _unit_flux(lambda r: np.exp(-pf.sersic_b(1.0) * (r - 1.0)) * _taper(r, 3.0, 4.0))
LUV = _unit_flux(lambda r: np.exp(-pf.sersic_b(4.0) * ((r * r + 4e-4) ** 0.125 - 1.0))
                 * _taper(r, 7.0, 8.0))


def image_errors(intensity, a, v, s_list=S_LIST):
    """E(s) of mixture (a, v) against an arbitrary unit-flux circular profile."""
    E = []
    for s in s_list:
        R = np.concatenate([np.linspace(0, 3 * s, 24, endpoint=False), np.geomspace(3 * s, 100, 160)])
        ce = pf.convolved_profile(R, intensity, s)
        E.append(float(np.abs(pf.mog_intensity(R, a, v, s) - ce).max() / ce[0]))
    return E

# ----------------------------------------------------------------------------------------------
# loading
# ----------------------------------------------------------------------------------------------


def load_table(path=TABLE):
    t = json.loads(Path(path).read_text())
    ser = t["sersic"]
    br = np.asarray(ser["breakpoints"])
    coef = np.asarray(ser["coefficients"])

    def sersic(n):
        return pf.eval_ppoly(br, coef, n)

    exp = (np.asarray(t["exp"]["amps"]), np.asarray(t["exp"]["vars"]))
    dev = (np.asarray(t["dev"]["amps"]), np.asarray(t["dev"]["vars"]))
    return t, exp, dev, sersic


# ----------------------------------------------------------------------------------------------
# radial metrics
# ----------------------------------------------------------------------------------------------


def wing_radius(n, a, v):
    """Radius beyond which the mixture stays below half of the exact intensity."""
    r = np.geomspace(0.05, 1e4, 3000)
    ex = pf.sersic_intensity(r, n)
    r, ex = r[ex > 1e-280], ex[ex > 1e-280]  # where the exact profile is representable
    bad = pf.mog_intensity(r, a, v) < 0.5 * ex
    ok = np.nonzero(~bad)[0]
    return float(r[ok[-1] + 1]) if ok[-1] + 1 < len(r) else np.inf


def radial_metrics(n, a, v, s_list=S_LIST):
    """Dict of accuracy numbers of mixture (a, v) against the exact Sersic(n)."""
    out = {"n": n, "K": len(a), "flux_fraction": float(a.sum())}
    E = []
    for s in s_list:
        R = np.concatenate([np.linspace(0, 3 * s, 24, endpoint=False), np.geomspace(3 * s, 100, 160)])
        ce = pf.sersic_convolved(R, n, s)
        E.append(float(np.abs(pf.mog_intensity(R, a, v, s) - ce).max() / ce[0]))
    out["E"] = E
    r = np.geomspace(0.05, 4.0, 400)
    out["rel_005_4"] = float(np.abs(pf.mog_intensity(r, a, v) / pf.sersic_intensity(r, n) - 1).max())
    r = np.geomspace(0.2, 2.0, 200)
    out["rel_02_2"] = float(np.abs(pf.mog_intensity(r, a, v) / pf.sersic_intensity(r, n) - 1).max())
    r_out = pf.sersic_radius_outside(1e-3, n)
    R = np.geomspace(1e-3, r_out, 400)
    out["r_999"] = r_out
    out["dF_max"] = float(np.abs(pf.mog_enclosed(R, a, v) - pf.sersic_enclosed(R, n)).max())
    out["dlnr_max"] = float(np.abs(2 * np.pi * R * R * (pf.mog_intensity(R, a, v) - pf.sersic_intensity(R, n))).max())
    out["hlr"] = float(pf.half_light_radius(a, v))
    out["r_wing"] = wing_radius(n, a, v)
    out["flux_beyond_wing"] = float(1 - pf.sersic_enclosed(out["r_wing"], n))
    return out


# ----------------------------------------------------------------------------------------------
# GalSim images
# ----------------------------------------------------------------------------------------------


def psf_components(kind, fwhm):
    """(weights, sigmas) in pixels of the PSF: 'gauss' or 'mog3' (core FWHM ``fwhm``)."""
    s0 = fwhm * FWHM2SIG
    if kind == "gauss":
        return np.array([1.0]), np.array([s0])
    return np.array([0.75, 0.2, 0.05]), np.array([s0, 2.0 * s0, 4.0 * s0])


def image_half_size(re, fwhm):
    return int(np.ceil(max(10.0 * re, 5.0 * fwhm)))


def galsim_image(n, re, q, beta_deg, psf_kind, fwhm, H):
    import galsim

    gsp = galsim.GSParams(**GALSIM_GSPARAMS)
    gal = galsim.Sersic(n, half_light_radius=re, flux=1.0, gsparams=gsp)
    if q != 1.0:  # Tractor convention: r_e along the major axis, minor axis q r_e
        gal = gal.shear(q=q, beta=0 * galsim.degrees).dilate(np.sqrt(q))
        gal = gal.rotate(beta_deg * galsim.degrees)
    w, sig = psf_components(psf_kind, fwhm)
    psf = galsim.Add([galsim.Gaussian(sigma=s, flux=f, gsparams=gsp) for f, s in zip(w, sig)])
    obj = galsim.Convolve(gal, psf, gsparams=gsp)
    return obj.drawImage(nx=2 * H + 1, ny=2 * H + 1, scale=1.0, method="no_pixel").array


def mog_image(a, v, re, q, beta_deg, psf_kind, fwhm, H):
    """Analytic MoG x MoG-PSF image at pixel centres (galaxy at the central pixel's centre)."""
    y, x = np.mgrid[-H:H + 1, -H:H + 1].astype(float)
    b = np.deg2rad(beta_deg)
    Rm = np.array([[np.cos(b), -np.sin(b)], [np.sin(b), np.cos(b)]])
    shape = re * re * Rm @ np.diag([1.0, q * q]) @ Rm.T
    w, sig = psf_components(psf_kind, fwhm)
    img = np.zeros_like(x)
    for ak, vk in zip(a, v):
        for f, s in zip(w, sig):
            C = vk * shape + s * s * np.eye(2)
            Ci = np.linalg.inv(C)
            q2 = Ci[0, 0] * x * x + 2 * Ci[0, 1] * x * y + Ci[1, 1] * y * y
            img += ak * f / (2 * np.pi * np.sqrt(np.linalg.det(C))) * np.exp(-0.5 * q2)
    return img


def galsim_rows(cases, get_mog):
    rows = []
    for case in cases:
        label, n, re, q, beta, psf, fwhm = case[:7]
        H = case[7] if len(case) > 7 else image_half_size(re, fwhm)
        t0 = time.time()
        g = galsim_image(n, re, q, beta, psf, fwhm, H)
        a, v = get_mog(label, n)
        m = mog_image(a, v, re, q, beta, psf, fwhm, H)
        rows.append({
            "model": label, "n": n, "re": re, "q": q, "psf": psf, "fwhm": fwhm, "size": 2 * H + 1,
            "maxdiff": float(np.abs(m - g).max() / g.max()),
            "flux_ratio": float(m.sum() / g.sum()),
            "flux_in_image": float(g.sum()),
            "seconds": time.time() - t0,
        })
    return rows


# ----------------------------------------------------------------------------------------------
# plots
# ----------------------------------------------------------------------------------------------


def plot_all(exp, dev, sersic, scan, t):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    PLOTS.mkdir(exist_ok=True)
    r = np.geomspace(1e-3, 200, 800)

    # exp / dev: ours vs Hogg & Lang
    fig, ax = plt.subplots(2, 2, figsize=(11, 7.5), sharex=True)
    for j, (name, n, ours, hl) in enumerate([
            ("exp", 1.0, exp, (HL_EXP_AMP, HL_EXP_VAR)), ("dev", 4.0, dev, (HL_DEV_AMP, HL_DEV_VAR))]):
        I = pf.sersic_intensity(r, n)
        for lab, (a, v), st in [(f"this work (K={len(ours[0])})", ours, "-"),
                                (f"Hogg & Lang 2013 (K={len(hl[0])})", hl, "--")]:
            m = pf.mog_intensity(r, a, v)
            ax[0, j].plot(r, m / I - 1, st, label=lab)
            ax[1, j].plot(r, 2 * np.pi * r * r * (m - I), st, label=lab)
        ax[0, j].set_title(f"{name} (Sersic n = {n:g})")
        ax[0, j].set_ylim(-0.2, 0.2)
        ax[0, j].set_ylabel("I_mog / I - 1")
        ax[1, j].set_ylabel("2 pi r^2 (I_mog - I)  [flux per ln r]")
        ax[1, j].set_xlabel("r / r_e")
        ax[1, j].set_xscale("log")
        ax[1, j].set_ylim(-4e-3, 4e-3)
        for k in range(2):
            ax[k, j].axhline(0, color="k", lw=0.5)
            ax[k, j].grid(alpha=0.3)
        ax[0, j].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(PLOTS / "exp_dev_residuals.png", dpi=110)
    plt.close(fig)

    # Sersic residuals
    fig, ax = plt.subplots(2, 1, figsize=(9, 8), sharex=True)
    for n in (0.5, 1, 1.5, 2, 3, 4, 5, 6):
        a, v = sersic(n)
        I = pf.sersic_intensity(r, n)
        m = pf.mog_intensity(r, a, v)
        ax[0].plot(r, m / I - 1, label=f"n={n:g}")
        ax[1].plot(r, 2 * np.pi * r * r * (m - I), label=f"n={n:g}")
    ax[0].set_ylim(-0.2, 0.2)
    ax[0].set_ylabel("I_mog / I - 1")
    ax[1].set_ylim(-3e-3, 3e-3)
    ax[1].set_ylabel("2 pi r^2 (I_mog - I)  [flux per ln r]")
    ax[1].set_xscale("log")
    ax[1].set_xlabel("r / r_e")
    for k in range(2):
        ax[k].axhline(0, color="k", lw=0.5)
        ax[k].grid(alpha=0.3)
    ax[0].legend(ncol=4, fontsize=8)
    ax[0].set_title("Sersic mixture (K = 12) vs exact profile")
    fig.tight_layout()
    fig.savefig(PLOTS / "sersic_residuals.png", dpi=110)
    plt.close(fig)

    # image-level error vs n
    ns = np.array([d["n"] for d in scan])
    E = np.array([d["E"] for d in scan])
    fig, ax = plt.subplots(figsize=(9, 5))
    for i, s in enumerate(S_LIST):
        ax.plot(ns, E[:, i], label=f"PSF sigma = {s:g} r_e")
    for name, n, mix, mk in [("exp", 1, exp, "o"), ("dev", 4, dev, "s"),
                             ("H&L exp", 1, (HL_EXP_AMP, HL_EXP_VAR), "x"),
                             ("H&L dev", 4, (HL_DEV_AMP, HL_DEV_VAR), "+")]:
        d = radial_metrics(n, *mix, s_list=(0.0425,))
        ax.plot([n], d["E"], mk, color="k", label=f"{name}, sigma 0.0425")
    br = np.exp(np.asarray(t["sersic"]["breakpoints"]))
    for b in br:
        ax.axvline(b, color="0.85", lw=0.5, zorder=0)
    ax.axhline(1e-3, color="r", ls=":", label="issue bound 1e-3")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("Sersic n (grey: spline breakpoints)")
    ax.set_ylabel("max |MoG - exact| / peak (PSF-convolved)")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(PLOTS / "image_error_vs_n.png", dpi=110)
    plt.close(fig)

    # flux fraction and wing radius vs n
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    ax[0].plot(ns, [d["flux_fraction"] for d in scan], label="sum(amps) (flux carried)")
    ax[0].plot(ns, [1 - 1e-3] * len(ns), ":", label="fit target: exact flux inside r_99.9")
    ax[0].set_xlabel("Sersic n")
    ax[0].set_ylabel("fraction of the exact total flux")
    ax[0].legend(fontsize=8)
    ax[1].plot(ns, [d["r_wing"] for d in scan], label="r_wing: MoG < exact / 2 beyond")
    ax[1].plot(ns, [d["r_999"] for d in scan], "--", label="r_99.9 (0.1% of exact flux beyond)")
    ax[1].set_yscale("log")
    ax[1].set_xlabel("Sersic n")
    ax[1].set_ylabel("r / r_e")
    ax[1].legend(fontsize=8)
    for k in range(2):
        ax[k].set_xscale("log")
        ax[k].grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(PLOTS / "flux_fraction.png", dpi=110)
    plt.close(fig)

    # parameters vs n (smoothness)
    nn = np.exp(np.linspace(np.log(0.5), np.log(6.2), 600))
    P = np.array([np.log(np.concatenate(sersic(n))) for n in nn])
    K = P.shape[1] // 2
    fig, ax = plt.subplots(1, 2, figsize=(11, 4.5))
    for k in range(K):
        ax[0].plot(nn, P[:, k])
        ax[1].plot(nn, P[:, K + k])
    for k, lab in enumerate(["ln amp_k", "ln var_k  (var in r_e^2)"]):
        ax[k].set_xscale("log")
        ax[k].set_xlabel("Sersic n")
        ax[k].set_ylabel(lab)
        for b in br:
            ax[k].axvline(b, color="0.85", lw=0.5, zorder=0)
    fig.suptitle("Sersic mixture parameters: cubic splines in ln n (grey: breakpoints)")
    fig.tight_layout()
    fig.savefig(PLOTS / "sersic_params_vs_n.png", dpi=110)
    plt.close(fig)


def plot_galsim_examples(get_mog):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = [("sersic", 6.2, 20, 1.0, 0.0, "gauss", 2), ("dev", 4.0, 20, 1.0, 0.0, "gauss", 2),
             ("sersic", 1.0, 10, 0.2, 30.0, "gauss", 2), ("sersic", 0.5, 3, 1.0, 0.0, "mog3", 4)]
    fig, ax = plt.subplots(1, len(cases), figsize=(4.2 * len(cases), 4), layout="constrained")
    for i, (label, n, re, q, beta, psf, fwhm) in enumerate(cases):
        H = min(image_half_size(re, fwhm), 40)
        g = galsim_image(n, re, q, beta, psf, fwhm, H)
        a, v = get_mog(label, n)
        m = mog_image(a, v, re, q, beta, psf, fwhm, H)
        im = ax[i].imshow((m - g) / g.max(), origin="lower", cmap="RdBu_r", vmin=-3e-4, vmax=3e-4)
        ax[i].set_title(f"{label} n={n:g} re={re} q={q:g}\n{psf} FWHM={fwhm}: (MoG - GalSim)/peak",
                        fontsize=8)
    fig.colorbar(im, ax=ax, shrink=0.8)
    fig.savefig(PLOTS / "galsim_residual_images.png", dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------


def fmt(x, f="%.2e"):
    return f % x


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer n values, no GalSim")
    args = ap.parse_args(argv)
    t0 = time.time()
    t, exp, dev, sersic = load_table()
    K = t["sersic"]["K"]

    def get_mog(label, n):
        return {"exp": exp, "dev": dev}.get(label) or sersic(n)

    # dense scan in n, offset from the fit grid (between its points)
    lo, hi = t["sersic"]["n_range"]
    nscan = 31 if args.quick else 121
    grid = np.exp(np.linspace(np.log(lo), np.log(hi), 2 * nscan + 1))[1::2]
    grid = np.unique(np.concatenate([[lo, 0.5005, 0.501, 0.503, 0.507, 1.0, 4.0, hi], grid]))
    scan = [radial_metrics(n, *sersic(n)) for n in grid]
    print(f"radial scan: {len(grid)} n values, {time.time() - t0:.0f} s")
    listed = {n: radial_metrics(n, *sersic(n)) for n in (0.5, 1, 1.5, 2, 3, 4, 5, 6, 6.2)}
    ded = {"exp": radial_metrics(1.0, *exp), "dev": radial_metrics(4.0, *dev),
           "H&L exp": radial_metrics(1.0, HL_EXP_AMP, HL_EXP_VAR),
           "H&L dev": radial_metrics(4.0, HL_DEV_AMP, HL_DEV_VAR)}
    ded["H&L exp"]["E_vs_own_target"] = image_errors(LUX, HL_EXP_AMP, HL_EXP_VAR)
    ded["H&L dev"]["E_vs_own_target"] = image_errors(LUV, HL_DEV_AMP, HL_DEV_VAR)
    plot_all(exp, dev, sersic, scan, t)
    print(f"plots: {time.time() - t0:.0f} s")

    gs_rows, gs_extra = [], []
    if not args.quick:
        cases = []
        for label, ns in [("exp", [1.0]), ("dev", [4.0]),
                          ("sersic", [0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 6.2])]:
            for n in ns:
                for re in (1, 3, 10, 20):
                    for fwhm in (2, 4, 6):
                        cases.append((label, n, re, 1.0, 0.0, "gauss", fwhm))
        gs_rows = galsim_rows(cases, get_mog)
        extra = []
        for label, n in [("exp", 1.0), ("dev", 4.0), ("sersic", 0.5), ("sersic", 1.0),
                         ("sersic", 2.0), ("sersic", 4.0), ("sersic", 6.2)]:
            for re in (1, 20):
                for fwhm in (2, 6):
                    extra.append((label, n, re, 0.2, 30.0, "gauss", fwhm))
                    extra.append((label, n, re, 1.0, 0.0, "mog3", fwhm))
        # large images: the flux ratio tends to the flux carried (sum of amplitudes)
        extra += [("dev", 4.0, 1, 1.0, 0.0, "gauss", 2, 200), ("sersic", 4.0, 1, 1.0, 0.0, "gauss", 2, 200),
                  ("sersic", 6.2, 1, 1.0, 0.0, "gauss", 2, 200), ("sersic", 6.2, 2, 1.0, 0.0, "gauss", 2, 300)]
        gs_extra = galsim_rows(extra, get_mog)
        plot_galsim_examples(get_mog)
        print(f"galsim: {time.time() - t0:.0f} s")

    write_report(t, K, scan, listed, ded, gs_rows, gs_extra)
    (HERE / "accuracy.json").write_text(json.dumps(
        {"scan": scan, "listed": {str(k): v for k, v in listed.items()}, "dedicated": ded,
         "galsim": gs_rows, "galsim_extra": gs_extra, "galsim_gsparams": GALSIM_GSPARAMS}, indent=1))
    print(f"wrote {REPORT.relative_to(ROOT)} ({time.time() - t0:.0f} s)")


def write_report(t, K, scan, listed, ded, gs_rows, gs_extra):
    L = []
    w = L.append
    gen = t["generator"]
    w("# Accuracy of the profile mixtures\n")
    w(f"Generated by `models/accuracy.py` from `tractor_prob/data/profiles.json` "
      f"(generator commit `{gen['commit']}`, {gen['date']}). Regenerate with "
      "`python models/fit_profiles.py` (fits + this report) or `python models/accuracy.py`.\n")
    w("Units: radii in r_e (half-light radius), unit total flux. *Image-level error* "
      "`E(s)` = max over radius of |MoG * G_s - Sersic * G_s| / (Sersic * G_s)(0) for a circular "
      "Gaussian PSF of sigma `s` r_e, with the exact convolution done by 1-D quadrature "
      "(accurate to 1e-14; it agrees with GalSim to < 5e-7 of the peak). For a round galaxy "
      "centred on a pixel, a `no_pixel` image samples exactly this profile, so `E(s)` bounds "
      "max |diff| / peak pixel. `s = 0.0425` is the issue's hardest corner (FWHM 2 px, r_e 20 px); "
      "`s = 0.02` is FWHM 2 px on r_e 40 px.\n")

    w("## Summary\n")
    Es = np.array([d["E"] for d in scan])
    i2 = S_LIST.index(0.0425)
    worst = int(np.argmax(Es[:, i2]))
    ff = np.array([d["flux_fraction"] for d in scan])
    w(f"* Sersic mixture, K = {K}, n in [{t['sersic']['n_range'][0]}, {t['sersic']['n_range'][1]}] "
      f"({len(scan)} n values, between the fit-grid points): worst E(0.0425) = "
      f"{Es[:, i2].max():.2e} (at n = {scan[worst]['n']:.3g}); worst E(0.02) = {Es[:, 0].max():.2e}; "
      f"worst over all PSF sigmas >= 0.0425 r_e: {Es[:, 1:].max():.2e}.")
    w(f"* exp (K = {ded['exp']['K']}): E(0.0425) = {ded['exp']['E'][i2]:.2e}, E(0.02) = "
      f"{ded['exp']['E'][0]:.2e}; dev (K = {ded['dev']['K']}): E(0.0425) = {ded['dev']['E'][i2]:.2e}, "
      f"E(0.02) = {ded['dev']['E'][0]:.2e}.")
    w(f"* Hogg & Lang (2013) mixtures as used by The Tractor, against the pure profiles: exp (K = 6) "
      f"E(0.0425) = {ded['H&L exp']['E'][i2]:.2e}, half-light radius {ded['H&L exp']['hlr']:.4f}; "
      f"dev (K = 8) E(0.0425) = {ded['H&L dev']['E'][i2]:.2e}, half-light radius "
      f"{ded['H&L dev']['hlr']:.4f}. They approximate the truncated SDSS-style profiles (lux, luv) "
      f"renormalised to unit flux; against those: E(0.0425) = {ded['H&L exp']['E_vs_own_target'][i2]:.2e} "
      f"(exp/lux), {ded['H&L dev']['E_vs_own_target'][i2]:.2e} (dev/luv). See the comparison section.")
    w(f"* Flux carried (sum of amplitudes): {ff.min():.5f} (n = {scan[int(np.argmin(ff))]['n']:.3g}) "
      f"to {ff.max():.5f}; exp {ded['exp']['flux_fraction']:.5f}, dev {ded['dev']['flux_fraction']:.5f}.")
    if gs_rows:
        md = max(r["maxdiff"] for r in gs_rows)
        fr = max(abs(r["flux_ratio"] - 1) for r in gs_rows)
        w(f"* GalSim, round galaxies, Gaussian PSF ({len(gs_rows)} images: n in [0.5, 6.2], r_e 1-20 px, "
          f"FWHM 2-6 px): worst max|diff|/peak = {md:.2e}, worst |flux ratio - 1| = {fr:.2e}.")
        md2 = max(r["maxdiff"] for r in gs_extra)
        fr2 = max(abs(r["flux_ratio"] - 1) for r in gs_extra)
        w(f"* GalSim, axis ratio 0.2 and 3-Gaussian PSFs ({len(gs_extra)} images): worst "
          f"max|diff|/peak = {md2:.2e}, worst |flux ratio - 1| = {fr2:.2e}.")
        miss = [r for r in gs_rows + gs_extra if r["maxdiff"] > 1e-3 or abs(r["flux_ratio"] - 1) > 2e-3]
        if miss:
            w("* **Cases missing the issue's bounds** (1e-3 of peak, 0.2% of flux):")
            for r in miss:
                w(f"  * {r['model']} n={r['n']:g} r_e={r['re']} q={r['q']:g} {r['psf']} FWHM={r['fwhm']}: "
                  f"max|diff|/peak {r['maxdiff']:.2e}, flux ratio {r['flux_ratio']:.5f}")
        else:
            w("* No image in the GalSim tables misses the issue's bounds (1e-3 of the peak pixel, "
              "0.2% of the flux in the image).")
    w("")

    w("## Profile residuals at the listed n\n")
    w("`rel[a,b]`: max |I_mog/I - 1| for r in [a, b]; `dF`: max |enclosed-flux error| for r <= "
      "r_99.9; `dlnr`: max |2 pi r^2 dI| (flux per ln r) for r in [1e-3, r_99.9]; `hlr`: radius "
      "enclosing half the exact total flux; `r_wing`: beyond it the mixture stays below half the "
      "exact intensity (the wings stop being represented); `beyond`: exact flux outside r_wing.\n")
    w("| mixture | n | K | E(0.02) | E(0.0425) | E(0.1) | E(0.3) | E(1) | E(2.55) | rel[0.2,2] | "
      "rel[0.05,4] | dF | dlnr | hlr - 1 | flux carried | r_99.9 | r_wing | beyond |")
    w("|" + "---|" * 19)

    def row(name, d):
        E = d["E"]
        w(f"| {name} | {d['n']:g} | {d['K']} | " + " | ".join(fmt(e) for e in E)
          + f" | {d['rel_02_2']:.1e} | {d['rel_005_4']:.1e} | {d['dF_max']:.1e} | {d['dlnr_max']:.1e} | "
          f"{d['hlr'] - 1:+.1e} | {d['flux_fraction']:.5f} | {d['r_999']:.3g} | {d['r_wing']:.3g} | "
          f"{d['flux_beyond_wing']:.1e} |")

    for name in ("exp", "dev", "H&L exp", "H&L dev"):
        row(name, ded[name])
    for n, d in listed.items():
        row("sersic", d)
    w("")
    w("![exp/dev residuals](plots/exp_dev_residuals.png)\n")
    w("![Sersic residuals](plots/sersic_residuals.png)\n")
    w("Relative residuals grow without bound far out (the mixture's Gaussian tails fall faster "
      "than any Sersic wing); in flux terms they stay below the tolerances out to r_99.9, the "
      "radius outside which the exact profile has 0.1% of its flux.\n")

    w("## Comparison with Hogg & Lang (2013)\n")
    w("The Tractor ships H&L's exp (K = 6) and dev (K = 8) mixtures with amplitudes normalised to "
      "sum 1. Their fit targets were the SDSS-style truncated profiles (exp tapered to 0 between 3 "
      "and 4 r_e, 'lux'; dev with a softened core tapered to 0 between 7 and 8 r_e, 'luv'), with an "
      "r-weighted squared intensity residual out to 4 or 8 r_e. Renormalising a truncated profile "
      f"to unit flux moves its half-light radius (the H&L mixtures' half-light radii are "
      f"{ded['H&L exp']['hlr']:.4f} and {ded['H&L dev']['hlr']:.4f} r_e), so against the pure "
      "profiles they differ by the truncation, not only by fit quality:\n")
    w("| mixture | K | target | " + " | ".join(f"E({s:g})" for s in S_LIST) + " | hlr | flux carried |")
    w("|---|---|---|" + "---|" * (len(S_LIST) + 2))
    for name, tgt in [("exp", "exp"), ("H&L exp", "exp"), ("H&L exp", "lux"), ("dev", "dev"),
                      ("H&L dev", "dev"), ("H&L dev", "luv")]:
        d = ded[name]
        E = d["E_vs_own_target"] if tgt in ("lux", "luv") else d["E"]
        hl = f"{d['hlr']:.4f}" if tgt in ("exp", "dev") else "-"
        w(f"| {name} | {d['K']} | {tgt} | " + " | ".join(fmt(e) for e in E)
          + f" | {hl} | {d['flux_fraction']:.5f} |")
    w("")
    w("## Image-level error and flux carried vs n\n")
    w("![image-level error](plots/image_error_vs_n.png)\n")
    w("![flux carried](plots/flux_fraction.png)\n")
    w("![parameters](plots/sersic_params_vs_n.png)\n")
    w("Worst image-level error per range of n (scan between the fit-grid points):\n")
    w("| n range | " + " | ".join(f"E({s:g})" for s in S_LIST) + " | min flux carried |")
    w("|---|" + "---|" * (len(S_LIST) + 1))
    ns = np.array([d["n"] for d in scan])
    for a, b in [(0.5, 0.6), (0.6, 1.0), (1.0, 2.0), (2.0, 3.0), (3.0, 4.0), (4.0, 5.0), (5.0, 6.2)]:
        m = (ns >= a) & (ns <= b)
        E = np.array([d["E"] for d in scan])[m].max(0)
        w(f"| [{a:g}, {b:g}] | " + " | ".join(fmt(e) for e in E)
          + f" | {min(d['flux_fraction'] for d, k in zip(scan, m) if k):.5f} |")
    w("")

    if gs_rows:
        w("## GalSim comparison\n")
        w("`galsim.Sersic(n, half_light_radius=re, flux=1)` convolved with `galsim.Gaussian(fwhm=...)` "
          "(or, in the second table, a 3-Gaussian PSF: weights 0.75/0.2/0.05, sigmas 1/2/4 x the "
          "given core FWHM's sigma; and axis ratio q = 0.2 at 30 degrees with r_e along the major "
          "axis, GalSim `shear(q=q).dilate(sqrt(q)).rotate(30 deg)`), drawn with "
          "`method='no_pixel'`, scale 1, on an odd square image of half-size "
          "ceil(max(10 r_e, 5 FWHM)) px centred on the galaxy. The MoG image is the analytic "
          "convolution (covariances add) evaluated at the same pixel centres. "
          f"GSParams: `{GALSIM_GSPARAMS}` (GalSim's defaults are not accurate enough for "
          "this comparison: with them GalSim itself is off by up to 3e-4 of the peak, e.g. exp r_e "
          "20 px FWHM 2 px; with these it agrees with the 1-D quadrature to < 5e-7 of the peak).\n")
        w("`maxdiff` = max |MoG - GalSim| / max(GalSim); `flux` = sum(MoG) / sum(GalSim) over the "
          "image; `in image` = GalSim flux inside the image (fraction of the total).\n")
        w("| model | n | r_e px | FWHM px | size | maxdiff | flux ratio | in image |")
        w("|---|---|---|---|---|---|---|---|")
        for r in gs_rows:
            w(f"| {r['model']} | {r['n']:g} | {r['re']} | {r['fwhm']} | {r['size']} | {r['maxdiff']:.2e} "
              f"| {r['flux_ratio']:.5f} | {r['flux_in_image']:.4f} |")
        w("")
        w("Elliptical (q = 0.2), 3-Gaussian PSFs, and (last rows) large images reaching 100-200 "
          "r_e, where the flux ratio approaches the flux carried by the mixture:\n")
        w("| model | n | r_e px | q | PSF | FWHM px | size | maxdiff | flux ratio | in image |")
        w("|---|---|---|---|---|---|---|---|---|---|")
        for r in gs_extra:
            w(f"| {r['model']} | {r['n']:g} | {r['re']} | {r['q']:g} | {r['psf']} | {r['fwhm']} | "
              f"{r['size']} | {r['maxdiff']:.2e} | {r['flux_ratio']:.5f} | {r['flux_in_image']:.4f} |")
        w("")
        w("![GalSim residual images](plots/galsim_residual_images.png)\n")
    REPORT.write_text("\n".join(L) + "\n")


if __name__ == "__main__":
    main()
