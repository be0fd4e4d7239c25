"""GTF and GFF3 ingest against a pure-Python oracle, on seeded files shaped like GENCODE and RefSeq.

The property tests (test_parsers_property.py) draw single-row features; here whole genes are drawn (genes,
transcripts, exons, CDS/UTR/codon rows of one transcript, GFF3 rows sharing an ID, exons with several
parents, repeated tags in and out of runs, attribute columns of the usual shape and of others), and the
oracle applies the merge rules of schema.py / :func:`genoembed.gff.read_gtf` to the rows the generator
drew (never to the text), so both the DuckDB parser and the Arrow/Parquet writer are checked row for row.
"""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from genoembed.features import opened_features, read_annotations

CHROMS = ["chr1", "chr2", "ctg_3"]


def gtf_rows(rng: random.Random, genes: int) -> list[dict]:
    """GENCODE-like rows: ``pairs`` are the attribute items in file order (a key may repeat)."""
    rows = []
    for g in range(genes):
        chrom, strand, start = rng.choice(CHROMS), rng.choice("+-"), rng.randrange(1, 10**6)
        gene = [("gene_id", f"ENSG{g}.1"), ("gene_type", rng.choice(["protein_coding", "lncRNA"]))]
        gene += [("gene_name", f"G{g}")] if rng.random() < 0.8 else []
        gene += [("level", str(rng.randint(1, 3)))]
        transcripts = []
        for t in range(rng.randint(1, 3)):
            pairs = gene + [("transcript_id", f"ENST{g}_{t}.1")]
            pairs += [("tag", tag) for tag in rng.sample(["basic", "CCDS", "Ensembl_canonical"], rng.randint(0, 3))]
            if rng.random() < 0.2:  # a key repeated away from its first run, and a value with spaces and ';'
                pairs += [("note", "two words; one semicolon"), ("tag", "late")]
            position, exons = start + rng.randrange(100), []
            for _ in range(rng.randint(1, 4)):
                length = rng.randint(20, 300)
                exons.append((position, position + length - 1))
                position += length + rng.randint(50, 500)
            transcripts.append((pairs, exons))
        end = max(exons[-1][1] for _, exons in transcripts)
        rows.append(dict(chrom=chrom, kind="gene", start=start, end=end, strand=strand, phase=".", pairs=gene))
        for pairs, exons in transcripts:
            rows.append(dict(chrom=chrom, kind="transcript", start=exons[0][0], end=exons[-1][1], strand=strand,
                             phase=".", pairs=pairs))
            for number, (s, e) in enumerate(exons, 1):
                exon = pairs + [("exon_number", str(number))]
                exon += [("exon_id", f"ENSE{g}_{number}")] if rng.random() < 0.9 else []
                rows.append(dict(chrom=chrom, kind="exon", start=s, end=e, strand=strand, phase=".", pairs=exon))
                kind = "UTR" if number in (1, len(exons)) else "CDS"
                extra = [("protein_id", f"ENSP{g}")] if kind == "CDS" and rng.random() < 0.8 else []
                rows.append(dict(chrom=chrom, kind=kind, start=s, end=e, strand=strand,
                                 phase=str(number % 3) if kind == "CDS" else ".", pairs=exon + extra))
                if number == 1 and rng.random() < 0.5:
                    rows.append(dict(chrom=chrom, kind="start_codon", start=s, end=s + 2, strand=strand,
                                     phase="0", pairs=exon))
    return rows


def gtf_line(rng: random.Random, row: dict) -> str:
    separator = rng.choice(["; "] * 6 + [";", " ;  "])
    items = [f"{key} {value}" if value.isdigit() and rng.random() < 0.7 else f'{key} "{value}"'
             for key, value in row["pairs"]]
    text = separator.join(items) + rng.choice([";", "", "; "] if separator == "; " else [";"])
    return "\t".join([row["chrom"], "HAVANA", row["kind"], str(row["start"]), str(row["end"]), ".", row["strand"],
                      row["phase"], text])


def gff3_rows(rng: random.Random, genes: int) -> list[dict]:
    """RefSeq-like rows: an mRNA's CDS rows share one ID; some exons have two parents; escapes in names."""
    rows = []
    for g in range(genes):
        chrom, strand, start = rng.choice(CHROMS), rng.choice("+-"), rng.randrange(1, 10**6)
        name = rng.choice([f"abc{g}", f"a;b,c={g}", f"50% {g}"])
        gene = [("ID", f"gene{g}"), ("Name", name)] + ([("Note", "first"), ("Note", "last")] if g % 4 == 0 else [])
        mrnas = [f"rna{g}_{m}" for m in range(rng.randint(1, 2))]
        exons, position = [], start
        for _ in range(rng.randint(1, 4)):
            length = rng.randint(20, 300)
            exons.append((position, position + length - 1))
            position += length + rng.randint(50, 500)
        rows.append(dict(chrom=chrom, kind="gene", start=start, end=exons[-1][1], strand=strand, phase=".",
                         pairs=gene))
        for m, mrna in enumerate(mrnas):
            rows.append(dict(chrom=chrom, kind="mRNA", start=start, end=exons[-1][1], strand=strand, phase=".",
                             pairs=[("ID", mrna), ("Parent", f"gene{g}"), ("product", f"protein {g}")]))
            for number, (s, e) in enumerate(exons):
                if m == 0:  # the exons of the first mRNA, shared by the second when there is one
                    rows.append(dict(chrom=chrom, kind="exon", start=s, end=e, strand=strand, phase=".",
                                     pairs=[("Parent", ",".join(mrnas)), ("exon_number", str(number))]))
                rows.append(dict(chrom=chrom, kind="CDS", start=s, end=e, strand=strand, phase=str(number % 3),
                                 pairs=[("ID", f"cds-{mrna}"), ("Parent", mrna)]
                                 + ([("Dbxref", f"GeneID:{g}")] if number else [])))
    return rows


def gff3_escape(text: str) -> str:
    return "".join(f"%{ord(c):02X}" if c in "%;=&," else c for c in text)


def gff3_line(rng: random.Random, row: dict) -> str:
    items = [f"{key}={','.join(gff3_escape(part) for part in value.split(','))}" for key, value in row["pairs"]]
    text = rng.choice([";", "; ", ";;"]).join(items) + rng.choice(["", ";"])
    return "\t".join([row["chrom"], "RefSeq", row["kind"], str(row["start"]), str(row["end"]), ".", row["strand"],
                      row["phase"], text])


# ---------------------------------------------------------------- the oracle

def attributes(row: dict, gff3: bool) -> dict:
    """Repeated keys at their first place: GTF joins the values with ',', GFF3 keeps the last; then the
    source and phase columns (the score column is '.' throughout)."""
    merged: dict[str, str] = {}
    for key, value in row["pairs"]:
        merged[key] = value if gff3 or key not in merged else f"{merged[key]},{value}"
    merged["gff_source"] = "RefSeq" if gff3 else "HAVANA"
    if row["phase"] != ".":
        merged["phase"] = row["phase"]
    return merged


def feature(row: dict, gff3: bool, source: str) -> dict:
    values = attributes(row, gff3)
    if gff3:
        name = next((values[key] for key in ("Name", "gene", "locus_tag", "ID") if values.get(key)), None)
        feature_id, parent = values.get("ID"), values.get("Parent")
    else:
        gene, transcript = values["gene_id"], values.get("transcript_id")
        name = values.get("gene_name", gene)
        feature_id, parent = {"gene": (gene, None), "transcript": (transcript, gene)}.get(
            row["kind"], (values.get("exon_id"), transcript or gene))
    return {"chrom": row["chrom"], "start": row["start"] - 1, "end": row["end"], "strand": row["strand"],
            "type": row["kind"], "name": name, "feature_id": feature_id, "parent": parent, "source": source,
            "attributes": values, "parts": None}


def merge(members: list[dict]) -> dict:
    """Rows of one feature: the first row's contig and type, the first name, feature_id and parent that is set,
    the span, the parts in row order, and per key (in the order first seen) the one value every row has, else
    every row's value ('' where missing) joined by ','."""
    first = members[0]
    keys = list(dict.fromkeys(key for member in members for key in member["attributes"]))
    merged = {}
    for key in keys:
        values = [member["attributes"].get(key, "") for member in members]
        merged[key] = values[0] if len(set(values)) == 1 else ",".join(values)
    strands = {member["strand"] for member in members}
    first_set = {field: next((m[field] for m in members if m[field] is not None), None)
                 for field in ("name", "feature_id", "parent")}
    return {**first, **first_set, "start": min(m["start"] for m in members), "end": max(m["end"] for m in members),
            "strand": strands.pop() if len(strands) == 1 else ".", "attributes": merged,
            "parts": [{"start": m["start"], "end": m["end"], "strand": m["strand"]} for m in members]}


def oracle(rows: list[dict], gff3: bool, source: str) -> list[dict]:
    features = [feature(row, gff3, source) for row in rows]

    def group(f: dict):
        if gff3:
            return f["feature_id"]
        transcript = f["attributes"].get("transcript_id")
        return (transcript, f["type"]) if transcript and f["type"] not in ("gene", "transcript", "exon") else None

    members: dict = {}
    for f in features:
        if group(f) is not None:
            members.setdefault(group(f), []).append(f)
    merged = []
    for f in features:
        rows_of = members.get(group(f), [f]) if group(f) is not None else [f]
        if len(rows_of) == 1:
            merged.append(f)
        elif rows_of[0] is f:
            merged.append(merge(rows_of))
    exons: dict[str, list] = {}
    for f in merged:
        if f["type"] == "exon":
            owners = dict.fromkeys((f["parent"] or "").split(",")) if gff3 else [f["attributes"].get("transcript_id")]
            for owner in owners:
                if owner:
                    exons.setdefault(owner, []).append({"start": f["start"], "end": f["end"], "strand": f["strand"]})
    for f in merged:
        owns = not f["type"].lower().endswith("gene") if gff3 else f["type"] == "transcript"
        if owns and f["parts"] is None and f["type"] != "exon" and len(exons.get(f["feature_id"], [])) > 1:
            f["parts"] = exons[f["feature_id"]]
    return merged


def as_rows(table) -> list[dict]:
    return [{**row, "attributes": dict(row["attributes"])} for row in table.to_pylist()]


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("dialect", ["gtf", "gff3"])
def test_gtf_and_gff3_equal_a_pure_python_oracle(tmp_path, dialect, seed):
    rng = random.Random(seed)
    gff3 = dialect == "gff3"
    rows = gff3_rows(rng, 60) if gff3 else gtf_rows(rng, 60)
    lines = [gff3_line(rng, row) if gff3 else gtf_line(rng, row) for row in rows]
    header = ["##gff-version 3"] if gff3 else ["#!genome-build seeded"]
    tail = ["##FASTA", ">chr1", "ACGT"] if gff3 else []
    path = tmp_path / f"seeded.{dialect}"
    path.write_text("\n".join(header + [line for i, line in enumerate(lines) for line in
                                        (["", "# comment"] if i % 50 == 7 else []) + [line]] + tail) + "\n")
    expected = oracle(rows, gff3, str(path))
    assert any(f["parts"] for f in expected if f["type"] in ("transcript", "mRNA"))  # the draw has what is tested
    assert any(f["parts"] for f in expected if f["type"] == "CDS")
    assert as_rows(read_annotations(path)) == expected
    with opened_features(path) as parsed:  # the path `genoembed annotate` takes: streamed to Parquet
        assert parsed.write_parquet(tmp_path / "stored.parquet", "g1", {}) == len(expected)
    assert as_rows(pq.read_table(tmp_path / "stored.parquet")) == [{"genome": "g1", **f} for f in expected]
