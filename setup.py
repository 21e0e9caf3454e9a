"""Only the optional C extension lives here; everything else is in pyproject.toml.

`workers._trees` speeds up scoring HistGradientBoosting models and `workers._murmur2` the
monitor's check of where a prediction was partitioned. Without a C compiler the install still
succeeds (optional=True) and the pure-Python paths are used.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("workers._trees", ["workers/_trees.c"], extra_compile_args=["-O3"], optional=True),
        Extension(
            "workers._murmur2", ["workers/_murmur2.c"], extra_compile_args=["-O3"], optional=True
        ),
    ]
)
