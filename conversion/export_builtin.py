"""Converts a hf-recurrentgemma folder to Transformers' built-in recurrent_gemma format.

Same as `hf-recurrentgemma export-builtin ...`; see `python export_builtin.py --help` and docs/conversion.md.
"""

import sys

from hf_recurrentgemma.cli import main

if __name__ == "__main__":
    sys.exit(main(["export-builtin", *sys.argv[1:]]))
