"""The Tractor's parameter machinery: named, freezable parameter trees.

Every source and calibration object is a :class:`Params`.  Leaves hold numbers
(:class:`ScalarParam`, :class:`ParamList`); :class:`MultiParams` composes
sub-objects.  A parameter is *thawed* (fitted) when every step of its path from
the root is thawed; frozen parameters disappear from ``getParams``,
``getParamNames``, ``numberOfParams`` and are skipped by ``setParams``, exactly as
in the original Tractor.  ``getAllParams``/``setAllParams`` see everything.

The objects never hold JAX values.  ``_collect`` walks a tree once and returns a
hashable :class:`Spec` (classes and static configuration) while appending the
parameter values and thawed flags to flat lists: that is the seam where
``tractor_prob.scene`` compiles a tree into arrays for the render core.
"""

from __future__ import annotations

import copy as _copy
import math
from typing import Any, NamedTuple

__all__ = [
    "Params",
    "ScalarParam",
    "NamedParams",
    "ParamList",
    "MultiParams",
    "Spec",
    "getClassName",
]


def getClassName(obj) -> str:
    """The class name used in printed output (``classname`` attribute if set)."""
    return getattr(type(obj), "classname", None) or type(obj).__name__


class Spec(NamedTuple):
    """Static description of a Params tree: hashable, no values.

    ``cls`` is the object's class (its pure functions are class methods),
    ``static`` any configuration that is not a parameter (band names, image
    size...), ``size`` the number of parameters including frozen ones and
    ``children`` the sub-specs of a MultiParams.
    """

    cls: type
    static: Any
    size: int
    children: tuple = ()

    def split(self, vals):
        """Cut a flat value vector into one slice per child."""
        out, i = [], 0
        for c in self.children:
            out.append(vals[i : i + c.size])
            i += c.size
        return out


def _check_finite(value, name, owner):
    """float(value), or an error naming the parameter (``name``: a string, or a function of
    no arguments that returns it, called only for the error)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        name = name() if callable(name) else name
        raise TypeError(
            f"parameter {name!r} of {getClassName(owner)} must be a number, got {value!r}"
        ) from None
    if not math.isfinite(v):
        name = name() if callable(name) else name
        raise ValueError(f"parameter {name!r} of {getClassName(owner)} is not finite: {v}")
    return v


class Params:
    """Base class: the Tractor ``Params`` interface.

    Subclasses implement the raw accessors (``_allValues`` etc.); everything
    else (freezing, names, priors, printing) is built on them.
    """

    # --- to be provided by subclasses -------------------------------------
    def getParams(self) -> list[float]:
        """Values of the thawed parameters (a copy, as Python floats)."""
        raise NotImplementedError

    def setParams(self, p) -> None:
        """Set the thawed parameters from a sequence (frozen ones are skipped)."""
        raise NotImplementedError

    def getParamNames(self) -> list[str]:
        """Names of the thawed parameters, dotted paths below this object."""
        raise NotImplementedError

    def getAllParams(self) -> list[float]:
        """Values of all parameters, frozen included."""
        raise NotImplementedError

    def setAllParams(self, p) -> None:
        """Set all parameters, frozen included."""
        raise NotImplementedError

    def getAllParamNames(self) -> list[str]:
        """Names of all parameters, frozen included."""
        raise NotImplementedError

    def getStepSizes(self, *args, **kwargs) -> list[float]:
        """Typical step sizes of the thawed parameters (their units)."""
        raise NotImplementedError

    def _collect(self, values: list, thawed: list, path_thawed: bool, priors=None) -> Spec:
        """Append all values and thawed flags (and prior rows (index, numpyro
        distribution) to ``priors`` if given); return the Spec."""
        raise NotImplementedError

    # --- built on the above -------------------------------------------------
    def numberOfParams(self) -> int:
        """Number of thawed parameters."""
        return len(self.getParams())

    def numberOfAllParams(self) -> int:
        return len(self.getAllParams())

    def setParam(self, i: int, value: float) -> float:
        """Set the i-th thawed parameter; returns its old value."""
        p = self.getParams()
        if not 0 <= i < len(p):
            raise IndexError(
                f"setParam({i}): {getClassName(self)} has {len(p)} thawed parameters"
            )
        old = p[i]
        p[i] = value
        self.setParams(p)
        return old

    def getParam(self, i: int) -> float:
        return self.getParams()[i]

    def printThawedParams(self) -> None:
        """Print ``name = value`` for every thawed parameter."""
        for name, val in zip(self.getParamNames(), self.getParams()):
            print(f"{name} = {val}")

    def copy(self):
        """A deep copy: fitting the copy leaves this object alone."""
        return _copy.deepcopy(self)

    def hashkey(self):
        return (getClassName(self), tuple(self.getAllParams()))

    def getLogPrior(self) -> float:
        """Sum of the log prior densities of the thawed parameters (flat defaults add 0)."""
        return 0.0

    def isLegal(self) -> bool:
        return True

    def _supports(self) -> list:
        """Support of every parameter (frozen included), in getAllParams() order:
        'real', 'positive', 'disk' (a pair in the unit disk) or ('interval', lo, hi)."""
        raise NotImplementedError


class ScalarParam(Params):
    """A single scalar parameter stored in ``self.val``; its name is the class name."""

    stepsize = 1.0
    strformat = "%g"
    #: the value's support (tractor_prob.priors); subclasses narrow it
    support = "real"

    def __init__(self, val: float = 0.0):
        self.val = _check_finite(val, getClassName(self), self)
        self._prior = None

    def __str__(self):
        return getClassName(self) + ": " + self.strformat % self.val

    def __repr__(self):
        return f"{getClassName(self)}({self.val!r})"

    def getValue(self) -> float:
        return self.val

    def setValue(self, v: float) -> None:
        self.val = _check_finite(v, getClassName(self), self)

    def getParams(self):
        return [self.val]

    getAllParams = getParams

    def setParams(self, p):
        if len(p) != 1:
            raise ValueError(f"{getClassName(self)} has 1 parameter, got {len(p)} values")
        self.setValue(p[0])

    setAllParams = setParams

    def getParamNames(self):
        return [getClassName(self)]

    getAllParamNames = getParamNames

    def numberOfParams(self):
        return 1

    numberOfAllParams = numberOfParams

    def getStepSizes(self, *args, **kwargs):
        return [self.stepsize]

    def addGaussianPrior(self, name: str, mu: float, sigma: float) -> None:
        """Gaussian prior N(mu, sigma) on this scalar (``name`` is its class name);
        the same as ``set_prior(name, numpyro.distributions.Normal(mu, sigma))``."""
        self.set_prior(name, _gaussian(mu, sigma))

    def set_prior(self, name: str, prior) -> None:
        """Prior on this scalar: a scalar numpyro distribution, ``'positive'`` (flat on
        values > 0) or ``None``/``'default'`` (the type's default; see tractor_prob.priors)."""
        self._check_name(name)
        self._prior = _as_prior(prior, self, name)

    def get_prior(self, name: str):
        """The prior set on this scalar (None: the type's default)."""
        self._check_name(name)
        return self._prior

    def _check_name(self, name):
        known = self.getParamNames()
        if name != getClassName(self) and name not in known:
            raise ValueError(f"unknown parameter name {name!r} for {getClassName(self)}; "
                             f"known: {known}")

    def getLogPrior(self):
        return _log_prior(self._prior, self.val)

    def _collect(self, values, thawed, path_thawed, priors=None):
        if priors is not None and self._prior is not None:
            priors.append((len(values), self._prior))
        values.append(self.val)
        thawed.append(path_thawed)
        return Spec(type(self), self._static(), 1)

    def _static(self):
        return None

    def _supports(self):
        return [self.support]


def _gaussian(mu, sigma):
    mu = float(mu)
    sigma = float(sigma)
    if not (math.isfinite(mu) and math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"Gaussian prior needs finite mu and sigma > 0, got ({mu}, {sigma})")
    from numpyro.distributions import Normal

    return Normal(mu, sigma)


def _as_prior(prior, owner, name):
    """A user's prior argument -> a scalar numpyro distribution, or None (the default)."""
    from .priors import as_prior

    return as_prior(prior, f"{getClassName(owner)}.{name}")


def _log_prior(prior, value) -> float:
    """log p(value) of a prior (0 for None, the flat default); -inf outside its support."""
    if prior is None:
        return 0.0
    from .priors import log_prob

    return log_prob(prior, value)


class NamedParams(Params):
    """Shared machinery of containers (ParamList, MultiParams): names and freezing.

    Subclasses override ``getNamedParams()`` (a dict name -> index) to name
    their entries; unnamed entries are called ``param<i>``.  Named entries are
    readable and writable as attributes (``pos.ra``, ``source.brightness``).
    """

    @staticmethod
    def getNamedParams() -> dict:
        return {}

    def _init_names(self, n: int) -> None:
        d = self.__dict__
        d["_name_to_index"] = dict(self.getNamedParams())
        d["_index_to_name"] = {i: k for k, i in d["_name_to_index"].items()}
        d["_thawed"] = [True] * n

    def addNamedParams(self, **d) -> None:
        self._name_to_index.update(d)
        self._index_to_name.update({i: k for k, i in d.items()})

    def addParamAliases(self, *names) -> None:
        """Name entries 0, 1, ... after ``names``."""
        self.addNamedParams(**{n: i for i, n in enumerate(names)})

    # attribute access by name; private attributes live in __dict__ as usual
    def __getattr__(self, name):
        d = self.__dict__
        if "_name_to_index" in d:
            i = d["_name_to_index"].get(name)
            if i is not None:
                return self._getThing(i)
        raise AttributeError(f"{type(self).__name__!s} object has no attribute {name!r}")

    def __setattr__(self, name, value):
        d = self.__dict__
        i = d.get("_name_to_index", {}).get(name) if not name.startswith("_") else None
        if i is None:
            object.__setattr__(self, name, value)
        else:
            self._setThing(i, value)

    def getNamedParamName(self, i: int) -> str:
        return self._index_to_name.get(i) or f"param{i}"

    def getNamedParamIndex(self, name: str):
        return self._name_to_index.get(name)

    def _index(self, name) -> int:
        if isinstance(name, int):
            if not 0 <= name < len(self._thawed):
                raise IndexError(f"{getClassName(self)} has {len(self._thawed)} entries, not {name}")
            return name
        i = self._name_to_index.get(name)
        if i is None:
            for j in range(len(self._thawed)):
                if self.getNamedParamName(j) == name:
                    return j
            known = [self.getNamedParamName(j) for j in range(len(self._thawed))]
            raise ValueError(
                f"unknown parameter name {name!r} for {getClassName(self)}; known: {known}"
            )
        return i

    # --- freezing ---
    def freezeParam(self, name) -> None:
        self._thawed[self._index(name)] = False

    def thawParam(self, name) -> None:
        self._thawed[self._index(name)] = True

    def freezeParams(self, *names) -> None:
        for n in names:
            self.freezeParam(n)

    def thawParams(self, *names) -> None:
        for n in names:
            self.thawParam(n)

    unfreezeParam = thawParam
    unfreezeParams = thawParams

    def freezeAllParams(self) -> None:
        self._thawed[:] = [False] * len(self._thawed)

    def thawAllParams(self) -> None:
        self._thawed[:] = [True] * len(self._thawed)

    unfreezeAllParams = thawAllParams

    def freezeAllBut(self, *names) -> None:
        """Freeze every entry except the named ones (which are thawed)."""
        idx = [self._index(n) for n in names]
        self.freezeAllParams()
        for i in idx:
            self._thawed[i] = True

    def isParamFrozen(self, name) -> bool:
        return not self._thawed[self._index(name)]

    def isParamThawed(self, name) -> bool:
        return self._thawed[self._index(name)]

    def getFrozenParams(self) -> list[str]:
        return [self.getNamedParamName(i) for i, t in enumerate(self._thawed) if not t]

    def getThawedParams(self) -> list[str]:
        return [self.getNamedParamName(i) for i, t in enumerate(self._thawed) if t]

    def getThawedParamIndices(self) -> list[int]:
        return [i for i, t in enumerate(self._thawed) if t]

    def getFrozenParamIndices(self) -> list[int]:
        return [i for i, t in enumerate(self._thawed) if not t]

    def freezeAllRecursive(self) -> None:
        """Freeze every entry at this level and in every sub-object."""
        self.freezeAllParams()
        for s in self._subParams():
            s.freezeAllRecursive()

    def thawAllRecursive(self) -> None:
        """Thaw every entry at this level and in every sub-object."""
        self.thawAllParams()
        for s in self._subParams():
            s.thawAllRecursive()

    def freezeParamsRecursive(self, *names) -> None:
        """Freeze entries with these names at every level ('*' freezes everything)."""
        for s in self._subParams():
            s.freezeParamsRecursive(*names)
        for i in range(len(self._thawed)):
            if "*" in names or self._entryNames(i) & set(names):
                self._thawed[i] = False

    def thawParamsRecursive(self, *names) -> None:
        """Thaw entries with these names at every level ('*' thaws everything)."""
        for s in self._subParams():
            s.thawParamsRecursive(*names)
        for i in range(len(self._thawed)):
            if "*" in names or self._entryNames(i) & set(names):
                self._thawed[i] = True

    def thawPathsTo(self, *names) -> bool:
        """Thaw every entry on the path to parameters with these names.

        Returns True if anything was found (and thawed).
        """
        found = False
        for i in range(len(self._thawed)):
            sub = self._subAt(i)
            if sub is not None and sub.thawPathsTo(*names):
                self._thawed[i] = True
                found = True
            if self._entryNames(i) & set(names):
                self._thawed[i] = True
                found = True
        return found

    def getParamStateRecursive(self, _parent_thawed: bool = True):
        """Yield ``(path, thawed_self, thawed_parent)`` for every entry, depth first.

        ``thawed_parent`` says whether the whole path down to the entry's
        container is thawed; the entry is fitted only when both are True.
        """
        for i, t in enumerate(self._thawed):
            name = self.getNamedParamName(i)
            yield name, t, _parent_thawed
            sub = self._subAt(i)
            if sub is not None:
                for sname, st, sp in sub.getParamStateRecursive(_parent_thawed and t):
                    yield f"{name}.{sname}", st, sp

    def _subParams(self):
        return [s for s in (self._subAt(i) for i in range(len(self._thawed))) if s is not None]

    def _subAt(self, i):
        return None

    def _entryNames(self, i):
        """Names that select entry i: its own name, and a scalar sub-parameter's name."""
        names = {self.getNamedParamName(i)}
        sub = self._getThing(i) if isinstance(self, MultiParams) else None
        if isinstance(sub, ScalarParam):
            names.update(sub.getParamNames())
        return names

    def addGaussianPrior(self, name: str, mu: float, sigma: float) -> None:
        """Gaussian prior N(mu, sigma) on the parameter ``name`` (a dotted path below here);
        the same as ``set_prior(name, numpyro.distributions.Normal(mu, sigma))``."""
        self.set_prior(name, _gaussian(mu, sigma))

    def set_prior(self, name: str, prior) -> None:
        """Prior on the parameter ``name`` (a dotted path below here, e.g. ``'pos.x'``):
        a scalar numpyro distribution, ``'positive'`` (flat on values > 0), or
        ``None``/``'default'`` for the parameter type's default (tractor_prob.priors)."""
        self._leaf_call(name, "set_prior", prior)

    def get_prior(self, name: str):
        """The prior set on parameter ``name`` (None: its type's default)."""
        return self._leaf_call(name, "get_prior")

    def _leaf_call(self, name, method, *args):
        head, _, rest = name.partition(".")
        i = self._index(head)
        sub = self._subAt(i)
        if sub is None and isinstance(self._getThing(i), ScalarParam):
            sub = self._getThing(i)  # e.g. a source's Flux brightness (not a NamedParams)
        if sub is None:
            if rest:
                raise ValueError(f"unknown parameter name {name!r} for {getClassName(self)}")
            return getattr(self, "_own_" + method)(i, *args)
        if rest:
            return getattr(sub, method)(rest, *args)
        if isinstance(sub, ScalarParam):
            return getattr(sub, method)(getClassName(sub), *args)
        raise ValueError(f"{name!r} names a sub-object of {getClassName(self)}, not a parameter")


class ParamList(NamedParams):
    """Parameters held in a list of floats (``self.vals``).

    Subclass and override ``getNamedParams()`` to name them; set
    ``self.stepsizes`` (a list, one per entry) for step sizes other than 1.
    """

    def __init__(self, *args):
        self._init_names(len(args))
        self.__dict__["vals"] = [
            _check_finite(v, self.getNamedParamName(i), self) for i, v in enumerate(args)
        ]
        self._priors = {}

    def __str__(self):
        parts = []
        for i, v in enumerate(self.vals):
            fmt = self.getFormatString(i)
            name = self._index_to_name.get(i)
            parts.append(("%s=" + fmt) % (name, v) if name is not None else fmt % v)
        return getClassName(self) + ": " + ", ".join(parts)

    def __repr__(self):
        return f"{getClassName(self)}({', '.join(repr(v) for v in self.vals)})"

    def getFormatString(self, i: int) -> str:
        return "%g"

    def _getThing(self, i):
        return self.vals[i]

    def _setThing(self, i, v):
        # (the name only for an error: this runs for every value of every fit step)
        self.vals[i] = _check_finite(v, lambda: self.getNamedParamName(i), self)

    def getParams(self):
        return [v for v, t in zip(self.vals, self._thawed) if t]

    def getAllParams(self):
        return list(self.vals)

    def setParams(self, p):
        idx = self.getThawedParamIndices()
        if len(p) != len(idx):
            raise ValueError(
                f"{getClassName(self)} has {len(idx)} thawed parameters, got {len(p)} values"
            )
        for i, v in zip(idx, p):
            self._setThing(i, v)

    def setAllParams(self, p):
        if len(p) != len(self.vals):
            raise ValueError(f"{getClassName(self)} has {len(self.vals)} parameters, got {len(p)}")
        for i, v in enumerate(p):
            self._setThing(i, v)

    def getParamNames(self):
        return [self.getNamedParamName(i) for i in self.getThawedParamIndices()]

    def getAllParamNames(self):
        return [self.getNamedParamName(i) for i in range(len(self.vals))]

    def numberOfParams(self):
        return sum(self._thawed)

    def numberOfAllParams(self):
        return len(self.vals)

    def getStepSizes(self, *args, **kwargs):
        steps = getattr(self, "stepsizes", None) or [1.0] * len(self.vals)
        return [s for s, t in zip(steps, self._thawed) if t]

    def __len__(self):
        return self.numberOfParams()

    def __getitem__(self, i):
        return self.getParams()[i]

    def __iter__(self):
        return iter(self.getParams())

    def _own_set_prior(self, i, prior):
        prior = _as_prior(prior, self, self.getNamedParamName(i))
        if prior is None:
            self._priors.pop(i, None)
        else:
            self._priors[i] = prior

    def _own_get_prior(self, i):
        return self._priors.get(i)

    def getLogPrior(self):
        return sum(_log_prior(d, self.vals[i]) for i, d in self._priors.items() if self._thawed[i])

    def _static(self):
        return tuple(self.getAllParamNames())

    def _supports(self):
        """Class or instance attribute ``supports`` (one per entry), else all 'real'."""
        return list(getattr(self, "supports", None) or ["real"] * len(self.vals))

    def _collect(self, values, thawed, path_thawed, priors=None):
        if priors is not None:
            priors.extend((len(values) + i, d) for i, d in sorted(self._priors.items()))
        values.extend(self.vals)
        thawed.extend(path_thawed and t for t in self._thawed)
        return Spec(type(self), self._static(), len(self.vals))


class MultiParams(NamedParams):
    """Parameters composed of sub-objects (``self.subs``), e.g. a source's pos and brightness."""

    def __init__(self, *subs):
        self.__dict__["subs"] = list(subs)
        self._init_names(len(subs))

    def __str__(self):
        parts = []
        for i, s in enumerate(self.subs):
            name = self._index_to_name.get(i)
            parts.append(str(s) if name is None else f"{name}: {s}")
        return getClassName(self) + ": " + ", ".join(parts)

    def _getThing(self, i):
        return self.subs[i]

    def _setThing(self, i, v):
        self.subs[i] = v

    def _subAt(self, i):
        s = self.subs[i]
        return s if isinstance(s, NamedParams) else None

    def _active(self):
        return [s for s, t in zip(self.subs, self._thawed) if t and s is not None]

    # list-like access to the sub-objects (all of them, frozen or not, as the Tractor does)
    def __len__(self):
        return len(self.subs)

    def __getitem__(self, i):
        return self.subs[i]

    def __iter__(self):
        return iter(self.subs)

    def append(self, x):
        self.subs.append(x)
        self._thawed.append(True)

    def extend(self, xs):
        for x in xs:
            self.append(x)

    def remove(self, x):
        i = next(j for j, s in enumerate(self.subs) if s is x)
        del self.subs[i]
        del self._thawed[i]

    def getParams(self):
        out = []
        for s in self._active():
            out.extend(s.getParams())
        return out

    def getAllParams(self):
        out = []
        for s in self.subs:
            if s is not None:
                out.extend(s.getAllParams())
        return out

    def setParams(self, p):
        p = list(p)
        n_total = self.numberOfParams()
        if len(p) != n_total:
            raise ValueError(
                f"{getClassName(self)} has {n_total} thawed parameters, got {len(p)} values"
            )
        i = 0
        for s in self._active():
            n = s.numberOfParams()
            s.setParams(p[i : i + n])
            i += n

    def setAllParams(self, p):
        p = list(p)
        n_total = self.numberOfAllParams()
        if len(p) != n_total:
            raise ValueError(f"{getClassName(self)} has {n_total} parameters, got {len(p)} values")
        self._set_all_from(p, 0)

    def _set_all_from(self, p, i):
        """Set all parameters from p[i:] (its length checked by the caller); returns the
        index after the last one used (one pass: no sub-tree sizes recounted per level)."""
        for s in self.subs:
            if s is not None:
                if type(s).setAllParams is MultiParams.setAllParams:  # (not overridden)
                    i = s._set_all_from(p, i)
                else:
                    n = s.numberOfAllParams()
                    s.setAllParams(p[i : i + n])
                    i += n
        return i

    def _names(self, thawed_only):
        out = []
        for i, s in enumerate(self.subs):
            if s is None or (thawed_only and not self._thawed[i]):
                continue
            pre = self.getNamedParamName(i)
            sub = s.getParamNames() if thawed_only else s.getAllParamNames()
            out.extend(f"{pre}.{n}" for n in sub)
        return out

    def getParamNames(self):
        return self._names(True)

    def getAllParamNames(self):
        return self._names(False)

    def numberOfParams(self):
        return sum(s.numberOfParams() for s in self._active())

    def numberOfAllParams(self):
        return sum(s.numberOfAllParams() for s in self.subs if s is not None)

    def getStepSizes(self, *args, **kwargs):
        out = []
        for s in self._active():
            out.extend(s.getStepSizes(*args, **kwargs))
        return out

    def getLogPrior(self):
        return sum(s.getLogPrior() for s in self._active())

    def isLegal(self):
        return all(s.isLegal() for s in self.subs if s is not None)

    def copy(self):
        return _copy.deepcopy(self)

    def _static(self):
        return None

    def _supports(self):
        return [k for s in self.subs if s is not None for k in s._supports()]

    def _collect(self, values, thawed, path_thawed, priors=None):
        children = tuple(
            s._collect(values, thawed, path_thawed and t, priors)
            for s, t in zip(self.subs, self._thawed)
            if s is not None
        )
        return Spec(type(self), self._static(), sum(c.size for c in children), children)
