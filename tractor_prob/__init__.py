"""tractor-prob: The Tractor's forward model of astronomical images on one JAX render core.

``from tractor_prob import *`` gives the Tractor's API (Params machinery,
positions, brightnesses, calibrations, sources, Image, Tractor).

Importing the package turns on JAX double precision (``jax_enable_x64``):
RA/Dec and the likelihood of bright sources need float64.
"""

import jax as _jax

_jax.config.update("jax_enable_x64", True)

from .brightness import Flux, Fluxes, Mag, Mags, NanoMaggies  # noqa: E402
from .engine import Tractor  # noqa: E402
from .image import Image, Images  # noqa: E402
from .params import MultiParams, NamedParams, ParamList, Params, ScalarParam  # noqa: E402
from .patch import Patch  # noqa: E402
from .photocal import FluxesPhotoCal, LinearPhotoCal, MagsPhotoCal, NullPhotoCal  # noqa: E402
from .positions import PixPos, RaDecPos  # noqa: E402
from .psf import GaussianMixturePSF, NCircularGaussianPSF  # noqa: E402
from .sky import ConstantSky, NullSky  # noqa: E402
from .source import Catalog, PointSource, Source  # noqa: E402
from .wcs import ConstantFitsWcs, FitsWcs, NullWCS, Tan  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "Params", "ScalarParam", "ParamList", "MultiParams", "NamedParams",
    "PixPos", "RaDecPos",
    "Flux", "Fluxes", "Mag", "Mags", "NanoMaggies",
    "NullPhotoCal", "LinearPhotoCal", "MagsPhotoCal", "FluxesPhotoCal",
    "NullWCS", "Tan", "FitsWcs", "ConstantFitsWcs",
    "NCircularGaussianPSF", "GaussianMixturePSF",
    "NullSky", "ConstantSky",
    "Image", "Images", "Catalog", "Source", "PointSource", "Patch", "Tractor",
]
