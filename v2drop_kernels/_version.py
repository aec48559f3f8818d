"""The package's version, read by setup.py and v2drop_kernels.__version__ (the one place it is written)."""

__version__ = "0.1.0"
