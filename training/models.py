"""The three models of the small-scale comparison: Griffin, Hawk and a Transformer baseline, of equal width, depth
and (within 5%) parameter count, as in the Griffin paper's scaling comparisons (arXiv 2402.19427, section 3).

- Griffin: our `GriffinForCausalLM`, RecurrentGemma's block pattern (recurrent, recurrent, local attention, ...).
- Hawk: the same class with every block recurrent.
- Transformer: Transformers' `GemmaForCausalLM` (global causal attention, RoPE, gated GeLU MLP, one key/value head
  like RecurrentGemma's attention). Its MLP is a little wider so that its parameter count matches: an attention
  block has fewer parameters than a recurrent one at equal width.
"""

from transformers import GemmaConfig, GemmaForCausalLM

from hf_recurrentgemma import GriffinConfig, GriffinForCausalLM
from hf_recurrentgemma.configuration_griffin import ATTENTION, RECURRENT, griffin_block_pattern

ARCHS = ("griffin", "hawk", "transformer")
WIDTH, DEPTH, HEADS, MLP_EXPANSION = 256, 6, 4, 3
TRAIN_LENGTH = 512
WINDOW = 128  # local attention: a query sees itself and 128 previous tokens, a quarter of the training length
TRANSFORMER_EXTRA_MLP = 40  # widens the Transformer's MLP to match Griffin's parameter count


def griffin_config(vocab_size: int, block_types: list[str]) -> GriffinConfig:
    return GriffinConfig(
        vocab_size=vocab_size, hidden_size=WIDTH, intermediate_size=MLP_EXPANSION * WIDTH, num_attention_heads=HEADS,
        lru_width=WIDTH, block_types=block_types, attention_window_size=WINDOW, embeddings_scale_by_sqrt_dim=True,
        logits_soft_cap=30.0,
    )


def build_model(arch: str, vocab_size: int):
    """A freshly initialised model of `arch` (one of ARCHS)."""
    if arch == "griffin":
        return GriffinForCausalLM(griffin_config(vocab_size, griffin_block_pattern(DEPTH)))
    if arch == "hawk":
        return GriffinForCausalLM(griffin_config(vocab_size, [RECURRENT] * DEPTH))
    if arch == "transformer":
        config = GemmaConfig(
            vocab_size=vocab_size, hidden_size=WIDTH, intermediate_size=MLP_EXPANSION * WIDTH + TRANSFORMER_EXTRA_MLP,
            num_attention_heads=HEADS, num_key_value_heads=1, head_dim=WIDTH // HEADS, num_hidden_layers=DEPTH,
            max_position_embeddings=65_536, rope_theta=10_000.0, tie_word_embeddings=True,
            hidden_activation="gelu_pytorch_tanh", pad_token_id=0, eos_token_id=1, bos_token_id=2,
            attn_implementation="sdpa",
        )
        return GemmaForCausalLM(config)
    raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")


def parameter_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["ARCHS", "ATTENTION", "TRAIN_LENGTH", "WINDOW", "build_model", "parameter_count"]
