"""Sky backgrounds: what an image would show with no sources and no noise (counts)."""

from __future__ import annotations

from .params import ParamList, ScalarParam

__all__ = ["NullSky", "ConstantSky"]


class NullSky(ParamList):
    """No sky: adds zero."""

    def __init__(self):
        super().__init__()

    def __str__(self):
        return "NullSky"

    @staticmethod
    def _jax_sky(spec, vals):
        return 0.0


class ConstantSky(ScalarParam):
    """A constant sky level (counts per pixel); parameter name ``sky``."""

    stepsize = 0.1

    def __str__(self):
        return "ConstantSky(%g)" % self.val

    def getParamNames(self):
        return ["sky"]

    getAllParamNames = getParamNames

    def getValue(self) -> float:
        return self.val

    @staticmethod
    def _jax_sky(spec, vals):
        return vals[0]
