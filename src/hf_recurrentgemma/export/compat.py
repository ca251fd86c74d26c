"""What Transformers' exporters (`transformers.exporters`, 5.24) need fixed or worked around for Griffin, in one
place. Each item names the upstream issue text in docs/export.md ("Upstream issues").

1. `transformers.exporters.utils._map_leaf_tensors` (behind `prepare_for_export`'s cast of the inputs and the ONNX
   exporter's output de-duplication) rebuilds every tuple as `type(obj)(generator)`, which a named tuple refuses
   (`RecurrentState.__new__() missing 1 required positional argument: 'rg_lru'`): `exporters_fixed()` swaps in
   the same walk with named tuples rebuilt field by field, for the duration of an export.
2. `torch.export.save` pickles a program's example inputs, and `torch.export.load` unpickles them with
   `weights_only=True`, which refuses any class it does not know (here the cache): `drop_example_inputs` removes
   them from a Dynamo program before it is saved (running it does not read them).
"""

import contextlib

import torch


def exporters_available() -> str | None:
    """None if this Transformers has `transformers.exporters`, else why not."""
    try:
        import transformers.exporters.utils  # noqa: F401
    except ImportError as err:
        import transformers

        return f"Transformers {transformers.__version__} has no transformers.exporters ({err}); it needs >= 5.24"
    return None


def _map_leaf_tensors_fixed(skip: tuple):
    """`transformers.exporters.utils._map_leaf_tensors` (5.24), with named tuples rebuilt field by field."""

    def walk(obj, fn):
        if isinstance(obj, skip):
            return obj
        if isinstance(obj, torch.Tensor):
            return fn(obj)
        if isinstance(obj, tuple) and hasattr(obj, "_fields"):
            return type(obj)(*(walk(item, fn) for item in obj))
        if isinstance(obj, (list, tuple, set)):
            return type(obj)(walk(item, fn) for item in obj)
        if isinstance(obj, dict):
            for key in list(obj):
                obj[key] = walk(obj[key], fn)
            return obj
        if hasattr(obj, "__dict__"):
            for attr, value in vars(obj).items():
                setattr(obj, attr, walk(value, fn))
        return obj

    return walk


@contextlib.contextmanager
def exporters_fixed():
    """Within the block, Transformers' exporters walk named tuples correctly (item 1 of the module docstring)."""
    from transformers.exporters import utils

    original = utils._map_leaf_tensors
    utils._map_leaf_tensors = _map_leaf_tensors_fixed(utils._LEAF_SKIP_TYPES)
    try:
        yield
    finally:
        utils._map_leaf_tensors = original


def drop_example_inputs(program) -> None:
    """Item 2 of the module docstring, for a `torch.export.ExportedProgram`."""
    if isinstance(program, torch.export.ExportedProgram):
        program._example_inputs = None


__all__ = ["drop_example_inputs", "exporters_available", "exporters_fixed"]
