"""Configuration of Griffin / Hawk / RecurrentGemma (arXiv 2402.19427, 2404.07839).

Field meanings follow Google DeepMind's reference `recurrentgemma.common.GriffinConfig`, under Transformers'
usual names (`hidden_size` is the reference `width`, `intermediate_size` its `mlp_expanded_width`,
`num_attention_heads` its `num_heads`); the reference names work as aliases.

`attention_window_size=W` has the reference's meaning: a query attends to itself and the `W` previous tokens
(`W + 1` keys). Transformers' built-in `recurrent_gemma` lets a query see only `W - 1` previous tokens.

This file is shipped as Hub remote code by `save_pretrained`. It is a leaf: it imports nothing else of this package
(and no torch at import), so reading a config costs no kernel loading.
"""

import itertools
import math

from huggingface_hub.dataclasses import strict
from transformers.configuration_utils import PreTrainedConfig

# The RG-LRU scan backends a config may name; `ops_griffin.SCAN_BACKEND_REGISTRY` implements exactly these (it
# checks so at import). Declared here so the config stays a leaf: importing it loads no torch ops or kernels.
SCAN_BACKENDS = ("sequential", "cpu_kernel", "triton")
SCAN_BACKEND_NAMES = ("auto", *SCAN_BACKENDS)

RECURRENT = "recurrent"
ATTENTION = "attention"
BLOCK_TYPES = (RECURRENT, ATTENTION)
# Sanity bounds on a config (a file from the Hub may be hostile): 10x the largest published model (9B), and a window
# far beyond the published 2048 (the cache allocates W keys and values per attention layer and sequence).
MAX_PARAMETERS = 100_000_000_000
MAX_WINDOW = 1 << 20
MAX_LAYERS = 100_000


def griffin_block_pattern(num_layers: int) -> list[str]:
    """The Griffin layout: two recurrent blocks, then one local-attention block, repeated."""
    cycle = itertools.cycle((RECURRENT, RECURRENT, ATTENTION))
    return list(itertools.islice(cycle, num_layers))


# Hyperparameters of the published models (reference `common.Preset`), vocabulary size included.
PRESETS: dict[str, dict] = {
    "recurrentgemma-2b": dict(
        vocab_size=256_000, hidden_size=2560, intermediate_size=3 * 2560, num_attention_heads=10, lru_width=2560,
        block_types=griffin_block_pattern(26), embeddings_scale_by_sqrt_dim=True, attention_window_size=2048,
        logits_soft_cap=30.0,
    ),
    "recurrentgemma-9b": dict(
        vocab_size=256_000, hidden_size=4096, intermediate_size=3 * 4096, num_attention_heads=16, lru_width=4096,
        block_types=griffin_block_pattern(38), embeddings_scale_by_sqrt_dim=True, attention_window_size=2048,
        logits_soft_cap=30.0,
    ),
    "griffin-7b": dict(
        vocab_size=256_000, hidden_size=4096, intermediate_size=3 * 4096, num_attention_heads=32, lru_width=5632,
        block_types=griffin_block_pattern(32), embeddings_scale_by_sqrt_dim=False, attention_window_size=1024,
        logits_soft_cap=0.0,
    ),
    "hawk-7b": dict(
        vocab_size=256_000, hidden_size=4096, intermediate_size=3 * 4096, num_attention_heads=32, lru_width=5632,
        block_types=[RECURRENT] * 32, embeddings_scale_by_sqrt_dim=False, attention_window_size=1024,
        logits_soft_cap=0.0,
    ),
    # The small Griffin this package ships (trained on Jane Austen's novels, training/README.md): the main job's model.
    "griffin-austen-6m": dict(
        vocab_size=4096, hidden_size=256, intermediate_size=3 * 256, num_attention_heads=4, lru_width=256,
        block_types=griffin_block_pattern(6), embeddings_scale_by_sqrt_dim=True, attention_window_size=128,
        logits_soft_cap=30.0,
    ),
    # Its draft for speculative decoding: a Hawk (every block recurrent) on the same tokenizer (docs/speculative.md).
    "griffin-austen-draft-1m": dict(
        vocab_size=4096, hidden_size=128, intermediate_size=3 * 128, num_attention_heads=4, lru_width=128,
        block_types=[RECURRENT] * 2, embeddings_scale_by_sqrt_dim=True, attention_window_size=128,
        logits_soft_cap=30.0,
    ),
}
# Instruction-tuned releases share the architecture of their base model.
PRESETS["recurrentgemma-2b-it"] = PRESETS["recurrentgemma-2b"]
PRESETS["recurrentgemma-9b-it"] = PRESETS["recurrentgemma-9b"]


@strict
class GriffinConfig(PreTrainedConfig):
    r"""Configuration of a Griffin (or Hawk, when every block is recurrent) language model.

    Args:
        vocab_size: Number of tokens in the vocabulary.
        hidden_size: Model width `D` (reference: `width`).
        intermediate_size: Hidden width of the gated MLP (reference: `mlp_expanded_width`).
        num_attention_heads: Query heads of local attention, and number of diagonal blocks of the RG-LRU gates
            (reference: `num_heads`). Must divide `hidden_size` and `lru_width`.
        lru_width: Width `L` of the recurrent branch; `None` means `hidden_size`.
        block_types: One entry per layer, `"recurrent"` or `"attention"`.
        embeddings_scale_by_sqrt_dim: Multiply embeddings by `sqrt(hidden_size)` rounded to bfloat16, as trained.
        attention_window_size: `W`; a query sees itself and the `W` previous tokens.
        logits_soft_cap: `c * tanh(logits / c)`; 0 turns it off.
        conv1d_width: Temporal width `K` of the causal depthwise convolution of recurrent blocks.
        num_key_value_heads: Key/value heads of local attention; Griffin uses multi-query attention (1).
        partial_rotary_factor: Fraction of each head's dimensions that RoPE rotates (Griffin: half).
        rope_theta: RoPE maximum wavelength.
        rms_norm_eps: Epsilon of the RMS norms (whose scale is applied as `1 + weight`).
        w_init_variance_scale: Variance scale of the RG-LRU gate and conv1d initialisation.
        tie_word_embeddings: Decode with the input embedding matrix (true for every released model).
        scan_backend: RG-LRU scan implementation: `"auto"` (the fastest available for the device and dtype),
            `"sequential"` (the reference loop), `"cpu_kernel"` (compiled C/OpenMP, CPU tensors) or `"triton"`
            (a Triton kernel, CUDA tensors; needs the `gpu` extra).
            Every backend computes the same function; this only changes speed.

    Example:
        >>> from hf_recurrentgemma import GriffinConfig
        >>> config = GriffinConfig.from_preset("recurrentgemma-2b")
        >>> config.num_hidden_layers, config.width, config.attention_window_size
        (26, 2560, 2048)
    """

    model_type = "griffin"
    keys_to_ignore_at_inference = ["cache", "past_key_values"]  # the output field's name from 5.24 and before
    # Tensor parallelism (`from_pretrained(..., tp_plan="auto")` under torchrun; docs/scaling.md). Sharded: the MLP,
    # the query/output projections of attention (by head; tp must divide num_attention_heads), and the recurrent
    # block's input projections (outputs gathered) and output projection. Replicated: the single key/value head,
    # and the conv1d and RG-LRU, whose state the cache holds at full width `lru_width` on every rank.
    base_model_tp_plan = {
        "layers.*.temporal_block.q_proj": "colwise",
        "layers.*.temporal_block.o_proj": "rowwise",
        "layers.*.temporal_block.linear_x": "colwise_rep",
        "layers.*.temporal_block.linear_y": "colwise_rep",
        "layers.*.temporal_block.linear_out": "rowwise_split_input",
        "layers.*.mlp.gate_proj": "colwise",
        "layers.*.mlp.up_proj": "colwise",
        "layers.*.mlp.down_proj": "rowwise",
    }
    # Transformers' own FSDP2 (`DistributedConfig(fsdp_size=N)`): one shard group per decoder layer, the final norm
    # kept gathered after forward (the default plan names it `norm`); the tied embedding and head share the root
    # group. docs/scaling.md: a Transformers 5.24 bug with shards of unequal size on this path.
    base_model_fsdp_plan = {"embed_tokens": "free_full_weight", "layers.*": "free_full_weight",
                            "final_norm": "keep_full_weight"}
    attribute_map = {"width": "hidden_size", "mlp_expanded_width": "intermediate_size", "num_heads": "num_attention_heads"}

    vocab_size: int = 256_000
    hidden_size: int = 2560
    intermediate_size: int = 3 * 2560
    num_attention_heads: int = 10
    lru_width: int | None = None
    block_types: list[str] | tuple[str, ...] | None = None
    num_hidden_layers: int | None = None
    embeddings_scale_by_sqrt_dim: bool = True
    attention_window_size: int = 2048
    logits_soft_cap: float = 30.0
    conv1d_width: int = 4
    num_key_value_heads: int = 1
    partial_rotary_factor: float = 0.5
    rope_theta: float = 10_000.0
    rms_norm_eps: float = 1e-6
    w_init_variance_scale: float = 0.01
    tie_word_embeddings: bool = True
    scan_backend: str = "auto"
    use_cache: bool = True
    pad_token_id: int | None = 0
    eos_token_id: int | list[int] | None = 1
    bos_token_id: int | None = 2

    def __post_init__(self, **kwargs):
        if self.block_types is None:
            # Checked before building the list: a config.json asking for 1e12 layers must not fill memory first.
            if isinstance(self.num_hidden_layers, int) and not 0 < self.num_hidden_layers <= MAX_LAYERS:
                raise ValueError(f"num_hidden_layers must be in [1, {MAX_LAYERS}], got {self.num_hidden_layers}")
            self.block_types = griffin_block_pattern(self.num_hidden_layers or 26)
        self.block_types = list(self.block_types)
        if self.num_hidden_layers is None:
            self.num_hidden_layers = len(self.block_types)
        if self.lru_width is None:
            self.lru_width = self.hidden_size
        # PreTrainedConfig looks a dtype name up on the torch module, which for a stray string in a config.json
        # raises an AttributeError that names no field.
        dtype = getattr(self, "dtype", None)
        if isinstance(dtype, str) and dtype != "auto":
            import torch

            if not isinstance(getattr(torch, dtype, None), torch.dtype):
                raise ValueError(f"dtype must name a torch dtype (e.g. 'bfloat16'), got {dtype!r}")
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Part of `@strict` validation: each error names the offending field. Runs at construction and on every
        config.json read, so a bad or hostile file fails here, before any weight is allocated."""
        if isinstance(self.block_types, str) or not self.block_types:
            raise ValueError(f"block_types must be a non-empty list of {BLOCK_TYPES}, got {self.block_types!r}")
        bad = [t for t in self.block_types if t not in BLOCK_TYPES]
        if bad:
            raise ValueError(f"block_types: entries must be one of {BLOCK_TYPES}, got {bad[0]!r}")
        if self.num_hidden_layers != len(self.block_types):
            raise ValueError(
                f"num_hidden_layers={self.num_hidden_layers} but block_types has {len(self.block_types)} entries; "
                "give one block type per layer"
            )
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_attention_heads", "lru_width",
                     "attention_window_size", "conv1d_width"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by num_attention_heads={self.num_attention_heads}"
            )
        if self.lru_width % self.num_attention_heads:
            raise ValueError(f"lru_width={self.lru_width} is not divisible by num_attention_heads={self.num_attention_heads}")
        if self.num_key_value_heads != 1:
            raise ValueError(f"num_key_value_heads must be 1 (Griffin uses multi-query attention), got {self.num_key_value_heads}")
        for name in ("logits_soft_cap", "rope_theta", "rms_norm_eps", "partial_rotary_factor", "w_init_variance_scale"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)}")
        if not 0 < self.partial_rotary_factor <= 1:
            raise ValueError(f"partial_rotary_factor must be in (0, 1], got {self.partial_rotary_factor}")
        rope_dim = self.head_dim * self.partial_rotary_factor
        if rope_dim != int(rope_dim) or int(rope_dim) % 2:  # RoPE rotates pairs of dimensions
            raise ValueError(f"head_dim={self.head_dim} times partial_rotary_factor={self.partial_rotary_factor} must "
                             f"be an even number of rotated dimensions, got {rope_dim:g}")
        if self.rope_theta <= 0:
            raise ValueError(f"rope_theta must be > 0, got {self.rope_theta}")
        # A hostile or mistyped config.json must not make the model ask for terabytes: refuse what no machine holds.
        if self.num_parameters_estimate() > MAX_PARAMETERS:
            raise ValueError(
                f"the sizes (vocab_size={self.vocab_size}, hidden_size={self.hidden_size}, intermediate_size="
                f"{self.intermediate_size}, lru_width={self.lru_width}, num_hidden_layers={self.num_hidden_layers}) "
                f"make {self.num_parameters_estimate():.3g} parameters, more than the {MAX_PARAMETERS:.0e} allowed"
            )
        if self.attention_window_size > MAX_WINDOW:
            raise ValueError(f"attention_window_size must be <= {MAX_WINDOW} (the cache holds W keys per layer), "
                             f"got {self.attention_window_size}")
        if self.logits_soft_cap < 0:
            raise ValueError(f"logits_soft_cap must be >= 0 (0 turns it off), got {self.logits_soft_cap}")
        if self.scan_backend not in SCAN_BACKEND_NAMES:
            raise ValueError(f"scan_backend must be one of {SCAN_BACKEND_NAMES}, got {self.scan_backend!r}")
        if self.rms_norm_eps <= 0:
            raise ValueError(f"rms_norm_eps must be > 0, got {self.rms_norm_eps}")

    def num_parameters_estimate(self) -> int:
        """Parameters of a model with this config, to within the biases and norms (checked before allocation)."""
        d, m, lru, layers = self.hidden_size, self.intermediate_size, self.lru_width, self.num_hidden_layers
        recurrent = 3 * d * lru + 2 * lru * lru // self.num_attention_heads + self.conv1d_width * lru
        attention = 2 * d * d + 2 * d * self.head_dim
        temporal = sum(attention if t == ATTENTION else recurrent for t in self.block_types)
        return self.vocab_size * d * (1 if self.tie_word_embeddings else 2) + layers * 3 * d * m + temporal

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def embedding_scale(self) -> float:
        """`sqrt(hidden_size)` rounded to bfloat16 (the reference multiplies by a bfloat16 scalar), or 1."""
        if not self.embeddings_scale_by_sqrt_dim:
            return 1.0
        return _round_to_bfloat16(math.sqrt(self.hidden_size))

    @property
    def final_w_init_variance_scale(self) -> float:
        return 2.0 / self.num_hidden_layers

    # Translators of other formats' config dicts to ours, by model_type. The installed package registers one for
    # Transformers' built-in recurrent_gemma (hf_recurrentgemma/convert/builtin.py); in Hub remote code it is empty.
    config_translators = {}

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs):
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        translate = GriffinConfig.config_translators.get(config_dict.get("model_type"))
        return (translate(config_dict) if translate else config_dict), kwargs

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "GriffinConfig":
        """A config of a published model (`recurrentgemma-2b[-it]`, `recurrentgemma-9b[-it]`, `griffin-7b`,
        `hawk-7b`), with any field overridden by keyword."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; known presets: {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


def _round_to_bfloat16(value: float) -> float:
    """Rounds a float to the nearest bfloat16 (round-to-nearest-even on the top 16 bits of a float32)."""
    import struct

    bits = struct.unpack("<I", struct.pack("<f", value))[0]
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return struct.unpack("<f", struct.pack("<I", bits))[0]


__all__ = ["GriffinConfig", "PRESETS", "griffin_block_pattern", "RECURRENT", "ATTENTION"]
