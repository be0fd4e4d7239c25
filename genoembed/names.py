"""Names a user gives things in a store, checked here once for every verb and the server.

Annotation sets and saved searches become SQL view names and file names
(``annotations/NAME.VERSION.parquet``, ``searches/NAME.json``), so they are plain
identifiers: a name like ``../../OTHER/shards/part-00000`` must never become a
path, nor ``x;DROP TABLE`` a view. Genome names are values, never identifiers
or paths, but they appear in BED/TSV output and manifests, so they are one
word: letters, digits and ``_ . + -``, not starting with a dot or a dash
(``NC_000932.1``, ``ecoli-K12``); so are the names ``genoembed serve`` gives stores.
"""

from __future__ import annotations

import re

from genoembed.errors import InputError

IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
WORD = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}")


def check_identifier(name: str, what: str) -> str:
    """``name`` when it is a plain identifier (it becomes a SQL view and a file name); else a one-line error."""
    if not isinstance(name, str) or not IDENTIFIER.fullmatch(name):
        raise InputError(f"{what} name {name!r}: use letters, digits and _, starting with a letter or _, "
                         "at most 63 characters (it becomes a SQL view and a file name)")
    return name


def check_word(name: str, what: str, fix: str) -> str:
    """``name`` when it is one word a store can record and print (a genome, a served store); else a one-line
    error ending with ``fix``."""
    if not isinstance(name, str) or not WORD.fullmatch(name):
        raise InputError(f"{what} name {name!r}: use letters, digits and _ . + -, starting with a letter, digit "
                         f"or _, at most 128 characters; {fix}")
    return name


def check_genome_name(name: str) -> str:
    return check_word(name, "genome", "pass --genome-name NAME")


def identifier_from(text: str, fallback: str) -> str:
    """A plain identifier made from ``text`` (a file name): other characters become _, a leading digit gets _."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", text)[:63] or fallback
    return name if IDENTIFIER.fullmatch(name) else f"_{name}"[:63]
