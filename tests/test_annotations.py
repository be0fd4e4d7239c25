"""Parsing BED/GTF/GFF3/GenBank into the ANNOTATIONS schema, and reconciling contig names."""

from __future__ import annotations

import gzip
import re
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from genoembed import schema
from genoembed.annotations import (
    MAX_REPORTED,
    apply_aliases,
    check_contigs,
    detect_format,
    parse_alias_option,
    read_annotations,
    require_known_contigs,
    suggest_aliases,
)
from genoembed.errors import InputError

DATA = Path(__file__).parent / "data"
HAND = DATA / "annotations"
PLASMID_GB = DATA / "NC_005816.gb"
PLASMID_FNA = DATA / "NC_005816.fna"
CHLOROPLAST_GB = Path(__file__).parent.parent / "genoembed" / "data" / "demo" / "NC_000932.gb"


def rows(table: pa.Table) -> list[dict]:
    return [{**row, "attributes": dict(row["attributes"] or [])} for row in table.to_pylist()]


def conforms(table: pa.Table, where: str) -> None:
    assert table.schema.equals(schema.ANNOTATIONS)
    assert schema.validate_table(table, schema.ANNOTATIONS, where) == []


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ------------------------------------------------------------------ formats

@pytest.mark.parametrize("name, expected", [
    ("a.bed", "bed"), ("a.BED.gz", "bed"), ("a.gtf.gz", "gtf"), ("a.gff", "gff3"), ("a.gff3.gz", "gff3"),
    ("a.gb", "genbank"), ("a.gbk", "genbank"), ("a.genbank.gz", "genbank")])
def test_format_from_extension(name, expected):
    assert detect_format(name) == expected


def test_unknown_extension_names_the_fix():
    with pytest.raises(InputError, match=r"notes\.txt: cannot tell the annotation format.*pass the format"):
        detect_format("notes.txt")


def test_explicit_format_overrides_extension(tmp_path):
    path = tmp_path / "features.txt"
    shutil.copy(HAND / "features.bed", path)
    assert read_annotations(path, format="bed").num_rows == 3


def test_gzip_read_transparently(tmp_path):
    path = tmp_path / "genes.gtf.gz"
    path.write_bytes(gzip.compress((HAND / "genes.gtf").read_bytes()))
    assert read_annotations(path).equals(read_annotations(HAND / "genes.gtf").set_column(
        8, schema.ANNOTATIONS.field("source"), pa.array([str(path)] * 4)))


def test_missing_file_is_input_error(tmp_path):
    with pytest.raises(InputError, match=r"nope\.bed: cannot open"):
        read_annotations(tmp_path / "nope.bed")


# ------------------------------------------------------------------ BED

def test_bed_skips_track_browser_and_header_lines():
    table = read_annotations(HAND / "features.bed")
    conforms(table, "features.bed")
    got = rows(table)
    assert [(r["chrom"], r["start"], r["end"], r["strand"], r["name"]) for r in got] == [
        ("chr1", 0, 100, "+", "first"), ("chr1", 100, 250, "-", None), ("chr2", 10, 10, ".", "insertion")]
    assert {r["type"] for r in got} == {"region"}
    assert got[0]["attributes"] == {"score": "5"}
    assert got[0]["source"] == str(HAND / "features.bed")


def test_bed3_has_unknown_strand(tmp_path):
    path = write(tmp_path, "three.bed", "c\t5\t9\n")
    assert rows(read_annotations(path)) == [
        {"chrom": "c", "start": 5, "end": 9, "strand": ".", "type": "region", "name": None, "feature_id": None,
         "parent": None, "source": str(path), "attributes": {}, "parts": None}]


def test_bed12_keeps_blocks_as_attributes():
    (row,) = rows(read_annotations(HAND / "blocks.bed"))
    assert (row["start"], row["end"], row["strand"], row["name"]) == (1000, 5000, "+", "tx1")
    assert row["attributes"] == {"score": "960", "thickStart": "1200", "thickEnd": "4900", "itemRgb": "255,0,0",
                                 "blockCount": "3", "blockSizes": "500,400,1000,", "blockStarts": "0,1500,3000,"}


@pytest.mark.parametrize("line, message", [
    ("c\t10\t5", r"bad\.bed:1: start 10 > end 5; swap them"),
    ("c\t-1\t5", r"bad\.bed:1: negative start -1;"),
    ("c\t1.5\t5", r"bad\.bed:1: start/end '1\.5'/'5' are not integers;"),
    ("c\t1", r"bad\.bed:1: 2 columns; a BED line has 3 to 12"),
    ("c\t1\t5\tn\t0\tx", r"bad\.bed:1: strand 'x'; use \+, - or \."),
    ("c\t1\t5\tn\t0\t+\t1\t5\t0\t2\t4,\t0,", r"bad\.bed:1: blockCount 2 but 1 blockSizes"),
])
def test_bed_errors_name_file_and_line(tmp_path, line, message):
    path = write(tmp_path, "bad.bed", line + "\n")
    with pytest.raises(InputError, match=r"^1 malformed line in .*bad\.bed\n.*" + message):
        read_annotations(path)


def test_bed_contig_named_like_a_header_keyword_is_data(tmp_path):
    # found by tests/test_parsers_property.py: 'track1' used to be skipped as a track line
    path = write(tmp_path, "kw.bed", "track name=x\ntrack1\t0\t5\nbrowser_2\t1\t2\nbrowser position c:1-9\n")
    assert [(r["chrom"], r["start"], r["end"]) for r in rows(read_annotations(path))] == [
        ("track1", 0, 5), ("browser_2", 1, 2)]


@pytest.mark.parametrize("coordinate", ["1_000", "+5", "\u0663", "1e3"])
def test_coordinates_are_plain_ascii_integers(tmp_path, coordinate):
    # int() accepts the first three; bedtools and samtools would not read them as the same number
    bed = write(tmp_path, "n.bed", f"c\t{coordinate}\t2000\n")
    with pytest.raises(InputError, match=rf"n\.bed:1: start/end '{re.escape(coordinate)}'/'2000' are not integers"):
        read_annotations(bed)
    gtf = write(tmp_path, "n.gtf", f'c\tx\texon\t{coordinate}\t2000\t.\t+\t.\tgene_id "g";\n')
    with pytest.raises(InputError, match=r"n\.gtf:1: start/end .* are not integers"):
        read_annotations(gtf)


def test_bed_reports_all_problems_with_summary_first(tmp_path):
    lines = ["track name=x", "c\t0\t10", "c\t10\t5", "c\t0\t10\tname", "c\tx\t10", "c\t0\t10"]
    path = write(tmp_path, "many.bed", "\n".join(lines) + "\n")
    with pytest.raises(InputError) as caught:
        read_annotations(path)
    message = str(caught.value).splitlines()
    assert message[0] == f"3 malformed lines in {path}"
    assert [re.match(r".*many\.bed:(\d+):", line).group(1) for line in message[1:]] == ["3", "4", "5"]
    assert "4 columns but the first feature line has 3" in message[2]


def test_bed_error_list_is_capped(tmp_path):
    path = write(tmp_path, "worse.bed", "c\t9\t1\n" * (MAX_REPORTED + 5))
    with pytest.raises(InputError, match=rf"^{MAX_REPORTED + 5} malformed lines in") as caught:
        read_annotations(path)
    message = str(caught.value).splitlines()
    assert len(message) == 1 + MAX_REPORTED + 1 and message[-1] == "... and 5 more"


# ------------------------------------------------------------------ GTF

def test_gtf_ids_parents_and_coordinates():
    table = read_annotations(HAND / "genes.gtf")
    conforms(table, "genes.gtf")
    got = rows(table)
    assert [(r["type"], r["start"], r["end"], r["feature_id"], r["parent"], r["name"]) for r in got] == [
        ("gene", 11868, 14409, "ENSG00000223972.5", None, "DDX11L1"),
        ("transcript", 11868, 14409, "ENST00000456328.2", "ENSG00000223972.5", "DDX11L1"),
        ("exon", 11868, 12227, "ENSE00002234944.1", "ENST00000456328.2", "DDX11L1"),
        ("CDS", 12009, 12057, None, "ENST00000456328.2", "DDX11L1")]
    assert got[1]["attributes"]["tag"] == "basic,Ensembl_canonical"
    assert got[1]["attributes"]["gff_source"] == "HAVANA"
    assert got[3]["attributes"]["phase"] == "0"
    assert got[2]["attributes"]["exon_number"] == "1"


def test_gtf_missing_gene_id_names_file_and_line(tmp_path):
    text = (HAND / "genes.gtf").read_text() + 'chr1\tx\texon\t5\t9\t.\t+\t.\ttranscript_id "t";\n'
    path = write(tmp_path, "no_gene.gtf", text)
    with pytest.raises(InputError, match=r"no_gene\.gtf:6: no gene_id attribute; every GTF line needs gene_id"):
        read_annotations(path)


def test_gtf_empty_attribute_column_reports_the_missing_gene_id(tmp_path):
    path = write(tmp_path, "dot.gtf", "chr1\tx\texon\t5\t9\t.\t+\t.\t.\n")
    with pytest.raises(InputError, match=r"dot\.gtf:1: no gene_id attribute"):
        read_annotations(path)


@pytest.mark.parametrize("columns, message", [
    ("chr1\tx\texon\t0\t9\t.\t+\t.\tgene_id \"g\";", r"bad\.gtf:1: start 0, end 9; .*1-based closed"),
    ("chr1\tx\texon\t10\t9\t.\t+\t.\tgene_id \"g\";", r"bad\.gtf:1: start 10, end 9;"),
    ("chr1\tx\texon\tten\t9\t.\t+\t.\tgene_id \"g\";", r"bad\.gtf:1: start/end 'ten'/'9' are not integers"),
    ("chr1\tx\texon\t1\t9\t.\t+\t.", r"bad\.gtf:1: 8 tab-separated columns; .*exactly 9"),
    ("chr1\tx\texon\t1\t9\t.\t*\t.\tgene_id \"g\";", r"bad\.gtf:1: strand '\*'"),
    ("chr1\tx\texon\t1\t9\t.\t+\t.\tgene_id \"g", r"bad\.gtf:1: cannot read attributes"),
])
def test_gtf_errors(tmp_path, columns, message):
    path = write(tmp_path, "bad.gtf", columns + "\n")
    with pytest.raises(InputError, match=message):
        read_annotations(path)


# ------------------------------------------------------------------ GFF3

def test_gff3_escapes_multiple_parents_and_fasta_section():
    table = read_annotations(HAND / "escaped.gff3")
    conforms(table, "escaped.gff3")
    got = rows(table)
    assert len(got) == 5  # '###' ignored, nothing read after ##FASTA
    assert {r["chrom"] for r in got} == {"ctg;1"}
    gene = got[0]
    assert (gene["start"], gene["end"], gene["name"], gene["feature_id"]) == (999, 2000, "abc;def", "gene1")
    assert gene["attributes"]["Note"] == "left,right=ok"
    exon = next(r for r in got if r["type"] == "exon")
    assert exon["parent"] == "mrna1,mrna2"
    assert next(r for r in got if r["type"] == "CDS")["strand"] == "."  # '?' means unknown


def test_gff3_attribute_without_equals(tmp_path):
    path = write(tmp_path, "bad.gff3", "##gff-version 3\nc\tx\tgene\t1\t5\t.\t+\t.\tID=a;gene_id \"g\"\n")
    with pytest.raises(InputError, match=r"bad\.gff3:2: attribute 'gene_id \"g\"' has no '='"):
        read_annotations(path)


# ------------------------------------------------------------------ GenBank

def genbank_features(path: Path) -> list:
    from Bio import SeqIO

    with open(path) as handle:
        return [f for record in SeqIO.parse(handle, "genbank") for f in record.features if f.type != "source"]


def test_genbank_plasmid_counts_and_first_gene():
    table = read_annotations(PLASMID_GB)
    conforms(table, "NC_005816.gb")
    assert table.num_rows == len(genbank_features(PLASMID_GB)) == 40
    genes = rows(table.filter(pc.equal(table["type"], "gene")))
    # From the file text: "gene  87..1109  /locus_tag="YP_pPCP01"" (1-based closed).
    first = genes[0]
    assert (first["chrom"], first["start"], first["end"], first["strand"]) == ("NC_005816.1", 86, 1109, "+")
    assert first["name"] == first["feature_id"] == "YP_pPCP01"
    assert first["attributes"]["db_xref"] == "GeneID:2767718"
    assert "source" not in set(table["type"].to_pylist())


def test_genbank_chloroplast_compound_locations():
    table = read_annotations(CHLOROPLAST_GB)
    conforms(table, "NC_000932.gb")
    features = genbank_features(CHLOROPLAST_GB)
    assert table.num_rows == len(features) == 258
    compound = [f for f in features if len(f.location.parts) > 1]
    got = rows(table)
    assert len([r for r in got if r["attributes"].get("parts")]) == len(compound)
    # "gene complement(join(97999..98793,69611..69724))  /gene="rps12"": one row spanning both parts.
    rps12 = rows(table.filter(pc.and_(pc.equal(table["name"], "rps12"), pc.equal(table["type"], "gene"))))[0]
    assert (rps12["start"], rps12["end"], rps12["strand"]) == (69610, 98793, "-")
    assert rps12["attributes"]["parts"] == "69610-69724:-,97998-98793:-"


def test_genbank_origin_spanning_feature_is_split(tmp_path):
    from Bio import SeqIO
    from Bio.Seq import Seq
    from Bio.SeqFeature import CompoundLocation, SeqFeature, SimpleLocation
    from Bio.SeqRecord import SeqRecord

    record = SeqRecord(Seq("ACGT" * 25), id="circ.1", name="circ",
                       annotations={"molecule_type": "DNA", "topology": "circular"})
    across = CompoundLocation([SimpleLocation(90, 100, 1), SimpleLocation(0, 5, 1)])
    back = CompoundLocation([SimpleLocation(0, 5, -1), SimpleLocation(90, 100, -1)])
    record.features = [SeqFeature(across, type="gene", qualifiers={"gene": ["ori"]}),
                       SeqFeature(back, type="gene", qualifiers={"gene": ["iro"]}),
                       SeqFeature(SimpleLocation(10, 20, 1), type="CDS", qualifiers={"locus_tag": ["x1"]})]
    path = tmp_path / "circ.gb"
    SeqIO.write(record, path, "genbank")
    got = rows(read_annotations(path))
    assert [(r["name"], r["start"], r["end"], r["strand"], r["attributes"].get("origin_split")) for r in got] == [
        ("ori", 90, 100, "+", "1/2"), ("ori", 0, 5, "+", "2/2"),
        ("iro", 0, 5, "-", "1/2"), ("iro", 90, 100, "-", "2/2"), ("x1", 10, 20, "+", None)]
    assert all(r["start"] <= r["end"] for r in got)


def test_not_genbank_is_input_error(tmp_path):
    path = write(tmp_path, "empty.gb", "hello\n")
    with pytest.raises(InputError, match=r"empty\.gb: no GenBank records"):
        read_annotations(path)


# ------------------------------------------------------------------ contigs

def fasta_lengths(path: Path) -> dict[str, int]:
    from Bio import SeqIO

    with open(path) as handle:
        return {record.id: len(record.seq) for record in SeqIO.parse(handle, "fasta")}


def test_fasta_header_alias_suggested_for_real_plasmid():
    lengths = fasta_lengths(PLASMID_FNA)
    assert list(lengths) == ["gi|45478711|ref|NC_005816.1|"]
    table = read_annotations(PLASMID_GB)
    report = check_contigs(table, lengths, PLASMID_GB)
    assert report.unknown == ("NC_005816.1",) and report.rows_unknown == 40 and not report.ok
    assert report.suggestions == {"NC_005816.1": "gi|45478711|ref|NC_005816.1|"}
    with pytest.raises(InputError, match=r"annotations .*NC_005816\.gb: 1 contig not in the genome .*did you mean "
                                         r"'NC_005816\.1'→'gi\|45478711\|ref\|NC_005816\.1\|'\? pass --alias "
                                         r"NC_005816\.1=gi\|45478711\|ref\|NC_005816\.1\| or --auto-alias"):
        require_known_contigs(table, lengths, PLASMID_GB)
    fixed = apply_aliases(table, suggest_aliases(table, lengths))
    require_known_contigs(fixed, lengths, PLASMID_GB)
    assert check_contigs(fixed, lengths, PLASMID_GB).ok


@pytest.mark.parametrize("annotation, genome", [
    ("chr1", "1"), ("1", "chr1"), ("NC_005816", "NC_005816.1"), ("chrM", "MT"), ("CHRX", "X"),
    ("NC_005816.1", "gi|45478711|ref|NC_005816.1|")])
def test_suggestions(annotation, genome):
    table = read_annotations(HAND / "features.bed")
    table = apply_aliases(table, {"chr1": annotation})
    assert suggest_aliases(table, {genome: 1000, "2": 50}) == {annotation: genome, "chr2": "2"}


def test_ambiguous_or_missing_contig_gets_no_suggestion_but_a_fix():
    table = read_annotations(HAND / "features.bed")
    report = check_contigs(table, {"1": 1000, "chr1.2": 1000}, "features.bed")
    assert report.unknown == ("chr1", "chr2") and report.suggestions == {}
    with pytest.raises(InputError, match=r"2 contigs not in the genome \(3 features; e.g. 'chr1'\); rename them "
                                         r"with --alias FROM=TO"):
        require_known_contigs(table, {"1": 1000, "chr1.2": 1000}, "features.bed")


def test_features_past_contig_end_reported():
    table = read_annotations(HAND / "features.bed")
    report = check_contigs(table, {"chr1": 200, "chr2": 10}, "features.bed")
    assert report.unknown == () and report.beyond_end == (("chr1", 1, 250, 200),)
    with pytest.raises(InputError, match=r"features\.bed: 1 feature extend.*'chr1' has a feature ending at 250 but is "
                                         r"200 bp"):
        require_known_contigs(table, {"chr1": 200, "chr2": 10}, "features.bed")


def test_aliases_applied_on_read():
    table = read_annotations(HAND / "features.bed", aliases={"chr1": "1"})
    assert table["chrom"].to_pylist() == ["1", "1", "chr2"]
    conforms(table, "features.bed")


def test_parse_alias_option():
    assert parse_alias_option(["chr1=1", " chrM = MT "]) == {"chr1": "1", "chrM": "MT"}
    assert parse_alias_option([]) == {}
    with pytest.raises(InputError, match=r"^--alias 'chr1': expected FROM=TO"):
        parse_alias_option(["chr1"])
    with pytest.raises(InputError, match=r"^2 bad --alias values\n--alias '=1'.*\n--alias 'a=c': 'a' is already"):
        parse_alias_option(["=1", "a=b", "a=c"])
