"""Speculative decoding for the commands and the demo: the assistant (draft) model, how `generate()` hands it its
settings, and the acceptance and speed-up figures `generate --stats` and the demo print (docs/speculative.md).

Why `hand_draft_one_config` exists: Transformers' `AssistedCandidateGenerator` (5.19 to 5.24 alike) calls the
draft's `generate()` with a copy of the target's `GenerationConfig` *and* the round's `min_new_tokens` /
`max_new_tokens` (and `use_cache`) as separate keyword arguments, *and* the logits processors the target already
built from that same config. The draft's `generate()` then warns, in the middle of streamed text, that a config
was passed together with generation arguments, and that a `RepetitionPenaltyLogitsProcessor` (or a sampling
warper) was both passed and made from the config. Each round's settings belong in one `GenerationConfig`: the
hook puts the round's lengths and `use_cache` into a per-round copy of the config and passes only the processors
the config cannot re-create (none, for the commands). The draft's tokens are what they were; the output stays
the target's (greedy: plain greedy's tokens; sampling: the target's distribution), tested in tests/commands.
"""

import copy

# Tokens the draft proposes per round when --num-assistant-tokens is not given (Transformers' own default is 20),
# for the commands and the demo alike. Measured with benchmarks/bench_draft_length.py (docs/speculative.md, "Draft
# length"): every k from 1 to 6 was within noise of the others on this CPU, 8 and longer clearly slower.
DRAFT_TOKENS = 4


class AcceptanceCounter:
    """Counts the draft tokens that assisted or prompt-lookup decoding proposed and how many the model accepted
    (`generate()` reports neither), by wrapping the candidate generator that `generate()` builds.

    >>> counter = AcceptanceCounter()
    >>> with counter.watching(model):  # doctest: +SKIP
    ...     model.generate(ids, prompt_lookup_num_tokens=10)
    >>> counter.acceptance_rate  # doctest: +SKIP
    """

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.proposed = self.accepted = self.rounds = 0
        self._last_proposed = 0

    @property
    def acceptance_rate(self) -> float | None:
        """Accepted / proposed tokens; None while nothing was proposed."""
        return self.accepted / self.proposed if self.proposed else None

    def as_dict(self) -> dict:
        return {"acceptance_rate": self.acceptance_rate, "drafted": self.proposed, "accepted": self.accepted,
                "rounds": self.rounds}

    def summary(self) -> str:
        """`acceptance: A of P proposed tokens (R%) in N rounds`."""
        rate = "" if self.acceptance_rate is None else f" ({self.acceptance_rate:.0%})"
        return f"acceptance: {self.accepted} of {self.proposed} proposed tokens{rate} in {self.rounds} rounds"

    def wrap(self, generator):
        """Counts what `generator` (a Transformers `CandidateGenerator`) proposes and what is kept; returns it."""
        get_candidates, update = generator.get_candidates, generator.update_candidate_strategy

        def counted_get_candidates(input_ids, *args, **kwargs):
            candidates, logits = get_candidates(input_ids, *args, **kwargs)
            self._last_proposed = candidates.shape[1] - input_ids.shape[1]
            return candidates, logits

        def counted_update(input_ids, scores, num_matches):
            self.proposed += self._last_proposed
            self.accepted += int(num_matches)
            self.rounds += 1
            return update(input_ids, scores, num_matches)

        generator.get_candidates, generator.update_candidate_strategy = counted_get_candidates, counted_update
        return generator

    def watching(self, model):
        """A context in which every candidate generator `model.generate()` builds is counted (and hands its draft
        one config, `hand_draft_one_config`); the model's previous hook is restored after."""
        import contextlib

        @contextlib.contextmanager
        def scope():
            before = model.__dict__.get("_get_candidate_generator")
            build = model._get_candidate_generator  # an instance's own generator (a benchmark's oracle) included
            model._get_candidate_generator = lambda *args, **kwargs: self.wrap(hand_draft_one_config(
                build(*args, **kwargs)))
            try:
                yield self
            finally:
                if before is None:
                    model.__dict__.pop("_get_candidate_generator", None)
                else:
                    model._get_candidate_generator = before

        return scope()


def hand_draft_one_config(generator):
    """Makes an `AssistedCandidateGenerator` call its draft with one `GenerationConfig` per round (the module
    docstring says why); other candidate generators (prompt lookup, which calls no draft) are returned as they are.
    """
    from transformers.generation.candidate_generator import AssistedCandidateGenerator
    from transformers.generation.logits_process import LogitsProcessor

    if type(generator) is not AssistedCandidateGenerator:
        return generator
    config = generator.generation_config
    if "use_cache" in generator.assistant_kwargs:
        config.use_cache = generator.assistant_kwargs.pop("use_cache")
    # Processors of Transformers' own kinds were made from the config the draft gets; the draft makes them again.
    builtin_module = LogitsProcessor.__module__
    own = [p for p in generator.logits_processor if type(p).__module__ != builtin_module]

    def prepare_generation_args(input_ids, min_new_tokens: int, max_new_tokens: int) -> dict:
        round_config = copy.copy(generator.generation_config)  # read each round: the confidence threshold adapts
        round_config.min_new_tokens, round_config.max_new_tokens = min_new_tokens, max_new_tokens
        return {generator.input_ids_key: input_ids, "generation_config": round_config, "logits_processor": own}

    generator._prepare_generation_args = prepare_generation_args
    return generator


def install_draft_hook(model, counter: AcceptanceCounter | None = None) -> AcceptanceCounter:
    """From now on, every candidate generator `model.generate()` builds hands its draft one config and is counted
    by the returned counter (`counter`, or a new one)."""
    counter = counter if counter is not None else AcceptanceCounter()
    build = type(model)._get_candidate_generator.__get__(model)
    model._get_candidate_generator = lambda *args, **kwargs: counter.wrap(hand_draft_one_config(build(*args, **kwargs)))
    return counter


def prepare_assistant(draft, model, num_tokens: int | None = None, source: str = "--assistant"):
    """Checks that `draft` can assist `model` (same vocabulary) and sets its draft length (`num_tokens`, default
    `DRAFT_TOKENS`, constant every round). Transformers reads the draft length from the *assistant's* generation
    config, not from generate()'s arguments."""
    if draft.config.vocab_size != model.config.vocab_size:
        raise ValueError(f"{source}: the assistant's vocabulary has {draft.config.vocab_size} tokens, the model's "
                         f"{model.config.vocab_size}; an assistant must share the model's tokenizer")
    draft.generation_config.num_assistant_tokens = DRAFT_TOKENS if num_tokens is None else num_tokens
    draft.generation_config.num_assistant_tokens_schedule = "constant"
    return draft


def speedup_summary(tokens: int, seconds: float, plain_tokens: int, plain_seconds: float, same: str) -> str:
    """The line comparing a speculative run with a plain run of the same prompt."""
    rate, plain_rate = tokens / seconds, plain_tokens / plain_seconds
    return (f"plain decoding for comparison: {plain_tokens} tokens in {plain_seconds:.2f} s ({plain_rate:.0f} "
            f"tokens/s, {same}); speculative {rate:.0f} tokens/s, speed-up {rate / plain_rate:.2f}x")


def sameness(greedy: bool, text: str, plain_text: str) -> str:
    """How the plain run's text relates to the speculative one's: equal under greedy decoding, a different sample
    of the same distribution when sampling."""
    if not greedy:
        return "a different sample from the same distribution"
    return "the same text" if plain_text == text else "a different text"


__all__ = ["AcceptanceCounter", "DRAFT_TOKENS", "hand_draft_one_config", "install_draft_hook", "prepare_assistant",
           "sameness", "speedup_summary"]
