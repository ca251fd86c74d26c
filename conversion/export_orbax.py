"""Converts a hf-recurrentgemma folder to an Orbax checkpoint of the original JAX release.

Same as `hf-recurrentgemma export-orbax ...`; see `python export_orbax.py --help` and docs/conversion.md.
"""

import sys

from hf_recurrentgemma.cli import main

if __name__ == "__main__":
    sys.exit(main(["export-orbax", *sys.argv[1:]]))
