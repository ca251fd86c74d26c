"""`GriffinForCausalLM` (our converted folders) and `RecurrentGemmaForCausalLM` (Transformers' built-in
`recurrent_gemma` folders, as published on the Hub) for vLLM: one model, two weight-name maps.

Numerics are the reference's in both cases: embeddings times sqrt(D) rounded to bfloat16 (`scale_embeddings`),
the logit soft cap (`soft_cap_logits`), float32 RG-LRU state, a window of itself plus W previous tokens.
"""

from collections.abc import Iterable, Mapping

import torch
from torch import nn
from vllm.compilation.decorators import support_torch_compile
from vllm.config import VllmConfig
from vllm.model_executor.layers.logits_processor import LogitsProcessor
from vllm.model_executor.layers.mamba.mamba_utils import get_temporal_copy_spec
from vllm.model_executor.layers.vocab_parallel_embedding import VocabParallelEmbedding
from vllm.model_executor.models.interfaces import HasInnerState, IsHybrid
from vllm.model_executor.models.utils import (
    AutoWeightsLoader,
    WeightsMapper,
    maybe_prefix,
)

from ..convert.builtin import BUILTIN_RENAMES, conv_kernel_to_griffin
from ..griffin.configuration_griffin import ATTENTION
from ..griffin.layers_griffin import GriffinRMSNorm
from ..griffin.ops_griffin import (
    RECURRENT_STATE_DTYPE,
    recurrent_state_shapes,
    scale_embeddings,
)
from .config import griffin_config
from .layers import GriffinAttention, GriffinMLP, GriffinRecurrentBlock

# Our checkpoint names -> vLLM's: the projections vLLM stacks into one GEMM (with their shard), and the tied head
# (the embedding serves as it; `GriffinForCausalLM` refuses untied configs).
WEIGHTS_MAPPER = WeightsMapper(
    orig_to_new_stacked={
        ".q_proj.": (".qkv_proj.", "q"),
        ".k_proj.": (".qkv_proj.", "k"),
        ".v_proj.": (".qkv_proj.", "v"),
        ".gate_proj.": (".gate_up_proj.", 0),
        ".up_proj.": (".gate_up_proj.", 1),
    },
    orig_to_new_prefix={"lm_head.": None},
)


def only_known(weights: Iterable[tuple[str, torch.Tensor]], params: Mapping[str, object]):
    """`weights` (already under vLLM's names) passed through, with an error naming the nearby parameters for a
    tensor that is not in `params`: vLLM's loader would drop an unknown bias silently."""
    for name, tensor in weights:
        if name not in params:
            near = sorted(p for p in params if name.rsplit(".", 2)[0] in p)
            raise ValueError(f"checkpoint tensor {name!r} has no counterpart in the Griffin vLLM model; nearby: {near}")
        yield name, tensor


class GriffinDecoderLayer(nn.Module):
    """`x + temporal(norm(x))`, then `+ mlp(norm(.))`."""

    def __init__(self, config, idx: int, vllm_config: VllmConfig, prefix: str):
        super().__init__()
        cache_config = vllm_config.cache_config
        self.temporal_pre_norm = GriffinRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        if config.block_types[idx] == ATTENTION:
            self.temporal_block = GriffinAttention(config, vllm_config.model_config.max_model_len, cache_config,
                                                   f"{prefix}.temporal_block")
        else:
            self.temporal_block = GriffinRecurrentBlock(config, vllm_config.model_config, cache_config,
                                                        f"{prefix}.temporal_block")
        self.channel_pre_norm = GriffinRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = GriffinMLP(config, f"{prefix}.mlp")

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        residual = self.temporal_block(self.temporal_pre_norm(x), positions) + x
        return self.mlp(self.channel_pre_norm(residual)) + residual


@support_torch_compile
class GriffinModel(nn.Module):
    """Embedding, the decoder layers and the final norm: the graph vLLM compiles (its default mode); the recurrent
    blocks' stateful middle stays an opaque custom op inside it (`layers.griffin_recurrent`)."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        self.config = config = griffin_config(vllm_config.model_config.hf_config)
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size,
                                                   prefix=f"{prefix}.embed_tokens")
        self.layers = nn.ModuleList(GriffinDecoderLayer(config, i, vllm_config, f"{prefix}.layers.{i}")
                                    for i in range(config.num_hidden_layers))
        self.final_norm = GriffinRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, input_ids: torch.Tensor | None, positions: torch.Tensor,
                intermediate_tensors=None, inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        x = scale_embeddings(inputs_embeds, self.config)
        for layer in self.layers:
            x = layer(x, positions)
        return self.final_norm(x)


class GriffinForCausalLM(nn.Module, HasInnerState, IsHybrid):
    """Griffin / Hawk / RecurrentGemma served by vLLM (tensor-parallel, prefix caching, speculative decoding; no
    pipeline parallelism or LoRA)."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        self.config = griffin_config(vllm_config.model_config.hf_config)
        if vllm_config.quant_config is not None:
            raise ValueError(f"quantization ({vllm_config.quant_config.get_name()}) is not supported for Griffin in "
                             "vLLM: the RG-LRU gates and conv1d are not vLLM linear layers, so no quantization "
                             "method reaches them")
        if not self.config.tie_word_embeddings:
            raise ValueError("the Griffin vLLM model decodes with the input embedding (tie_word_embeddings=True, as "
                             "every released model); this config has an untied head")
        self.model = GriffinModel(vllm_config=vllm_config, prefix=maybe_prefix(prefix, "model"))
        # vLLM's soft cap computes tanh(logits / cap) * cap, `soft_cap_logits`'s formula to the bit (cap 0: none).
        self.logits_processor = LogitsProcessor(self.config.vocab_size, soft_cap=self.config.logits_soft_cap or None)

    # --- the hybrid-model contract ------------------------------------------------------------------------------
    @classmethod
    def get_mamba_state_shape_from_config(cls, vllm_config: VllmConfig):
        return recurrent_state_shapes(griffin_config(vllm_config.model_config.hf_config),
                                      vllm_config.parallel_config.tensor_parallel_size)

    @classmethod
    def get_mamba_state_dtype_from_config(cls, vllm_config: VllmConfig):
        return vllm_config.model_config.dtype, RECURRENT_STATE_DTYPE

    @classmethod
    def get_mamba_state_copy_func(cls):
        # How vLLM's prefix caching ("align" mode) carries a state to the block where the request goes on: the conv
        # tail and the RG-LRU state are both whole per slot (the speculative verify writes the full state after
        # each token into its own slot, `GriffinRecurrentBlock._verify`), so both are copied from the slot of the
        # last accepted token, as vLLM copies a temporal state (not `get_conv_copy_spec`, which shifts one long
        # conv window by the accepted count).
        return get_temporal_copy_spec, get_temporal_copy_spec

    # --- forward ------------------------------------------------------------------------------------------------
    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_tokens(input_ids)

    def forward(self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None, **kwargs):
        return self.model(input_ids, positions, intermediate_tensors, inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.logits_processor(self.model.embed_tokens, hidden_states)  # tied head

    # --- weights ------------------------------------------------------------------------------------------------
    hf_to_vllm_mapper = WEIGHTS_MAPPER

    def checkpoint_tensors(self, weights: Iterable[tuple[str, torch.Tensor]]):
        """The checkpoint's tensors under our names (as they are here; the built-in format reshapes its conv1d)."""
        return weights

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """vLLM's `AutoWeightsLoader` through `hf_to_vllm_mapper`, behind our checks: a tensor with no counterpart
        is an error naming the nearby parameters (vLLM's loader drops unknown biases silently), and every
        parameter must be loaded."""
        params = dict(self.named_parameters())
        mapped = self.hf_to_vllm_mapper.apply(self.checkpoint_tensors(weights))
        loaded = AutoWeightsLoader(self).load_weights(only_known(mapped, params))
        missing = set(params) - loaded
        if missing:
            raise ValueError(f"the checkpoint lacks {len(missing)} tensors, e.g. {min(missing)!r}")
        return loaded


class RecurrentGemmaForCausalLM(GriffinForCausalLM):
    """Transformers' built-in `recurrent_gemma` folders: their names and conv1d layout mapped to ours
    (`convert/builtin.py`), their config read with the reference's meaning (`griffin_config`)."""

    hf_to_vllm_mapper = WeightsMapper(orig_to_new_substr=dict(BUILTIN_RENAMES)) | WEIGHTS_MAPPER

    def checkpoint_tensors(self, weights: Iterable[tuple[str, torch.Tensor]]):
        for name, tensor in weights:
            yield name, conv_kernel_to_griffin(tensor) if name.endswith("conv_1d.weight") else tensor
