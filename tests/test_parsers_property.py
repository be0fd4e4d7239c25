"""Property tests for the BED / GTF / GFF3 readers: random valid features round-trip through a file.

Each test draws features from a small model, writes them in the format (with
header, comment and blank lines, CRLF or LF, sometimes gzipped), parses the
file and compares every row with what the model says the reader must return
(coordinates 0-based half-open as genoembed/schema.py states). The malformed
tests hide one bad row among valid ones and require one InputError naming
``file:line`` of exactly that row.
"""

from __future__ import annotations

import gzip
import itertools
import string
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genoembed.features import BED_TYPE, read_annotations
from genoembed.errors import InputError

SETTINGS = settings(max_examples=100, deadline=None)

BED_EXTRA = ("score", "strand", "thickStart", "thickEnd", "itemRgb", "blockCount", "blockSizes", "blockStarts")
WORD = st.text(string.ascii_letters + string.digits + "_.|-", min_size=1, max_size=10)
# contigs that merely start like the BED header keywords are data; the bare words themselves open header lines
CHROM = st.one_of(WORD.filter(lambda word: word not in ("track", "browser")),
                  st.sampled_from(["track1", "browser_2", "trackX", "tracks", "chrUn_KI270302v1"]))
# free text: any printable character but tabs, line breaks and other controls (and no edge spaces, see GFF3)
TEXT = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), min_size=1, max_size=12).filter(
    lambda text: text == text.strip())
START = st.integers(0, 10**9)
LENGTH = st.integers(0, 10**6)


def table_rows(table) -> list[dict]:
    return [{**row, "attributes": dict(row["attributes"] or [])} for row in table.to_pylist()]


def write_file(folder: Path, name: str, lines: list[str], crlf: bool, compressed: bool) -> Path:
    data = ("\r\n" if crlf else "\n").join(lines).encode() + (b"\r\n" if crlf else b"\n")
    path = folder / (name + (".gz" if compressed else ""))
    path.write_bytes(gzip.compress(data) if compressed else data)
    return path


def interleave(draw, lines: list[str], extras: list[str]) -> tuple[list[str], list[int]]:
    """``lines`` with ``extras`` (comments, blank lines) drawn in between; also the line number of each of ``lines``."""
    out, numbers = [], []
    for line in lines:
        out += draw(st.lists(st.sampled_from(extras), max_size=2))
        out.append(line)
        numbers.append(len(out))
    return out, numbers


def expected_row(path: Path, chrom, start, end, strand, kind, name, feature_id, parent, attributes,
                 parts=None) -> dict:
    return {"chrom": chrom, "start": start, "end": end, "strand": strand, "type": kind, "name": name,
            "feature_id": feature_id, "parent": parent, "source": str(path), "attributes": attributes,
            "parts": parts}


_FRESH = itertools.count()


def unique_by(key):
    """For st.lists(unique_by=...): rows with the same non-null ``key`` value are not drawn together (rows
    sharing an id are one multi-part feature, tested on their own in test_annotations.py)."""
    return lambda feature: key(feature[1]) if key(feature[1]) is not None else ("fresh", next(_FRESH))


def first_problem(path: Path, call) -> list[str]:
    with pytest.raises(InputError) as caught:
        call(path)
    return str(caught.value).splitlines()


# ---------------------------------------------------------------- BED

BED_WIDTHS = [3, 4, 5, 6, 7, 8, 9, 12]
BED_HEADERS = ["track name=demo description=\"x y\"", "browser position chr1:1-1000", "#chrom\tstart\tend", "", "  "]


@st.composite
def bed_feature(draw, width: int) -> tuple[list[str], dict]:
    """One BED line's fields and the columns the reader must give for it (start/end unchanged)."""
    start = draw(START)
    end = start + draw(LENGTH)
    fields = [draw(CHROM), str(start), str(end)]
    name = draw(st.one_of(st.just("."), TEXT))
    # valid blocks lie inside chromStart-chromEnd: an offset, then a size that fits
    offsets = draw(st.lists(st.integers(0, end - start), min_size=1, max_size=4))
    blocks = [(at, draw(st.integers(0, end - start - at))) for at in offsets]
    strand = draw(st.sampled_from("+-."))
    optional = [name, str(draw(st.integers(0, 1000))), strand, str(start), str(end),
                draw(st.sampled_from(["0", "255,0,0"])), str(len(blocks)),
                ",".join(str(size) for _, size in blocks) + ",", ",".join(str(at) for at, _ in blocks) + ","]
    fields += optional[: width - 3]
    attributes = {key: value for key, value in zip(BED_EXTRA, fields[4:]) if key != "strand"}
    model = {"chrom": fields[0], "start": start, "end": end, "strand": fields[5] if width > 5 else ".",
             "kind": BED_TYPE, "name": None if width < 4 or name == "." else name, "feature_id": None,
             "parent": None, "attributes": attributes,
             "parts": [{"start": start + at, "end": start + at + size, "strand": strand} for at, size in blocks]
             if width == 12 and len(blocks) > 1 else None}
    return fields, model


@SETTINGS
@given(data=st.data(), width=st.sampled_from(BED_WIDTHS), crlf=st.booleans(), compressed=st.booleans())
def test_bed_round_trip(tmp_path_factory, data, width, crlf, compressed):
    features = data.draw(st.lists(bed_feature(width), min_size=1, max_size=8))
    lines, _ = interleave(data.draw, ["\t".join(fields) for fields, _ in features], BED_HEADERS)
    path = write_file(tmp_path_factory.mktemp("bed"), "f.bed", lines, crlf, compressed)
    assert table_rows(read_annotations(path)) == [expected_row(path, **model) for _, model in features]


BED_BAD = {
    "start > end": lambda draw, fields: [fields[0], str(int(fields[2]) + draw(st.integers(1, 99))), fields[2]]
    + fields[3:],
    "negative start": lambda draw, fields: [fields[0], str(-draw(st.integers(1, 99)))] + fields[2:],
    "too few columns": lambda draw, fields: fields[:2],
    "too many columns": lambda draw, fields: (fields + ["x"] * 13)[:13],
    "not an integer": lambda draw, fields: [fields[0], draw(st.sampled_from(["1.5", "1e3", "ten", "1_000", "٣", ""]))]
    + fields[2:],
}


@SETTINGS
@given(data=st.data(), width=st.sampled_from(BED_WIDTHS), bad=st.sampled_from(list(BED_BAD)))
def test_bed_malformed_row_named_by_file_and_line(tmp_path_factory, data, width, bad):
    features = [fields for fields, _ in data.draw(st.lists(bed_feature(width), min_size=1, max_size=6))]
    at = data.draw(st.integers(0, len(features)))
    broken = BED_BAD[bad](data.draw, data.draw(bed_feature(width))[0])
    lines, numbers = interleave(data.draw, ["\t".join(f) for f in features[:at] + [broken] + features[at:]],
                                BED_HEADERS)
    path = write_file(tmp_path_factory.mktemp("bed"), "bad.bed", lines, crlf=False, compressed=False)
    message = first_problem(path, read_annotations)
    assert message[0] == f"1 malformed line in {path}"
    assert message[1].startswith(f"{path}:{numbers[at]}: ") and "; " in message[1]


# ---------------------------------------------------------------- GTF

GTF_KINDS = ["gene", "transcript", "exon", "CDS", "UTR", "start_codon"]
GTF_EXTRAS = ["#!genome-build test", "# comment", ""]
QUOTED = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp"), blacklist_characters='"\\'),
                 max_size=12)  # may hold ';' and spaces: the quotes protect them


@st.composite
def gtf_feature(draw, with_gene_id: bool = True) -> tuple[str, dict]:
    kind = draw(st.sampled_from(GTF_KINDS))
    start = draw(START) + 1
    end = start + draw(LENGTH)
    source, score = draw(st.sampled_from([".", "HAVANA"])), draw(st.sampled_from([".", "0", "0.5", "1000"]))
    strand, phase = draw(st.sampled_from("+-.?")), draw(st.sampled_from(".012"))
    ids = {key: draw(QUOTED.filter(bool)) for key in ("gene_id", "transcript_id", "exon_id", "gene_name")
           if (key == "gene_id" and with_gene_id) or (key != "gene_id" and draw(st.booleans()))}
    pairs = [(key, f'"{value}"') for key, value in ids.items()]
    pairs += [("tag", f'"{value}"') for value in draw(st.lists(QUOTED, max_size=3))]
    pairs += [("level", str(draw(st.integers(1, 3))))] if draw(st.booleans()) else []
    pairs += [("note", f'"{draw(QUOTED)}"')] if draw(st.booleans()) else []
    pairs = draw(st.permutations(pairs))
    separator, last = draw(st.sampled_from(["; ", ";", " ;  "])), draw(st.sampled_from(["", ";", "; "]))
    text = separator.join(f"{key} {value}" for key, value in pairs) + (last if pairs else "")
    attributes: dict[str, str] = {}
    for key, value in pairs:
        value = value.strip('"')
        attributes[key] = f"{attributes[key]},{value}" if key in attributes else value
    gene, transcript = ids.get("gene_id"), ids.get("transcript_id")
    feature_id, parent = {"gene": (gene, None), "transcript": (transcript, gene)}.get(
        kind, (ids.get("exon_id"), transcript or gene))
    columns = {key: value for key, value in (("gff_source", source), ("score", score), ("phase", phase))
               if value != "."}
    line = "\t".join([draw(CHROM), source, kind, str(start), str(end), score, strand, phase, text or '.'])
    model = {"chrom": line.split("\t")[0], "start": start - 1, "end": end, "strand": "." if strand == "?" else strand,
             "kind": kind, "name": ids.get("gene_name", gene), "feature_id": feature_id, "parent": parent,
             "attributes": {**attributes, **columns}}
    return line, model


@SETTINGS
@given(data=st.data(), crlf=st.booleans(), compressed=st.booleans())
def test_gtf_round_trip(tmp_path_factory, data, crlf, compressed):
    features = data.draw(st.lists(gtf_feature(), min_size=1, max_size=8,
                                  unique_by=unique_by(lambda model: model["attributes"].get("transcript_id"))))
    lines, _ = interleave(data.draw, [line for line, _ in features], GTF_EXTRAS)
    path = write_file(tmp_path_factory.mktemp("gtf"), "f.gtf", lines, crlf, compressed)
    assert table_rows(read_annotations(path)) == [expected_row(path, **model) for _, model in features]


def _columns(line: str, **changes: str) -> str:
    fields = line.split("\t")
    for index, value in changes.items():
        fields[int(index[1:])] = value
    return "\t".join(fields)


GFF_BAD = {  # shared by GTF and GFF3: the nine columns are the same
    "start > end": lambda draw, line: _columns(line, c3=str(int(line.split("\t")[4]) + draw(st.integers(1, 99)))),
    "start below 1": lambda draw, line: _columns(line, c3=str(-draw(st.integers(0, 99)))),
    "eight columns": lambda draw, line: "\t".join(line.split("\t")[:8]),
    "ten columns": lambda draw, line: line + "\textra",
    "not an integer": lambda draw, line: _columns(line, c4=draw(st.sampled_from(["1.5", "1e3", "x", "1_000", "٣"]))),
    "bad strand": lambda draw, line: _columns(line, c6=draw(st.sampled_from(["*", "plus", "++", ""]))),
}


@SETTINGS
@given(data=st.data(), bad=st.sampled_from([*GFF_BAD, "no gene_id"]))
def test_gtf_malformed_row_named_by_file_and_line(tmp_path_factory, data, bad):
    features = [line for line, _ in data.draw(st.lists(gtf_feature(), min_size=1, max_size=6))]
    at = data.draw(st.integers(0, len(features)))
    if bad == "no gene_id":
        broken = data.draw(gtf_feature(with_gene_id=False))[0]
    else:
        broken = GFF_BAD[bad](data.draw, data.draw(gtf_feature())[0])
    lines, numbers = interleave(data.draw, features[:at] + [broken] + features[at:], GTF_EXTRAS)
    path = write_file(tmp_path_factory.mktemp("gtf"), "bad.gtf", lines, crlf=False, compressed=False)
    message = first_problem(path, read_annotations)
    assert message[0] == f"1 malformed line in {path}"
    assert message[1].startswith(f"{path}:{numbers[at]}: ") and "; " in message[1]
    if bad == "no gene_id":
        assert "no gene_id attribute" in message[1]


# ---------------------------------------------------------------- GFF3

GFF3_EXTRAS = ["##sequence-region ctg 1 5000", "###", "# comment", ""]
GFF3_RESERVED = "%;=&,\t#>"  # percent-encoded when written (GFF3 spec, plus '#' and '>' that would start a line)


def gff3_escape(text: str) -> str:
    return "".join(f"%{ord(c):02X}" if c in GFF3_RESERVED else c for c in text)


@st.composite
def gff3_feature(draw) -> tuple[str, dict]:
    chrom = draw(TEXT.filter(lambda text: not any(c.isspace() for c in text)))
    kind = draw(st.sampled_from(["gene", "mRNA", "exon", "CDS", "five_prime_UTR", "ncRNA gene"]))
    start = draw(START) + 1
    end = start + draw(LENGTH)
    source, score = draw(st.sampled_from([".", "RefSeq"])), draw(st.sampled_from([".", "0", "3.5e-3"]))
    strand, phase = draw(st.sampled_from("+-.?")), draw(st.sampled_from(".012"))
    tags = {"ID": st.lists(TEXT, min_size=1, max_size=1), "Name": st.lists(TEXT, min_size=1, max_size=1),
            "gene": st.lists(TEXT, min_size=1, max_size=1), "Parent": st.lists(TEXT, min_size=1, max_size=2),
            "Note": st.lists(TEXT, min_size=1, max_size=3), "Dbxref": st.lists(WORD, min_size=1, max_size=2)}
    values = {tag: draw(values) for tag, values in tags.items() if draw(st.booleans())}
    order = draw(st.permutations(list(values)))
    separator, last = draw(st.sampled_from([";", "; "])), draw(st.sampled_from(["", ";"]))
    text = separator.join(f"{tag}={','.join(gff3_escape(v) for v in values[tag])}" for tag in order)
    attributes = {tag: ",".join(values[tag]) for tag in order}
    columns = {key: value for key, value in (("gff_source", source), ("score", score), ("phase", phase))
               if value != "."}
    line = "\t".join([gff3_escape(chrom), source, gff3_escape(kind), str(start), str(end), score, strand, phase,
                      text + last if text else "."])
    model = {"chrom": chrom, "start": start - 1, "end": end, "strand": "." if strand == "?" else strand,
             "kind": kind, "name": next((attributes[key] for key in ("Name", "gene", "locus_tag", "ID") if attributes.get(key)), None), "feature_id": attributes.get("ID"),
             "parent": attributes.get("Parent"), "attributes": {**attributes, **columns}}
    return line, model


def gff3_exon_parts(models: list[dict]) -> None:
    """The rule of schema.py, restated: a non-gene feature that is the Parent of two or more exons has them
    (in row order) as its parts."""
    for model in models:
        exons = [{"start": m["start"], "end": m["end"], "strand": m["strand"]} for m in models
                 if m["kind"] == "exon" and model["feature_id"] in (m["parent"] or "").split(",")]
        if model["kind"] != "exon" and not model["kind"].lower().endswith("gene") and len(exons) > 1:
            model["parts"] = exons


@SETTINGS
@given(data=st.data(), crlf=st.booleans(), compressed=st.booleans(), fasta=st.booleans())
def test_gff3_round_trip(tmp_path_factory, data, crlf, compressed, fasta):
    features = data.draw(st.lists(gff3_feature(), min_size=1, max_size=8,
                                  unique_by=unique_by(lambda model: model["feature_id"])))
    gff3_exon_parts([model for _, model in features])
    lines, _ = interleave(data.draw, [line for line, _ in features], GFF3_EXTRAS)
    # after ##FASTA nothing is a feature, not even a line that would be malformed
    tail = ["##FASTA", ">ctg", "ACGT", "c\tx\tgene\t9\t1\t.\t+\t.\tID=no"] if fasta else []
    path = write_file(tmp_path_factory.mktemp("gff3"), "f.gff3", ["##gff-version 3"] + lines + tail, crlf,
                      compressed)
    assert table_rows(read_annotations(path)) == [expected_row(path, **model) for _, model in features]


@SETTINGS
@given(data=st.data(), bad=st.sampled_from([*GFF_BAD, "attribute without '='"]))
def test_gff3_malformed_row_named_by_file_and_line(tmp_path_factory, data, bad):
    features = [line for line, _ in data.draw(st.lists(gff3_feature(), min_size=1, max_size=6))]
    at = data.draw(st.integers(0, len(features)))
    line = data.draw(gff3_feature())[0]
    if bad == "attribute without '='":
        broken = _columns(line, c8='ID=a;gene_id "g"')
    else:
        broken = GFF_BAD[bad](data.draw, line)
    lines, numbers = interleave(data.draw, features[:at] + [broken] + features[at:], GFF3_EXTRAS)
    path = write_file(tmp_path_factory.mktemp("gff3"), "bad.gff3", ["##gff-version 3"] + lines, crlf=False,
                      compressed=False)
    message = first_problem(path, read_annotations)
    assert message[0] == f"1 malformed line in {path}"
    assert message[1].startswith(f"{path}:{numbers[at] + 1}: ") and "; " in message[1]
