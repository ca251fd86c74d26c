"""Prints the max |logit| error of our model against the reference package, per architecture and mode (float32).

    python -m checks.parity_report

Modes: full forward; prefill (4 tokens) + token-by-token decode; a left-padded batch (each row against the row
alone); packed documents; packed documents decoded through the cache; and, as the noise floor, the reference's own
JAX-vs-torch difference on the same weights.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import torch
from recurrentgemma import conversion
from recurrentgemma.jax import griffin as jax_griffin

from tests.reference_helpers import (
    CASES,
    document_positions,
    max_error,
    prefill_then_decode,
    reference_and_ours,
    reference_logits,
)

SEQ = 19
STARTS = [(0, 5, 6, 14), (0, 3, 17)]


@torch.no_grad()
def report(case):
    ref, ours = reference_and_ours(case)
    tokens = torch.randint(0, case.vocab_size, (2, SEQ), generator=torch.Generator().manual_seed(1))
    arange = torch.arange(SEQ)[None].expand(2, -1)
    packed = torch.stack([document_positions(SEQ, starts) for starts in STARTS])
    expected, expected_packed = reference_logits(ref, tokens, arange), reference_logits(ref, tokens, packed)
    rows = {
        "full forward": max_error(ours(tokens).logits, expected),
        "prefill+decode": max_error(prefill_then_decode(ours, tokens, arange, 4), expected),
        "packed documents": max_error(ours(tokens, position_ids=packed).logits, expected_packed),
        "packed, decoded": max_error(prefill_then_decode(ours, tokens, packed, 7), expected_packed),
    }
    lengths = [SEQ, 7, 2]
    batch = torch.full((3, SEQ), 5, dtype=torch.long)
    mask = torch.zeros(3, SEQ, dtype=torch.long)
    for i, n in enumerate(lengths):
        batch[i, SEQ - n :], mask[i, SEQ - n :] = tokens[0, :n], 1
    padded = ours(batch, attention_mask=mask).logits
    rows["left-padded batch"] = max(
        max_error(padded[i : i + 1, SEQ - n :], expected[:1, :n]) for i, n in enumerate(lengths)
    )
    params = conversion.pytorch_state_dict_to_flax_params({f"params.{k}": v for k, v in ref.state_dict().items()})
    jax_logits, _ = jax_griffin.Griffin(case.reference_config()).apply(
        params, jnp.asarray(tokens.numpy()), jnp.asarray(arange.numpy()))
    rows["(reference JAX vs torch)"] = max_error(torch.from_numpy(np.array(jax_logits)), expected)
    return rows


def main():
    jax.config.update("jax_platforms", "cpu")
    print(f"{'case':<24}{'mode':<28}{'max |logit error|':>18}")
    for case in CASES:
        for mode, err in report(case).items():
            print(f"{case.name:<24}{mode:<28}{err:>18.2e}")


if __name__ == "__main__":
    main()
