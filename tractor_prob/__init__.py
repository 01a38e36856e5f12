"""tractor-prob: The Tractor's forward model of astronomical images on one JAX render core.

``from tractor_prob import *`` gives the Tractor's API (Params machinery,
positions, brightnesses, calibrations, sources, Image, Tractor).

Importing the package turns on JAX double precision (``jax_enable_x64``):
RA/Dec and the likelihood of bright sources need float64.  It also turns on JAX's
persistent compilation cache, unless the process has chosen a cache directory
already: compiled render, fit and sampler programs are kept on disk (default
``~/.cache/tractor_prob/jax``; ``TRACTOR_PROB_JAX_CACHE=<dir>`` to move it, ``=0``
to disable), so a new process fitting scenes of a known structure skips most of
the compilation (seconds per source kind and stamp size).
"""

import os as _os

import jax as _jax

_jax.config.update("jax_enable_x64", True)


def _enable_compilation_cache():
    where = _os.environ.get("TRACTOR_PROB_JAX_CACHE")
    if where == "0" or _jax.config.jax_compilation_cache_dir:
        return
    if not where:
        where = _os.path.join(_os.path.expanduser("~"), ".cache", "tractor_prob", "jax")
    try:
        _os.makedirs(where, exist_ok=True)
    except OSError:  # read-only home: no cache, no harm
        return
    _jax.config.update("jax_compilation_cache_dir", where)
    _jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)


_enable_compilation_cache()


#: MiB of freed memory glibc's malloc keeps at the top of the heap (see _keep_freed_memory)
MALLOC_TOP_PAD_MIB = 128


def _keep_freed_memory():
    """Let glibc's malloc keep MALLOC_TOP_PAD_MIB of freed memory for the next allocations.

    A jitted fit step allocates tens of MB of temporaries and frees them; with glibc's
    default heap growth and trimming the next call gets fresh pages again, a page fault
    per 4 KiB: measured, a third of the galaxy field's fit time (bench/RESULTS.md).  The
    mmap threshold is set to glibc's own dynamic ceiling (32 MiB): setting a pad stops
    glibc from raising it itself.  ``TRACTOR_PROB_MALLOC_PAD=<MiB>`` changes the
    pad, ``=0`` (or less) leaves malloc alone, as does a process that set MALLOC_TOP_PAD_ or
    GLIBC_TUNABLES.  Returns the pad set, in bytes (0: none).
    """
    import ctypes
    import platform

    mib = _os.environ.get("TRACTOR_PROB_MALLOC_PAD", str(MALLOC_TOP_PAD_MIB))
    try:
        pad = int(float(mib) * 2**20)
    except ValueError:
        import warnings

        warnings.warn(f"TRACTOR_PROB_MALLOC_PAD={mib!r} is not a number of MiB: malloc left "
                      "alone", stacklevel=2)
        return 0
    if (pad <= 0 or platform.libc_ver()[0] != "glibc" or "MALLOC_TOP_PAD_" in _os.environ
            or "GLIBC_TUNABLES" in _os.environ):
        return 0
    try:
        libc = ctypes.CDLL("libc.so.6")
        M_TOP_PAD, M_MMAP_THRESHOLD = -2, -3
        if libc.mallopt(M_TOP_PAD, pad) != 1:
            return 0
        libc.mallopt(M_MMAP_THRESHOLD, 32 * 2**20)
    except (OSError, AttributeError):
        return 0
    return pad


_MALLOC_TOP_PAD = _keep_freed_memory()

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
