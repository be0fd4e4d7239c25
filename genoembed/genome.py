"""Open and validate FASTA genomes (plain, gzip, bgzip) with random access through pyfaidx.

pyfaidx needs a ``.fai`` index; we keep it in genoembed's cache (keyed by the
file's checksum) so read-only genome folders work. Plain gzip cannot be
randomly accessed, so it is decompressed once into the cache and reported;
bgzip is read in place.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import struct
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import pyfaidx

from genoembed.errors import InputError

log = logging.getLogger(__name__)

_COMPLEMENT = str.maketrans("ACGTURYKMBDHVNacgturykmbdhvn", "TGCAAYRMKVHDBNtgcaayrmkvhdbn")
_FASTA_SUFFIXES = (".gz", ".bgz", ".fa", ".fasta", ".fna", ".fas", ".ffn", ".fsa")


def reverse_complement(sequence: str) -> str:
    """Reverse complement, IUPAC-aware and case-preserving."""
    return sequence.translate(_COMPLEMENT)[::-1]


def cache_dir() -> Path:
    """Where indexes and decompressed genomes go (``$GENOEMBED_CACHE`` or ``~/.cache/genoembed``)."""
    root = Path(os.environ.get("GENOEMBED_CACHE", Path.home() / ".cache" / "genoembed"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def file_checksum(path: Path) -> str:
    """sha256 of the file's bytes, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def genome_label(path: Path) -> str:
    """Short genome name from a file name: ``GRCh38.fa.gz`` -> ``GRCh38``."""
    name = path.name
    while True:
        lowered = name.lower()
        suffix = next((s for s in _FASTA_SUFFIXES if lowered.endswith(s)), None)
        if suffix is None or len(name) == len(suffix):
            return name
        name = name[: -len(suffix)]


def _is_bgzf(path: Path) -> bool:
    with open(path, "rb") as handle:
        header = handle.read(18)
    # gzip magic, FEXTRA flag, and the 'BC' subfield that marks a BGZF block
    return len(header) >= 14 and header[:2] == b"\x1f\x8b" and header[3] & 4 and header[12:14] == b"BC"


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(2) == b"\x1f\x8b"


def _decompress_to_cache(path: Path, checksum: str) -> Path:
    target = cache_dir() / "fasta" / f"{checksum}.fa"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".partial.{os.getpid()}")
    log.warning("%s is plain gzip (not bgzip): decompressing once to %s for random access "
                "(use `bgzip` to avoid this copy)", path, target)
    try:
        with gzip.open(path, "rb") as source, open(partial, "wb") as sink:
            for block in iter(lambda: source.read(1 << 22), b""):
                sink.write(block)
    except (EOFError, OSError, zlib.error) as error:
        partial.unlink(missing_ok=True)
        raise InputError(f"{path}: corrupt or truncated gzip ({error}); re-download or re-compress the file") from None
    os.replace(partial, target)
    return target


def _sniff_fasta(path: Path, shown: Path, compressed: bool = False) -> None:
    try:
        with (gzip.open(path, "rb") if compressed else open(path, "rb")) as handle:
            head = handle.read(1 << 16)
    except (EOFError, OSError, zlib.error) as error:
        raise InputError(f"{shown}: corrupt or truncated compressed FASTA ({error}); "
                         "re-download or re-compress the file") from None
    if not head.strip():
        raise InputError(f"{shown}: file is empty; expected a FASTA genome")
    if b"\x00" in head:
        raise InputError(f"{shown}: binary data, not a FASTA file; pass a FASTA genome (.fa, .fa.gz)")
    first = head.lstrip()[:1]
    if first != b">":
        line = head.lstrip().split(b"\n", 1)[0][:40].decode("utf-8", "replace")
        raise InputError(f"{shown}: not a FASTA file (line 1 starts {line!r}, expected '>name'); pass a FASTA genome")


@dataclass(frozen=True)
class Genome:
    """A FASTA genome with random access. Coordinates are 0-based half-open."""

    path: Path
    name: str
    checksum: str
    contigs: dict[str, int]
    _fasta: pyfaidx.Fasta = field(repr=False, compare=False)

    def fetch(self, chrom: str, start: int, end: int, strand: str = "+") -> str:
        """Sequence of ``[start, end)`` on ``chrom``; reverse-complemented for strand ``-``."""
        length = self.contigs.get(chrom)
        if length is None:
            raise InputError(f"{self.path}: unknown contig {chrom!r}; known: {_preview(self.contigs)}")
        if strand not in ("+", "-"):
            raise InputError(f"{self.path}: strand {strand!r} for {chrom}:{start}-{end} must be '+' or '-'")
        if not 0 <= start < end <= length:
            raise InputError(f"{self.path}: region {chrom}:{start}-{end} is outside {chrom} (length {length}); "
                             f"use 0 <= start < end <= {length}")
        sequence = self._fasta[chrom][start:end].seq
        return reverse_complement(sequence) if strand == "-" else sequence

    def describe(self) -> dict:
        return {"path": str(self.path), "name": self.name, "sha256": self.checksum,
                "contigs": len(self.contigs), "length": sum(self.contigs.values())}


def _preview(names) -> str:
    names = list(names)
    return ", ".join(names[:5]) + (f", ... ({len(names)} in all)" if len(names) > 5 else "")


def _named_for_pyfaidx(readable: Path, checksum: str, bgzf: bool) -> Path:
    """``readable``, or a link to it in the cache whose suffix tells pyfaidx the real format.

    pyfaidx picks the BGZF reader by file name (``.gz``/``.bgz``), not content:
    a bgzip file named ``x.fa`` or a plain FASTA named ``x.fa.gz`` would fail.
    """
    if readable.name.lower().endswith((".gz", ".bgz")) == bgzf:
        return readable
    link = cache_dir() / "links" / (f"{checksum}.fa.gz" if bgzf else f"{checksum}.fa")
    link.parent.mkdir(parents=True, exist_ok=True)
    target = readable.resolve()
    if not (link.is_symlink() and Path(os.readlink(link)) == target):
        partial = link.with_name(f"{link.name}.{os.getpid()}.tmp")
        partial.unlink(missing_ok=True)
        partial.symlink_to(target)
        os.replace(partial, link)
    return link


def _open_indexed(readable: Path, checksum: str, bgzf: bool) -> pyfaidx.Fasta:
    """pyfaidx over ``readable`` with its .fai (and .gzi for bgzip) in the cache, keyed by content.

    A missing index is built under a temporary name and renamed into place, so
    an interrupted or concurrent build never leaves a truncated index for later
    opens. An existing index is touched: the cache is content-addressed, so
    pyfaidx's mtime staleness check (a copied or touched genome looks newer than
    its index) does not apply and would only warn.
    """
    index_dir = cache_dir() / "fai"
    index_dir.mkdir(parents=True, exist_ok=True)
    fai, gzi = index_dir / f"{checksum}.fai", index_dir / f"{checksum}.gzi"
    options = dict(as_raw=False, sequence_always_upper=False, duplicate_action="stop", rebuild=False)
    readable = _named_for_pyfaidx(readable, checksum, bgzf)
    if fai.exists() and (gzi.exists() or not bgzf):
        stamp = max(time.time_ns(), readable.stat().st_mtime_ns)
        for index in (fai, gzi) if bgzf else (fai,):
            os.utime(index, ns=(stamp, stamp))
    else:
        suffix = f".{os.getpid()}.tmp"
        tmp_fai, tmp_gzi = fai.with_name(fai.name + suffix), gzi.with_name(gzi.name + suffix)
        try:
            pyfaidx.Faidx(str(readable), indexname=str(tmp_fai), gzi_indexname=str(tmp_gzi), **options).close()
            if bgzf:
                os.replace(tmp_gzi, gzi)
            os.replace(tmp_fai, fai)
        finally:
            tmp_fai.unlink(missing_ok=True)
            tmp_gzi.unlink(missing_ok=True)
    return pyfaidx.Fasta(str(readable), indexname=str(fai), gzi_indexname=str(gzi), **options)


def open_genome(path: str | Path, name: str | None = None) -> Genome:
    """Open and validate a FASTA (plain, gzip or bgzip); raise InputError naming the file and fix."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not a FASTA file; pass the FASTA file inside it")
    if not path.is_file():
        raise InputError(f"{path}: FASTA file not found; check the path")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path}: FASTA file is not readable; check its permissions")
    checksum = file_checksum(path)
    readable = path
    if _is_gzip(path) and not _is_bgzf(path):
        readable = _decompress_to_cache(path, checksum)
    # bgzip is sniffed through its decompressed head; plain gzip through the cached copy
    _sniff_fasta(readable, path, compressed=_is_gzip(readable))
    try:
        fasta = _open_indexed(readable, checksum, bgzf=_is_bgzf(readable))
    except pyfaidx.FastaIndexingError as error:
        fix = "fix line lengths within each record" if "Line length" in str(error) \
            else "check that every record starts with a '>name' line"
        raise InputError(f"{path}: malformed FASTA ({error}); {fix}") from None
    except ValueError as error:
        message = str(error)
        if "Duplicate key" in message:
            raise InputError(f"{path}: {message.rstrip('.')}; record names must be unique") from None
        raise InputError(f"{path}: cannot read FASTA ({message})") from None
    except (EOFError, OSError, zlib.error, struct.error) as error:
        raise InputError(f"{path}: corrupt or truncated compressed FASTA ({error}); "
                         "re-download or re-compress the file") from None
    contigs = {record: len(fasta[record]) for record in fasta.keys()}
    if not contigs:
        raise InputError(f"{path}: no FASTA records found")
    empty = [record for record, length in contigs.items() if length == 0]
    if empty:
        raise InputError(f"{path}: record {empty[0]!r} is empty ({len(empty)} empty records); remove empty records")
    return Genome(path=path, name=name or genome_label(path), checksum=checksum, contigs=contigs, _fasta=fasta)
