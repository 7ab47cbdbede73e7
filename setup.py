"""Builds dicom-gw's compiled core (dicomgw._core) from csrc/.

Metadata lives in pyproject.toml; this file only lists the extension.
DICOMGW_CYTHON_ANNOTATE=1 writes csrc/*.html annotation; DICOMGW_CYTHON_DEBUG=1
keeps asserts and line tracing for debugging the core.
"""

import os

from Cython.Build import cythonize
from setuptools import Extension, setup

debug = os.environ.get("DICOMGW_CYTHON_DEBUG") == "1"

extensions = [
    Extension(
        "dicomgw._core",
        ["csrc/_core.pyx"],
        extra_compile_args=["-O2"] if not debug else ["-O0", "-g"],
    )
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        annotate=os.environ.get("DICOMGW_CYTHON_ANNOTATE") == "1",
        compiler_directives={
            "boundscheck": debug,
            "wraparound": False,
            "initializedcheck": debug,
            "cdivision": True,
            "linetrace": debug,
        },
    )
)
