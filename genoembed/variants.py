"""Variant-aware queries: how far a SNV or indel moves a window's embedding, and haplotype queries.

For each ALT allele of a VCF, the window centred on the variant (the store's
tiling window by default) is embedded as the reference has it and with the
allele applied; the report says how far the vector moved (``1 - cosine`` and
L2), where the reference locus ranks when searching with the altered window,
and how much the top-k neighbours change (Jaccard of the two top-k sets).

Coordinates are 0-based half-open inside (like :mod:`genoembed.schema`); VCF
POS is 1-based and only appears in VCF text and in reports. A window keeps its
reference interval when a variant is applied, so an indel changes its length,
and a variant outside the window leaves it unchanged (shift exactly 0).

VCFs are read with pysam (the ``variants`` extra): plain or bgzipped, and a
region is fetched through the tabix/CSI index when there is one, otherwise
filtered while reading; both give the same records.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from genoembed.errors import InputError, missing_extra
from genoembed.files import atomic_file, atomic_write_bytes
from genoembed.search import Query, parse_region, query_source, region_queries
from genoembed.seqio import is_gzip, reverse_complement
from genoembed.store import Store

log = logging.getLogger(__name__)
#: INFO fields added to an annotated VCF: (id, Number, Type, description, result column).
INFO_FIELDS = (
    ("GE_SHIFT", "A", "Float", "genoembed: 1 - cosine between the reference and alternate window embeddings", "shift"),
    ("GE_L2", "A", "Float", "genoembed: L2 distance between the reference and alternate window embeddings", "l2"),
    ("GE_RANK", "A", "Integer", "genoembed: rank of the best store tile overlapping the variant when searching with "
                                "the alternate window (missing: not in the searched depth)", "ref_rank"),
    ("GE_JACCARD", "A", "Float", "genoembed: Jaccard index of the top-k tiles of the reference and alternate windows",
     "jaccard"),
)
_BASES = re.compile(r"^[ACGTN]+$")


@dataclass(frozen=True)
class Variant:
    """One ALT allele: ``pos`` 0-based on the forward strand, ``ref`` / ``alt`` as in the VCF (upper case)."""

    chrom: str
    pos: int
    ref: str
    alt: str
    id: str | None = None
    record: str = ""  # where it came from, for messages ("calls.vcf record chr1:1234")
    allele: int = 1  # 1-based index of this ALT in its record

    @property
    def end(self) -> int:
        return self.pos + len(self.ref)


def _pysam():
    try:
        import pysam
    except ImportError:
        raise missing_extra("reading VCFs (variants, search --vcf)", "variants", "pysam") from None
    return pysam


def _is_symbolic(alt: str | None) -> bool:
    """Symbolic (<DEL>), breakend (N[chr:1[), spanning-deletion (*) or missing ALTs: no sequence to apply."""
    return alt is None or not _BASES.match(alt.upper())


def _open_vcf(path: Path):
    if not path.is_file():
        raise InputError(f"{path}: VCF file not found")
    if is_gzip(path) and not _is_bgzf(path):
        raise InputError(f"{path}: gzip-compressed but not bgzip (htslib reads only bgzip); "
                         f"recompress it: gunzip {path} && bgzip {path.with_suffix('')}")
    try:
        vcf = _pysam().VariantFile(str(path))
    except (OSError, ValueError, NotImplementedError) as error:
        raise InputError(f"{path}: not a readable VCF ({error}); check it is VCF text or bgzipped VCF") from None
    _refuse_stale_index(vcf, path)
    return vcf


def _is_bgzf(path: Path) -> bool:
    """bgzip's blocks are gzip members with the ``BC`` extra field (SAM/BAM spec, section 4.1)."""
    with open(path, "rb") as handle:
        head = handle.read(16)
    return len(head) >= 16 and head[3] & 4 and head[12:14] == b"BC"


def _refuse_stale_index(vcf, path: Path) -> None:
    """A tabix/CSI index older than its VCF points at the old file's blocks and silently hides variants."""
    if vcf.index is None:
        return
    for suffix in (".tbi", ".csi"):
        index = path.with_name(path.name + suffix)
        if index.is_file() and index.stat().st_mtime_ns < path.stat().st_mtime_ns:
            vcf.close()
            raise InputError(f"{index}: older than {path.name} (the VCF changed after it was indexed, so regions "
                             f"would miss variants); reindex it: tabix -f -p vcf {path}")


def _records(vcf, path: Path, region: str | None):
    """Records of the VCF in ``region`` (all when None): through the index when there is one."""
    if region is None:
        yield from (_checked_position(record, path) for record in vcf)
        return
    chrom, start, end, _ = parse_region(region)
    if vcf.index is not None:
        if chrom in vcf.index:
            yield from (_checked_position(record, path) for record in vcf.fetch(chrom, start, end))
        return
    for record in (_checked_position(record, path) for record in vcf):
        if record.chrom == chrom and (start is None or (record.start < end and start < record.stop)):
            yield record


def _checked_position(record, path: Path):
    """VCF positions are 1-based: a POS of 0 (or less) names no base, so no variant can be applied there."""
    if record.pos < 1:
        raise InputError(f"{path} record {record.chrom}:{record.pos}: POS must be 1 or more (VCF positions are "
                         "1-based); fix the record")
    return record


def read_variants(vcf: str | Path, region: str | None = None, genome=None) -> list[Variant]:
    """Every SNV / indel ALT of a VCF (one Variant per ALT), optionally only those overlapping ``region``.

    Symbolic ALTs are skipped with a warning. With ``genome`` (anything with ``contigs`` and ``fetch``, e.g.
    :func:`genoembed.search.query_source`), each REF is checked against it: a mismatch is an error naming the
    record, since it means the VCF was called on another assembly.
    """
    path = Path(vcf)
    variants, skipped = [], 0
    with _open_vcf(path) as handle:
        try:
            for record in _records(handle, path, region):
                variants += _record_variants(record, path, genome)
                skipped += sum(_is_symbolic(alt) for alt in record.alts or ())
        except (OSError, ValueError) as error:
            raise InputError(f"{path}: malformed VCF ({error}); fix the file or re-export it") from None
    if skipped:
        log.warning("%s: skipped %d symbolic/breakend/missing ALT allele(s) (only SNVs and indels are applied)",
                    path, skipped)
    return variants


def _record_variants(record, path: Path, genome) -> list[Variant]:
    where = f"{path} record {record.chrom}:{record.pos}"
    ref = (record.ref or "").upper()
    if genome is not None:
        check_reference(genome, record.chrom, record.start, ref, where)
    return [Variant(record.chrom, record.start, ref, alt.upper(), record.id, where, number)
            for number, alt in enumerate(record.alts or (), 1) if not _is_symbolic(alt)]


def check_reference(genome, chrom: str, pos: int, ref: str, where: str) -> None:
    """REF must be the genome's bases at ``pos`` (one-line error naming the record otherwise)."""
    if chrom not in genome.contigs:
        raise InputError(f"{where}: contig {chrom!r} is not in the store; known: {', '.join(list(genome.contigs)[:5])}")
    if pos + len(ref) > genome.contigs[chrom]:
        raise InputError(f"{where}: REF runs past the end of {chrom} ({genome.contigs[chrom]} bp)")
    actual = genome.fetch(chrom, pos, pos + len(ref)).upper()
    if actual != ref:
        raise InputError(f"{where}: REF {ref[:20]} does not match the genome ({actual[:20]}); "
                         "was the VCF called on another assembly?")


def variant_window(variant: Variant, window: int, contig_length: int) -> tuple[int, int]:
    """[start, end) of ``window`` reference bases centred on the variant, shifted to stay inside the contig;
    widened to the REF allele when it is longer, so the window always holds the whole variant."""
    window = max(window, len(variant.ref))
    centre = variant.pos + len(variant.ref) // 2
    start = min(max(0, centre - window // 2), max(0, contig_length - window))
    return start, min(start + window, contig_length)


def apply_variants(sequence: str, start: int, variants: list[Variant]) -> str:
    """Forward-strand ``sequence`` of [start, start + len) with every variant lying wholly inside it applied.

    Variants outside (or crossing the edge of) the interval are left out, so they change nothing; two
    applied variants that overlap each other are an error (they cannot both be on one haplotype).
    """
    end = start + len(sequence)
    inside = sorted((v for v in variants if start <= v.pos and v.end <= end), key=lambda v: (v.pos, v.end))
    pieces, cursor = [], start
    for variant in inside:
        if variant.pos < cursor:
            raise InputError(f"{variant.record or variant.chrom}: overlaps another applied variant; "
                             "give non-overlapping variants for one haplotype")
        pieces += [sequence[cursor - start : variant.pos - start], variant.alt]
        cursor = variant.end
    return "".join(pieces) + sequence[cursor - start :]


def _oriented(sequence: str, strand: str) -> str:
    return reverse_complement(sequence) if strand == "-" else sequence


def window_pair(genome, variants: list[Variant], chrom: str, start: int, end: int,
                strand: str = "+") -> tuple[str, str]:
    """(reference, altered) sequences of [start, end) on ``strand`` with ``variants`` applied to the second."""
    reference = genome.fetch(chrom, start, end).upper()
    return _oriented(reference, strand), _oriented(apply_variants(reference, start, variants), strand)


def shift(reference_vectors: np.ndarray, altered_vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise (1 - cosine, L2 distance) between two (n, dim) arrays of embedder vectors."""
    a, b = reference_vectors.astype(np.float64), altered_vectors.astype(np.float64)
    norms = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
    cosine = np.clip((a * b).sum(axis=1) / norms, -1.0, 1.0)
    same = (a == b).all(axis=1)  # identical windows: exactly 0, not 1e-8 of rounding
    return np.where(same, 0.0, 1.0 - cosine), np.where(same, 0.0, np.linalg.norm(a - b, axis=1))


def score_variants(store: Store, variants: list[Variant], window: int | None = None, k: int = 10,
                   depth: int = 100, strand: str = "+", embedder=None, batch: int = 256) -> pa.Table:
    """One row per variant: its window, the embedding shift, the reference locus' rank and the top-k Jaccard.

    ``window`` defaults to the store's tiling window. ``ref_rank`` is the rank of the best-scoring store tile
    that overlaps the variant among the ``depth`` nearest tiles to the altered window (null when none of
    them overlaps it); ``jaccard`` compares the ``k`` nearest tiles of the reference and altered windows.
    """
    if strand not in ("+", "-"):
        raise InputError(f"strand {strand!r}: use + or -")
    window = window or int(store.provenance["tiling"]["window"])
    depth = min(max(depth, k), store.num_tiles)
    if k > store.num_tiles:
        raise InputError(f"k={k} is larger than the store ({store.num_tiles} tiles)")
    genome, embedder = query_source(store), embedder or store.embedder()
    rows = []
    for first in range(0, len(variants), batch):
        rows += _score_batch(store, genome, embedder, variants[first : first + batch], window, k, depth, strand)
    return pa.Table.from_pylist(rows, schema=VARIANT_SCHEMA)


VARIANT_SCHEMA = pa.schema([
    ("chrom", pa.string()), ("pos", pa.int64()), ("id", pa.string()), ("ref", pa.string()), ("alt", pa.string()),
    ("window_start", pa.int64()), ("window_end", pa.int64()), ("strand", pa.string()), ("shift", pa.float64()),
    ("l2", pa.float64()), ("ref_rank", pa.int64()), ("jaccard", pa.float64()),
])


def _score_batch(store, genome, embedder, variants, window, k, depth, strand) -> list[dict]:
    windows = [variant_window(v, window, genome.contigs[v.chrom]) for v in variants]
    pairs = [window_pair(genome, [v], v.chrom, s, e, strand) for v, (s, e) in zip(variants, windows)]
    vectors = embedder.embed([p[0] for p in pairs] + [p[1] for p in pairs])
    reference, altered = vectors[: len(pairs)], vectors[len(pairs) :]
    shifts, distances = shift(reference, altered)
    _, ids = store.vector_index().search(np.concatenate([reference, altered]), depth, None, None)
    found = np.unique(ids[ids >= 0])
    tiles = store.tiles(found).select(["tile_id", "chrom", "start", "end"]).to_pylist()
    where = {tile["tile_id"]: tile for tile in tiles}
    rows = []
    for row, (variant, (start, end)) in enumerate(zip(variants, windows)):
        ref_ids, alt_ids = ids[row], ids[len(variants) + row]
        rows.append({"chrom": variant.chrom, "pos": variant.pos + 1, "id": variant.id, "ref": variant.ref,
                     "alt": variant.alt, "window_start": start, "window_end": end, "strand": strand,
                     "shift": float(shifts[row]), "l2": float(distances[row]),
                     "ref_rank": _locus_rank(alt_ids, where, variant), "jaccard": _jaccard(ref_ids[:k], alt_ids[:k])})
    return rows


def _locus_rank(ids: np.ndarray, tiles: dict, variant: Variant) -> int | None:
    """1-based rank of the first tile in ``ids`` overlapping the variant's reference bases, else None."""
    end = max(variant.end, variant.pos + 1)
    for rank, tile_id in enumerate(ids, 1):
        tile = tiles.get(int(tile_id))
        if tile and tile["chrom"] == variant.chrom and tile["start"] < end and variant.pos < tile["end"]:
            return rank
    return None


def _jaccard(a: np.ndarray, b: np.ndarray) -> float:
    left, right = set(a[a >= 0].tolist()), set(b[b >= 0].tolist())
    return len(left & right) / len(left | right) if left | right else 1.0


def annotate_vcf(vcf: str | Path, output: str | Path, results: pa.Table, region: str | None = None) -> Path:
    """Write the records of ``vcf`` (in ``region``) to ``output`` with the :data:`INFO_FIELDS` added per ALT.

    The header declares the new fields, so the file stays valid VCF; ``.gz`` outputs are bgzipped. Written
    to a temporary name and renamed, so a failure leaves no partial file.
    """
    path, output = Path(vcf), Path(output)
    by_allele = {(r["chrom"], r["pos"], r["ref"], r["alt"]): r for r in results.to_pylist()}
    with _open_vcf(path) as handle:
        header = handle.header.copy()
        for name, number, kind, description, _ in INFO_FIELDS:
            if name in header.info:
                raise InputError(f"{path}: already has INFO/{name}; annotate the original VCF")
            header.info.add(name, number, kind, description)
        with atomic_file(output, "annotated VCF") as temporary:  # mode from the umask, no partial file left
            with _pysam().VariantFile(str(temporary), "wz" if output.suffix == ".gz" else "w", header=header) as out:
                for record in _records(handle, path, region):
                    record.translate(out.header)
                    _annotate_record(record, by_allele)
                    out.write(record)
    return output


def _annotate_record(record, by_allele: dict) -> None:
    """Set the INFO fields of one record: a value per ALT, missing for ALTs that were not scored."""
    found = [by_allele.get((record.chrom, record.pos, (record.ref or "").upper(), (alt or "").upper()))
             for alt in record.alts or ()]
    if not any(found):
        return
    for name, _, _, _, column in INFO_FIELDS:
        record.info[name] = tuple(None if row is None else row[column] for row in found)


def sample_variants(vcf: str | Path, sample: str, region: str, genome=None) -> list[Variant]:
    """The ALT alleles on the first haplotype of ``sample`` in ``region``: the allele listed first in its GT
    (``1|0`` and ``1/0`` apply it, ``0|1`` does not; a haploid ``1`` applies it; ``.`` keeps the reference)."""
    path = Path(vcf)
    with _open_vcf(path) as handle:
        if sample not in handle.header.samples:
            raise InputError(f"{path}: no sample {sample!r}; samples: {', '.join(list(handle.header.samples)[:5])}")
        chosen = []
        for record in _records(handle, path, region):
            allele = _first_allele(record, sample, path)
            if allele and not _is_symbolic(record.alts[allele - 1]):
                where = f"{path} record {record.chrom}:{record.pos}"
                if genome is not None:
                    check_reference(genome, record.chrom, record.start, (record.ref or "").upper(), where)
                chosen.append(Variant(record.chrom, record.start, record.ref.upper(),
                                      record.alts[allele - 1].upper(), record.id, where, allele))
    return chosen


def _first_allele(record, sample: str, path: Path) -> int | None:
    """The allele number listed first in ``sample``'s GT (None for '.'); one that names no ALT is an error,
    where pysam would read it as missing and keep the reference without a word."""
    allele = (record.samples[sample].get("GT") or (None,))[0]
    if allele is None:
        fields = str(record).rstrip("\n").split("\t")
        keys = fields[8].split(":") if len(fields) > 9 else []
        column = 9 + list(record.header.samples).index(sample)
        values = fields[column].split(":") if column < len(fields) else []
        typed = values[keys.index("GT")] if "GT" in keys and keys.index("GT") < len(values) else "."
        first = typed.replace("|", "/").split("/")[0]
        if first not in (".", ""):
            count = len(record.alts or ())
            raise InputError(f"{path} record {record.chrom}:{record.pos}: sample {sample!r} GT {typed!r} names "
                             f"allele {first}, but the record has {count} ALT allele(s); fix the genotype")
    return allele


def haplotype_queries(store: Store, regions: list[str], vcf: str | Path, sample: str,
                      genome: str | None = None) -> list[Query]:
    """Region queries with ``sample``'s first-haplotype alleles applied (see :func:`sample_variants`).

    A query keeps its region's reference coordinates (for ``--exclude-self`` and the hits table) and is
    named ``REGION|SAMPLE``; only variants lying wholly inside the region are applied.
    """
    source = query_source(store, genome)
    queries = []
    for query in region_queries(source, regions):
        variants = sample_variants(vcf, sample, f"{query.chrom}:{query.start + 1}-{query.end}", source)
        _, altered = window_pair(source, variants, query.chrom, query.start, query.end, query.strand)
        queries.append(dataclasses.replace(query, name=f"{query.name}|{sample}", sequence=altered))
    return queries


def calls_from_cs(paf_lines, fetch, max_indel: int = 50) -> list[Variant]:
    """SNVs and small indels from minimap2 ``-c --cs`` PAF lines (alignments of another assembly to the
    store's genome), as VCF-style variants: indels anchored on the base before them.

    ``fetch(chrom, start, end)`` reads the reference (for anchor bases). Indels longer than ``max_indel``
    bases (structural differences, not small variants) are left out. Only primary and inversion
    alignments (``tp:A:P`` / ``tp:A:I``) are used; a call made twice by overlapping alignments is kept once.
    """
    calls = {}
    for line in paf_lines:
        fields = line.rstrip("\n").split("\t")
        tags = dict(field.split(":", 2)[0::2] for field in fields[12:])
        if "cs" not in tags or tags.get("tp", "P") not in ("P", "I"):
            continue
        chrom, position = fields[5], int(fields[7])
        for op, text in re.findall(r"([:*+\-~=])([0-9A-Za-z]+)", tags["cs"]):
            if op == ":":
                position += int(text)
            elif op == "=":
                position += len(text)
            elif op == "*":
                calls.setdefault((chrom, position), Variant(chrom, position, text[0].upper(), text[1].upper()))
                position += 1
            elif op in "+-" and len(text) > max_indel:
                position += len(text) if op == "-" else 0
            elif op in "+-":
                anchor = fetch(chrom, position - 1, position).upper()
                ref, alt = (anchor + text.upper(), anchor) if op == "-" else (anchor, anchor + text.upper())
                calls.setdefault((chrom, position - 1), Variant(chrom, position - 1, ref, alt))
                position += len(text) if op == "-" else 0
            else:
                raise InputError(f"cs op ~ (spliced alignment) in {fields[0]}: align assemblies with -x asm5")
    return [calls[key] for key in sorted(calls)]


def write_vcf(path: str | Path, variants: list[Variant], contigs: dict[str, int], source: str = "genoembed") -> Path:
    """A minimal sites-only VCF 4.2 of ``variants`` (sorted), written atomically."""
    path = Path(path)
    lines = ["##fileformat=VCFv4.2", f"##source={source}"]
    lines += [f"##contig=<ID={name},length={length}>" for name, length in contigs.items()]
    lines.append("#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO")
    order = {name: number for number, name in enumerate(contigs)}
    for v in sorted(variants, key=lambda v: (order.get(v.chrom, len(order)), v.pos, v.alt)):
        lines.append(f"{v.chrom}\t{v.pos + 1}\t{v.id or '.'}\t{v.ref}\t{v.alt}\t.\tPASS\t.")
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
    return path
