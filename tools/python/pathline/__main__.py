"""`python -m pathline ARGS` (and the `pathline` script of a pip install): the command line that
was built and installed with this module, with LibTorch found where this environment's torch keeps it."""

import os
import sys


def main() -> None:
    """Replaces this process with the `pathline` executable, passing the arguments on."""
    import torch

    from . import _pathline

    exe = _pathline.pathline_executable()
    if not os.path.isfile(exe):
        sys.exit(f"pathline: {exe}: the command line is not installed beside the module")
    lib = os.path.join(os.path.dirname(torch.__file__), "lib")
    previous = os.environ.get("LD_LIBRARY_PATH")
    os.environ["LD_LIBRARY_PATH"] = lib + (os.pathsep + previous if previous else "")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(exe, [exe, *sys.argv[1:]])


if __name__ == "__main__":
    main()
