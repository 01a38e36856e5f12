"""Images: pixels, per-pixel inverse variance, and calibrations (PSF, WCS, PhotoCal, sky)."""

from __future__ import annotations

import numpy as np

from .params import MultiParams
from .photocal import NullPhotoCal
from .sky import NullSky
from .wcs import NullWCS

__all__ = ["Image", "Images"]


class Image(MultiParams):
    """One image: ``Image(data, invvar=... or inverr=..., psf, wcs, photocal, sky, name)``.

    ``data`` (H, W) in counts; ``invvar`` the inverse variance per pixel
    (counts^-2) or ``inverr`` its square root.  Pixels whose data or inverse
    variance is not finite, or whose inverse variance is 0, are masked (ignored
    by the likelihood).  A negative inverse variance is an error.  Calibration
    parameters are named ``psf``, ``wcs``, ``photocal``, ``sky``; defaults are
    NullWCS, NullPhotoCal and NullSky.

    Replace ``data``/``invvar``/``inverr`` by assignment (which validates);
    editing the arrays in place bypasses validation and masking.
    """

    @staticmethod
    def getNamedParams():
        return dict(psf=0, wcs=1, photocal=2, sky=3)

    def __init__(self, data=None, invvar=None, inverr=None, psf=None, wcs=None,
                 photocal=None, sky=None, name=None, time=None):
        if psf is None:
            raise ValueError("Image needs a psf (e.g. NCircularGaussianPSF([sigma], [1.]))")
        super().__init__(psf, wcs if wcs is not None else NullWCS(),
                         photocal if photocal is not None else NullPhotoCal(),
                         sky if sky is not None else NullSky())
        self.name = name
        self.time = time
        if data is None:
            raise ValueError("Image needs data (a 2-D array of counts)")
        self._set_pixels(data, invvar, inverr)

    # --- pixels ---
    def _set_pixels(self, data, invvar, inverr):
        data = np.array(data, dtype=float)
        if data.ndim != 2:
            raise ValueError(f"Image {self.name!r}: data must be 2-D, got shape {data.shape}")
        if invvar is not None and inverr is not None:
            raise ValueError("Image: give invvar or inverr, not both")
        if invvar is None and inverr is None:
            invvar = np.ones_like(data)
        if inverr is not None:
            inverr = np.array(inverr, dtype=float)
            self._check_noise(inverr, data, "inverr")
            invvar = inverr**2
        else:
            invvar = np.array(invvar, dtype=float)
            self._check_noise(invvar, data, "invvar")
        with np.errstate(invalid="ignore"):
            good = np.isfinite(data) & np.isfinite(invvar) & (invvar > 0)
        self.__dict__["_data"] = data
        self.__dict__["_invvar"] = invvar
        self.__dict__["_mask"] = good
        self.__dict__["_weights"] = np.where(good, np.sqrt(np.where(good, invvar, 0.0)), 0.0)
        self.__dict__["_data_masked"] = np.where(good, data, 0.0)
        self.__dict__["_device"] = None
        self.__dict__["_version"] = self.__dict__.get("_version", 0) + 1
        # typical pixel noise sigma (counts): sizes source stamps
        self.__dict__["noise_sigma"] = (
            float(np.median(1.0 / self._weights[good])) if good.any() else 1.0)

    def _check_noise(self, arr, data, what):
        if arr.shape != data.shape:
            raise ValueError(
                f"Image {self.name!r}: {what} shape {arr.shape} does not match data shape {data.shape}"
            )
        with np.errstate(invalid="ignore"):
            if np.any(arr < 0):
                raise ValueError(
                    f"Image {self.name!r}: {what} has {int(np.sum(arr < 0))} negative pixels; "
                    "inverse variance must be >= 0 (use 0 to mask a pixel)"
                )

    @property
    def data(self):
        return self._data

    @data.setter
    def data(self, value):
        value = np.array(value, dtype=float)
        if value.shape != self._data.shape:
            raise ValueError(f"Image {self.name!r}: new data shape {value.shape} != {self._data.shape}")
        self._set_pixels(value, self._invvar, None)

    @property
    def invvar(self):
        return self._invvar

    @invvar.setter
    def invvar(self, value):
        self._set_pixels(self._data, value, None)

    @property
    def inverr(self):
        return np.sqrt(self._invvar)

    @inverr.setter
    def inverr(self, value):
        self._set_pixels(self._data, None, value)

    @property
    def shape(self):
        return self._data.shape

    def getImage(self):
        return self._data

    def getInvvar(self):
        return self._invvar

    def getInvError(self):
        return np.sqrt(self._invvar)

    def getMask(self):
        """Boolean (H, W): True where the pixel enters the likelihood."""
        return self._mask

    def getWidth(self) -> int:
        return self._data.shape[1]

    def getHeight(self) -> int:
        return self._data.shape[0]

    def getModelShape(self):
        return self._data.shape

    def getPsf(self):
        return self.psf

    def getWcs(self):
        return self.wcs

    def getPhotoCal(self):
        return self.photocal

    def getSky(self):
        return self.sky

    def _device_arrays(self):
        """(masked data, weights=sqrt(invvar) or 0) as JAX arrays, cached until the pixels change."""
        if self._device is None:
            import jax.numpy as jnp

            self.__dict__["_device"] = (jnp.asarray(self._data_masked), jnp.asarray(self._weights))
        return self._device

    def __str__(self):
        H, W = self.shape
        nm = f" {self.name}" if self.name else ""
        return f"Image{nm}: {W} x {H} pixels, {self.psf}, {self.wcs}, {self.photocal}, {self.sky}"

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_device"] = None
        return d

    def __setstate__(self, d):
        self.__dict__.update(d)


class Images(MultiParams):
    """The list of images of a Tractor; parameters are named ``image<i>``."""

    def __init__(self, *images):
        super().__init__(*images)

    def getNamedParamName(self, i):
        return f"image{i}"

    def __str__(self):
        return f"Images: {len(self.subs)} images, {self.numberOfParams()} parameters"
