"""Whether Numba can keep numadam's compiled kernels on disk, decided once.

``@njit(cache=True)`` asks Numba for a cache directory when the function is
decorated, that is at ``import numadam``: beside the source (``__pycache__``),
else in the user's cache directory (``~/.cache/numba``), or in
``NUMBA_CACHE_DIR`` when set. With none of them writable (a read-only
install in a container whose ``$HOME`` is read-only too) Numba raises
``RuntimeError: cannot cache function ...: no locator available`` and the
import fails. Every decorator in the package passes ``cache=CACHE`` instead:
Numba's own locators are asked once, here, and where they find nothing the
kernels compile in every process (about 2 s) and one warning says so.
"""

import os
import sys
import warnings

from numba.core.caching import CompileResultCacheImpl

__all__ = ["CACHE"]

_HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # the package


def _probe():
    """A function of this package's directory for Numba's locators to place.

    Every locator picks the directory from the source file's folder alone, and
    numadam's kernels live in the folders of one package, installed together
    with the same permissions, so the answer for this function is the answer
    for all of them."""


def _can_cache():
    """True if Numba finds a writable cache directory for numadam's files."""
    try:
        CompileResultCacheImpl(_probe)       # what cache=True does at decoration
    except RuntimeError as error:
        if "no locator available" not in str(error):
            raise
        return False
    return True


def _outside_numadam():
    """``stacklevel`` for :func:`warnings.warn` that names the first frame
    outside numadam and the import machinery (the user's line that first
    reached a kernel module: ``numadam.Adam(...)``), counted as ``warnings``
    counts."""
    level, frame = 1, sys._getframe(1)
    while frame is not None:
        name = frame.f_code.co_filename
        # warnings.warn does not count the bootstrap's frames; importlib's
        # import_module (numadam's lazy loads) it counts, but it is not the user.
        bootstrap = "importlib" in name and "_bootstrap" in name
        if not bootstrap and "importlib" not in name and not name.startswith(_HERE):
            break
        level += not bootstrap
        frame = frame.f_back
    return level


CACHE = _can_cache()
if not CACHE:
    warnings.warn(
        "numadam: Numba finds no writable cache directory (not beside numadam's files, not "
        "in the user's cache directory), so its kernels compile in every process (about 2 s); "
        "set NUMBA_CACHE_DIR to a writable directory to keep them", stacklevel=_outside_numadam())
