"""Build lantern's optional native kernels (plain C, no torch needed at build time).

Everything else is configured in pyproject.toml. If the compiler is missing or the build
fails, lantern still installs and runs on its pure-PyTorch kernels, and says so: pip shows a
build's output only with -v or when it fails, so the warning goes out three ways: as a Python
UserWarning (pip 26 relays those when it builds a local directory), on stderr, and on the
terminal itself; and `lantern run --verbose` says "no native kernels (pure PyTorch)". LANTERN_REQUIRE_NATIVE=1 makes a
failed build fail the install instead (CI, packagers).

Compilers (README "Platforms"): gcc and clang (Linux, macOS, MinGW) take the same flags; MSVC
(compiler_type "msvc") takes its own, and pool.c needs no pthreads there.
"""

import glob
import os
import sys
import warnings

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

NATIVE = "lantern.weights.kernels._native"

HOW_TO_FIX = (
    "To build them, install a C compiler and Python's headers, then reinstall lantern:\n"
    "  Debian/Ubuntu: apt-get install gcc python3-dev    Fedora: dnf install gcc python3-devel\n"
    "  macOS: xcode-select --install\n"
    "  Windows: Visual Studio Build Tools (2019 16.8 or later), 'Desktop development with C++'\n"
    "`lantern run --verbose` says which kernels run."
)


def _say(text: str) -> None:
    """To stderr, and to the terminal itself when stderr is not it (pip captures stderr)."""
    print(text, file=sys.stderr, flush=True)
    try:
        if sys.stderr.isatty():
            return
    except (AttributeError, ValueError):
        pass
    try:
        with open("CONOUT$" if os.name == "nt" else "/dev/tty", "w") as tty:
            tty.write(text + "\n")
    except OSError:  # no terminal (CI logs, IDEs): stderr is all there is
        pass


def _not_built(exc: BaseException) -> None:
    reason = str(exc).strip() or type(exc).__name__
    text = (f"lantern's native C kernels were NOT built ({reason}).\n"
            "lantern still works, on its pure-PyTorch kernels, but decodes several times slower.\n"
            f"{HOW_TO_FIX}")
    warnings.warn(text, UserWarning, stacklevel=2)
    bar = "!" * 78
    _say(f"\n{bar}\nWARNING: {text}\n{bar}\n")
    if os.environ.get("LANTERN_REQUIRE_NATIVE") == "1":
        raise SystemExit("LANTERN_REQUIRE_NATIVE=1: failing the build") from exc


class OptionalBuildExt(build_ext):
    def run(self):
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 (no compiler at all: DistutilsPlatformError, ...)
            _not_built(exc)

    def build_extension(self, ext):
        if self.compiler.compiler_type == "msvc":
            # C11 (_Alignas, VS 2019 16.8+); no -pthread (pool.c uses Win32 threads), no libm
            ext.extra_compile_args = ["/O2", "/std:c11"]
            ext.extra_link_args = []
        elif self.compiler.compiler_type == "mingw32":
            ext.extra_link_args = ["-static-libgcc"]  # pool.c uses Win32 threads: no winpthread DLL
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            _not_built(exc)


setup(
    ext_modules=[
        Extension(
            NATIVE,
            # lantern/weights/csrc/lantern.h describes the layout: ISA-free drivers, one kernel
            # table, one file per instruction set (each compiled everywhere, empty off its arch).
            sources=sorted(glob.glob("lantern/weights/csrc/**/*.c", recursive=True)),
            depends=sorted(glob.glob("lantern/weights/csrc/**/*.h", recursive=True)),
            extra_compile_args=["-O3", "-std=c11", "-pthread"],
            extra_link_args=["-pthread"],
            libraries=[] if sys.platform == "win32" else ["m"],  # expf
            optional=True,
        )
    ],
    cmdclass={"build_ext": OptionalBuildExt},
)
