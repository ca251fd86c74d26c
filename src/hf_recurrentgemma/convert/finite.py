"""Non-finite weights: the check every converted tensor passes as it streams, and the warning of a conversion that
was told to keep them (`allow_nonfinite=True`, `--allow-nonfinite`).

A NaN or infinity in a checkpoint is damage (a bad save, a diverged run, a flipped bit): the converted model would
compute NaN logits, and loading it refuses it anyway (`from_pretrained(nonfinite="error")`). Conversion refuses it
first, naming the tensor, so the user learns before publishing.
"""

import torch

from .errors import ConversionError


class NonFiniteWeightsWarning(UserWarning):
    """A conversion with `allow_nonfinite=True` wrote tensors holding NaN or infinite values (named in the
    message)."""


def all_finite(tensor: torch.Tensor) -> bool:
    """Whether every value of a floating-point tensor is finite, in one reading pass without a temporary.

    The minimum and the maximum are both finite exactly when every value is: a NaN propagates to both, +inf is the
    maximum, -inf the minimum. `torch.isfinite(t).all()` gives the same answer but materialises a bool tensor the size
    of `t`: measured 10-20x slower (131M values, one thread: 1.2 s against 0.1 s in bfloat16), and a 2.6 GB
    embedding would need another 0.65 GB.
    """
    if tensor.numel() == 0:
        return True
    low, high = torch.aminmax(tensor)
    return bool(torch.isfinite(low) & torch.isfinite(high))


def count_nonfinite(tensor: torch.Tensor) -> tuple[int, int]:
    """(number of NaN values, number of infinite values); for the message, once `all_finite` said no."""
    return int(torch.isnan(tensor).sum()), int(torch.isinf(tensor).sum())


def describe_counts(nan: int, inf: int) -> str:
    """'1 NaN and 2 infinite values', '3 NaN values', '1 infinite value'."""
    parts = ([f"{nan} NaN"] if nan else []) + ([f"{inf} infinite"] if inf else [])
    return " and ".join(parts) + (" value" if nan + inf == 1 else " values")


def check_outputs(where: str, source_key: str, source_tensor: torch.Tensor, outputs: dict[str, torch.Tensor],
                  on_nonfinite=None) -> None:
    """Checks the tensors `source_key` became (`outputs`, our name -> tensor as stored) for NaN and infinite values.

    A non-finite tensor is a one-line `ConversionError` naming both keys and the counts, or, when `on_nonfinite` is
    given, that same description passed to it (the conversion then goes on). Values that are finite in the source
    but overflow in the stored dtype are named as such.
    """
    bad = {key: out for key, out in outputs.items() if out.is_floating_point() and not all_finite(out)}
    if not bad:
        return
    nan, inf = map(sum, zip(*(count_nonfinite(out) for out in bad.values())))
    ours = ", ".join(repr(key) for key in bad)
    dtype = str(next(iter(bad.values())).dtype).removeprefix("torch.")
    if source_tensor.dtype != next(iter(bad.values())).dtype and all_finite(source_tensor):
        what = f"overflows to {describe_counts(0, inf)} when cast to {dtype}"
    else:
        what = f"holds {describe_counts(nan, inf)}"
    description = f"tensor {source_key!r} (ours {ours}) {what}"
    if on_nonfinite is None:
        raise ConversionError(f"{where}: {description}; pass --allow-nonfinite (allow_nonfinite=True) to convert "
                              "anyway")
    on_nonfinite(description)


__all__ = ["NonFiniteWeightsWarning", "all_finite", "count_nonfinite", "describe_counts", "check_outputs"]
