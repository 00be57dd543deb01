"""Entry script of the frozen app (PyInstaller): the same ``main`` as the console script."""

import multiprocessing
import sys

from app.cli import main

if __name__ == "__main__":
    multiprocessing.freeze_support()  # a frozen app's worker processes re-enter here
    sys.exit(main())
