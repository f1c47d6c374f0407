"""Build the Cython fastpath; everything else is declared in pyproject.toml."""
from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = [
    Extension(
        "pledgeforge.fastpath._verify",
        ["fastpath/_verify.pyx"],
        libraries=["crypto"],
        extra_compile_args=["-O2"],
    ),
]

setup(ext_modules=cythonize(extensions, language_level=3))
