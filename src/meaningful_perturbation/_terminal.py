"""Text shown on a terminal: control characters in file names and messages escaped.

A file name may hold any character but ``/`` and NUL, including ANSI escape sequences
(``\\x1b[31m``), newlines, carriage returns and bidirectional overrides (``\\u202e``). Printed
raw, such a name can recolour or rewrite the terminal, or forge extra output lines. Every
file name (and every error line) the CLI prints goes through :func:`escape_text`.
"""

from __future__ import annotations

__all__ = ["escape_text"]


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
