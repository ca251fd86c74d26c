"""The three models of the small-scale comparison: Griffin, Hawk and a Transformer baseline, of equal width, depth
and (within 5%) parameter count, as in the Griffin paper's scaling comparisons (arXiv 2402.19427, section 3).

- Griffin: our `GriffinForCausalLM`, RecurrentGemma's block pattern (recurrent, recurrent, local attention, ...).
- Hawk: the same class with every block recurrent.
- Transformer: Transformers' `GemmaForCausalLM` (global causal attention, RoPE, gated GeLU MLP, one key/value head
  like RecurrentGemma's attention). Its MLP is a little wider so that its parameter count matches: an attention
  block has fewer parameters than a recurrent one at equal width.

Besides them, `hawk-draft`: the draft model of speculative decoding for the shipped Griffin (docs/speculative.md), a
Hawk of width 128 and two recurrent blocks (939,136 parameters), trained on the same corpus and tokenizer. Its
cost at batch 1 is almost all per-operation overhead, so fewer blocks make it cheaper and width barely matters;
two recurrent blocks decode in about 0.28x the shipped model's time per token on this CPU. Hawk rather than a
three-block Griffin because at this depth the attention block would be a third of the draft's cost, and the text it
would copy from is mostly found by prompt lookup anyway.
"""

from transformers import GemmaConfig, GemmaForCausalLM

from hf_recurrentgemma import GriffinConfig, GriffinForCausalLM
from hf_recurrentgemma.griffin.configuration_griffin import ATTENTION, RECURRENT, griffin_block_pattern

ARCHS = ("griffin", "hawk", "transformer", "hawk-draft")
WIDTH, DEPTH, HEADS, MLP_EXPANSION = 256, 6, 4, 3
from training.constants import BOS, EOS, TRAIN_LENGTH, WINDOW
TRANSFORMER_EXTRA_MLP = 40  # widens the Transformer's MLP to match Griffin's parameter count
DRAFT_WIDTH, DRAFT_DEPTH = 128, 2


def griffin_config(vocab_size: int, block_types: list[str], width: int = WIDTH) -> GriffinConfig:
    return GriffinConfig(
        vocab_size=vocab_size, hidden_size=width, intermediate_size=MLP_EXPANSION * width, num_attention_heads=HEADS,
        lru_width=width, block_types=block_types, attention_window_size=WINDOW, embeddings_scale_by_sqrt_dim=True,
        logits_soft_cap=30.0,
    )


def build_model(arch: str, vocab_size: int):
    """A freshly initialised model of `arch` (one of ARCHS)."""
    if arch == "griffin":
        return GriffinForCausalLM(griffin_config(vocab_size, griffin_block_pattern(DEPTH)))
    if arch == "hawk":
        return GriffinForCausalLM(griffin_config(vocab_size, [RECURRENT] * DEPTH))
    if arch == "hawk-draft":
        return GriffinForCausalLM(griffin_config(vocab_size, [RECURRENT] * DRAFT_DEPTH, width=DRAFT_WIDTH))
    if arch == "transformer":
        config = GemmaConfig(
            vocab_size=vocab_size, hidden_size=WIDTH, intermediate_size=MLP_EXPANSION * WIDTH + TRANSFORMER_EXTRA_MLP,
            num_attention_heads=HEADS, num_key_value_heads=1, head_dim=WIDTH // HEADS, num_hidden_layers=DEPTH,
            max_position_embeddings=65_536, rope_theta=10_000.0, tie_word_embeddings=True,
            hidden_activation="gelu_pytorch_tanh", pad_token_id=0, eos_token_id=EOS, bos_token_id=BOS,
            attn_implementation="sdpa",
        )
        return GemmaForCausalLM(config)
    raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")


def parameter_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["ARCHS", "ATTENTION", "TRAIN_LENGTH", "WINDOW", "build_model", "parameter_count"]
