"""Generating with exported programs: `ExportedGriffin` drives the prefill and decode programs of an export folder
through the backend's `ModelRunner` (Transformers' exporters), one sequence at a time, the state carried between
calls as a `GriffinCache` of tensors."""

import json
from pathlib import Path

import torch

from ..griffin.cache_griffin import GriffinCache
from . import pytree
from .exporting import INFO_FILE
from .formats import get_format


class ExportedGriffin:
    """An exported Griffin, run by its backend.

    Example:
        >>> model = ExportedGriffin.from_pretrained("griffin-onnx")
        >>> tokens = model.generate(input_ids, max_new_tokens=64)  # greedy: generate()'s tokens
    """

    def __init__(self, exported, info: dict, config):
        self.exported, self.info, self.config = exported, info, config
        self.prefill_runner = exported.runners["prefill"]
        self.decode_runner = exported.runners["decode"]
        self.dtype = getattr(torch, info["dtype"])

    @classmethod
    def from_pretrained(cls, folder: str | Path, **runner_kwargs) -> "ExportedGriffin":
        """Loads an export folder (`hf-recurrentgemma export`, `export_griffin(out=...)`). `runner_kwargs` go to
        the backend's runner (`session_options` for ONNX Runtime, `config` for OpenVINO)."""
        folder = Path(folder)
        info_file = folder / INFO_FILE
        if not info_file.is_file():
            raise ValueError(f"{folder}: not a Griffin export folder (no {INFO_FILE}; write one with "
                             "`hf-recurrentgemma export`)")
        info = json.loads(info_file.read_text(encoding="utf-8"))
        get_format(info["format"]).require()
        pytree.register()
        from transformers.exporters import ExportedModel

        from ..griffin.configuration_griffin import GriffinConfig

        if info["format"] == "openvino" and info["dtype"] == "float32":
            # OpenVINO's CPU plugin computes in bfloat16 where the CPU has it unless told otherwise.
            runner_kwargs["config"] = {"INFERENCE_PRECISION_HINT": "f32", **(runner_kwargs.get("config") or {})}
        exported = ExportedModel.from_pretrained(folder, trust_remote_code=info["format"] == "dynamo",
                                                 **runner_kwargs)
        config = GriffinConfig.from_pretrained(folder)
        model = cls(exported, info, config)
        model.check_state_layout()
        return model

    def check_state_layout(self) -> None:
        """Refuses an export whose recorded state tensors do not match what this package's cache holds for the
        config (another version of the package, or an edited folder), naming the first difference."""
        from .exporting import state_layout

        want = state_layout(self.config, self.dtype)
        have = self.info.get("state", [])
        for i, (w, h) in enumerate(zip(want, have)):
            if w != h:
                raise ValueError(f"state tensor {i} of the export is {h}, this package's cache holds {w}: "
                                 "export the model again with this version")
        if len(want) != len(have):
            raise ValueError(f"the export has {len(have)} state tensors, this package's cache holds {len(want)}: "
                             "export the model again with this version")

    def new_cache(self) -> GriffinCache:
        """An empty state (batch 1): zeros, every attention slot invisible."""
        return GriffinCache(self.config, batch_size=1, dtype=self.dtype)

    def _call(self, runner, tokens: torch.Tensor, position: int, cache: GriffinCache):
        positions = torch.arange(position, position + tokens.shape[1])[None]
        out = runner(input_ids=tokens, position_ids=positions, cache=cache)
        return out.logits, out.cache

    def step(self, tokens: torch.Tensor, position: int, cache: GriffinCache):
        """Runs (1, T) `tokens` starting at document position `position` from `cache`: prefill calls of at most
        `max_prefill` tokens, and the decode program for what is shorter than `min_prefill`. Returns the last
        token's logits (1, V) and the new cache."""
        if tokens.ndim != 2 or tokens.shape[0] != 1:
            raise ValueError(f"exported Griffin programs take one sequence: token ids of shape (1, T), got "
                             f"{tuple(tokens.shape)}")
        low, high = self.info["min_prefill"], self.info["max_prefill"]
        done, total, logits = 0, tokens.shape[1], None
        while done < total:
            left = total - done
            if left < low:
                n, runner = 1, self.decode_runner
            else:
                n = min(left, high)
                if 0 < left - n < low:  # leave the last chunk long enough for the prefill program
                    n = left - low
                runner = self.prefill_runner
            logits, cache = self._call(runner, tokens[:, done:done + n], position + done, cache)
            done += n
        return logits[:, -1], cache

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, logits_processor=None, do_sample: bool = False,
                 eos_token_id: int | list[int] | None = None, streamer=None, generator=None) -> torch.Tensor:
        """Prompt plus continuation, (1, T + new). Greedy unless `do_sample`; `logits_processor` (a Transformers
        `LogitsProcessorList`) adjusts the scores first (temperature, top-k, top-p, repetition penalty). Stops after
        `max_new_tokens` or at `eos_token_id`; `streamer` (`TextStreamer`) gets each new token."""
        input_ids = input_ids.to(torch.long)
        eos = set([eos_token_id] if isinstance(eos_token_id, int) else eos_token_id or [])
        logits, cache = self.step(input_ids, 0, self.new_cache())
        sequence = input_ids
        if streamer is not None:
            streamer.put(input_ids.cpu())
        for _ in range(max_new_tokens):
            scores = logits.float()
            if logits_processor is not None:
                scores = logits_processor(sequence, scores)
            if do_sample:
                token = torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=generator)
            else:
                token = scores.argmax(-1, keepdim=True)
            sequence = torch.cat([sequence, token], dim=1)
            if streamer is not None:
                streamer.put(token[0].cpu())
            if int(token) in eos or sequence.shape[1] - input_ids.shape[1] == max_new_tokens:
                break
            logits, cache = self.step(token, sequence.shape[1] - 1, cache)
        if streamer is not None:
            streamer.end()
        return sequence


def load_exported(folder: str | Path, **runner_kwargs) -> ExportedGriffin:
    return ExportedGriffin.from_pretrained(folder, **runner_kwargs)


__all__ = ["ExportedGriffin", "load_exported"]
