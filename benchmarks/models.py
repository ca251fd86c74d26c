"""Models the benchmarks compare, built on the same weights: ours, Transformers' built-in `recurrent_gemma`
(window W + 1, so it computes our function), the reference torch code, and a Gemma Transformer of equal shape.

Shape letters: B batch, T time, D width, L RG-LRU width, W attention window, V vocabulary.
"""

import copy
import dataclasses

import torch
from transformers import GemmaConfig, GemmaForCausalLM, RecurrentGemmaConfig, RecurrentGemmaForCausalLM
from transformers.initialization import no_init_weights

from hf_recurrentgemma import PRESETS, GriffinConfig, GriffinForCausalLM
from hf_recurrentgemma.griffin.configuration_griffin import ATTENTION, griffin_block_pattern
from hf_recurrentgemma.convert import griffin_from_reference
from hf_recurrentgemma.convert.builtin import builtin_dict_from_griffin, ours_to_builtin

try:  # the reference package comes with the `test` extra; without it the reference column is left out
    from recurrentgemma import common as ref_common
    from recurrentgemma.torch import griffin as ref_griffin
except ImportError:  # pragma: no cover - depends on the environment
    ref_common = ref_griffin = None


@dataclasses.dataclass
class Trio:
    """One set of weights in three implementations (`reference` is None without the `recurrentgemma` package)."""

    ours: GriffinForCausalLM
    builtin: RecurrentGemmaForCausalLM
    reference: torch.nn.Module | None

    def to(self, dtype: torch.dtype, device) -> "Trio":
        """A copy in `dtype` on `device` (the fp32 originals stay as they are)."""
        move = lambda m: None if m is None else copy.deepcopy(m).to(device=device, dtype=dtype).eval()  # noqa: E731
        return Trio(move(self.ours), move(self.builtin), move(self.reference))


def small_config(width: int, layers: int, window: int, vocab: int) -> GriffinConfig:
    """A Griffin of the issue's small shape: heads of 64, MLP 3·D, pattern (recurrent, recurrent, attention)."""
    return GriffinConfig(vocab_size=vocab, hidden_size=width, intermediate_size=3 * width,
                         num_attention_heads=max(width // 64, 1), block_types=griffin_block_pattern(layers),
                         attention_window_size=window, logits_soft_cap=30.0)


def big_config(layers: int, shape: str = "2b") -> GriffinConfig:
    """The recurrentgemma-2b shape with `layers` blocks in Griffin's pattern, or with `shape="tiny"` a model with the
    same structure that runs in milliseconds (the benchmarks' smoke tests)."""
    if shape == "tiny":
        return GriffinConfig(vocab_size=512, hidden_size=64, intermediate_size=192, num_attention_heads=2,
                             block_types=griffin_block_pattern(layers), attention_window_size=16,
                             logits_soft_cap=30.0)
    preset = dict(PRESETS["recurrentgemma-2b"])
    preset["block_types"] = griffin_block_pattern(layers)
    return GriffinConfig(**preset)


def build_trio(config: GriffinConfig, seed: int = 0) -> Trio:
    """Reference-initialised fp32 weights (realistic RG-LRU gates) loaded into ours, the built-in and the
    reference; without the reference package, our own initialisation."""
    torch.manual_seed(seed)
    reference = None
    if ref_griffin is not None:
        kinds = {"recurrent": ref_common.TemporalBlockType.RECURRENT,
                 "attention": ref_common.TemporalBlockType.ATTENTION}
        ref_config = ref_common.GriffinConfig(
            vocab_size=config.vocab_size, width=config.hidden_size, mlp_expanded_width=config.intermediate_size,
            num_heads=config.num_attention_heads, block_types=tuple(kinds[b] for b in config.block_types),
            embeddings_scale_by_sqrt_dim=config.embeddings_scale_by_sqrt_dim,
            attention_window_size=config.attention_window_size, logits_soft_cap=config.logits_soft_cap)
        reference = ref_griffin.Griffin(ref_config, gradient_checkpointing=False).eval()
        ours = griffin_from_reference(reference.state_dict(), config=config)
    else:
        ours = GriffinForCausalLM(config).eval()
    return Trio(ours, builtin_from_ours(ours), reference)


def builtin_from_ours(ours: GriffinForCausalLM) -> RecurrentGemmaForCausalLM:
    """Transformers' built-in model computing our function (window W + 1), sharing every tensor that the
    conversion leaves unchanged (no copy of the big matrices; the same conversion as `export_to_builtin`)."""
    config = RecurrentGemmaConfig.from_dict(builtin_dict_from_griffin(ours.config))
    config.dtype = next(ours.parameters()).dtype
    state = ours_to_builtin({k: v for k, v in ours.state_dict().items() if k != "lm_head.weight"}, ours.config)
    with no_init_weights():  # parameters are allocated but never written: load_state_dict replaces them
        builtin = RecurrentGemmaForCausalLM(config)
    builtin.load_state_dict(state, strict=False, assign=True)
    builtin.tie_weights()
    return builtin.to(next(ours.parameters()).device).eval()


def random_griffin(config: GriffinConfig, dtype: torch.dtype, device="cpu", seed: int = 0) -> GriffinForCausalLM:
    """A large Griffin with random weights, allocated once in `dtype` (no fp32 copy, no slow initialiser): each
    matrix N(0, 1/fan_in), norms and biases small, RG-LRU decay parameters in the trained range."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # allocate in `dtype` directly: a float32 copy of 2.7B weights would not fit twice
    try:
        with no_init_weights(), torch.device(device):
            model = GriffinForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.normal_(0.0, p.shape[-1] ** -0.5, generator=gen)
            elif name.endswith("a_param"):
                p.uniform_(0.5, 2.0, generator=gen)  # softplus(-8 · ...) decay close to, but below, one
            else:
                p.normal_(0.0, 0.02, generator=gen)
    model.tie_weights()
    return model.eval()


def gemma_like(config: GriffinConfig, dtype: torch.dtype = torch.float32, seed: int = 0) -> GemmaForCausalLM:
    """A Gemma Transformer of equal width, depth, heads (multi-query, like Griffin), MLP and vocabulary, with
    global attention and the default growing KV cache."""
    torch.manual_seed(seed)
    gemma = GemmaConfig(vocab_size=config.vocab_size, hidden_size=config.hidden_size,
                        intermediate_size=config.intermediate_size, num_hidden_layers=config.num_hidden_layers,
                        num_attention_heads=config.num_attention_heads, num_key_value_heads=1,
                        head_dim=config.head_dim, max_position_embeddings=1 << 20)
    return GemmaForCausalLM(gemma).to(dtype).eval()


def gemma_kv_bytes(model: GemmaForCausalLM, batch: int, length: int) -> int:
    """Bytes of Gemma's KV cache holding `length` tokens of `batch` rows (keys and values of every layer)."""
    c = model.config
    itemsize = next(model.parameters()).element_size()
    return 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * batch * length * itemsize


def parameter_counts(model: GriffinForCausalLM) -> dict[str, int]:
    """Total (tied head counted once), embedding, and non-embedding parameters."""
    total = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight.numel()
    return {"total": total, "embedding": embedding, "non_embedding": total - embedding}


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes a decode step reads: every parameter once (the tied embedding matrix is the LM head)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def prefill_flops(config: GriffinConfig, non_embedding: int, seq_len: int) -> float:
    """Model FLOPs of a forward over `seq_len` tokens with logits at every position: 2 per weight per token
    (non-embedding weights and the V × D head) plus attention's QKᵀ and AV over the keys each query sees
    (itself and at most W previous tokens)."""
    window = config.attention_window_size
    if seq_len <= window:
        pairs = seq_len * (seq_len + 1) // 2
    else:
        pairs = (window + 1) * seq_len - window * (window + 1) // 2
    attention_layers = sum(b == ATTENTION for b in config.block_types)
    dense = 2 * (non_embedding + config.vocab_size * config.hidden_size) * seq_len
    return float(dense + attention_layers * 4 * pairs * config.hidden_size)
