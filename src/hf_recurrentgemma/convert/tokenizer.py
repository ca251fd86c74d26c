"""SentencePiece `tokenizer.model` (as released with the original checkpoints) -> Transformers fast tokenizer.

Uses Transformers' own SentencePiece conversion for Gemma (`GemmaTokenizer`, a `tokenizers` BPE with byte
fallback), with the Gemma special tokens <pad>=0, <eos>=1, <bos>=2, <unk>=3 and, when the vocabulary has them,
<start_of_turn>/<end_of_turn> marked special. Instruction-tuned models also get the Gemma chat template:
"<bos><start_of_turn>user\\n{message}<end_of_turn>\\n<start_of_turn>model\\n".
"""

import shutil
import tempfile
from pathlib import Path

from .errors import ConversionError

GEMMA_SPECIAL = {0: "<pad>", 1: "<eos>", 2: "<bos>", 3: "<unk>"}
TURN_TOKENS = ("<start_of_turn>", "<end_of_turn>")

# Gemma's turn format: user/model turns that alternate, starting with the user; no system role.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}"
    "{{ raise_exception('Gemma has no system role: put instructions in the first user turn') }}"
    "{%- endif -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('roles must alternate user/assistant/user/..., starting with user') }}"
    "{%- endif -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}"
)

# Checked after conversion: the fast tokenizer must split these exactly as SentencePiece does.
_PROBES = ("Hello world! 12345", "  two spaces,\ttab\nnew line", "naïve café 日本語 🙂",
           "<start_of_turn>user\nhi<end_of_turn>\n")


def _load_sentencepiece(path: Path):
    try:
        import sentencepiece as spm
    except ImportError:
        raise ConversionError("converting tokenizer.model needs sentencepiece: "
                              "pip install -e '.[tokenizer]' in a clone of hf-recurrentgemma") from None
    if not path.is_file():
        raise ConversionError(f"{path}: no such tokenizer file")
    processor = spm.SentencePieceProcessor()
    try:
        processor.Load(str(path))
    except (OSError, RuntimeError) as err:
        raise ConversionError(f"{path}: not a SentencePiece model ({str(err).splitlines()[0]})") from None
    return processor


def convert_tokenizer(model_path: str | Path, out_dir: Path, vocab_size: int | None = None,
                      chat_template: bool = False) -> dict[str, int]:
    """Writes tokenizer.json, tokenizer_config.json (+ chat template) and a copy of tokenizer.model to `out_dir`.

    Args:
        model_path: the SentencePiece model file.
        out_dir: an existing folder.
        vocab_size: the model's vocabulary size; a larger tokenizer is an error.
        chat_template: add the Gemma chat template (instruction-tuned models).

    Returns:
        {token: id} of the turn tokens found (to add <end_of_turn> to the generation stop tokens).
    """
    model_path = Path(model_path)
    sp = _load_sentencepiece(model_path)
    for token_id, piece in GEMMA_SPECIAL.items():
        if sp.GetPieceSize() <= token_id or sp.IdToPiece(token_id) != piece:
            found = sp.IdToPiece(token_id) if sp.GetPieceSize() > token_id else "nothing"
            raise ConversionError(f"{model_path}: id {token_id} must be the Gemma token {piece!r}, found {found!r}")
    if vocab_size is not None and sp.GetPieceSize() > vocab_size:
        raise ConversionError(f"{model_path}: {sp.GetPieceSize()} tokens but the model's vocabulary has {vocab_size}")
    turn_ids = {t: sp.PieceToId(t) for t in TURN_TOKENS if sp.PieceToId(t) != sp.unk_id()}
    if chat_template and len(turn_ids) != len(TURN_TOKENS):
        raise ConversionError(f"{model_path}: the chat template needs {' and '.join(TURN_TOKENS)} in the vocabulary")

    from tokenizers import AddedToken
    from transformers import GemmaTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        # from_pretrained is what runs Transformers' SentencePiece -> tokenizers conversion for a tokenizer.model.
        shutil.copyfile(model_path, Path(tmp) / "tokenizer.model")
        has_mask = sp.PieceToId("<mask>") != sp.unk_id()
        tokenizer = GemmaTokenizer.from_pretrained(tmp, add_bos_token=True, add_eos_token=False,
                                                   **({} if has_mask else {"mask_token": None}))
    if turn_ids:
        tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in turn_ids], special_tokens=True)
    if len(tokenizer) != sp.GetPieceSize():
        raise ConversionError(f"{model_path}: the fast tokenizer has {len(tokenizer)} tokens, "
                              f"SentencePiece {sp.GetPieceSize()}")
    for text in _PROBES:
        expected, got = sp.EncodeAsIds(text), tokenizer.encode(text, add_special_tokens=False)
        if expected != got:
            raise ConversionError(f"{model_path}: the fast tokenizer splits {text!r} as {got}, SentencePiece as "
                                  f"{expected}; only Gemma-style SentencePiece models are supported")
    if chat_template:
        tokenizer.chat_template = GEMMA_CHAT_TEMPLATE
    for key in ("vocab_file", "is_local", "local_files_only", "name_or_path"):
        tokenizer.init_kwargs.pop(key, None)  # the temporary path must not end up in tokenizer_config.json
    tokenizer.save_pretrained(out_dir)
    shutil.copyfile(model_path, Path(out_dir) / "tokenizer.model")  # for the reference package and SentencePiece
    return turn_ids


__all__ = ["convert_tokenizer", "GEMMA_CHAT_TEMPLATE"]
