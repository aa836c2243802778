"""raycity: K-fold cross-validation and sweeps of a UNet-ResNet50 on Cityscapes, on Ray Tune.

A regular package (not a namespace one), so that no other `raycity/` folder on the path merges
into it. Importing it loads nothing: the core (model, data, engine, the fold recipe) imports no
Ray; `raycity.tune` is where Ray lives.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("raycity")
except PackageNotFoundError:  # a source tree that was not installed
    __version__ = "0.1.0"
