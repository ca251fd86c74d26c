"""`--tokenizer tokenizer.model`: a SentencePiece model trained here, with Gemma's settings, converted to a fast
tokenizer that splits text exactly as SentencePiece does."""

import json
import random

import pytest
import sentencepiece as spm
from reference_helpers import CASES, assert_nothing_left, convert, save_torch_checkpoint

from hf_recurrentgemma import PRESETS
from hf_recurrentgemma.convert.errors import ConversionError
from hf_recurrentgemma.convert.tokenizer import convert_tokenizer

WORDS = ("the quick brown fox jumps over a lazy dog while griffin and hawk mix recurrence with local attention "
         "12345 67 tab\there café naïve straße 日本語 the model, the window; the cap!").split(" ")


def corpus(seed: int = 0, lines: int = 400) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 14))) for _ in range(lines)]


def train(prefix, gemma_ids: bool = True, vocab_size: int = 400) -> str:
    """A BPE SentencePiece model with byte fallback and Gemma's normalisation (no dummy prefix, whitespace kept)."""
    ids = (dict(pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>",
                unk_piece="<unk>") if gemma_ids else dict(unk_id=0, bos_id=1, eos_id=2, pad_id=-1))
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus()), model_prefix=str(prefix), vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, user_defined_symbols=["<start_of_turn>", "<end_of_turn>"], add_dummy_prefix=False,
        remove_extra_whitespaces=False, normalization_rule_name="identity", split_digits=True,
        allow_whitespace_only_pieces=True, character_coverage=1.0, minloglevel=2, **ids)
    return f"{prefix}.model"


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
    return train(tmp_path_factory.mktemp("sp") / "tokenizer")


TEXTS = corpus(seed=1, lines=60) + [
    "Hello  world\n\nnew line ✓ 🙂 unseen: ЖЖЖ", " leading space", "trailing space ", "\ttabbed", "x",
    "<start_of_turn>user\nWhat is Griffin?<end_of_turn>\n<start_of_turn>model\n", "",
]


def test_fast_tokenizer_encodes_like_sentencepiece(sp_model, tmp_path):
    from transformers import AutoTokenizer

    turn_ids = convert_tokenizer(sp_model, tmp_path, vocab_size=400)
    processor = spm.SentencePieceProcessor(model_file=sp_model)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert turn_ids == {"<start_of_turn>": 4, "<end_of_turn>": 5}
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id, tokenizer.unk_token_id) == (
        0, 1, 2, 3)
    assert len(tokenizer) == processor.get_piece_size() == 400
    for text in TEXTS:
        assert tokenizer.encode(text, add_special_tokens=False) == processor.encode(text), repr(text)
        assert tokenizer.encode(text) == [2] + processor.encode(text)  # <bos> first, no <eos>
        assert tokenizer.decode(tokenizer.encode(text), skip_special_tokens=False) == "<bos>" + text
    ids = tokenizer.encode("<start_of_turn>user\nhi<end_of_turn>")
    assert tokenizer.decode(ids, skip_special_tokens=True) == "user\nhi"  # the turn markers are special
    assert tokenizer.chat_template is None
    files = sorted(p.name for p in tmp_path.iterdir())
    assert {"tokenizer.json", "tokenizer_config.json", "tokenizer.model"} <= set(files)
    assert str(tmp_path.parent) not in (tmp_path / "tokenizer_config.json").read_text()  # no local paths


def test_it_preset_gets_chat_template_and_turn_stop_token(sp_model, tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    case = CASES[2]
    monkeypatch.setitem(PRESETS, "tiny-it", dict(
        vocab_size=400, hidden_size=case.width, intermediate_size=case.mlp_width, num_attention_heads=case.num_heads,
        lru_width=case.width, block_types=["recurrent"] * 3, embeddings_scale_by_sqrt_dim=False,
        attention_window_size=case.window, logits_soft_cap=0.0))
    from dataclasses import replace

    save_torch_checkpoint(replace(case, vocab_size=400), tmp_path / "src.pt")
    out = tmp_path / "out"
    convert(tmp_path / "src.pt", out, preset="tiny-it", tokenizer=sp_model)
    tokenizer = AutoTokenizer.from_pretrained(out)
    messages = [{"role": "user", "content": "What is Griffin?"}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == "<bos><start_of_turn>user\nWhat is Griffin?<end_of_turn>\n<start_of_turn>model\n"
    conversation = messages + [{"role": "assistant", "content": " Hawk's sibling. "},
                               {"role": "user", "content": "And?"}]
    assert tokenizer.apply_chat_template(conversation, tokenize=False) == (
        "<bos><start_of_turn>user\nWhat is Griffin?<end_of_turn>\n<start_of_turn>model\nHawk's sibling.<end_of_turn>\n"
        "<start_of_turn>user\nAnd?<end_of_turn>\n")
    with pytest.raises(Exception, match="system role"):
        tokenizer.apply_chat_template([{"role": "system", "content": "x"}] + messages, tokenize=False)
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [1, 5]  # <eos> and <end_of_turn>
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)["input_ids"]
    assert model.generate(ids, max_new_tokens=3, do_sample=False).shape[1] <= ids.shape[1] + 3


def test_rejects_non_sentencepiece_file(tmp_path):
    (tmp_path / "tokenizer.model").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ConversionError, match="not a SentencePiece model"):
        convert_tokenizer(tmp_path / "tokenizer.model", tmp_path)


def test_rejects_non_gemma_special_ids(tmp_path):
    model = train(tmp_path / "llama_style", gemma_ids=False)
    with pytest.raises(ConversionError, match="id 0 must be the Gemma token '<pad>', found '<unk>'"):
        convert_tokenizer(model, tmp_path)


def test_bad_tokenizer_fails_conversion_and_leaves_nothing(sp_model, tmp_path):
    case = CASES[2]  # vocabulary 97 < 400 tokens
    save_torch_checkpoint(case, tmp_path / "src.pt")
    out = tmp_path / "out"
    with pytest.raises(ConversionError, match="400 tokens but the model's vocabulary has 97"):
        convert(tmp_path / "src.pt", out, case, tokenizer=sp_model)
    assert_nothing_left(out)
