"""Only the optional C extension lives here; everything else is in pyproject.toml.

`workers._trees` speeds up scoring HistGradientBoosting models. Without a C compiler the
install still succeeds (optional=True) and scikit-learn's own predictor is used.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("workers._trees", ["workers/_trees.c"], extra_compile_args=["-O3"], optional=True)
    ]
)
