"""Numba's on-disk cache of compiled CPU kernels, invalidated by an edit of any kernel source.

Numba keys each cached kernel on its own file only, yet a kernel inlines the shared functions of
other modules (`bilinear`, the ops' `*_math` and `deform_conv_layout`, and any module of this package it
calls): an edit of `bilinear.bilinear_blend` would leave every kernel compiled from the old text. The locators below key the kernels of
dcn_numba on the text of every file of dcn_numba/kernels instead (and of the kernel's own file,
and of reference/dcnv3.py, whose Parameters DCNv3's kernel geometry extends), so that the next
run after any edit recompiles, and every run after that loads from the cache.
"""

import functools
import hashlib
import pathlib

from numba.core import caching

KERNELS = pathlib.Path(__file__).resolve().parent
PACKAGE = KERNELS.parent


def stamped_sources():
    """The files every kernel's stamp covers: those of dcn_numba/kernels, and what the kernels
    import from outside it (reference/dcnv3.py: the Parameters a DCNv3 geometry extends)."""
    return [*KERNELS.glob("*.py"), PACKAGE / "reference" / "dcnv3.py"]


@functools.cache
def sources_stamp(own_file):
    """A hash of the text of every `stamped_sources` file and of `own_file`."""
    digest = hashlib.sha256()
    for path in sorted({*stamped_sources(), pathlib.Path(own_file).resolve()}):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


class KernelSourcesStamp:
    """Mixin for a Numba cache locator: functions of dcn_numba get `sources_stamp` as the stamp
    that decides whether the cached code is still valid; other files are left to Numba's own
    locators."""

    def get_source_stamp(self):
        return sources_stamp(self._py_file)

    @classmethod
    def from_function(cls, py_func, py_file):
        if PACKAGE not in pathlib.Path(py_file).resolve().parents:
            return None
        return super().from_function(py_func, py_file)


class UserDirectoryLocator(KernelSourcesStamp, caching.UserProvidedCacheLocator):
    """The cache in NUMBA_CACHE_DIR, when it is set."""


class InTreeLocator(KernelSourcesStamp, caching.InTreeCacheLocator):
    """The cache in the package's __pycache__ folders, otherwise."""


def install():
    """Put the locators above in front of Numba's own (once; before any kernel is decorated)."""
    locators = caching.CacheImpl._locator_classes
    for locator in (InTreeLocator, UserDirectoryLocator):
        if locator not in locators:
            locators.insert(0, locator)
