"""One exception hierarchy; the CLI turns any of these into a one-line message and exit code 2."""

import shlex


def command(*words) -> str:
    """A hint's command, shell-quoted word by word so it can be pasted as is: `genoembed verify 'my store'`."""
    return "`" + " ".join(["genoembed"] + [shlex.quote(str(word)) for word in words]) + "`"


def quoted(text: str, limit: int = 60) -> str:
    """``repr(text)``, cut to ``limit`` characters: an error line echoes what was typed, not a megabyte of it."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} characters)"


class GenoembedError(Exception):
    """Base class for every expected failure (bad input, bad store, bad model)."""


class InputError(GenoembedError):
    """A user-supplied file, region, sequence or option is unusable."""


class StoreError(GenoembedError):
    """A store on disk is missing, corrupt, locked or inconsistent with the request."""


class ModelError(GenoembedError):
    """A model directory cannot be loaded or does not match the store."""


class MissingExtraError(GenoembedError):
    """An optional dependency is not installed; the message names the extra."""


def missing_extra(what: str, extra: str, package: str) -> MissingExtraError:
    """The one wording of a missing optional dependency: what needs which package, and the extra that brings it
    (``genoembed[all]`` brings every extra at once)."""
    return MissingExtraError(f"{what} needs {package}: pip install 'genoembed[{extra}]' "
                             "(or 'genoembed[all]' for every optional feature)")
