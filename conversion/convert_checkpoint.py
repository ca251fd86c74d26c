"""Converts an original RecurrentGemma / Griffin checkpoint (Orbax directory, torch state dict or
Transformers recurrent_gemma folder) to a hf-recurrentgemma folder.

Same as `hf-recurrentgemma convert ...`; see `python convert_checkpoint.py --help` and docs/conversion.md.
"""

import sys

from hf_recurrentgemma.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", *sys.argv[1:]]))
