"""Archive-scale cloud masking for Sentinel-2 and Landsat with MSCloudCAM.

The package is organised by the data each module produces; see ``README.md`` for the map.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cloudmask-pipeline")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
