"""The facts every training script shares, in one place: the corpus format, the tokenizer's special ids and the
training shapes of the shipped models."""

DOCUMENT_SEPARATOR = "\f"  # between novels in one corpus file: a character the novels never use
BOS, EOS = 2, 1  # the SentencePiece model's ids (training/tokenizer.py trains it with these)
TRAIN_LENGTH = 512  # tokens per training row
WINDOW = 128  # local attention: a query sees itself and 128 previous tokens, a quarter of the training length
