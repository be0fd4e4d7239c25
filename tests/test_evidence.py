"""Evidence for hits on real data: the strand a query matches (the chloroplast's inverted-repeat rRNA
copies), alignment identity checked against minimap2 and an independent Smith-Waterman, loci, and
output formats read by plain csv, bedtools and PAF readers."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess

import numpy as np
import pyarrow as pa
import pytest
from conftest import CHLOROPLAST_FASTA
from typer.testing import CliRunner

from genoembed.cli import app
from genoembed.errors import InputError, command
from genoembed.evidence import (
    GAP_EXISTENCE,
    GAP_EXTENSION,
    MATCH,
    MISMATCH,
    align,
    match_strand,
    merge_loci,
)
from genoembed.schema import ALIGNMENT_COLUMNS
from genoembed.search import Query, search
from genoembed.seqio import reverse_complement

pytest.importorskip("parasail")
CONTIG = "NC_000932.1"
# GenBank NC_000932: rrn16S 101012..102502 and complement(136147..137637); rrn23S 104691..107500 and
# complement(131149..133958): the two copies of the inverted repeat, one on each strand.
RRN16 = ((101011, 102502), (136146, 137637))
RRN23 = ((104690, 107500), (131148, 133958))
runner = CliRunner()


def invoke(*args, **options):
    return runner.invoke(app, [str(a) for a in args], **options)


def overlaps(locus: dict, span: tuple[int, int]) -> bool:
    return locus["start"] < span[1] and span[0] < locus["end"]


@pytest.mark.parametrize("gene", [RRN16, RRN23], ids=["rrn16", "rrn23"])
def test_minus_strand_rrna_copy_reports_minus(chloroplast_store, gene):
    plus, minus = gene
    region = f"{CONTIG}:{plus[0] + 1}-{plus[1]}"
    for aligned in (False, True):
        hits = search(chloroplast_store, [region], k=8, align=aligned)
        loci = merge_loci(hits).to_pylist()
        assert [locus["strand"] for locus in loci if overlaps(locus, minus)] == ["-"]
        assert [locus["strand"] for locus in loci if overlaps(locus, plus)] == ["+"]
        if aligned:  # the copy found exactly, base for base
            copy = next(locus for locus in loci if overlaps(locus, minus))
            assert (copy["target_start"], copy["target_end"], copy["identity"]) == (*minus, 1.0)
            assert copy["query_coverage"] == 1.0 and copy["cigar"] == f"{plus[1] - plus[0]}="


def test_loci_merge_tiles_and_leave_no_duplicates(chloroplast_store):
    hits = search(chloroplast_store, [f"{CONTIG}:{RRN16[0][0] + 1}-{RRN16[0][1]}"], k=10)
    loci = merge_loci(hits).to_pylist()
    assert sum(locus["tiles"] for locus in loci) == hits.num_rows and len(loci) < hits.num_rows
    assert [locus["rank"] for locus in loci] == list(range(1, len(loci) + 1))
    for first in loci:  # no two loci of one contig and strand overlap or touch
        for second in loci:
            if first is not second and (first["chrom"], first["strand"]) == (second["chrom"], second["strand"]):
                assert first["end"] < second["start"] or second["end"] < first["start"]
    best = max(hits.to_pylist(), key=lambda hit: hit["score"])
    assert loci[0]["score"] == best["score"] and loci[0]["tile_id"] == best["tile_id"]


def test_both_strands_with_strand_invariant_vectors_is_refused(tmp_path):
    from genoembed.build import index
    from genoembed.embedders.base import strand_invariant
    from genoembed.embedders.kmer import KmerEmbedder
    from genoembed.tiles import TilingSpec

    with pytest.raises(InputError, match=r"strands=both .* stores every locus twice; tile one strand with --strands \+"):
        index(CHLOROPLAST_FASTA, tmp_path / "s", embedder=KmerEmbedder(k=4), tiling=TilingSpec(strands="both"))
    assert not (tmp_path / "s").exists()
    assert not strand_invariant(KmerEmbedder(k=4, canonical=False), 1000)


def mutated(sequence: str, seed: int, substitution: float = 0.06, indels: int = 4) -> str:
    """``sequence`` with seeded substitutions and a few 1-3 bp insertions and deletions."""
    rng = np.random.default_rng(seed)
    bases = list(sequence)
    for position in np.flatnonzero(rng.random(len(bases)) < substitution):
        bases[position] = "ACGT"[("ACGT".index(bases[position]) + int(rng.integers(1, 4))) % 4]
    for position in sorted(rng.choice(np.arange(50, len(bases) - 50), indels, replace=False), reverse=True):
        size = int(rng.integers(1, 4))
        if rng.random() < 0.5:
            del bases[position:position + size]
        else:
            bases[position:position] = list(rng.choice(list("ACGT"), size))
    return "".join(bases)


def smith_waterman_score(query: str, target: str) -> int:
    """Independent oracle: Gotoh local alignment score, written from the textbook recurrences
    (+1/-2, a gap of k bases costs existence + k * extension)."""
    open_cost, extend = GAP_EXISTENCE + GAP_EXTENSION, GAP_EXTENSION
    columns = len(target) + 1
    previous_h, previous_f = [0] * columns, [-10**9] * columns
    best = 0
    for a in query:
        h, e = [0] * columns, -10**9
        for j in range(1, columns):
            e = max(h[j - 1] - open_cost, e - extend)
            previous_f[j] = max(previous_h[j] - open_cost, previous_f[j] - extend)
            diagonal = previous_h[j - 1] + (MATCH if a == target[j - 1] else MISMATCH)
            h[j] = max(0, diagonal, e, previous_f[j])
            best = max(best, h[j])
        previous_h = h
    return best


@pytest.mark.skipif(shutil.which("minimap2") is None, reason="minimap2 is not installed")
@pytest.mark.parametrize("seed,strand", [(1, "+"), (2, "-")])
def test_identity_agrees_with_minimap2_and_an_independent_smith_waterman(chloroplast_store, tmp_path, seed, strand):
    genome = chloroplast_store.genome()
    origin = (20_300, 20_900)
    query = mutated(genome.fetch(CONTIG, *origin, strand), seed)
    hits = search(chloroplast_store, [Query("mutant", query)], k=3, align=True).to_pylist()
    top = max(hits, key=lambda hit: hit["alignment_score"] or 0)
    assert top["strand"] == strand and abs(top["target_start"] - origin[0]) < 10 and abs(top["target_end"] - origin[1]) < 10
    # the same pair through minimap2 (PAF: column 10 matches / column 11 alignment columns)
    start, end = top["target_start"] - 100, top["target_end"] + 100
    (tmp_path / "t.fa").write_text(f">t\n{genome.fetch(CONTIG, start, end)}\n")
    (tmp_path / "q.fa").write_text(f">q\n{query}\n")
    paf = subprocess.run(["minimap2", "-c", "--cs", str(tmp_path / "t.fa"), str(tmp_path / "q.fa")],
                         capture_output=True, text=True, check=True).stdout.split("\t")
    assert paf[4] == strand
    assert top["identity"] == pytest.approx(int(paf[9]) / int(paf[10]), abs=0.01)
    assert top["target_start"] == pytest.approx(start + int(paf[7]), abs=5)
    oracle = smith_waterman_score(query if strand == "+" else reverse_complement(query),
                                  genome.fetch(CONTIG, top["target_start"] - 30, top["target_end"] + 30).upper())
    assert top["alignment_score"] == oracle
    assert top["matches"] + top["mismatches"] <= top["aligned_length"] and 0.85 < top["identity"] < 0.97


def test_alignment_coordinates_on_both_strands():
    target = "TTTTTTTTTT" + "ACGGTCAGTTAGCCATGACCA" + "GGGGGGGGGG"
    forward = align("ACGGTCAGTTAGCCATGACCA", target, target_offset=1000)
    assert (forward.strand, forward.target_start, forward.target_end, forward.identity) == ("+", 1010, 1031, 1.0)
    reverse = align("AA" + reverse_complement("ACGGTCAGTTAGCCATGACCA"), target)
    assert (reverse.strand, reverse.query_aligned_start, reverse.query_aligned_end) == ("-", 2, 23)
    assert match_strand(reverse_complement(target), target) == "-" and match_strand(target, target) == "+"
    assert align("AAAA", "CCCC") is None


@pytest.fixture(scope="module")
def annotated(tmp_path_factory):
    """A copy of a small chloroplast store built through the CLI (forward tiles, 4-mer, Flat)."""
    out = tmp_path_factory.mktemp("cli") / "store"
    result = invoke("index", "--fasta", CHLOROPLAST_FASTA, "--output", out, "--model", "kmer:4", "--strands", "+",
                    "--factory", "Flat", "--threads", "1", "--quiet")
    assert result.exit_code == 0, result.output
    return out


def data_lines(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO("".join(line + "\n" for line in text.splitlines() if not line.startswith("#"))),
                           delimiter="\t"))


def test_blast6_bed_and_paf_read_without_genoembed(annotated, tmp_path):
    regions = ["-r", f"{CONTIG}:{RRN23[0][0] + 1}-{RRN23[0][1]}", "-r", f"{CONTIG}:{RRN16[0][0] + 1}-{RRN16[0][1]}"]
    result = invoke("search", annotated, *regions, "-k", "6", "--format", "blast7", "--no-save")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[1].startswith("# Fields: query acc.ver, subject acc.ver, % identity")
    rows = data_lines(result.stdout)
    plain = invoke("search", annotated, *regions, "-k", "6", "--format", "blast6", "--no-save")
    assert plain.exit_code == 0 and not any(line.startswith("#") for line in plain.stdout.splitlines())
    assert list(csv.reader(io.StringIO(plain.stdout), delimiter="\t")) == rows  # outfmt 6: no comment lines
    assert all(len(row) == 12 for row in rows)
    assert [row[0] for row in rows][0].endswith(f"{RRN23[0][0] + 1}-{RRN23[0][1]}")  # input order, not sorted
    minus = [row for row in rows if int(row[8]) > int(row[9])]  # BLAST: sstart > send on the minus strand
    assert any((int(row[9]) - 1, int(row[8])) == RRN16[1] and float(row[2]) == 100.0 for row in minus)
    assert all(float(row[10]) >= 0 and float(row[11]) > 0 for row in rows)

    bed_file = tmp_path / "hits.bed"
    result = invoke("search", annotated, *regions, "-k", "6", "--format", "bed", "-o", bed_file, "--no-save")
    assert result.exit_code == 0, result.output
    assert not bed_file.read_text().startswith("#")  # BED has no header line
    bed = data_lines(bed_file.read_text())
    assert all(len(row) == 6 and 0 <= int(row[4]) <= 1000 and row[5] in "+-" for row in bed)
    assert len({row[3] for row in bed}) == len(bed) and all("#" in row[3] for row in bed)  # query#rank names
    assert {row[5] for row in bed} == {"+", "-"}
    if shutil.which("bedtools"):
        sorted_bed = subprocess.run(["bedtools", "sort", "-i", str(bed_file)], capture_output=True, text=True, check=True)
        assert len(sorted_bed.stdout.splitlines()) == len(bed)

    result = invoke("search", annotated, *regions, "-k", "6", "--format", "paf", "--tiles", "--no-map", "--no-save")
    assert result.exit_code == 0, result.output
    paf = data_lines(result.stdout)
    assert len(paf) == 12 and all(len(row) >= 12 and row[4] in "+-" for row in paf)
    assert all(int(row[9]) <= int(row[10]) and row[13].startswith("cg:Z:") for row in paf)

    result = invoke("search", annotated, *regions, "--format", "paf", "--no-align")
    assert result.exit_code == 2 and "drop --no-align" in result.stderr


def test_filters_stdin_and_json(annotated):
    fasta = f">copy\n{CHLOROPLAST_FASTA.read_text().split(chr(10), 1)[1].replace(chr(10), '')[30_000:31_000]}\n"
    result = invoke("search", annotated, "--fasta", "-", "-k", "5", "--align", "--min-identity", "0.99",
                    "--format", "json", "--no-save", input=fasta)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert rows and all(row["identity"] >= 0.99 and row["query"] == "copy" for row in rows)
    assert rows[0]["target_start"] == 30_000 and rows[0]["strand"] == "+"
    result = invoke("search", annotated, "--bed", "-", "--format", "tsv", "--tiles", "--no-save",
                    input=f"{CONTIG}\t1000\t2000\tmy_gene\t0\t-\n")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[1].split("\t")[0] == "my_gene"
    result = invoke("search", annotated, "--fasta", "-", "--no-save", input="not a fasta\n")
    assert result.exit_code == 2 and result.stderr.startswith("genoembed: error: <stdin>:1: not a FASTA file")
    result = invoke("search", annotated, "-r", f"{CONTIG}:1-1000", "--min-identity", "0.9")
    assert result.exit_code == 2 and "--align" in result.stderr


def test_version_help_and_completion():
    from genoembed.version import VERSION

    assert invoke("--version").stdout.strip() == f"genoembed {VERSION}"
    result = invoke("-h")
    assert result.exit_code == 0 and "--install-completion" in result.stdout
    result = invoke("search", "-h")
    assert result.exit_code == 0 and "--threads" in result.stdout and "blast6" in result.stdout


def test_hints_are_quoted_commands():
    assert command("verify", "/data/my store") == "`genoembed verify '/data/my store'`"
    assert command("sql", "s", "SELECT 1") == "`genoembed sql s 'SELECT 1'`"


def test_batched_strands_equal_a_pure_python_oracle(monkeypatch):
    """match_strands (all hits at once, rows grouped by length, in bounded blocks) against a per-pair count of
    the target's 6-mers (and its reverse complement's) that occur in the query, in plain Python: lengths vary,
    N and lower case included, targets shorter than k, every query against several targets."""
    from genoembed import evidence
    from genoembed.evidence import kmer_presence, match_strands

    monkeypatch.setattr(evidence, "STRAND_ELEMENTS", 700)  # several blocks per length, one row for the longest
    rng = np.random.default_rng(5)
    queries = ["".join(rng.choice(list("ACGTACGTNacgt"), rng.integers(3, 1200))) for _ in range(40)]
    query_of = rng.integers(0, len(queries), 2125)
    targets = []
    for number in query_of:
        source = queries[number][int(rng.integers(0, 20)):] or "A"
        targets.append(reverse_complement(source) if rng.random() < 0.5 else
                       "".join(rng.choice(list("ACGTN"), len(source))) if rng.random() < 0.2 else source)

    def kmers(sequence: str) -> list[str]:
        sequence = sequence.upper()
        return [sequence[i:i + 6] for i in range(len(sequence) - 5) if set(sequence[i:i + 6]) <= set("ACGT")]

    def oracle(query: str, target: str) -> str:
        present = set(kmers(query))
        forward = sum(kmer in present for kmer in kmers(target))
        reverse = sum(kmer in present for kmer in kmers(reverse_complement(target.upper())))
        return "+" if forward > reverse else "-" if reverse > forward else "."

    found = match_strands(kmer_presence(queries), query_of, targets)
    expected = [oracle(queries[number], target) for number, target in zip(query_of, targets)]
    assert list(found) == expected
    assert {"+", "-", "."} <= set(expected)  # every outcome exercised


def _loci_by_sweep(rows: list[dict], sign: float) -> list[dict]:
    """Reference merge, row by row: per query (in first-seen order) and genome/contig/strand, sweep the tiles by
    start; a tile starting after the locus's end opens a new locus; keep the first best score and alignment."""
    out = []
    for query in dict.fromkeys(row["query"] for row in rows):
        loci = []
        mine = sorted((r for r in rows if r["query"] == query),
                      key=lambda r: (r["genome"], r["chrom"], r["strand"], r["start"], r["end"]))
        for row in mine:
            last = loci[-1] if loci else None
            if last and (last["genome"], last["chrom"], last["strand"]) == (row["genome"], row["chrom"], row["strand"]) \
                    and row["start"] <= last["end"]:
                last["end"], last["tiles"] = max(last["end"], row["end"]), last["tiles"] + 1
                if sign * row["score"] > sign * last["score"]:
                    last.update(score=row["score"], tile_id=row["tile_id"])
                if "alignment_score" in row and (row["alignment_score"] or 0) > (last["alignment_score"] or 0):
                    last.update({name: row[name] for name in ALIGNMENT_COLUMNS})
            else:
                loci.append({**row, "tiles": 1})
        loci.sort(key=lambda locus: -sign * locus["score"])
        out += [{**locus, "rank": rank} for rank, locus in enumerate(loci, 1)]
    return out


@pytest.mark.parametrize("aligned, higher_is_better", [(False, True), (True, True), (False, False)])
def test_merged_loci_equal_a_row_by_row_sweep(aligned, higher_is_better):
    """Seeded hits with touching, nested, duplicate and distant tiles on two genomes, both strands, tied
    scores and null alignments: the columnar merge gives the sweep's rows, in the same order."""
    from genoembed import schema

    rng = np.random.default_rng(11)
    rows = []
    for number in range(60):
        for rank in range(1, int(rng.integers(1, 12))):
            start = int(rng.choice([0, 500, 1000, 1500, 4000, 9000])) + int(rng.integers(0, 3)) * 250
            row = {"query": f"q{number % 23}" if number % 5 else f"q{number}", "query_chrom": None,
                   "query_start": None, "query_end": None, "query_strand": None, "rank": rank,
                   "tile_id": int(rng.integers(0, 10_000)), "genome": str(rng.choice(["a", "b"])),
                   "chrom": str(rng.choice(["c1", "c2"])), "start": start,
                   "end": start + int(rng.choice([250, 500, 1000])), "strand": str(rng.choice(["+", "-", "."])),
                   "score": float(rng.choice([0.5, 0.75, 0.9, 0.9]))}
            if aligned:
                score = None if rng.random() < 0.3 else int(rng.integers(0, 4))
                row.update({name: None for name in schema.ALIGNMENT_COLUMNS},
                           query_length=1000, alignment_score=score, cigar=None if score is None else f"{score}=")
            rows.append(row)
    table = pa.Table.from_pylist(rows, schema=schema.ALIGNED_HITS if aligned else schema.HITS)
    merged = merge_loci(table, higher_is_better=higher_is_better)
    assert merged.to_pylist() == _loci_by_sweep(table.to_pylist(), 1.0 if higher_is_better else -1.0)
    assert merged.num_rows < table.num_rows and merge_loci(table.slice(0, 0)).num_rows == 0
