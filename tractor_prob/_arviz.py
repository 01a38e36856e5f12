"""Compatibility layer over ArviZ 0.23.x and ArviZ 1.x.

ArviZ 0.23 stores results in ``arviz.InferenceData``; ArviZ 1.x (split into
arviz-base / arviz-stats / arviz-plots) uses ``xarray.DataTree``.  The rest of
the package should build, inspect, summarise and save sampling results only
through the functions here, which take numpy arrays and return the ArviZ object
of the installed version.

Variable names may contain dots (``'source0.pos.x'``); both versions accept
them unchanged.  Writing netCDF files needs the ``h5netcdf`` (with ``h5py``) or
``netCDF4`` package: ArviZ 0.23 installs h5netcdf itself, ArviZ 1.x does not.
"""

import os
import uuid

import arviz as az
import numpy as np
import pandas as pd
import xarray as xr

_V1 = int(az.__version__.split(".")[0]) >= 1

#: Groups whose variables have leading ``(chain, draw)`` dimensions.
_DRAW_GROUPS = ("posterior", "sample_stats", "log_likelihood", "posterior_predictive")

#: Columns of :func:`summary`, in order.
SUMMARY_COLUMNS = [
    "mean",
    "sd",
    "hdi_low",
    "hdi_high",
    "mcse_mean",
    "mcse_sd",
    "ess_bulk",
    "ess_tail",
    "r_hat",
]


def make_idata(
    posterior,
    sample_stats=None,
    observed_data=None,
    log_likelihood=None,
    posterior_predictive=None,
    dims=None,
    coords=None,
    attrs=None,
):
    """Build an ArviZ object from numpy arrays.

    Parameters
    ----------
    posterior : dict of str to ndarray
        Posterior draws, each of shape ``(chain, draw, *event_shape)``.
    sample_stats, log_likelihood, posterior_predictive : dict of str to ndarray, optional
        Per-draw quantities, each of shape ``(chain, draw, *event_shape)``.
    observed_data : dict of str to ndarray, optional
        Data, each of shape ``event_shape`` (no chain or draw axis).
    dims : dict of str to list of str, optional
        Names of the event dimensions of each variable (chain and draw excluded);
        unnamed ones become ``'<var>_dim_<i>'``.
    coords : dict of str to array_like, optional
        Coordinate values of named dimensions.
    attrs : dict, optional
        Global metadata (values: str, numbers, or lists of them, so that it
        survives netCDF); read back as ``idata.attrs`` in both versions.

    Returns
    -------
    arviz.InferenceData or xarray.DataTree
        ``InferenceData`` under ArviZ 0.23, ``DataTree`` under ArviZ 1.x, with
        one group per non-empty argument.
    """
    data = {
        "posterior": posterior,
        "sample_stats": sample_stats,
        "observed_data": observed_data,
        "log_likelihood": log_likelihood,
        "posterior_predictive": posterior_predictive,
    }
    data = {name: group for name, group in data.items() if group}
    if _V1:
        return az.from_dict(data, dims=dims, coords=coords, attrs={"/": dict(attrs or {})})
    return az.from_dict(**data, dims=dims, coords=coords, attrs=dict(attrs or {}))


def _from_groups(datasets, attrs):
    """Build an ArviZ object from a dict of group name -> ``xarray.Dataset``."""
    if _V1:
        tree = xr.DataTree.from_dict(datasets)
        tree.attrs = dict(attrs)
        return tree
    return az.InferenceData(attrs=dict(attrs), **datasets)


def groups(idata):
    """Names of the groups of an ArviZ object.

    Parameters
    ----------
    idata : arviz.InferenceData or xarray.DataTree

    Returns
    -------
    list of str
        E.g. ``['posterior', 'sample_stats', 'observed_data']``.
    """
    return list(idata.children) if _V1 else idata.groups()


def get_group(idata, name):
    """One group of an ArviZ object as a Dataset.

    Parameters
    ----------
    idata : arviz.InferenceData or xarray.DataTree
    name : str
        Group name, e.g. ``'posterior'``.

    Returns
    -------
    xarray.Dataset
        Variables of the group, e.g. of dims ``(chain, draw, ...)`` for the posterior.

    Raises
    ------
    KeyError
        If the group is missing.
    """
    if name not in groups(idata):
        raise KeyError(f"no group {name!r}; groups are {groups(idata)}")
    return idata[name].to_dataset() if _V1 else idata[name]


def summary(idata, var_names=None, hdi_prob=0.94):
    """Posterior summary statistics and convergence diagnostics.

    Parameters
    ----------
    idata : arviz.InferenceData or xarray.DataTree
    var_names : list of str, optional
        Posterior variables to summarise; all by default.
    hdi_prob : float, default 0.94
        Probability mass of the highest-density interval.

    Returns
    -------
    pandas.DataFrame
        One row per scalar component, named ``'var'`` for scalar variables and
        ``'var[i, j]'`` (or coordinate labels) for array ones; float columns
        :data:`SUMMARY_COLUMNS` (``mean, sd, hdi_low, hdi_high, mcse_mean, mcse_sd,
        ess_bulk, ess_tail, r_hat``), unrounded; ``ess_tail`` is the smaller ESS
        of the 5% and 95% quantiles in both ArviZ versions.
    """
    if _V1:
        # 1.x takes the ess_tail quantiles from rcParams["stats.ci_prob"] (0.89 by
        # default); 0.95 gives the 5% / 95% quantiles that 0.23 (and Stan) use.
        with az.rc_context({"stats.ci_prob": 0.95}):
            df = az.summary(
                idata, var_names=var_names, ci_prob=hdi_prob, ci_kind="hdi", round_to="none"
            )
    else:
        import logging

        # one chain: R-hat is undefined (NaN) and 0.23 logs a shape warning; say nothing
        log = logging.getLogger("arviz")
        level = log.level
        log.setLevel(logging.ERROR)
        try:
            df = az.summary(idata, var_names=var_names, hdi_prob=hdi_prob, round_to="none")
        finally:
            log.setLevel(level)
    # 0.23 names the interval 'hdi_3%', 'hdi_97%'; 1.x 'hdi94_lb', 'hdi94_ub'.
    interval = [c for c in df.columns if c.startswith("hdi")]
    df = pd.DataFrame(df).rename(columns=dict(zip(interval, ["hdi_low", "hdi_high"])))
    return df[SUMMARY_COLUMNS]


def ess_min(idata, var_names=None):
    """Smallest bulk effective sample size over posterior variables.

    Parameters
    ----------
    idata : arviz.InferenceData or xarray.DataTree
    var_names : list of str, optional
        Posterior variables to consider; all by default.

    Returns
    -------
    float
        Minimum over variables and their components; NaN if any is NaN
        (e.g. a variable constant over draws).
    """
    ess = az.ess(get_group(idata, "posterior"), var_names=var_names, method="bulk")
    return float(min(ess[name].min() for name in ess.data_vars))


def rhat_max(idata, var_names=None):
    """Largest rank-normalised split R-hat over posterior variables.

    Parameters
    ----------
    idata : arviz.InferenceData or xarray.DataTree
    var_names : list of str, optional
        Posterior variables to consider; all by default.

    Returns
    -------
    float
        Maximum over variables and their components; NaN if any is NaN
        (e.g. a variable constant over draws).
    """
    rhat = az.rhat(get_group(idata, "posterior"), var_names=var_names)
    return float(max(rhat[name].max() for name in rhat.data_vars))


def to_netcdf(idata, path):
    """Write an ArviZ object to a netCDF4/HDF5 file atomically.

    The object is written to a temporary file in the same directory, which then
    replaces ``path``; readers never see a partial file.

    Parameters
    ----------
    idata : arviz.InferenceData or xarray.DataTree
    path : str or os.PathLike
        Destination file, overwritten if it exists.

    Returns
    -------
    str
        ``path``.
    """
    path = os.fspath(path)
    directory, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(directory, f".{name}.{uuid.uuid4().hex}.tmp")
    try:
        idata.to_netcdf(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def from_netcdf(path):
    """Read an ArviZ object written by :func:`to_netcdf`, fully into memory.

    The file is closed on return, so it may be overwritten or removed afterwards.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    arviz.InferenceData or xarray.DataTree
        Same kind as :func:`make_idata` returns.
    """
    path = os.fspath(path)
    if _V1:
        return xr.load_datatree(path)
    with az.rc_context({"data.load": "eager"}):
        return az.from_netcdf(path)


def concat_draws(a, b):
    """Append the draws of ``b`` to those of ``a``.

    Parameters
    ----------
    a, b : arviz.InferenceData or xarray.DataTree
        Runs with the same chains and variables, with ``na`` and ``nb`` draws.

    Returns
    -------
    arviz.InferenceData or xarray.DataTree
        Groups ``posterior``, ``sample_stats``, ``log_likelihood`` and
        ``posterior_predictive`` that are in both, each of shape
        ``(chain, na + nb, ...)`` with draw coordinate ``0 .. na + nb - 1``;
        ``observed_data`` and global attributes from ``a``. Other groups are dropped.
    """
    datasets = {}
    for name in groups(a):
        if name in _DRAW_GROUPS and name in groups(b):
            ds = xr.concat([get_group(a, name), get_group(b, name)], dim="draw")
            datasets[name] = ds.assign_coords(draw=np.arange(ds.sizes["draw"]))
        elif name == "observed_data":
            datasets[name] = get_group(a, name)
    return _from_groups(datasets, a.attrs)


def plot_trace(idata, var_names, path):
    """Save a trace plot (density and trace per chain) of posterior variables.

    Parameters
    ----------
    idata : arviz.InferenceData or xarray.DataTree
    var_names : list of str
        Posterior variables, one row each (array variables in one compact row).
    path : str or os.PathLike
        Output image, e.g. ``'trace.png'``.

    Returns
    -------
    str or os.PathLike
        ``path``.
    """
    import matplotlib.pyplot as plt

    if _V1:
        collection = az.plot_trace_dist(
            idata, var_names=list(var_names), kind="kde", backend="matplotlib"
        )
        fig = collection.viz["figure"].item()
    else:
        fig = az.plot_trace(idata, var_names=list(var_names), show=False).ravel()[0].figure
    try:
        fig.set_layout_engine("constrained")
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path
