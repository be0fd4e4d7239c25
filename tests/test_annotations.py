"""Parsing BED/GTF/GFF3/GenBank into the FEATURES schema, and reconciling contig names."""

from __future__ import annotations

import gzip
import re
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from genoembed import schema
from genoembed.features import (
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
    assert table.schema.equals(schema.FEATURES)
    assert schema.validate_table(table, schema.FEATURES, where) == []


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
        8, schema.FEATURES.field("source"), pa.array([str(path)] * 4)))


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


def test_bed12_blocks_are_parts():
    (row,) = rows(read_annotations(HAND / "blocks.bed"))
    assert (row["start"], row["end"], row["strand"], row["name"]) == (1000, 5000, "+", "tx1")
    assert row["attributes"] == {"score": "960", "thickStart": "1200", "thickEnd": "4900", "itemRgb": "255,0,0",
                                 "blockCount": "3", "blockSizes": "500,400,1000,", "blockStarts": "0,1500,3000,"}
    # blockStarts are offsets from chromStart (1000): 1000+0, 1000+1500, 1000+3000
    assert row["parts"] == [{"start": 1000, "end": 1500, "strand": "+"}, {"start": 2500, "end": 2900, "strand": "+"},
                            {"start": 4000, "end": 5000, "strand": "+"}]


def test_bed12_single_block_is_one_span(tmp_path):
    path = write(tmp_path, "one.bed", "c\t10\t30\tx\t0\t-\t10\t30\t0\t1\t20,\t0,\n")
    assert rows(read_annotations(path))[0]["parts"] is None


@pytest.mark.parametrize("line, message", [
    ("c\t10\t5", r"bad\.bed:1: start 10 > end 5; swap them"),
    ("c\t-1\t5", r"bad\.bed:1: negative start -1;"),
    ("c\t1.5\t5", r"bad\.bed:1: start/end '1\.5'/'5' are not integers;"),
    ("c\t1", r"bad\.bed:1: 2 columns; a BED line has 3 to 12"),
    ("c\t1\t5\tn\t0\tx", r"bad\.bed:1: strand 'x'; use \+, - or \."),
    ("c\t1\t5\tn\t0\t+\t1\t5\t0\t2\t4,\t0,", r"bad\.bed:1: blockCount 2 but 1 blockSizes"),
    ("c\t1\t5\tn\t0\t+\t1\t5\t0\t2\t2,3,\t0,2,", r"bad\.bed:1: block 2 lies outside chromStart-chromEnd; "),
    ("c\t1\t5\tn\t0\t+\t1\t5\t0\t2\t2,x,\t0,2,", r"bad\.bed:1: blockSizes '2,x,' / .* not integer lists"),
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


GTF_TRANSCRIPT = """\
c\tt\tgene\t101\t900\t.\t-\t.\tgene_id "g1"; gene_name "abc";
c\tt\ttranscript\t101\t900\t.\t-\t.\tgene_id "g1"; transcript_id "t1";
c\tt\texon\t801\t900\t.\t-\t.\tgene_id "g1"; transcript_id "t1"; exon_number "1"; exon_id "e1";
c\tt\tCDS\t801\t850\t.\t-\t0\tgene_id "g1"; transcript_id "t1"; exon_number "1";
c\tt\texon\t101\t300\t.\t-\t.\tgene_id "g1"; transcript_id "t1"; exon_number "2"; exon_id "e2";
c\tt\tCDS\t201\t300\t.\t-\t1\tgene_id "g1"; transcript_id "t1"; exon_number "2";
c\tt\tCDS\t5\t9\t.\t+\t0\tgene_id "g2"; transcript_id "t2";
"""


def test_gtf_transcript_exons_and_cds_rows_are_parts(tmp_path):
    got = rows(read_annotations(write(tmp_path, "t.gtf", GTF_TRANSCRIPT)))
    assert [(r["type"], r["start"], r["end"], r["feature_id"]) for r in got] == [
        ("gene", 100, 900, "g1"), ("transcript", 100, 900, "t1"), ("exon", 800, 900, "e1"),
        ("CDS", 200, 850, None), ("exon", 100, 300, "e2"), ("CDS", 4, 9, None)]
    gene, transcript, exon, cds, _, single = got
    assert gene["parts"] is None and exon["parts"] is None and single["parts"] is None
    assert transcript["parts"] == [{"start": 800, "end": 900, "strand": "-"}, {"start": 100, "end": 300, "strand": "-"}]
    assert cds["parts"] == [{"start": 800, "end": 850, "strand": "-"}, {"start": 200, "end": 300, "strand": "-"}]
    assert (cds["attributes"]["phase"], cds["attributes"]["exon_number"], cds["parent"]) == ("0,1", "1,2", "t1")


def test_gtf_rows_of_one_transcript_on_two_contigs(tmp_path):
    text = GTF_TRANSCRIPT.replace('c\tt\tCDS\t201', 'd\tt\tCDS\t201')
    with pytest.raises(InputError, match=r"^1 malformed line in .*\n.*t\.gtf:6: transcript 't1' CDS rows are on 'c' as "
                                         r"'CDS' \(line 4\) but this one on 'd' as 'CDS'; give the rows of one feature"):
        read_annotations(write(tmp_path, "t.gtf", text))


# ------------------------------------------------------------------ GFF3

GFF3_SPLIT = """\
##gff-version 3
c\tx\tgene\t1\t1000\t.\t+\t.\tID=gene1;Name=abc
c\tx\tmRNA\t1\t1000\t.\t+\t.\tID=mrna1;Parent=gene1
c\tx\texon\t1\t200\t.\t+\t.\tParent=mrna1
c\tx\tCDS\t51\t200\t.\t+\t0\tID=cds1;Parent=mrna1
c\tx\texon\t501\t600\t.\t+\t.\tParent=mrna1
c\tx\tCDS\t501\t600\t.\t+\t0\tID=cds1;Parent=mrna1
c\tx\texon\t901\t1000\t.\t+\t.\tParent=mrna1
c\tx\tCDS\t901\t950\t.\t+\t2\tID=cds1;Parent=mrna1
"""


def test_gff3_rows_sharing_an_id_and_exons_of_a_parent_are_parts(tmp_path):
    table = read_annotations(write(tmp_path, "s.gff3", GFF3_SPLIT))
    conforms(table, "s.gff3")
    got = rows(table)
    assert [(r["type"], r["start"], r["end"]) for r in got] == [
        ("gene", 0, 1000), ("mRNA", 0, 1000), ("exon", 0, 200), ("CDS", 50, 950), ("exon", 500, 600),
        ("exon", 900, 1000)]
    gene, mrna, _, cds, _, _ = got
    assert gene["parts"] is None  # the file gives the gene as one span
    assert [(p["start"], p["end"]) for p in mrna["parts"]] == [(0, 200), (500, 600), (900, 1000)]
    assert [(p["start"], p["end"]) for p in cds["parts"]] == [(50, 200), (500, 600), (900, 950)]
    assert cds["attributes"]["phase"] == "0,0,2" and cds["attributes"]["ID"] == "cds1"


def test_gff3_one_id_on_two_types_is_an_error(tmp_path):
    text = GFF3_SPLIT.replace("c\tx\tCDS\t901", "c\tx\texon\t901")
    with pytest.raises(InputError, match=r"s\.gff3:9: ID 'cds1' are on 'c' as 'CDS' \(line 5\) but this one on 'c' as "
                                         r"'exon'; give the rows of one feature the same seqid and type"):
        read_annotations(write(tmp_path, "s.gff3", text))


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
    assert sum(r["parts"] is not None for r in got) == len(compound)
    # "gene complement(join(97999..98793,69611..69724))  /gene="rps12"": one row spanning both parts.
    rps12, other = rows(table.filter(pc.and_(pc.equal(table["name"], "rps12"), pc.equal(table["type"], "gene"))))
    assert (rps12["start"], rps12["end"], rps12["strand"]) == (69610, 98793, "-")
    assert rps12["attributes"]["parts"] == "69610-69724:-,97998-98793:-"
    assert rps12["parts"] == [{"start": 69610, "end": 69724, "strand": "-"},
                              {"start": 97998, "end": 98793, "strand": "-"}]
    # "gene join(complement(69611..69724),139856..140650)": trans-spliced, parts on both strands
    assert (other["start"], other["end"], other["strand"]) == (69610, 140650, ".")
    assert other["parts"] == [{"start": 69610, "end": 69724, "strand": "-"},
                              {"start": 139855, "end": 140650, "strand": "+"}]


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
                       SeqFeature(SimpleLocation(10, 20, 1), type="CDS", qualifiers={"locus_tag": ["x1"]}),
                       SeqFeature(CompoundLocation([SimpleLocation(80, 85, 1), SimpleLocation(90, 100, 1),
                                                    SimpleLocation(0, 5, 1), SimpleLocation(20, 30, 1)]),
                                  type="CDS", qualifiers={"gene": ["multi"]})]
    path = tmp_path / "circ.gb"
    SeqIO.write(record, path, "genbank")
    got = rows(read_annotations(path))
    assert [(r["name"], r["start"], r["end"], r["strand"], r["attributes"].get("origin_split")) for r in got] == [
        ("ori", 90, 100, "+", "1/2"), ("ori", 0, 5, "+", "2/2"),
        ("iro", 0, 5, "-", "1/2"), ("iro", 90, 100, "-", "2/2"), ("x1", 10, 20, "+", None),
        ("multi", 80, 100, "+", "1/2"), ("multi", 0, 30, "+", "2/2")]
    assert all(r["start"] <= r["end"] for r in got)
    # each side of the origin keeps its own parts; a side with one part is a plain span
    assert [r["parts"] for r in got[:5]] == [None] * 5
    assert got[5]["parts"] == [{"start": 80, "end": 85, "strand": "+"}, {"start": 90, "end": 100, "strand": "+"}]
    assert got[6]["parts"] == [{"start": 0, "end": 5, "strand": "+"}, {"start": 20, "end": 30, "strand": "+"}]


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


def test_gtf_repeated_keys_in_every_shape_keep_their_order(tmp_path):
    """The columnar reader's three ways to merge attributes (no repeats; repeats in one run, GENCODE's
    tag "a"; tag "b"; anything else) give the line-by-line reading: first position, values comma-joined."""
    path = write(tmp_path, "tags.gtf", "".join(f"c\tHAVANA\texon\t1\t10\t{score}\t+\t.\t{text}\n" for score, text in [
        (".", 'gene_id "g"; transcript_id "t1"; tag "basic"; tag "CCDS"; level 2;'),
        (".", 'gene_id "g"; transcript_id "t2"; tag "a"; level 2; tag "b"; note "x; y";'),
        ("5", 'gene_id "g"; transcript_id "t3"; score "7"; tag "c"; tag "d"')]))
    got = [list(row["attributes"]) for row in read_annotations(path).to_pylist()]
    assert got == [
        [("gene_id", "g"), ("transcript_id", "t1"), ("tag", "basic,CCDS"), ("level", "2"), ("gff_source", "HAVANA")],
        [("gene_id", "g"), ("transcript_id", "t2"), ("tag", "a,b"), ("level", "2"), ("note", "x; y"),
         ("gff_source", "HAVANA")],
        [("gene_id", "g"), ("transcript_id", "t3"), ("score", "5"), ("tag", "c,d"), ("gff_source", "HAVANA")]]
