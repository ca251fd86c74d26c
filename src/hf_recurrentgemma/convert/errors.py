"""The errors of conversion: one line, naming the file, key or shape at fault (the CLI prints them as `error: ...`)."""


class ConversionError(ValueError):
    """A one-line, user-facing conversion failure naming the file, key or shape at fault."""


class KeyMismatchError(ConversionError):
    """A checkpoint's keys or shapes do not fit the model; the message names them."""


def first_line(err: BaseException, limit: int = 400) -> str:
    """The gist of an exception: first line, without TensorStore's spec dump, at most `limit` characters."""
    text = (str(err).strip() or type(err).__name__).splitlines()[0]
    text = text.split(" [tensorstore_spec=")[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


__all__ = ["ConversionError", "KeyMismatchError", "first_line"]
