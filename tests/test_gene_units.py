"""Annotated CDS as gene units (`genoembed index --units cds`), checked against Biopython's CDS extraction."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import CHLOROPLAST_FASTA, CHLOROPLAST_GENBANK, PLASMID_FASTA, PLASMID_GENBANK
from genoembed.cli import app

runner = CliRunner()


def biopython_cds(genbank, names: dict | None = None) -> dict[tuple, str]:
    """{(start, end, strand-or-dot): coding DNA} of every CDS, by Biopython: location extracted (parts joined in
    transcription order, minus strand reverse-complemented), read from codon_start, whole codons; ``names``
    gets each span's /gene."""
    from Bio import SeqIO

    out, names = {}, {} if names is None else names
    with open(genbank) as handle:
        records = list(SeqIO.parse(handle, "genbank"))
    for record in records:
        for feature in (f for f in record.features if f.type == "CDS"):
            dna = feature.extract(record.seq)[int(feature.qualifiers.get("codon_start", ["1"])[0]) - 1:]
            strand = {1: "+", -1: "-"}.get(feature.location.strand, ".")
            span = (int(feature.location.start), int(feature.location.end), strand)
            out[span] = str(dna[:len(dna) // 3 * 3])
            names[span] = feature.qualifiers.get("gene", [None])[0]
    return out


# the plasmid's FASTA names its contig gi|45478711|ref|NC_005816.1|, its GenBank NC_005816.1: --auto-alias
@pytest.mark.parametrize("fasta, genbank, auto_alias", [(CHLOROPLAST_FASTA, CHLOROPLAST_GENBANK, False),
                                                        (PLASMID_FASTA, PLASMID_GENBANK, True)])
def test_cds_units_are_biopythons_coding_sequences_and_proteins(fasta, genbank, auto_alias):
    from Bio.Seq import Seq

    from genoembed.cds import annotated_genes
    from genoembed.genome import open_genome

    genome = open_genome(fasta)
    genes = annotated_genes(genome, [genbank], list(genome.contigs), auto_alias=auto_alias)
    expected = biopython_cds(genbank)
    assert {(g.start, g.end, g.strand): g.dna for g in genes} == expected
    for gene in genes:  # the protein is the translation of that DNA (bacterial/plastid code 11), stop dropped
        assert gene.protein == str(Seq(gene.dna).translate(table=11)).rstrip("*")
    assert [(g.start, g.end) for g in genes] == sorted((g.start, g.end) for g in genes)


def test_trans_spliced_cds_keeps_genbank_transcription_order():
    from genoembed.cds import annotated_genes
    from genoembed.genome import open_genome

    genome = open_genome(CHLOROPLAST_FASTA)
    rps12 = [g for g in annotated_genes(genome, [CHLOROPLAST_GENBANK], list(genome.contigs))
             if g.name == "rps12" and len(g.parts) == 3]
    # exon 1 (69611-69724, minus) is joined to exons 2-3 in the inverted repeat; parts are not sorted
    assert rps12 and {g.parts[0] for g in rps12} == {(69610, 69724, "-")}
    assert all(g.protein.startswith("M") and "*" not in g.protein for g in rps12)


def seeded_genome(tmp_path, length: int = 3000, seed: int = 7):
    rng = np.random.default_rng(seed)
    sequence = "".join(rng.choice(list("ACGT"), length))
    fasta = tmp_path / "g.fa"
    fasta.write_text(f">chrA\n{sequence}\n")
    return fasta, sequence


def minus_strand_cds(sequence: str, parts_1based: list[tuple[int, int]], phase: int) -> str:
    """Biopython's reading of a minus-strand CDS: parts (1-based closed, listed 5'->3' on the minus strand)
    extracted as one CompoundLocation, then ``phase`` bases skipped, whole codons kept."""
    from Bio.Seq import Seq
    from Bio.SeqFeature import CompoundLocation, SeqFeature, SimpleLocation

    location = CompoundLocation([SimpleLocation(s - 1, e, strand=-1) for s, e in parts_1based])
    dna = SeqFeature(location, type="CDS").extract(Seq(sequence))[phase:]
    return str(dna[:len(dna) // 3 * 3])


# 5' part first (highest coordinates on the minus strand); the rows are written in ascending order below
PARTS = [(2101, 2300), (1401, 1650), (501, 777)]


@pytest.mark.parametrize("style", ["shared ID", "Parent only", "ID per row", "GTF"])
def test_spliced_minus_strand_cds_of_gff_is_read_in_frame(tmp_path, style):
    from genoembed.cds import annotated_genes
    from genoembed.genome import open_genome

    fasta, sequence = seeded_genome(tmp_path)
    phases = {(2101, 2300): 1, (1401, 1650): 2, (501, 777): 0}  # the 5' part's phase (1) sets the frame
    lines = []
    for start, end in sorted(PARTS):
        if style == "GTF":
            lines.append(f'chrA\tsrc\tCDS\t{start}\t{end}\t.\t-\t{phases[(start, end)]}\t'
                         f'gene_id "g1"; transcript_id "t1"; gene_name "abcD";')
        else:
            attributes = {"shared ID": "ID=cds1;Parent=t1;Name=abcD", "Parent only": "Parent=t1",
                          "ID per row": f"ID=cds{start};Parent=t1;Name=abcD"}[style]
            lines.append(f"chrA\tsrc\tCDS\t{start}\t{end}\t.\t-\t{phases[(start, end)]}\t{attributes}")
    path = tmp_path / ("genes.gtf" if style == "GTF" else "genes.gff3")
    header = "" if style == "GTF" else "##gff-version 3\nchrA\tsrc\tmRNA\t501\t2300\t.\t-\t.\tID=t1\n"
    path.write_text(header + "\n".join(lines) + "\n")

    genome = open_genome(fasta)
    [gene] = annotated_genes(genome, [path], ["chrA"])
    assert gene.dna == minus_strand_cds(sequence, PARTS, phase=1)
    assert (gene.start, gene.end, gene.strand) == (500, 2300, "-")
    assert gene.parts == tuple((s - 1, e, "-") for s, e in PARTS)
    assert gene.name == ("t1" if style == "Parent only" else "abcD")


def test_cds_crossing_the_origin_of_a_circular_record_is_one_unit(tmp_path):
    from Bio import SeqIO
    from Bio.Seq import Seq
    from Bio.SeqFeature import CompoundLocation, SeqFeature, SimpleLocation
    from Bio.SeqRecord import SeqRecord

    from genoembed.cds import annotated_genes
    from genoembed.genome import open_genome

    fasta, sequence = seeded_genome(tmp_path, length=2000, seed=3)
    location = CompoundLocation([SimpleLocation(1900, 2000, strand=1), SimpleLocation(0, 151, strand=1)])
    record = SeqRecord(Seq(sequence), id="chrA", name="chrA", description="seeded",
                       annotations={"molecule_type": "DNA", "topology": "circular"},
                       features=[SeqFeature(location, type="CDS", qualifiers={"locus_tag": ["ORI_1"]})])
    genbank = tmp_path / "g.gb"
    SeqIO.write(record, genbank, "genbank")
    genome = open_genome(fasta).with_circular(["chrA"])
    [gene] = annotated_genes(genome, [genbank], ["chrA"])
    expected = str(location.extract(Seq(sequence)))
    assert gene.dna == expected[:len(expected) // 3 * 3]
    assert (gene.start, gene.end, gene.name) == (1900, 2151, "ORI_1")  # across the origin: end > length


def test_index_units_cds_stores_one_row_per_protein_and_hits_name_their_gene(tmp_path):
    from genoembed.store import Store

    store_path = tmp_path / "cds"
    result = runner.invoke(app, ["index", "--fasta", str(PLASMID_FASTA), "--output", str(store_path),
                                 "--model", "kmer:3", "--units", "cds", "--annotations", str(PLASMID_GENBANK),
                                 "--auto-alias", "-q"])
    assert result.exit_code == 0, result.output
    store = Store.open(store_path)
    assert store.provenance["tiling"]["units"] == "cds"
    tiles = store.tiles(np.arange(store.num_tiles))
    names = {}
    expected = biopython_cds(PLASMID_GENBANK, names)
    assert sorted(zip(tiles["start"].to_pylist(), tiles["end"].to_pylist(), tiles["strand"].to_pylist())) == \
        sorted(expected)
    start, end, strand = max(expected, key=lambda span: span[1] - span[0])
    result = runner.invoke(app, ["search", str(store_path), "--region", f"NC_005816.1:{start + 1}-{end}:{strand}",
                                 "--auto-alias", "-k", "1", "--tiles", "--no-save", "-f", "jsonl", "-q"])
    assert result.exit_code == 0, result.output
    [hit] = [json.loads(line) for line in result.output.splitlines()]
    assert (hit["start"], hit["end"]) == (start, end) and hit["score"] > 0.999
    assert names[(start, end, strand)] in hit["overlapping"].split(",")  # the hit is the gene, named by the store


def test_units_cds_without_annotations_or_cds_is_one_line_error(tmp_path):
    result = runner.invoke(app, ["index", "--fasta", str(PLASMID_FASTA), "--output", str(tmp_path / "a"),
                                 "--model", "kmer:3", "--units", "cds", "-q"])
    assert result.exit_code != 0 and "--units cds reads the CDS of the --annotations files" in result.output
    bed = tmp_path / "regions.bed"
    bed.write_text("NC_005816.1\t10\t200\tx\n")
    result = runner.invoke(app, ["index", "--fasta", str(PLASMID_FASTA), "--output", str(tmp_path / "b"),
                                 "--model", "kmer:3", "--units", "cds", "--annotations", str(bed), "--auto-alias", "-q"])
    assert result.exit_code != 0 and f"{bed}: no CDS feature on the contigs of genome" in result.output
    assert not (tmp_path / "b").exists()


# ---------------------------------------------------------------- queries by gene

@pytest.fixture(scope="module")
def chloroplast_cds_store(tmp_path_factory):
    store_path = tmp_path_factory.mktemp("stores") / "cds"
    result = runner.invoke(app, ["index", "--fasta", str(CHLOROPLAST_FASTA), "--output", str(store_path),
                                 "--model", "kmer:3", "--units", "cds", "--annotations", str(CHLOROPLAST_GENBANK),
                                 "-q"])
    assert result.exit_code == 0, result.output
    return store_path


def gene_hits(store_path, *options) -> list[dict]:
    result = runner.invoke(app, ["search", str(store_path), *options, "--tiles", "--no-save", "-f", "jsonl", "-q"])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.output.splitlines()]


@pytest.mark.parametrize("name", ["rbcL", "ArthCp030", "RBCL", "rps16"])
def test_search_by_gene_name_or_locus_tag_queries_its_cds(chloroplast_cds_store, name):
    from Bio import SeqIO

    with open(CHLOROPLAST_GENBANK) as handle:
        record = next(SeqIO.parse(handle, "genbank"))
    [feature] = [f for f in record.features if f.type == "CDS"
                 and name.lower() in (f.qualifiers["gene"][0].lower(), f.qualifiers["locus_tag"][0].lower())]
    [hit] = gene_hits(chloroplast_cds_store, "--gene", name, "-k", "1")
    span = (int(feature.location.start), int(feature.location.end))
    assert (hit["query_start"], hit["query_end"]) == span and hit["query_strand"] == hit["strand"]
    assert (hit["start"], hit["end"]) == span and hit["score"] > 0.999  # its own unit: the same coding DNA


def test_gene_query_api_reads_a_spliced_cds_in_frame(chloroplast_cds_store):
    from genoembed import Store, gene_query

    query = gene_query(Store.open(chloroplast_cds_store), "rps16")
    assert query.sequence == biopython_cds(CHLOROPLAST_GENBANK)[(5083, 6188, "-")]
    assert (query.chrom, query.start, query.end, query.strand) == ("NC_000932.1", 5083, 6188, "-")


def test_gene_on_two_loci_or_nowhere_is_one_line_error_with_candidates(chloroplast_cds_store):
    result = runner.invoke(app, ["search", str(chloroplast_cds_store), "--gene", "rpl2", "--no-save"])
    assert result.exit_code != 0
    assert "--gene 'rpl2' names 2 loci (NC_000932:NC_000932.1:" in result.output
    assert "query one by --region" in result.output
    result = runner.invoke(app, ["search", str(chloroplast_cds_store), "--gene", "rbcX", "--no-save"])
    assert result.exit_code != 0 and "no gene of that name, locus_tag or ID" in result.output
    assert "did you mean 'rbcL'" in result.output


def test_gene_in_two_genomes_is_picked_by_query_genome_and_found_through_its_transcript(tmp_path):
    """gene -> mRNA -> CDS rows (no name on the CDS): the gene's name finds its spliced CDS."""
    genomes = []
    for number, contig in ((1, "chrA"), (2, "chrB")):  # (`index --annotations` needs contigs it can place)
        fasta, sequence = seeded_genome(tmp_path, seed=number)
        fasta = fasta.rename(tmp_path / f"g{number}.fa")
        fasta.write_text(fasta.read_text().replace("chrA", contig))
        gff = tmp_path / f"g{number}.gff3"
        gff.write_text("##gff-version 3\n"
                       f"{contig}\tsrc\tgene\t501\t2300\t.\t-\t.\tID=gene1;Name=abcD\n"
                       f"{contig}\tsrc\tmRNA\t501\t2300\t.\t-\t.\tID=t1;Parent=gene1\n"
                       + "".join(f"{contig}\tsrc\tCDS\t{s}\t{e}\t.\t-\t{1 if s == 2101 else 0}\tParent=t1\n"
                                 for s, e in sorted(PARTS)))
        genomes.append((fasta, gff, sequence))
    store_path = tmp_path / "two"
    for number, (fasta, gff, _) in enumerate(genomes):
        result = runner.invoke(app, ["index", "--fasta", str(fasta), "--output", str(store_path), "--model", "kmer:3",
                                     "--units", "cds", "--annotations", str(gff), "-q"]
                               + (["--append"] if number else []))
        assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["search", str(store_path), "--gene", "abcD", "--no-save"])
    assert result.exit_code != 0 and "names 2 loci" in result.output
    assert "name its genome with --query-genome" in result.output
    from genoembed import Store, gene_query

    query = gene_query(Store.open(store_path), "abcD", genome="g2")
    assert query.genome == "g2" and query.sequence == minus_strand_cds(genomes[1][2], PARTS, phase=1)
    [hit] = gene_hits(store_path, "--gene", "abcD", "--query-genome", "g2", "--genome", "g2", "-k", "1")
    assert (hit["genome"], hit["start"], hit["end"]) == ("g2", 500, 2300) and hit["score"] > 0.999


def test_called_gene_units_are_queried_as_contig_n(tmp_path):
    pytest.importorskip("pyrodigal")
    from genoembed.genes import call_genes
    from genoembed.seqio import read_fasta

    store_path = tmp_path / "genes"
    result = runner.invoke(app, ["index", "--fasta", str(PLASMID_FASTA), "--output", str(store_path), "--model",
                                 "kmer:3", "--units", "genes", "-q"])
    assert result.exit_code == 0, result.output
    genes = call_genes([(name, sequence.upper()) for name, sequence in read_fasta(PLASMID_FASTA)])
    third = genes[2]
    [hit] = gene_hits(store_path, "--gene", f"{third.contig}_3", "-k", "1")
    assert (hit["query_start"], hit["query_end"], hit["query_strand"]) == (third.start, third.end, third.strand)
    assert (hit["start"], hit["end"]) == (third.start, third.end)
    result = runner.invoke(app, ["search", str(store_path), "--gene", f"{third.contig}_99", "--no-save"])
    assert result.exit_code != 0 and f"has {len(genes)} gene units; number them 1 to {len(genes)}" in result.output
