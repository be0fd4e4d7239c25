"""Ground truth, metrics and the evaluation run (genoembed/eval/, cli/eval.py)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from conftest import CHLOROPLAST_FASTA, CHLOROPLAST_GENBANK, DATA, PLASMID_FASTA, PLASMID_GENBANK, SHARED_DATA
from genoembed.errors import InputError
from genoembed.eval import (
    GeneFeature, IndexConfig, ann_recall, binned_recall, chance_agreement, correct_ranks, derive_truth_minimap2,
    evaluate, family_key, family_ranks, gene_family_agreement, gene_features, identity_bin, minimap2_available, mrr,
    read_coords, read_paf, read_results, recall_at_k, sample_query_tiles, split_at_indels, summary_markdown,
    truth_for_tiles, truth_lists,
)
from genoembed.genome import open_genome
from genoembed.seqio import reverse_complement

PLASMID = "gi|45478711|ref|NC_005816.1|"
needs_minimap2 = pytest.mark.skipif(not minimap2_available(), reason="minimap2 is not installed")


# --------------------------------------------------------------------------- coords parser (real lines)


def test_read_coords_real_mg1655_lines_gzip():
    table = read_coords(DATA / "mg1655_head.coords.gz")
    assert table.num_rows == 15
    first = table.slice(0, 1).to_pylist()[0]
    # "1 15441 | 15441 1 | ... | 100.00 | K-12-MG1655 seq33": reversed S2 > E2 = minus strand
    assert first == {"ref_chrom": "K-12-MG1655", "ref_start": 0, "ref_end": 15441, "query_chrom": "seq33",
                     "query_start": 0, "query_end": 15441, "strand": "-", "identity": 100.0}
    second = table.slice(1, 1).to_pylist()[0]
    assert (second["ref_start"], second["ref_end"], second["query_start"], second["query_end"], second["strand"]) \
        == (15386, 16731, 0, 1345, "+")
    assert table.column("identity").to_pylist()[3] == pytest.approx(90.49)


def test_read_coords_keeps_pipes_in_reference_names():
    table = read_coords(DATA / "SJM180_head.coords")
    assert table.num_rows == 8
    assert set(table.column("ref_chrom").to_pylist()) == {"gi|308183796|ref|NC_014560.1|"}
    row = table.slice(1, 1).to_pylist()[0]  # 7267 7400 | 132762 132630 | ... 88.81 ... scf42
    assert (row["query_chrom"], row["query_start"], row["query_end"], row["strand"], row["identity"]) \
        == ("scf42", 132629, 132762, "-", 88.81)


def test_read_coords_errors(tmp_path):
    with pytest.raises(InputError, match="coords file not found"):
        read_coords(tmp_path / "missing.coords")
    bad = tmp_path / "bad.coords"
    bad.write_text("   12  x  | 1 2 | 3 3 | 99 | ref ctg\n")
    with pytest.raises(InputError, match=r"bad.coords:1: not a show-coords alignment line"):
        read_coords(bad)
    empty = tmp_path / "empty.coords"
    empty.write_text("NUCMER\n\n")
    with pytest.raises(InputError, match="no alignment lines found"):
        read_coords(empty)


# --------------------------------------------------------------------------- truth mapping


@pytest.fixture(scope="module")
def plasmid_contigs(tmp_path_factory):
    """Two 'draft contigs' of the plasmid with a hand-written show-coords table: ctgA forward, ctgB reversed."""
    from genoembed.synthetic import write_fasta

    root = tmp_path_factory.mktemp("contigs")
    sequence = open_genome(PLASMID_FASTA).fetch(PLASMID, 0, 9609).upper()
    contigs = write_fasta(root / "contigs.fa", {"ctgA": sequence[1000:5000],
                                                "ctgB": reverse_complement(sequence[5500:9000])})
    coords = root / "contigs.coords"
    coords.write_text(
        "    [S1]     [E1]  |     [S2]     [E2]  |  [LEN 1]  [LEN 2]  |  [% IDY]  | [TAGS]\n"
        "=====================================================================================\n"
        f"    1001     5000  |        1     4000  |     4000     4000  |   100.00  | {PLASMID}\tctgA\n"
        f"    5501     9000  |     3500        1  |     3500     3500  |   100.00  | {PLASMID}\tctgB\n")
    return sequence, contigs, coords


def test_truth_plus_and_minus_strand_contigs(plasmid_contigs):
    sequence, contigs_path, coords = plasmid_contigs
    alignments = read_coords(coords)
    contigs = open_genome(contigs_path)
    tiles = [("ctgA", 100, 600, "+"), ("ctgA", 100, 600, "-"), ("ctgB", 0, 500, "+"), ("ctgB", 3000, 3500, "-")]
    truth = truth_for_tiles(tiles, alignments).to_pylist()
    spans = [(r["ref_start"], r["ref_end"], r["strand"]) for r in truth]
    assert spans == [(1100, 1600, "+"), (1100, 1600, "-"), (8500, 9000, "-"), (5500, 6000, "+")]
    # the mapped span on the true strand is the tile's own sequence
    for (contig, start, end, strand), row in zip(tiles, truth):
        tile = contigs.fetch(contig, start, end, strand).upper()
        true = sequence[row["ref_start"]:row["ref_end"]]
        assert tile == (true if row["strand"] == "+" else reverse_complement(true))


def test_truth_scales_within_block_and_needs_cover():
    import pyarrow as pa

    from genoembed.eval import ALIGNMENTS

    alignments = pa.Table.from_pylist([
        {"ref_chrom": "r", "ref_start": 0, "ref_end": 2000, "query_chrom": "c", "query_start": 0,
         "query_end": 1000, "strand": "+", "identity": 97.0},
        {"ref_chrom": "r", "ref_start": 5000, "ref_end": 5100, "query_chrom": "c", "query_start": 900,
         "query_end": 1000, "strand": "-", "identity": 91.0}], schema=ALIGNMENTS)
    truth = truth_for_tiles([("c", 100, 200, "+"), ("c", 950, 1150, "+"), ("c", 900, 1000, "+"),
                             ("other", 0, 100, "+")], alignments, min_cover=0.5).to_pylist()
    assert [(r["query_index"], r["ref_start"], r["ref_end"], r["strand"]) for r in truth] == [
        (0, 200, 400, "+"),       # 2x longer on the reference: linear scaling
        (2, 1800, 2000, "+"),     # covered by both blocks: a repeat has two true loci
        (2, 5000, 5100, "-")]     # tile 1 is only 25% inside a block: no truth
    spans, best = truth_lists(truth_for_tiles([("c", 900, 1000, "+")], alignments), 1)
    assert len(spans[0]) == 2 and best[0] == 97.0  # ties in cover: higher identity wins
    with pytest.raises(InputError, match="min_cover"):
        truth_for_tiles([], alignments, min_cover=0)


@needs_minimap2
def test_derive_truth_minimap2_matches_the_known_placement(plasmid_contigs):
    _sequence, contigs, _coords = plasmid_contigs
    table = derive_truth_minimap2(PLASMID_FASTA, contigs, preset="asm5")
    rows = {r["query_chrom"]: r for r in table.to_pylist()}
    assert (rows["ctgA"]["ref_start"], rows["ctgA"]["ref_end"], rows["ctgA"]["strand"]) == (1000, 5000, "+")
    assert (rows["ctgB"]["ref_start"], rows["ctgB"]["ref_end"], rows["ctgB"]["strand"]) == (5500, 9000, "-")
    assert rows["ctgA"]["identity"] == 100.0
    with pytest.raises(InputError, match="FASTA file not found"):
        derive_truth_minimap2(PLASMID_FASTA, contigs.with_name("nope.fa"))


def test_split_at_indels_on_both_strands():
    # 100M 60I 50M 5D 100M: the 60 bp insertion cuts, the 5 bp deletion does not
    cigar = "100M60I50M5D100M"
    assert split_at_indels(1000, 1310, 0, "+", cigar, min_gap=50) == [(1000, 1100, 0, 100), (1160, 1310, 100, 255)]
    # minus strand: the reference walks forward while the query walks down from its end
    assert split_at_indels(1000, 1310, 0, "-", cigar, min_gap=50) == [(1210, 1310, 0, 100), (1000, 1150, 100, 255)]
    assert split_at_indels(1000, 1310, 0, "+", cigar, min_gap=5) == [
        (1000, 1100, 0, 100), (1160, 1210, 100, 150), (1210, 1310, 155, 255)]


def test_read_paf_splits_blocks_only_with_a_cigar():
    line = "q\t2000\t1000\t1310\t+\tr\t5000\t0\t255\t240\t315\t60\tcg:Z:100M60I50M5D100M"
    whole = read_paf(line).to_pylist()
    assert [(r["query_start"], r["query_end"], r["ref_start"], r["ref_end"]) for r in whole] == [(1000, 1310, 0, 255)]
    split = read_paf(line, split_gap=50).to_pylist()
    assert [(r["query_start"], r["ref_start"]) for r in split] == [(1000, 0), (1160, 100)]
    assert {r["identity"] for r in split} == {100.0 * 240 / 315}
    assert read_paf(line.rsplit("\t", 1)[0], split_gap=50).num_rows == 1  # no cg:Z tag: the block as it is


@needs_minimap2
@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "ecoli_k12").is_dir(), reason="shared E. coli K-12 data not present")
def test_cross_strain_truth_spans_hold_the_tile_sequence():
    """DH1 vs MG1655 align in 2.6 Mbp blocks; without cutting at indels the linear mapping drifts off."""
    reference = SHARED_DATA / "ecoli_k12" / "MG1655-K12.fasta.gz"
    queries = SHARED_DATA / "ecoli_k12" / "DH1.fasta.gz"
    tiles, truth = sample_query_tiles(open_genome(queries), derive_truth_minimap2(reference, queries), 1000, 60)
    ref = open_genome(reference)
    shared = {}
    for row in truth.to_pylist():
        true = ref.fetch(row["ref_chrom"], row["ref_start"], row["ref_end"], row["strand"]).upper()
        words = {true[i:i + 12] for i in range(len(true) - 11)}
        tile = tiles[row["query_index"]].sequence
        share = np.mean([tile[i:i + 12] in words for i in range(len(tile) - 11)])
        shared[row["query_index"]] = max(shared.get(row["query_index"], 0.0), share)
    assert len(shared) == 60 and min(shared.values()) > 0.8


# --------------------------------------------------------------------------- gene-family agreement


def test_family_key_rule():
    assert [family_key(g) for g in ("rpoB", "rpoC1", "psbA", "rrn16S", "rrn4.5S", "trnfM", "nuoA-N", "rop")] == \
        ["rpo", "rpo", "psb", "rrn", "rrn", "trn", "nuo", "rop"]
    assert family_key("ArthCr088") == "arthcr088"  # not a Demerec symbol: its own family
    assert family_key("abcd") == "abcd"
    assert family_key(None, "  Ribosomal Protein\tS12 ") == "ribosomal protein s12"
    assert family_key("rpsL", "ribosomal protein S12") == "rps"  # the gene symbol wins
    assert family_key(None, None) is None and family_key(" ", "") is None


def _annotations(rows):
    import pyarrow as pa

    from genoembed.schema import FEATURES

    defaults = {"strand": "+", "name": None, "feature_id": None, "parent": None, "source": "hand"}
    return pa.Table.from_pylist([{**defaults, **row} for row in rows], schema=FEATURES)


def test_gene_features_keep_exons_and_collapse_duplicates():
    table = _annotations([
        {"chrom": "c", "start": 0, "end": 900, "type": "gene", "attributes": [("gene", "trnK")]},
        {"chrom": "c", "start": 0, "end": 900, "type": "tRNA",
         "attributes": [("gene", "trnK"), ("parts", "800-900:-,0-100:-")]},
        {"chrom": "c", "start": 200, "end": 700, "type": "CDS", "attributes": [("gene", "matK")]},
        {"chrom": "c", "start": 200, "end": 700, "type": "CDS", "attributes": [("gene", "matK"), ("note", "x")]},
        {"chrom": "c", "start": 950, "end": 990, "type": "CDS", "attributes": [("locus_tag", "T1")]},
        {"chrom": "c", "start": 990, "end": 999, "type": "repeat_region", "attributes": [("gene", "rpoB")]}])
    features = gene_features(table)
    assert features == [GeneFeature("c", ((0, 100), (800, 900)), "+", "trn"),  # exons, not the intron
                        GeneFeature("c", ((200, 700),), "+", "mat")]
    assert [f.family for f in gene_features(table, types=("gene",))] == ["trn"]


FEATURES = [GeneFeature("c", ((0, 100), (800, 900)), "+", "trn"), GeneFeature("c", ((200, 700),), "+", "mat"),
            GeneFeature("c", ((2000, 2500),), "-", "mat")]


def test_family_ranks_exclusion_and_chance():
    hits = [
        [("c", 300, 400, "+"), ("c", 2100, 2200, "+")],  # own gene at 1, the paralog at 2
        [("c", 100, 800, "+"), ("c", 850, 950, "+")],    # the intron of trnK only, then its second exon
        [("d", 0, 100, "+")],                             # another chromosome
    ]
    families = ["mat", "trn", "mat"]
    assert family_ranks(hits, families, FEATURES).tolist() == [1, 2, 0]
    own = [FEATURES[1].intervals, FEATURES[0].intervals, []]
    assert family_ranks(hits, families, FEATURES, excluded=own).tolist() == [1, 0, 0]  # ranks among kept hits
    with pytest.raises(InputError, match="2 hit lists but 3 query families"):
        family_ranks(hits[:2], families, FEATURES)
    grid = [("c", s, s + 500) for s in range(0, 3000, 500)]  # 6 tiles; mat touches 2 (200-700) + 1 (2000-2500)
    assert chance_agreement(grid, ["mat"], FEATURES) == pytest.approx(3 / 6)
    # excluding the own gene drops the 2 tiles it touches from the pool and from the agreeing tiles
    assert chance_agreement(grid, ["mat"], FEATURES, excluded=[FEATURES[1].intervals]) == pytest.approx(1 / 4)
    assert math.isnan(chance_agreement(grid, [], FEATURES))


def test_gene_family_agreement_chloroplast_self_retrieval(tmp_path):
    from genoembed.embedders.kmer import KmerEmbedder

    rows = gene_family_agreement(CHLOROPLAST_FASTA, CHLOROPLAST_GENBANK, {"kmer5": KmerEmbedder(5)}, tile=300,
                                 substitution_rates=(0.0, 0.2), minimap2=False, workdir=tmp_path).to_pylist()
    assert [(r["substitution_rate"], r["own_gene"]) for r in rows] == [
        (0.0, "kept"), (0.0, "excluded"), (0.2, "kept"), (0.2, "excluded")]
    kept, excluded = rows[0], rows[1]
    assert kept["query_genes"] == excluded["query_genes"] > 30
    assert kept["family_at_1"] > 0.9 and kept["family_at_1"] > 5 * kept["chance_at_1"]
    assert all(r["family_at_10"] >= r["family_at_1"] for r in rows)
    assert excluded["family_at_1"] < kept["family_at_1"]  # the own gene is out of reach
    assert rows[2]["family_at_1"] <= kept["family_at_1"]


def test_gene_family_agreement_rejects_annotations_of_other_contigs(tmp_path):
    from genoembed.embedders.kmer import KmerEmbedder

    # the plasmid FASTA names its record 'gi|...|ref|NC_005816.1|', the GenBank 'NC_005816.1'
    with pytest.raises(InputError, match="contig\\(s\\) not in"):
        gene_family_agreement(PLASMID_FASTA, PLASMID_GENBANK, {"k": KmerEmbedder(3)}, minimap2=False,
                              workdir=tmp_path)
    with pytest.raises(InputError, match="query_annotations"):
        gene_family_agreement(CHLOROPLAST_FASTA, CHLOROPLAST_GENBANK, {"k": KmerEmbedder(3)},
                              queries=CHLOROPLAST_FASTA, workdir=tmp_path)


# --------------------------------------------------------------------------- metrics on hand-made cases


HITS = [
    [("r", 0, 100, "+"), ("r", 500, 600, "-")],  # correct at rank 1 (either) / rank 2 (same strand)
    [("x", 500, 600, "-"), ("r", 50, 150, "+")],  # other chrom at rank 1; correct at rank 2 (both)
    [("r", 900, 1000, "+")],                        # touches the truth end: half-open, not an overlap
    [],                                             # no hits
]
TRUTH = [[("r", 550, 560, "-"), ("r", 90, 95, "-")], [("r", 100, 200, "+")], [("r", 1000, 1100, "+")],
         [("r", 0, 10, "+")]]


def test_correct_ranks_and_recall():
    assert correct_ranks(HITS, TRUTH).tolist() == [1, 2, 0, 0]
    assert correct_ranks(HITS, TRUTH, same_strand=True).tolist() == [2, 2, 0, 0]
    assert recall_at_k(HITS, TRUTH, k=1) == 0.25
    assert recall_at_k(HITS, TRUTH, k=2) == 0.5
    assert recall_at_k(HITS, TRUTH, k=1, same_strand=True) == 0.0
    assert mrr(HITS, TRUTH) == pytest.approx((1 + 0.5) / 4)
    assert mrr(HITS, TRUTH, same_strand=True) == pytest.approx((0.5 + 0.5) / 4)
    assert recall_at_k(ranks=np.array([3, 0]), k=3) == 0.5
    assert math.isnan(recall_at_k([], [], k=1)) and math.isnan(mrr([], []))
    with pytest.raises(InputError, match="2 hit lists but 1 truth lists"):
        correct_ranks(HITS[:2], TRUTH[:1])


def test_identity_bins():
    assert [identity_bin(x) for x in (100.0, 99.99, 95.0, 94.99, float("nan"))] == \
        ["100", "95-99", "95-99", "<95", None]
    result = binned_recall(np.array([1, 0, 2, 1]), [100.0, 100.0, 97.5, 80.0], k=1)
    assert result["100"] == (0.5, 2) and result["95-99"] == (0.0, 1) and result["<95"] == (1.0, 1)
    assert math.isnan(binned_recall(np.array([1]), [100.0], k=1)["<95"][0])


def test_ann_recall_against_exact():
    exact = np.array([[1, 2, 3], [4, 5, 6]])
    assert ann_recall(exact, exact, 3) == 1.0
    assert ann_recall(np.array([[3, 2, 9], [7, 8, 9]]), exact, 3) == pytest.approx((2 / 3 + 0) / 2)
    assert ann_recall(np.array([[1, -1, -1], [4, 6, -1]]), exact, 2) == pytest.approx((1 / 2 + 1 / 2) / 2)


# --------------------------------------------------------------------------- the evaluation run


def test_sample_query_tiles_have_truth_and_strands(plasmid_contigs):
    sequence, contigs, coords = plasmid_contigs
    tiles, truth = sample_query_tiles(open_genome(contigs), read_coords(coords), tile=500, n=10, seed=3)
    assert len(tiles) == 10 and sorted(set(truth.column("query_index").to_pylist())) == list(range(10))
    assert {t.strand for t in tiles} == {"+", "-"}
    again, _ = sample_query_tiles(open_genome(contigs), read_coords(coords), tile=500, n=10, seed=3)
    assert again == tiles
    with pytest.raises(InputError, match="no contig is at least 5000 bp"):
        sample_query_tiles(open_genome(contigs), read_coords(coords), tile=5000, n=10)


def test_evaluate_on_plasmid_contigs(plasmid_contigs, tmp_path):
    from genoembed.embedders.kmer import KmerEmbedder

    _sequence, contigs, coords = plasmid_contigs
    rows = evaluate(PLASMID_FASTA, contigs, coords, embedders={"kmer4": KmerEmbedder(4)},
                    index_configs=[IndexConfig("Flat"), IndexConfig("HNSW16", ef_search=8)], tile=500,
                    n_queries=12, substitution_rates=(0.0, 0.1), ks=(1, 10), workdir=tmp_path / "w",
                    repeats=1).to_pylist()
    embedding = [r for r in rows if r["kind"] == "embedding" and r["identity_bin"] == "all"]
    assert len(embedding) == 4  # 2 index configs x 2 substitution rates
    exact = next(r for r in embedding if r["index"] == "Flat" and r["substitution_rate"] == 0)
    assert exact["queries"] == 12 and exact["recall_at_1"] == 1.0 and exact["ann_recall_at_10"] == 1.0
    assert all(r["recall_at_10"] >= r["recall_at_1"] >= r["recall_at_1_same_strand"] for r in embedding)
    assert all(0 < r["mrr"] <= 1 and r["qps"] > 0 for r in embedding)
    assert {r["identity_bin"] for r in rows} == {"all", "100"}
    if minimap2_available():
        aligner = [r for r in rows if r["kind"] == "aligner" and r["identity_bin"] == "all"]
        assert len(aligner) == 2 and aligner[0]["recall_at_1_same_strand"] == 1.0
    text = summary_markdown(rows, ks=(1, 10))
    assert text.startswith("| method | index |") and "HNSW16 efSearch=8" in text


def test_evaluate_rejects_coords_of_another_reference(plasmid_contigs):
    from genoembed.embedders.kmer import KmerEmbedder

    _sequence, contigs, _coords = plasmid_contigs
    with pytest.raises(InputError, match="reference contig\\(s\\) not in"):
        evaluate(PLASMID_FASTA, contigs, DATA / "SJM180_head.coords", embedders={"k": KmerEmbedder(3)})


def _eval_app():
    import typer

    from genoembed.cli.eval import eval_command

    app = typer.Typer()
    app.command("eval")(eval_command)
    app.command("noop")(lambda: None)
    return app


def test_eval_cli_writes_json_and_summary(plasmid_contigs, tmp_path):
    from typer.testing import CliRunner

    _sequence, contigs, coords = plasmid_contigs
    out, summary = tmp_path / "rows.jsonl", tmp_path / "summary.md"
    result = CliRunner().invoke(_eval_app(), [
        "eval", str(PLASMID_FASTA), str(contigs), "--coords", str(coords), "--model", "kmer:3", "--tile", "300",
        "--queries", "8", "-k", "1", "-k", "5", "--no-minimap2", "--index", "Flat", "--index", "IVF3,Flat",
        "--nprobe", "1", "--nprobe", "3", "--format", "jsonl", "--output", str(out), "--summary", str(summary),
        "--quiet"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {(r["index"], r["nprobe"]) for r in rows} == {("Flat", None), ("IVF3,Flat", 1), ("IVF3,Flat", 3)}
    assert read_results(out) == rows
    assert "| kmer:3 | IVF3,Flat nprobe=3 |" in summary.read_text()


def test_eval_cli_error_is_one_line(plasmid_contigs):
    from typer.testing import CliRunner

    _sequence, contigs, _coords = plasmid_contigs
    result = CliRunner().invoke(_eval_app(), ["eval", str(PLASMID_FASTA), str(contigs), "--coords",
                                              str(DATA / "SJM180_head.coords"), "--quiet"])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0 and "genoembed: error:" in result.output


def test_read_results_tsv(tmp_path):
    path = tmp_path / "rows.tsv"
    path.write_text("method\tindex\tnprobe\trecall_at_1\nkmer:4\tFlat\t\t0.5000\n")
    assert read_results(path) == [{"method": "kmer:4", "index": "Flat", "nprobe": None, "recall_at_1": 0.5}]
    path.write_text("a\tb\n1\t2\n")
    with pytest.raises(InputError, match="not a `genoembed eval` table"):
        read_results(path)
