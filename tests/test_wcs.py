"""FitsWcs/Tan construction from astropy objects, headers and files, checked against astropy."""

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from tractor_prob import FitsWcs, RaDecPos, Tan


def _header(pc_form=False):
    h = fits.Header()
    h["NAXIS"] = 2
    h["NAXIS1"], h["NAXIS2"] = 300, 200
    h["CTYPE1"], h["CTYPE2"] = "RA---TAN", "DEC--TAN"
    h["CRVAL1"], h["CRVAL2"] = 181.6, 32.5
    h["CRPIX1"], h["CRPIX2"] = 150.5, 99.0
    cd = np.array([[-7.2e-5, 1.1e-6], [-0.9e-6, 7.3e-5]])
    if pc_form:
        h["CDELT1"], h["CDELT2"] = -7.3e-5, 7.3e-5
        pc = cd / np.array([[-7.3e-5], [7.3e-5]])
        h["PC1_1"], h["PC1_2"], h["PC2_1"], h["PC2_2"] = pc.ravel()
    else:
        h["CD1_1"], h["CD1_2"], h["CD2_1"], h["CD2_2"] = cd.ravel()
    return h


@pytest.mark.parametrize("source", ["header", "wcs", "file", "pc_header"])
def test_fitswcs_from_astropy_matches_astropy(source, tmp_path):
    """Pixel positions from FitsWcs built each way equal astropy's all_world2pix(..., 0)."""
    hdr = _header(pc_form=(source == "pc_header"))
    ref = WCS(hdr)
    if source == "wcs":
        wcs = FitsWcs(ref)
    elif source == "file":
        fn = str(tmp_path / "w.fits")
        fits.PrimaryHDU(np.zeros((200, 300), np.float32), header=hdr).writeto(fn)
        wcs = FitsWcs(Tan(fn))
    else:
        wcs = FitsWcs(hdr)
    rng = np.random.default_rng(3)
    for x, y in rng.uniform([0, 0], [299, 199], size=(20, 2)):
        ra, dec = ref.all_pix2world(x, y, 0)
        px, py = wcs.positionToPixel(RaDecPos(float(ra), float(dec)))
        assert abs(px - x) < 1e-8 and abs(py - y) < 1e-8
        back = wcs.pixelToPosition(x, y)
        assert abs((back.ra - ra) * np.cos(np.radians(dec))) < 1e-10 and abs(back.dec - dec) < 1e-10
    assert wcs.wcs.get_width() == 300 and wcs.wcs.get_height() == 200


def test_tan_setters_as_in_the_seed_faq():
    """Tan() + set_crpix/set_crval/set_cd/set_imagesize equals the 10-argument constructor."""
    t = Tan()
    t.set_crpix(24, 530)
    t.set_crval(234.66, 47.8765)
    t.set_cd(1.0, 0.0, 0.0, 1.0)
    t.set_imagesize(1024, 1024)
    u = Tan(234.66, 47.8765, 24, 530, 1.0, 0.0, 0.0, 1.0, 1024, 1024)
    assert str(t) == str(u)
    w1, w2 = FitsWcs(t), FitsWcs(u)
    p = RaDecPos(234.7, 47.9)
    assert w1.positionToPixel(p) == w2.positionToPixel(p)


def test_non_tan_wcs_is_refused_with_a_clear_error():
    """A TPV (distorted) or non-celestial header raises, naming the problem."""
    h = _header()
    h["CTYPE1"], h["CTYPE2"] = "RA---TPV", "DEC--TPV"
    with pytest.raises(ValueError, match="distortion"):
        FitsWcs(h)
    h["CTYPE1"], h["CTYPE2"] = "LINEAR", "LINEAR"
    with pytest.raises(ValueError, match="TAN"):
        FitsWcs(h)


def test_singular_cd_is_an_error():
    """A singular CD matrix cannot define a WCS."""
    with pytest.raises(ValueError, match="singular"):
        Tan(10.0, 10.0, 1.0, 1.0, 1e-4, 1e-4, 1e-4, 1e-4, 10, 10)
