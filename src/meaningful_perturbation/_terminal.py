"""Text shown on a terminal: control characters in file names and messages escaped.

A file name may hold any character but ``/`` and NUL, including ANSI escape sequences
(``\\x1b[31m``), newlines, carriage returns and bidirectional overrides (``\\u202e``). Printed
raw, such a name can recolour or rewrite the terminal, or forge extra output lines. Every
file name (and every error line) the CLI prints goes through :func:`escape_text`.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from typing import Iterator, Sequence

__all__ = ["cli_text", "escape_text", "format_p", "naming_images", "target_text"]


@contextlib.contextmanager
def naming_images(names: Sequence[object]) -> Iterator[None]:
    """Warnings raised inside (an ``explain`` call on a batch) are re-emitted on leaving with
    "image i" replaced by ``names[i]`` (the file), so a warning about a batch names its files."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            pending = list(caught)
    for w in pending:
        text = re.sub(r"\bimage (\d+)\b",
                      lambda m: str(names[int(m.group(1))]) if int(m.group(1)) < len(names) else m.group(0),
                      str(w.message))
        warnings.warn_explicit(text, w.category, w.filename, w.lineno)


def escape_text(text: object) -> str:
    """``str(text)`` with every non-printable character written as its Python escape.

    Printable characters (letters of every script, digits, punctuation, symbols, the ASCII
    space) are kept as they are; control characters (C0, C1, DEL), line and paragraph
    separators, other spaces, format characters (bidi overrides, zero-width joiners) and
    lone surrogates (undecodable bytes of a file name) become ``\\xNN`` / ``\\uNNNN`` /
    ``\\n`` / ``\\t`` ... as in :func:`repr`, so the result is one printable line that
    encodes on any terminal.

    Example:
        >>> escape_text("cat\\x1b[31m\\nred.png")
        'cat\\\\x1b[31m\\\\nred.png'
        >>> escape_text("chat_noir_é.png")
        'chat_noir_é.png'
    """
    s = str(text)
    if s.isprintable():
        return s
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)


def target_text(targets: list[int], names: list[str]) -> str:
    """The explained classes for the per-image line and the panel's title.

    Names joined by `` + `` (as in ``p(cat + dog)``). ``--target`` splits its value on commas,
    so a name holding one (WordNet synonyms: ``tabby, tabby cat``) cannot be pasted back as
    shown: then the classes' ``--target`` spelling (their indices) follows in parentheses.

    Args:
        targets: the class indices; names: their names (``str(index)`` where the model has none).

    Example:
        >>> target_text([281, 285], ["tabby, tabby cat", "Egyptian cat"])
        'tabby, tabby cat + Egyptian cat (--target 281,285)'
        >>> target_text([1], ["square"])
        'square'
    """
    text = " + ".join(names)
    if any("," in n for n in names):
        text += f" (--target {','.join(str(int(c)) for c in targets)})"
    return text


# "(Python: expand_images(..., recursive=True))", "(Python API: offline=True)": the Python
# spelling that messages shared by the API and the CLI add after the CLI's own (one level of
# nested parentheses, as in a call).
_PYTHON_HINT = re.compile(r"\s*\(Python(?: API)?: [^()]*(?:\([^()]*\)[^()]*)*\)")


def cli_text(message: str) -> str:
    """A message shared by the Python API and the command line, as the command line prints it:
    the ``(Python: ...)`` / ``(Python API: ...)`` spellings of an option dropped, since a CLI
    user cannot pass a Python argument.

    Example:
        >>> cli_text("pass --trust-code (Python API: load_model(..., trust_code=True)) if you trust it")
        'pass --trust-code if you trust it'
    """
    return _PYTHON_HINT.sub("", message)


def format_p(v: float) -> str:
    """A probability for a line or a title: three decimals (``0.173``), or two significant
    digits when three decimals would show a nonzero value as 0 (``4.5e-04``); ``nan`` as is.

    Example:
        >>> format_p(0.17349), format_p(0.00045), format_p(0.0), format_p(1.0)
        ('0.173', '4.5e-04', '0.000', '1.000')
    """
    v = float(v)
    if v == v and v != 0.0 and abs(v) < 0.0005:
        return f"{v:.1e}"
    return f"{v:.3f}"
