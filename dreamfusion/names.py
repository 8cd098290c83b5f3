"""The one rule for names that become file names, folder names or object-store keys.

Two kinds of name:

* a name a user gives (``--task``, ``--key``, ``--name``, a catalog or a regression suite):
  ``check_name`` accepts 1-63 ASCII letters, digits, ``.``, ``_`` and ``-``, starting with a letter or
  digit and not a device name Windows reserves (``CON``, ``NUL``, ``COM1``...), and refuses anything
  else with one line. So no path separator, no ``..`` or ``.``, no control character, nothing a
  shell, a file system or an S3 server reads differently;
* a name made from free text (a prompt): ``slug`` keeps its lowercase ASCII letters and digits,
  joined by ``-`` and cut to ``SLUG_WORDS`` characters, and appends 8 hex digits of the text's
  SHA-256, so prompts that differ only in case, spacing or characters outside ASCII still get
  distinct names, and every name is safe and at most ``SLUG_MAX`` characters.
"""

from __future__ import annotations

import hashlib
import re

from dreamfusion.errors import UserError

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
# Names Windows reserves for devices, with or without an extension (a folder "con" cannot be made there)
RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}
SLUG_WORDS = 48
SLUG_MAX = SLUG_WORDS + 9
SLUG = re.compile(r"([a-z0-9]+(-[a-z0-9]+)*-)?[0-9a-f]{8}")


def check_name(value: object, what: str) -> str:
    """``value`` if it is a safe name (see the module), else one-line UserError naming ``what``."""
    shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise UserError(f"{what} {shown}: use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit")
    if value.split(".")[0].upper() in RESERVED:
        raise UserError(f"{what} {shown} is a reserved device name on some file systems: choose another")
    return value


def slug(text: str) -> str:
    """A safe, bounded, distinct name for free text: ``a-red-cube-1a2b3c4d``."""
    words = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:SLUG_WORDS].strip("-")
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{words}-{digest}" if words else digest
