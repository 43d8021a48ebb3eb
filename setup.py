"""Build lantern's optional native kernels (plain C, no torch needed at build time).

Everything else is configured in pyproject.toml. If the compiler is missing or the build
fails, lantern still installs and runs on its pure-PyTorch kernels.
"""

import glob
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    def run(self):
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001
            print(f"warning: lantern's native kernels were not built ({exc}); using the PyTorch fallback")

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            print(f"warning: lantern's native kernels were not built ({exc}); using the PyTorch fallback")


setup(
    ext_modules=[
        Extension(
            "lantern.weights.kernels._native",
            # lantern/weights/csrc/lantern.h describes the layout: ISA-free drivers, one kernel
            # table, one file per instruction set (each compiled everywhere, empty off its arch).
            sources=sorted(glob.glob("lantern/weights/csrc/**/*.c", recursive=True)),
            depends=sorted(glob.glob("lantern/weights/csrc/*.h")),
            extra_compile_args=["-O3", "-std=c11", "-pthread"],
            extra_link_args=["-pthread"],
            libraries=[] if sys.platform == "win32" else ["m"],  # expf
            optional=True,
        )
    ],
    cmdclass={"build_ext": OptionalBuildExt},
)
