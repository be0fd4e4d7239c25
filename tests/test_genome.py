"""genoembed.genome: opening FASTA (plain, gzip, bgzip), random access, validation errors."""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import random
import shutil
import stat
import tracemalloc
from pathlib import Path

import numpy as np
import pyfaidx
import pytest
from Bio import SeqIO, bgzf
from Bio.Seq import reverse_complement as bio_reverse_complement
from hypothesis import given, settings
from hypothesis import strategies as st

from genoembed import genome as genome_module
from genoembed.errors import InputError
from genoembed.genome import SEQUENCE_LETTERS, Genome, genome_label, open_genome, scan_fasta
from genoembed.seqio import reverse_complement
from genoembed.synthetic import random_genome, write_fasta

from conftest import SHARED_DATA

DATA = Path(__file__).parent / "data"
PLASMID = DATA / "NC_005816.fna"
CHLOROPLAST = Path(__file__).parent.parent / "genoembed" / "data" / "demo" / "NC_000932.fa"
ECOLI_GZ = SHARED_DATA / "ecoli_536" / "NC_008253.fna.gz"

IUPAC = "ACGTURYKMSWBDHVN"
IUPAC_BOTH_CASES = IUPAC + IUPAC.lower()


@pytest.fixture(autouse=True)
def cache(fresh_cache) -> Path:
    return fresh_cache


def _records() -> dict[str, str]:
    """Three contigs of different lengths; one with soft-masked and IUPAC stretches, one shorter than a line."""
    records = random_genome({"chr1": 5003, "chr2": 1777, "tiny": 13}, seed=7)
    chr1 = records["chr1"]
    records["chr1"] = chr1[:100] + chr1[100:400].lower() + "NNNNNRYKMSWBDHV" + "nnnryk" + chr1[421:]
    return records


def _bioseqio(path: Path) -> dict[str, str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as handle:
        return {record.id: str(record.seq) for record in SeqIO.parse(handle, "fasta")}


def _all_sequences(genome: Genome) -> dict[str, str]:
    return {name: genome.fetch(name, 0, length) for name, length in genome.contigs.items()}


def _files_under(root: Path) -> set[Path]:
    return {p.relative_to(root) for p in root.rglob("*") if p.is_file()}


# --- compression ----------------------------------------------------------------------------------


def test_plain_gzip_and_bgzip_give_identical_sequences(tmp_path, cache, caplog):
    records = _records()
    plain = write_fasta(tmp_path / "g.fa", records)
    gzipped = write_fasta(tmp_path / "g.fa.gz", records, compression="gzip")
    bgzipped = write_fasta(tmp_path / "gb.fa.gz", records, compression="bgzip")

    with caplog.at_level(logging.WARNING, logger="genoembed.genome"):
        genomes = {"plain": open_genome(plain)}
    assert not caplog.records, "a plain FASTA must open silently"

    with caplog.at_level(logging.WARNING, logger="genoembed.genome"):
        genomes["bgzip"] = open_genome(bgzipped)
    assert not caplog.records, "bgzip is read in place, nothing to announce"
    assert not (cache / "fasta").exists() or not any((cache / "fasta").iterdir()), \
        "bgzip must not be decompressed into the cache"

    with caplog.at_level(logging.WARNING, logger="genoembed.genome"):
        genomes["gzip"] = open_genome(gzipped)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "plain gzip" in warnings[0].getMessage() \
        and str(gzipped) in warnings[0].getMessage()
    copies = list((cache / "fasta").iterdir())
    assert len(copies) == 1 and copies[0].read_bytes() == plain.read_bytes()

    for kind, genome in genomes.items():
        assert genome.contigs == {name: len(seq) for name, seq in records.items()}, kind
        assert list(genome.contigs) == list(records), f"{kind}: contig order must follow the file"
        assert _all_sequences(genome) == records, kind
    # same bytes decompressed, but each file keeps its own checksum (of the file on disk)
    assert len({g.checksum for g in genomes.values()}) == 3
    assert genomes["gzip"].name == "g" and genomes["bgzip"].name == "gb"


def test_gzip_is_decompressed_once(tmp_path, cache, caplog):
    gzipped = write_fasta(tmp_path / "g.fa.gz", _records(), compression="gzip")
    open_genome(gzipped)
    copy = next((cache / "fasta").iterdir())
    before = copy.stat().st_mtime_ns
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="genoembed.genome"):
        again = open_genome(gzipped)
    assert copy.stat().st_mtime_ns == before and len(list((cache / "fasta").iterdir())) == 1
    assert not [r for r in caplog.records if "decompressing" in r.getMessage()]
    assert _all_sequences(again) == _records()


def test_random_slices_match_across_compressions(tmp_path):
    records = _records()
    genomes = [open_genome(write_fasta(tmp_path / f"g{i}.fa{'.gz' if c else ''}", records, line_width=71,
                                       compression=c))
               for i, c in enumerate((None, "gzip", "bgzip"))]
    rng = random.Random(3)
    for _ in range(300):
        chrom = rng.choice(list(records))
        start = rng.randrange(len(records[chrom]))
        end = rng.randrange(start + 1, len(records[chrom]) + 1)
        strand = rng.choice("+-")
        expected = records[chrom][start:end]
        if strand == "-":
            expected = bio_reverse_complement(expected)
        assert [g.fetch(chrom, start, end, strand) for g in genomes] == [expected] * 3, (chrom, start, end, strand)


@pytest.mark.parametrize(("name", "compression"), [("bgzip-named-plain.fa", "bgzip"),
                                                   ("plain-named-gzip.fa.gz", None)])
def test_format_is_read_from_content_not_file_name(tmp_path, name, compression):
    records = _records()
    genome = open_genome(write_fasta(tmp_path / name, records, compression=compression))
    assert _all_sequences(genome) == records
    assert _files_under(tmp_path) == {Path(name)}


def test_large_bgzip_spanning_many_blocks(tmp_path, cache):
    # > 64 KiB so the sequence crosses BGZF block boundaries; the .gzi goes to the cache, not beside the file
    records = random_genome({"big": 300_000, "small": 70}, seed=11)
    path = write_fasta(tmp_path / "big.fa.gz", records, compression="bgzip")
    genome = open_genome(path)
    assert _files_under(tmp_path) == {Path("big.fa.gz")}
    assert {p.suffix for p in (cache / "fai").iterdir()} == {".fai", ".gzi", ".circular"}
    for start in (0, 65_000, 65_530, 131_070, 299_000):
        assert genome.fetch("big", start, start + 1000) == records["big"][start:start + 1000]
    assert genome.fetch("small", 0, 70) == records["small"]


# --- real data ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [PLASMID, CHLOROPLAST], ids=["plasmid", "chloroplast"])
def test_real_genome_matches_biopython(path):
    expected = _bioseqio(path)
    genome = open_genome(path)
    assert genome.contigs == {name: len(seq) for name, seq in expected.items()}
    (chrom, sequence), = expected.items()
    assert genome.fetch(chrom, 0, len(sequence)) == sequence
    rng = random.Random(0)
    for _ in range(100):
        start = rng.randrange(len(sequence) - 1)
        end = min(len(sequence), start + rng.randrange(1, 500))
        assert genome.fetch(chrom, start, end) == sequence[start:end]
        assert genome.fetch(chrom, start, end, "-") == bio_reverse_complement(sequence[start:end])


def test_real_plasmid_identity_and_checksum():
    genome = open_genome(PLASMID)
    assert genome.contigs == {"gi|45478711|ref|NC_005816.1|": 9609}
    assert genome.name == "NC_005816"
    assert genome.checksum == hashlib.sha256(PLASMID.read_bytes()).hexdigest()
    assert open_genome(PLASMID).checksum == genome.checksum
    assert genome.describe() == {"path": str(PLASMID), "name": "NC_005816", "sha256": genome.checksum,
                                 "contigs": 1, "length": 9609}
    assert open_genome(PLASMID, name="pPCP1").name == "pPCP1"


@pytest.mark.skipif(not ECOLI_GZ.exists(), reason="shared E. coli 536 genome not present")
def test_real_plain_gzip_ecoli(caplog):
    with caplog.at_level(logging.WARNING, logger="genoembed.genome"):
        genome = open_genome(ECOLI_GZ)
    assert any("plain gzip" in r.getMessage() for r in caplog.records)
    expected = _bioseqio(ECOLI_GZ)
    assert genome.contigs == {name: len(seq) for name, seq in expected.items()}
    chrom = next(iter(expected))
    sequence = expected[chrom]
    assert len(sequence) > 4_000_000
    for start in (0, 1_234_567, len(sequence) - 1000):
        assert genome.fetch(chrom, start, start + 1000) == sequence[start:start + 1000]


# --- checksum and cache ---------------------------------------------------------------------------


def test_checksum_is_stable_and_content_based(tmp_path):
    records = _records()
    first = open_genome(write_fasta(tmp_path / "a.fa", records))
    assert open_genome(tmp_path / "a.fa").checksum == first.checksum
    copy = tmp_path / "copy.fa"
    shutil.copyfile(tmp_path / "a.fa", copy)
    assert open_genome(copy).checksum == first.checksum
    changed = dict(records, chr2=("T" if records["chr2"][0] != "T" else "A") + records["chr2"][1:])
    assert open_genome(write_fasta(tmp_path / "b.fa", changed)).checksum != first.checksum


def test_copy_newer_than_cached_index_reuses_it_without_warning(tmp_path, cache):
    # the index is keyed by content: a copy (newer mtime) must not trip pyfaidx's mtime staleness warning
    original = write_fasta(tmp_path / "a.fa", _records())
    open_genome(original)
    indexes = _files_under(cache)
    copy = tmp_path / "copy.fa"
    shutil.copyfile(original, copy)
    future = (cache / "fai").stat().st_mtime + 3600
    os.utime(copy, (future, future))
    genome = open_genome(copy)  # warnings are errors under pytest: a RuntimeWarning would fail here
    assert {path for path in _files_under(cache) if path.parts[0] != "checksums"} == \
        {path for path in indexes if path.parts[0] != "checksums"}  # no second index (the copy's checksum is remembered)
    assert _all_sequences(genome) == _records()


def test_read_only_genome_directory(tmp_path, cache):
    folder = tmp_path / "ro"
    folder.mkdir()
    plain = write_fasta(folder / "g.fa", _records())
    bgzipped = write_fasta(folder / "g2.fa.gz", _records(), compression="bgzip")
    gzipped = write_fasta(folder / "g3.fa.gz", _records(), compression="gzip")
    before = _files_under(folder)
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        for path in (plain, bgzipped, gzipped):
            assert _all_sequences(open_genome(path)) == _records()
    finally:
        folder.chmod(stat.S_IRWXU)
    assert _files_under(folder) == before, "nothing may be written next to the genome"
    names = {p.name for p in (cache / "fai").iterdir()}
    assert len([n for n in names if n.endswith(".fai")]) == 3
    assert not [n for n in names if n.endswith(".tmp")], "temporary index files must be renamed or removed"


def test_line_endings_crlf_read_correctly(tmp_path):
    records = _records()
    for compression in (None, "gzip", "bgzip"):
        path = write_fasta(tmp_path / f"crlf-{compression}.fa", records, newline="\r\n", line_width=50,
                           compression=compression)
        genome = open_genome(path)
        assert genome.contigs == {name: len(seq) for name, seq in records.items()}, compression
        assert _all_sequences(genome) == records, compression
        assert genome.fetch("chr1", 45, 155) == records["chr1"][45:155], "slice across CRLF line breaks"


# --- content ----------------------------------------------------------------------------------------


def test_lowercase_and_iupac_pass_through(tmp_path):
    sequence = "ACGTacgt" + IUPAC_BOTH_CASES + "nnnnNNNN" + "gattaca"
    genome = open_genome(write_fasta(tmp_path / "iupac.fa", {"x": sequence}, line_width=10))
    assert genome.fetch("x", 0, len(sequence)) == sequence
    assert genome.fetch("x", 4, 8) == "acgt"
    assert genome.fetch("x", 0, len(sequence), "-") == bio_reverse_complement(sequence)


def test_header_description_is_not_part_of_the_name(tmp_path):
    path = tmp_path / "desc.fa"
    path.write_text(">chrA some description here\nACGT\n>chrB\nGG\n")
    assert open_genome(path).contigs == {"chrA": 4, "chrB": 2}


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=IUPAC_BOTH_CASES, max_size=200))
def test_reverse_complement_matches_biopython(sequence):
    assert reverse_complement(sequence) == bio_reverse_complement(sequence)
    # an involution, except that RNA U comes back as DNA T
    assert reverse_complement(reverse_complement(sequence)) == sequence.replace("U", "T").replace("u", "t")


def test_reverse_complement_examples():
    assert reverse_complement("") == ""
    assert reverse_complement("AACGTT") == "AACGTT"
    assert reverse_complement("acgtN") == "Nacgt"
    assert reverse_complement("RYKMBDHV") == "BDHVKMRY"
    assert reverse_complement("SWsw") == "wsWS"


def test_fetch_minus_strand_and_bad_strand(tmp_path):
    records = _records()
    genome = open_genome(write_fasta(tmp_path / "g.fa", records))
    assert genome.fetch("chr2", 10, 20, "-") == bio_reverse_complement(records["chr2"][10:20])
    assert genome.fetch("chr2", 10, 20, "+") == records["chr2"][10:20]
    with pytest.raises(InputError, match=r"g\.fa: strand 'x'.*must be '\+' or '-'"):
        genome.fetch("chr2", 10, 20, "x")


@pytest.mark.parametrize(("region", "message"), [
    (("chr2", 0, 1778), r"g\.fa: region chr2:0-1778 is outside chr2 \(length 1777\)"),
    (("chr2", -1, 10), r"g\.fa: region chr2:-1-10 is outside chr2"),
    (("chr2", 10, 10), r"g\.fa: region chr2:10-10 is outside.*0 <= start < end <= 1777"),
    (("chr2", 20, 10), r"g\.fa: region chr2:20-10 is outside"),
    (("chrX", 0, 10), r"g\.fa: unknown contig 'chrX'; known: chr1, chr2, tiny"),
])
def test_fetch_errors(tmp_path, region, message):
    genome = open_genome(write_fasta(tmp_path / "g.fa", _records()))
    with pytest.raises(InputError, match=message):
        genome.fetch(*region)


@pytest.mark.parametrize(("name", "expected"), [
    ("GRCh38.fa.gz", "GRCh38"), ("x.fasta", "x"), ("hg19.FA.BGZ", "hg19"), ("NC_1.fna", "NC_1"),
    ("genome", "genome"), (".fa", ".fa"), ("a.b.fa", "a.b"),
])
def test_genome_label(name, expected):
    assert genome_label(Path(name)) == expected


# --- input errors -----------------------------------------------------------------------------------


def _truncated_gzip(path: Path) -> Path:
    data = gzip.compress(b">a\n" + b"ACGT" * 50_000 + b"\n")
    path.write_bytes(data[: len(data) // 2])
    return path


def _truncated_bgzip(path: Path) -> Path:
    write_fasta(path, random_genome({"a": 200_000}), compression="bgzip")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _bgzip_bytes(path: Path, data: bytes) -> Path:
    with bgzf.BgzfWriter(str(path), "wb") as handle:
        handle.write(data)
    return path


BAD_INPUTS = {
    "missing": (lambda p: p / "nope.fa", r"nope\.fa: FASTA file not found"),
    "directory": (lambda p: (p / "dir.fa").mkdir() or p / "dir.fa", r"dir\.fa: is a directory"),
    "text": (lambda p: (p / "notes.fa").write_text("hello world\nnot dna\n") and p / "notes.fa",
             r"notes\.fa: not a FASTA file \(line 1 starts 'hello world'"),
    "png": (lambda p: (p / "img.fa").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
            and p / "img.fa", r"img\.fa: binary data, not a FASTA file"),
    "empty": (lambda p: (p / "empty.fa").write_bytes(b"") or p / "empty.fa", r"empty\.fa: file is empty"),
    "blank lines": (lambda p: (p / "blank.fa").write_text("\n \n\n") and p / "blank.fa", r"blank\.fa: file is empty"),
    "empty record": (lambda p: (p / "er.fa").write_text(">a\nACGT\n>hollow\n>b\nGG\n") and p / "er.fa",
                     r"er\.fa: record 'hollow' is empty"),
    "empty last record": (lambda p: (p / "el.fa").write_text(">a\nACGT\n>hollow\n") and p / "el.fa",
                          r"el\.fa: record 'hollow' is empty"),
    "header only": (lambda p: (p / "ho.fa").write_text(">only\n") and p / "ho.fa",
                    r"ho\.fa: .*(empty|no FASTA records|valid sequence)"),
    "duplicate names": (lambda p: (p / "dup.fa").write_text(">a x\nACGT\n>a y\nGG\n") and p / "dup.fa",
                        r"dup\.fa: record name 'a' on line 3 repeats line 1; record names must be unique"),
    "ragged lines": (lambda p: (p / "rag.fa").write_text(">a\nACGT\nAC\nACGT\n") and p / "rag.fa",
                     r"rag\.fa: record 'a', line 4: sequence after the shorter or blank line 3; fix line lengths"),
    "truncated gzip": (lambda p: _truncated_gzip(p / "cut.fa.gz"), r"cut\.fa\.gz: corrupt or truncated gzip"),
    "truncated bgzip": (lambda p: _truncated_bgzip(p / "cutb.fa.gz"),
                        r"cutb\.fa\.gz: corrupt or truncated compressed FASTA"),
    "gzip of text": (lambda p: (p / "t.fa.gz").write_bytes(gzip.compress(b"hello\n")) and p / "t.fa.gz",
                     r"t\.fa\.gz: not a FASTA file \(line 1 starts 'hello'"),
    "bgzip of text": (lambda p: _bgzip_bytes(p / "tb.fa.gz", b"hello\n"),
                      r"tb\.fa\.gz: not a FASTA file \(line 1 starts 'hello'"),
    "empty gzip": (lambda p: (p / "e.fa.gz").write_bytes(gzip.compress(b"")) and p / "e.fa.gz",
                   r"e\.fa\.gz: file is empty"),
    "empty bgzip": (lambda p: _bgzip_bytes(p / "eb.fa.gz", b""), r"eb\.fa\.gz: file is empty"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_inputs_raise_input_error_naming_the_file(tmp_path, case):
    make, message = BAD_INPUTS[case]
    path = make(tmp_path)
    with pytest.raises(InputError, match=message) as caught:
        open_genome(path)
    assert str(path) in str(caught.value)


def test_failed_gzip_leaves_no_partial_copy(tmp_path, cache):
    with pytest.raises(InputError, match="truncated"):
        open_genome(_truncated_gzip(tmp_path / "cut.fa.gz"))
    assert not (cache / "fasta").exists() or not any((cache / "fasta").iterdir())


# --- indexing: streamed, byte-checked -----------------------------------------------------------------


def _chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


def _pyfaidx_index(path: Path, tmp_path: Path) -> list[str]:
    fai = tmp_path / "reference.fai"
    fai.unlink(missing_ok=True)
    pyfaidx.Faidx(str(path), indexname=str(fai)).close()
    return fai.read_text().splitlines(keepends=True)


_LAYOUT = st.fixed_dictionaries({
    "lengths": st.lists(st.integers(1, 300), min_size=1, max_size=4),
    "width": st.integers(1, 80),
    "newline": st.sampled_from(["\n", "\r\n"]),
    "final_newline": st.booleans(),
    "blank_after": st.booleans(),  # one blank line after each record ("\n" files only, as pyfaidx allows)
    "chunk": st.integers(1, 97),
    "seed": st.integers(0, 1000),
})


@settings(max_examples=60, deadline=None)
@given(_LAYOUT)
def test_streamed_index_matches_pyfaidx_for_any_layout_and_chunking(tmp_path_factory, layout):
    tmp_path = tmp_path_factory.mktemp("layout")
    records = random_genome({f"r{i}": n for i, n in enumerate(layout["lengths"])}, seed=layout["seed"])
    newline = layout["newline"]
    lines = []
    for name, sequence in records.items():
        lines += [f">{name} described"] + [sequence[i:i + layout["width"]]
                                           for i in range(0, len(sequence), layout["width"])]
        lines += [""] if layout["blank_after"] and newline == "\n" else []
    text = newline.join(lines) + (newline if layout["final_newline"] else "")
    path = tmp_path / "g.fa"
    path.write_bytes(text.encode())
    rows = scan_fasta(_chunks(path.read_bytes(), layout["chunk"]), path)
    assert [row.fai_line() for row in rows] == _pyfaidx_index(path, tmp_path)
    assert [row.line for row in rows] == [i + 1 for i, line in enumerate(lines) if line.startswith(">")]


@pytest.mark.parametrize("compression", [None, "gzip", "bgzip"])
def test_one_line_record_of_megabases_fetched_at_random_positions(tmp_path, monkeypatch, compression):
    # a chunk size that is not a divisor of anything, so lines and CRLF pairs straddle chunks
    monkeypatch.setattr(genome_module, "_SCAN_CHUNK", 65_537)
    records = random_genome({"one_line": 3_000_000, "wrapped": 5_000}, seed=5)
    records["one_line"] = records["one_line"][:1_000_000] + records["one_line"][1_000_000:1_200_000].lower() \
        + "NRYKM" + records["one_line"][1_200_005:]
    for newline in ("\n", "\r\n"):
        path = tmp_path / f"single{len(newline)}.fa"
        lines = [">one_line", records["one_line"], ">wrapped"] + [records["wrapped"][i:i + 70]
                                                                  for i in range(0, 5000, 70)]
        data = (newline.join(lines) + newline).encode()
        if compression == "bgzip":
            _bgzip_bytes(path, data)
        else:
            path.write_bytes(gzip.compress(data, compresslevel=1) if compression else data)
        genome = open_genome(path)
        assert genome.contigs == {"one_line": 3_000_000, "wrapped": 5_000}
        rng = random.Random(len(newline))
        for _ in range(200):
            chrom = rng.choice(list(records))
            start = rng.randrange(len(records[chrom]))
            end = min(len(records[chrom]), start + rng.randrange(1, 3000))
            assert genome.fetch(chrom, start, end) == records[chrom][start:end], (newline, chrom, start, end)
        assert genome.fetch("one_line", 2_999_990, 3_000_000) == records["one_line"][-10:]


GENBANK_PASTE = ">paste\n        1 acgtacgtac gtacgtacgt\n       21 acgt\n"
HOSTILE = {
    "genbank paste": (GENBANK_PASTE, r"record 'paste', line 2, column 1: space in sequence; .*GenBank/EMBL"),
    "digits": (">d\nACGT\n1234\n", r"record 'd', line 3, column 1: character '1' in sequence; .*GenBank/EMBL"),
    "tab": (">t\nACGT\nAC\tT\n", r"record 't', line 3, column 3: tab in sequence; .*converted to FASTA"),
    "space at end": (">s\nACGT \nACG\n", r"record 's', line 2, column 5: space in sequence"),
    "utf-8 é": (">u\nACGT\nACéT\n", r"record 'u', line 3, column 3: non-ASCII byte 0xc3 in sequence; "
                                    r".*corrupt or not plain text"),
    "NUL": (">n\nACGT\nAC\x00T\n", r"record 'n', line 3, column 3: NUL byte in sequence; .*re-download"),
    "gap": (">g\nAC-T\n", r"record 'g', line 2, column 3: character '-' in sequence; .*gaps .*`seqkit seq -g`"),
    "stop": (">p\nACGT*\n", r"record 'p', line 2, column 5: character '\*' in sequence; .*gaps and stops"),
    "protein": (">p\nEFIL\n", r"record 'p', line 2, column 1: character 'E' in sequence; .*protein"),
    "'>' inside a line": (">a\nAC>GT\n", r"record 'a', line 2, column 3: character '>' in sequence"),
    "old Mac line ends": (">m\rACGT\rACGT\r", r"line 1: carriage return inside the header line \(old Mac .*mac2unix"),
    "lone CR": (">c\nAC\rGT\n", r"record 'c', line 2, column 3: carriage return without newline in sequence; "
                                r".*mac2unix"),
    "mixed line ends": (">x\nACGT\r\nACGT\nAC\n", r"record 'x', line 3: line ending differs .*dos2unix"),
    "long line": (">l\nACGT\nACGTA\nAC\n", r"record 'l', line 3: 5 bases but the record's first line has 4; "
                                          r"fix line lengths"),
    "blank line inside": (">b\nACGT\n\nACGT\n", r"record 'b', line 4: sequence after the shorter or blank line 3"),
    "no name": (">\nACGT\n", r"line 1: header '>' has no name; write '>name'"),
    "name not UTF-8": (b">\xff\xfe\nACGT\n", r"line 1: record name .* is not UTF-8 text; rename"),
    "text before header": ("\n  \n x\n>a\nACGT\n", r"not a FASTA file|line 3: text before the first"),
}


@pytest.mark.parametrize("compression", [None, "gzip", "bgzip"])
@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_sequence_bytes_refused_naming_record_line_and_fix(tmp_path, case, compression):
    text, message = HOSTILE[case]
    data = text if isinstance(text, bytes) else text.encode()
    path = tmp_path / ("h.fa" + (".gz" if compression else ""))
    if compression == "bgzip":
        _bgzip_bytes(path, data)
    else:
        path.write_bytes(gzip.compress(data) if compression else data)
    with pytest.raises(InputError, match=message) as caught:
        open_genome(path)
    text = str(caught.value)
    assert text.startswith(f"{path}: ") and "\n" not in text


def test_refusal_deep_in_a_big_file_names_the_right_line_and_caches_nothing(tmp_path, cache, monkeypatch):
    monkeypatch.setattr(genome_module, "_SCAN_CHUNK", 4099)
    records = random_genome({"a": 50_000, "b": 120_000}, seed=2)
    line = 1 + 834 + 1 + 1_000 + 1  # header a, its 834 lines (50 000 / 60), header b, 1000 lines of b, then this one
    wrapped = [records["b"][i:i + 60] for i in range(0, 120_000, 60)]
    wrapped[1_000] = wrapped[1_000][:17] + " " + wrapped[1_000][18:]
    text = write_fasta(tmp_path / "ok.fa", {"a": records["a"]}).read_text() + ">b\n" + "\n".join(wrapped) + "\n"
    for compression in (None, "gzip", "bgzip"):
        path = tmp_path / f"deep-{compression}.fa"
        if compression == "bgzip":
            _bgzip_bytes(path, text.encode())
        else:
            path.write_bytes(gzip.compress(text.encode()) if compression else text.encode())
        for _ in range(2):  # refused again on a second open: a refused file leaves no index behind
            with pytest.raises(InputError, match=rf"deep-{compression}\.fa: record 'b', line {line}, column 18: "
                                                 "space in sequence"):
                open_genome(path)
    assert not list((cache / "fai").iterdir())


def test_nul_before_any_header_is_still_called_binary(tmp_path):
    path = tmp_path / "bin.fa"
    path.write_bytes(b"\x00\x01>a\nACGT\n")
    with pytest.raises(InputError, match=r"bin\.fa: binary data, not a FASTA file"):
        open_genome(path)


def test_sequence_alphabet_is_stated_once_and_accepted(tmp_path):
    assert set(SEQUENCE_LETTERS.decode()) == set(IUPAC_BOTH_CASES)
    sequence = SEQUENCE_LETTERS.decode() * 3
    genome = open_genome(write_fasta(tmp_path / "all.fa", {"x": sequence}, line_width=7, newline="\r\n"))
    assert genome.fetch("x", 0, len(sequence)) == sequence


def test_bgzip_without_eof_marker_is_refused(tmp_path):
    path = write_fasta(tmp_path / "noeof.fa.gz", _records(), compression="bgzip")
    data = path.read_bytes()
    path.write_bytes(data[:-28])  # the 28-byte empty EOF block bgzip appends
    with pytest.raises(InputError, match=r"noeof\.fa\.gz: bgzip end-of-file marker missing"):
        open_genome(path)


_PIECE = 1 << 22
_LETTERS = np.frombuffer(b"ACGTACGTACGTacgN", dtype=np.uint8)


def _piece(index: int, length: int) -> bytes:
    """Bases ``[index * _PIECE, ...)`` of a long seeded record, regenerated on demand (never held whole)."""
    size = min(_PIECE, length - index * _PIECE)
    return _LETTERS[np.random.default_rng([7, index]).integers(0, 16, size, dtype=np.uint8)].tobytes()


@pytest.mark.slow
def test_quarter_gigabase_single_line_indexes_in_bounded_memory(tmp_path, cache):
    length = 250_000_000
    path = tmp_path / "one-line.fa"
    with open(path, "wb") as handle:
        handle.write(b">chr1\n")
        for index in range(-(-length // _PIECE)):
            handle.write(_piece(index, length))
        handle.write(b"\n>after\nACGT\n")
    tracemalloc.start()
    try:
        genome = open_genome(path)
        start = length - 3 * _PIECE - 123  # far into the line, across a piece boundary
        fetched = genome.fetch("chr1", start, start + 10_000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20, f"indexing a {length:,} bp line peaked at {peak / 2**20:.0f} MiB of Python memory"
    fai = next((cache / "fai").glob("*.fai")).read_text()
    assert fai == f"chr1\t{length}\t6\t{length}\t{length + 1}\nafter\t4\t{6 + length + 1 + 7}\t4\t5\n"
    first = start // _PIECE
    oracle = _piece(first, length) + _piece(first + 1, length)
    assert fetched == oracle[start - first * _PIECE:][:10_000].decode()
    assert genome.fetch("after", 0, 4) == "ACGT"
    path.unlink()


def test_checksum_is_remembered_until_the_file_changes(tmp_path, fresh_cache, monkeypatch):
    """Reopening an unchanged FASTA trusts the remembered sha256 (no re-read); any edit, a garbled memo
    or an unwritable cache falls back to reading the file, and the checksum is always the file's own."""
    fasta = tmp_path / "g.fa"
    fasta.write_text(">c1\nACGTACGTAC\n")
    first = open_genome(fasta).checksum
    assert first == hashlib.sha256(fasta.read_bytes()).hexdigest()
    real = genome_module.file_checksum
    monkeypatch.setattr(genome_module, "file_checksum", lambda path: pytest.fail("re-read an unchanged file"))
    assert open_genome(fasta).checksum == first
    monkeypatch.setattr(genome_module, "file_checksum", real)
    before = fasta.stat().st_mtime_ns
    fasta.write_text(">c1\nACGTACGTAA\n")  # same size: the modification time tells it changed
    os.utime(fasta, ns=(before + 10**6, before + 10**6))  # even where the clock is coarser than two writes
    assert open_genome(fasta).checksum == hashlib.sha256(fasta.read_bytes()).hexdigest() != first
    for memo in (fresh_cache / "checksums").iterdir():
        memo.write_text("not a checksum")
    assert open_genome(fasta).checksum == hashlib.sha256(fasta.read_bytes()).hexdigest()
    shutil.rmtree(fresh_cache / "checksums")
    (fresh_cache / "checksums").write_text("a file where the memo folder should be")
    assert open_genome(fasta).checksum == hashlib.sha256(fasta.read_bytes()).hexdigest()
