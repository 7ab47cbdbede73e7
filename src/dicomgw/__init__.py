"""dicom-gw: a high-volume DICOM gateway.

The compiled core (``dicomgw._core``) is required, as in asyncpg and uvloop:
there is no pure-Python fallback. It is looked up here, not loaded, so that
processes which never touch the wire (API workers) do not load it.
"""

from importlib.util import find_spec

__version__ = "0.1.0"

if find_spec("dicomgw._core") is None:
    raise ImportError(
        "dicom-gw's compiled core (dicomgw._core) is not built. "
        "Build it with 'pip install .' (or 'make dev' in a source checkout, "
        "'python setup.py build_ext --inplace' for an in-place build); "
        "it needs a C compiler and the Python headers (Debian: gcc python3-dev)."
    )
