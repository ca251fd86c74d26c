"""Conversion between the original checkpoints (and Transformers' built-in format) and ours, as a library.

    from hf_recurrentgemma.convert import convert_checkpoint, export_builtin, export_orbax
    result = convert_checkpoint("2b.pt", "recurrentgemma-2b-hf", preset="recurrentgemma-2b", dtype="bfloat16")
    export_orbax(result.out, "2b-orbax")

See docs/conversion.md (the Python API and how to add a format) and docs/architecture.md (which file does what).
"""

from .builtin import export_builtin
from .errors import ConversionError, KeyMismatchError
from .finite import NonFiniteWeightsWarning
from .formats import FORMATS, detect_source
from .keymap import ours_to_reference, reference_to_ours
from .orbax_release import export_orbax
from .pipeline import ConversionResult, VerificationFailed, convert_checkpoint
from .reference import config_from_reference, griffin_from_reference, torch_state_dict_from_flax
from .sources import Source

__all__ = ["convert_checkpoint", "ConversionResult", "VerificationFailed", "export_orbax", "export_builtin",
           "griffin_from_reference", "config_from_reference", "torch_state_dict_from_flax", "reference_to_ours",
           "ours_to_reference", "ConversionError", "KeyMismatchError", "NonFiniteWeightsWarning", "Source", "FORMATS",
           "detect_source"]
