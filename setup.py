"""Build the Ascon-AEAD128 C extension together with the pure-Python packages."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "pqlink._ascon",
            sources=["pqlink/_ascon.c"],
            depends=["pqlink/_ascon_core.h"],
            extra_compile_args=["-O3", "-std=c99", "-Wall", "-Wextra", "-fno-strict-aliasing"],
        )
    ]
)
