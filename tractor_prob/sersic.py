"""Sersic galaxies with a continuous index n (``SersicGalaxy``, ``SersicIndex``).

The profile mixture varies smoothly with n (``tractor_prob.profiles.sersic_mog``,
fitted in ``models/``), so d(image)/dn comes from autodiff like every other
derivative.  The supported range is ``profiles.SERSIC_N_RANGE``; outside it the
log-prior is -inf and rendering clips n to the range.
"""

from __future__ import annotations

import numpy as np

from . import profiles
from .galaxy import Galaxy, _numpy_sersic
from .params import MultiParams, ScalarParam

__all__ = ["SersicIndex", "SersicGalaxy"]


class SersicIndex(ScalarParam):
    """The Sersic index n (dimensionless), legal within ``profiles.SERSIC_N_RANGE``."""

    stepsize = 0.01
    support = ("interval", *profiles.SERSIC_N_RANGE)

    def __init__(self, val):
        super().__init__(val)

    def isLegal(self):
        lo, hi = profiles.SERSIC_N_RANGE
        return lo <= self.val <= hi

    def getLogPrior(self):
        return super().getLogPrior() if self.isLegal() else -np.inf

    @staticmethod
    def _jax_legal(spec, vals):
        lo, hi = profiles.SERSIC_N_RANGE
        return (vals[0] >= lo) & (vals[0] <= hi)


class SersicGalaxy(Galaxy):
    """``SersicGalaxy(pos, brightness, shape, sersicindex)``: a Sersic profile of index n."""

    @staticmethod
    def getNamedParams():
        return dict(pos=0, brightness=1, shape=2, sersicindex=3)

    def __init__(self, pos, brightness, shape, sersicindex):
        if not isinstance(sersicindex, SersicIndex):
            sersicindex = SersicIndex(sersicindex)
        MultiParams.__init__(self, pos, brightness, shape, sersicindex)

    def __str__(self):
        return (f"SersicGalaxy at {self.pos} with {self.brightness}, {self.shape} and "
                f"Sersic index {self.sersicindex.val:g}")

    def getSersicIndex(self):
        return self.sersicindex.val

    @classmethod
    def _profile(cls, spec, vals):
        n = spec.split(vals)[3][0]
        return profiles.sersic_mog(n)

    def _numpy_profile(self):
        return _numpy_sersic(float(self.sersicindex.val))
