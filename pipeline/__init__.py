"""Archive-scale cloud masking for Sentinel-2 and Landsat with MSCloudCAM.

The public API (``pipeline.api``; docstrings give dims, shapes and dtypes):

- ``mask(cube, weights=None, ...)``: lazy masks ``(time, y, x) uint8`` of a cube you have (odc-stac, stackstac);
- ``run(stac_url, collection, out, ...)``: what ``cloudmask run`` does; the job's statistics table;
- ``open_masks(store)``: a store the job wrote, as an ``xarray.DataTree``;
- ``predict(array, weights=None)``: classes ``(y, x) uint8`` of one in-memory ``(band, y, x)`` array;
- ``CloudmaskError``: the base of every error they raise on purpose.

Everything else is internal and may move. The package is organised by the data each module produces; see
``README.md`` for the map. ``import pipeline`` is light: torch, Dask and xarray load when a function needs them.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cloudmask-pipeline")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"

from pipeline.api import mask, open_masks, predict, run  # noqa: E402  (after __version__: modules import it)
from pipeline.errors import CloudmaskError  # noqa: E402

__all__ = ["CloudmaskError", "__version__", "mask", "open_masks", "predict", "run"]
