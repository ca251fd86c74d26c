"""Conversion between the reference's checkpoints and ours."""

from .keymap import KeyMismatchError, ours_to_reference, reference_to_ours
from .reference import config_from_reference, griffin_from_reference, torch_state_dict_from_flax

__all__ = ["griffin_from_reference", "config_from_reference", "torch_state_dict_from_flax", "reference_to_ours",
           "ours_to_reference", "KeyMismatchError"]
