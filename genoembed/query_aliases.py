"""Query-side contig names: ``--alias chr1=1`` / ``--auto-alias`` for --region and --bed queries, as ``annotate`` has.

A BED of peaks named on ``chr1`` searched against a store whose contig is ``1`` (or ``NC_000913.3`` against
``NC_000913``) is read through :class:`AliasedSource`, which answers for the alias names and fetches from the
store's contig; each query then carries the store's contig name, so ``--exclude-self`` and the hit joins work.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from genoembed.features import normalise_contig


class _AliasedContigs(Mapping):
    """The source's contig lengths, plus every alias (given, or suggested on first lookup) of a known contig."""

    def __init__(self, contigs: Mapping[str, int], aliases: dict[str, str], auto: bool):
        self._contigs, self._aliases, self._auto = contigs, dict(aliases), auto
        self._by_key: dict[str, list[str]] | None = None

    def target(self, name: str) -> str | None:
        """The store contig ``name`` stands for, or None."""
        if name in self._contigs:
            return name
        if name in self._aliases:
            return self._aliases[name] if self._aliases[name] in self._contigs else None
        if self._auto:  # one contig whose normalised name matches (chr1 -> 1, NC_1.2 -> NC_1): annotate's rule
            if self._by_key is None:
                self._by_key = {}
                for contig in self._contigs:
                    self._by_key.setdefault(normalise_contig(contig), []).append(contig)
            matches = self._by_key.get(normalise_contig(name), [])
            if len(matches) == 1:
                self._aliases[name] = matches[0]
                return matches[0]
        return None

    def aliases(self) -> dict[str, str]:
        """The aliases given and those suggested so far, to the contig each stands for."""
        return dict(self._aliases)

    def __getitem__(self, name: str) -> int:
        target = self.target(name)
        if target is None:
            raise KeyError(name)
        return self._contigs[target]

    def __contains__(self, name) -> bool:
        return self.target(name) is not None

    def __iter__(self):
        return iter(self._contigs)

    def __len__(self) -> int:
        return len(self._contigs)


class AliasedSource:
    """A query source (a genome, or a store's genomes) that also answers to alias names of its contigs."""

    def __init__(self, source, aliases: dict[str, str], auto: bool = False):
        self._source = source
        self.path = source.path
        self.contigs = _AliasedContigs(source.contigs, aliases, auto)

    def fetch(self, chrom: str, start: int, end: int, strand: str = "+") -> str:
        return self._source.fetch(self.contigs.target(chrom) or chrom, start, end, strand)

    def locate(self, chrom: str) -> tuple[str | None, str]:
        """(store genome, contig) of a contig or alias name (the source's ``locate`` where it has one)."""
        chrom = self.contigs.target(chrom) or chrom
        if hasattr(self._source, "locate"):
            return self._source.locate(chrom)
        return getattr(self._source, "name", None), chrom

    @property
    def circular(self) -> frozenset[str]:
        """The source's circular contigs and the aliases standing for them."""
        given = frozenset(getattr(self._source, "circular", ()))
        return given | {alias for alias, target in self.contigs.aliases().items() if target in given}

    def __getattr__(self, name: str):  # anything else is the source's
        return getattr(self._source, name)

    def renamed(self, query):
        """``query`` with its contig named as the store names it."""
        target = self.contigs.target(query.chrom) if query.chrom is not None else None
        return query if target in (None, query.chrom) else dataclasses.replace(query, chrom=target)
