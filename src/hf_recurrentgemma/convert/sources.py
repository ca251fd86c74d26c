"""`Source`, the interface every checkpoint format implements, and `ReferenceSource`, what the original releases'
formats share. A source gives its names and shapes before any data (`metas`), so every key and shape is checked up
front, then our tensors one source tensor at a time (`tensors`). The formats: torch_release.py, orbax_release.py,
builtin.py, listed in formats.py."""

from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from huggingface_hub.errors import StrictDataclassError

from ..griffin.configuration_griffin import GriffinConfig
from .errors import ConversionError, KeyMismatchError
from .finite import check_outputs
from .keymap import Rule, check_keys, expected_shapes, ours_to_reference, rules_for, source_shapes, tied_extras
from .reference import config_from_reference


def meta(shape, dtype: torch.dtype) -> torch.Tensor:
    """A tensor with a shape and dtype and no data, for checking keys and shapes before reading."""
    return torch.empty(tuple(shape), dtype=dtype, device="meta")


class Source:
    """One checkpoint format, read tensor by tensor. Subclasses set `name`/`title`/`what` and implement `detect`,
    `config`, `metas`, `key_map` and `load`; the rest has working defaults. Use as a context manager (or `close`)."""

    name = ""  # short name, in messages: "torch"
    title = ""  # what the release is called, in the model card: "PyTorch"
    what = "checkpoint"  # what key errors say was read

    def __init__(self, path: Path):
        self.path = Path(path)

    @classmethod
    def detect(cls, path: Path) -> Path | None:
        """The checkpoint of this format at `path` (`path` itself or a folder inside it), or None."""
        raise NotImplementedError

    def describe(self) -> str:
        """One line: the format, the path and the stored dtypes."""
        return f"{self.title} checkpoint {self.path} ({', '.join(self.dtype_names())})"

    def dtype_names(self) -> list[str]:
        return sorted({str(t.dtype).removeprefix("torch.") for t in self.metas().values()})

    def config(self, preset: str | None = None, overrides: dict | None = None) -> GriffinConfig:
        """Our config: what the checkpoint tells, the rest from the preset and `overrides` (explicit wins; None
        values are ignored). Contradictions are a `ConversionError` naming the field."""
        raise NotImplementedError

    def metas(self) -> dict[str, torch.Tensor]:
        """{name in this format: meta tensor with its shape and dtype}, read without loading data."""
        raise NotImplementedError

    def key_map(self, config: GriffinConfig) -> list[Rule]:
        """The rules from this format's names to ours for a model with this config."""
        raise NotImplementedError

    def load(self, key: str) -> torch.Tensor:
        """One tensor, under this format's name `key`."""
        raise NotImplementedError

    def default_dtype(self) -> torch.dtype:
        """The dtype `dtype="auto"` stores: the checkpoint's, or float32 when it mixes several."""
        dtypes = {t.dtype for t in self.metas().values()}
        return dtypes.pop() if len(dtypes) == 1 else torch.float32

    def tensors(self, config: GriffinConfig, dtype: torch.dtype | None = None,
                on_nonfinite: Callable[[str], None] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        """(our name, contiguous tensor in `dtype`, or as stored) for every parameter, one source tensor at a time.
        Every key and shape is checked before this returns (`KeyMismatchError` names the key or shape). A tensor
        holding NaN or infinite values is a `ConversionError` naming it when it is read, unless `on_nonfinite` is
        given: it then receives the one-line description and the tensor is yielded as it is."""
        rules = self.key_map(config)
        check_keys({k: tuple(v.shape) for k, v in self.metas().items()}, source_shapes(rules, config), self.what,
                   where=str(self.path), optional=tied_extras(config))
        return self._stream(rules, expected_shapes(config), dtype, on_nonfinite)

    def _stream(self, rules, shapes, dtype, on_nonfinite=None) -> Iterator[tuple[str, torch.Tensor]]:
        for rule in rules:
            tensor = self.load(rule.source)
            outs = [out.to(dtype or out.dtype).contiguous() for out in rule.forward(tensor)]
            for key, out in zip(rule.targets, outs):
                if tuple(out.shape) != shapes[key]:  # the data disagrees with its own header
                    raise KeyMismatchError(f"{self.path}: {rule.source!r} gives {key!r} the shape "
                                           f"{tuple(out.shape)}, expected {shapes[key]}")
            check_outputs(str(self.path), rule.source, tensor, dict(zip(rule.targets, outs)), on_nonfinite)
            self.consumed(tensor, outs)
            yield from zip(rule.targets, outs)

    def reference_state(self, config: GriffinConfig) -> dict[str, torch.Tensor]:
        """The weights under the reference's torch names, as stored (what `verify` feeds the reference model;
        the conversion itself has already refused or accepted non-finite values)."""
        return ours_to_reference(dict(self.tensors(config, on_nonfinite=lambda description: None)), config)

    def consumed(self, tensor: torch.Tensor, outputs: list[torch.Tensor]) -> None:
        """Called once `tensor` is converted into `outputs` (a memory-mapped source may drop its pages)."""

    def release(self) -> None:
        """Called once the tensors loaded so far are written (after each shard)."""

    def close(self) -> None:
        """Frees what the source holds; it cannot be read afterwards."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ReferenceSource(Source):
    """A checkpoint of the original release: reference torch names, a config inferred from the shapes."""

    what = "reference checkpoint"

    def config(self, preset=None, overrides=None) -> GriffinConfig:
        try:
            return config_from_reference(self.metas(), preset=preset, **(overrides or {}))
        except ConversionError:
            raise
        except (ValueError, TypeError, StrictDataclassError) as err:
            # @strict wraps the config's own one-line error under a header line; report the error itself.
            raise ConversionError(f"{self.path}: {err.__cause__ or err}") from None

    def key_map(self, config: GriffinConfig) -> list[Rule]:
        return rules_for(config)

    def reference_state(self, config: GriffinConfig) -> dict[str, torch.Tensor]:
        # The tensors as read, not through our key map: verification then also checks the map's transforms.
        return {rule.source: self.load(rule.source) for rule in self.key_map(config)}


__all__ = ["Source", "ReferenceSource", "meta"]
