"""Build the Cython fastpath; everything else is declared in pyproject.toml.

The fastpath is four extension modules of pledgeforge.fastpath: _der (DER),
_x509 (certificates), _cms (SignedData) and _verify (the engine and the Python
API), which share C declarations through their .pxd files. Before Cython runs,
fastpath/_profile.pxd is generated from the verification profile and the result
codes (fastpath/profile_codegen.py).
"""

import os
import runpy

from Cython.Build import cythonize
from setuptools import Extension, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
MODULES = ("_der", "_x509", "_cms", "_verify")

runpy.run_path(os.path.join(ROOT, "fastpath", "profile_codegen.py"))["write_pxd"](ROOT)


def cython_include_path() -> str:
    """A directory where fastpath/ appears as pledgeforge/fastpath/.

    Cython finds a module's .pxd by its package path (pledgeforge/fastpath/_der.pxd),
    while the sources live in fastpath/ (setuptools package-dir)."""
    base = os.path.join(ROOT, "build", "cython-include")
    package = os.path.join(base, "pledgeforge")
    os.makedirs(package, exist_ok=True)
    open(os.path.join(package, "__init__.pxd"), "a").close()
    link = os.path.join(package, "fastpath")
    if not os.path.islink(link):
        os.symlink(os.path.join(ROOT, "fastpath"), link)
    return base


extensions = [
    Extension(f"pledgeforge.fastpath.{name}", [f"fastpath/{name}.pyx"],
              libraries=["crypto"], extra_compile_args=["-O2"])
    for name in MODULES
]

# The four modules are translated and compiled in parallel, one job per core.
JOBS = os.cpu_count() or 1

setup(ext_modules=cythonize(extensions, language_level=3, include_path=[cython_include_path()], nthreads=JOBS),
      options={"build_ext": {"parallel": JOBS}})
