"""Numba kernels for the hot paths; each has a plain NumPy twin that tests prove equal."""
