"""Issue 27 at pangenome scale: the translated re-rank scores every candidate at once and traces back only what
it reports (same answers as aligning every hit, the pre-issue re-rank as oracle), and near-identical copies
of a locus count once towards the re-rank depth (a seeded pangenome where the homolog is found only so)."""

from __future__ import annotations

import functools
import json

import numpy as np
import pyarrow as pa
import pytest

from conftest import CHLOROPLAST_FASTA, CHLOROPLAST_GENBANK
from genoembed import schema
from genoembed.embedders.translated import translate
from genoembed.seqio import reverse_complement

pytest.importorskip("parasail")
pytest.importorskip("pyopal")
pytest.importorskip("pyrodigal")


@functools.cache
def _genes():
    from genoembed.eval.protein import call_genes, read_records

    records = read_records(CHLOROPLAST_GENBANK)
    return records, [g for g in call_genes(records) if len(g.dna) >= 900]


def _recoded(dna: str, identity: float, seed: int) -> str:
    from genoembed.train.protein import codon_usage, recode, substitution_table

    return recode(dna, identity, codon_usage([g.dna for g in _genes()[1]]), substitution_table(),
                  np.random.default_rng(seed))


def _hits(query_names: list[str], spans: list[list[tuple]], genome: str = "g") -> pa.Table:
    rows = [dict(query=name, query_chrom=None, query_start=None, query_end=None, query_strand=None, rank=rank,
                 tile_id=rank, genome=genome, chrom=chrom, start=start, end=end, strand="+", score=1.0 - rank / 1e4)
            for name, found in zip(query_names, spans) for rank, (chrom, start, end) in enumerate(found, 1)]
    return pa.Table.from_pylist(rows, schema=schema.HITS)


def _aligned_by_parasail(query: str, target: str, offset: int):
    """The pre-issue re-rank's alignment of one hit: parasail's striped SW of every coding query frame against
    every target frame, the first best pair (target frame, then query frame) traced back."""
    import parasail

    from genoembed.protein_evidence import GAP_EXTEND, GAP_OPEN, FrameScores, TranslatedAligner, coding_frames

    best = (0, 0, 0)
    frames = [translate(target, frame) for frame in range(6)]
    query_proteins = {frame: translate(query, frame) for frame in coding_frames(query)}
    for target_frame, protein in enumerate(frames):
        for query_frame, query_protein in query_proteins.items():
            if protein and query_protein:
                score = parasail.sw_striped_16(query_protein, protein, GAP_OPEN + GAP_EXTEND, GAP_EXTEND,
                                               parasail.blosum62).score
                if score > best[0]:
                    best = (score, query_frame, target_frame)
    frames = [frame.replace("*", "J") for frame in frames]
    scored = FrameScores(np.array([best[0]]), np.array([best[1]]), np.array([best[2]]), [frames])
    return best[0], TranslatedAligner(query).trace(target, scored, 0, offset)


def _oracle_rows(hits: pa.Table, queries: dict, genome: str) -> list[dict]:
    """The re-rank as it was before scoring and traceback were split: every hit aligned (then sorted)."""
    from genoembed.evidence import flanked
    from genoembed.protein_evidence import alignment_row
    from genoembed.topology import circular_overlaps

    rows = []
    for hit in hits.to_pylist():
        query = queries[hit["query"]]
        start, end = flanked(hit["start"], hit["end"], len(genome), len(query))
        _, alignment = _aligned_by_parasail(query, genome[start:end], start)
        if alignment and not circular_overlaps(alignment.target_start, alignment.target_end, hit["start"],
                                               hit["end"], 1 << 62):
            alignment = None
        hit.update(alignment_row(alignment, len(query), len(genome), 2 * len(genome)))
        if alignment:
            hit["strand"] = "+" if (alignment.query_frame < 3) == (alignment.target_frame < 3) else "-"
        rows.append(hit)
    return rows


def test_scores_equal_parasail_and_the_rerank_equals_aligning_every_hit():
    from genoembed.protein_evidence import TranslatedAligner, rank_by_bits, rerank

    (chrom, genome), *_ = _genes()[0]
    genes = _genes()[1]
    queries = {"native": genes[2].dna[:999], "recoded": _recoded(genes[5].dna[:999], 0.5, 1),
               "far": _recoded(genes[9].dna[:900], 0.35, 2), "noncoding": genome[60_000:60_800]}
    tiles = [(chrom, start, min(start + 1000, len(genome))) for start in range(0, len(genome) - 500, 500)]
    rng = np.random.default_rng(0)
    orders = [[tiles[i] for i in rng.permutation(len(tiles))[:50]] for _ in queries]
    hits = _hits(list(queries), orders)
    # scores: pyopal's SIMD search over all candidates equals parasail one candidate at a time
    regions = [genome[start:end] for _, start, end in orders[1]]
    scores = TranslatedAligner(queries["recoded"]).score(regions).scores
    assert scores.tolist() == [_aligned_by_parasail(queries["recoded"], region, 0)[0] for region in regions]
    fetch = lambda _genome, _chrom, start, end: genome[start:end]  # noqa: E731
    every = _oracle_rows(hits, queries, genome)
    for k in (10, 50):  # the top 10 (traced lazily) and every hit (unaligned ones included, in embedding order)
        fast = rerank(hits, queries, fetch, {"g": {chrom: len(genome)}}, k)
        assert fast.to_pylist() == rank_by_bits(every, k).to_pylist()
    assert fast.column("protein_bit_score").null_count > 0  # the test covers hits without evidence too


def test_near_duplicate_groups_collapse_copies_in_embedding_order():
    from genoembed.protein_evidence import near_duplicate_groups

    rng = np.random.default_rng(1)
    loci = rng.normal(size=(5, 32))
    order = [0, 0, 1, 0, 2, 1, 3, 4, 2]
    vectors = loci[order] + rng.normal(0, 0.01, (len(order), 32))
    assert near_duplicate_groups(vectors, block=4).tolist() == [0, 0, 2, 0, 4, 2, 6, 7, 4]
    # at most three groups: rows that would open a fourth lie beyond the depth; copies still join theirs
    assert near_duplicate_groups(vectors, limit=3, block=2).tolist() == [0, 0, 2, 0, 4, 2, -1, -1, 4]


def _pangenome(copies: int, decoys: int, seed: int = 5):
    """Genomes of ``decoys`` random 1 kb loci then one locus holding a recoded homolog of a chloroplast gene
    (reverse strand), each copy with 1 % substitutions; the query; hits ranked decoys first, copy by copy."""
    rng = np.random.default_rng(seed)
    gene = _genes()[1][3].dna[:900]
    query = _recoded(gene, 0.55, seed)
    loci = ["".join(rng.choice(list("ACGT"), 1000)) for _ in range(decoys)]
    flank = ("".join(rng.choice(list("ACGT"), 50)) for _ in range(2))
    loci.append(next(flank) + reverse_complement(gene) + next(flank))
    original = "".join(loci)
    genomes = {}
    for copy in range(copies):
        codes = np.array(list(original))
        where = rng.random(len(codes)) < 0.01
        codes[where] = rng.choice(list("ACGT"), where.sum())
        genomes[f"g{copy}"] = "".join(codes)
    rows, vectors = [], []
    directions = rng.normal(size=(decoys + 1, 64))
    for locus in range(decoys + 1):
        for copy in range(copies):
            rows.append(dict(query="q", query_chrom=None, query_start=None, query_end=None, query_strand=None,
                             rank=len(rows) + 1, tile_id=len(rows), genome=f"g{copy}", chrom="c",
                             start=1000 * locus, end=1000 * (locus + 1), strand="+", score=1.0 - len(rows) / 1e4))
            vectors.append(directions[locus] + rng.normal(0, 0.02, 64))
    return query, genomes, pa.Table.from_pylist(rows, schema=schema.HITS), np.array(vectors), 1000 * decoys


def test_grouping_near_identical_copies_reranks_the_homolog_into_the_top_k():
    from genoembed.protein_evidence import hit_groups, rerank

    copies, decoys, depth, k = 12, 15, 16, 5
    query, genomes, hits, vectors, homolog_start = _pangenome(copies, decoys)
    fetched = []

    def fetch(genome, chrom, start, end):
        fetched.append((genome, start))
        return genomes[genome][start:end]

    lengths = {name: {"c": len(sequence)} for name, sequence in genomes.items()}
    # without grouping the depth-16 shortlist is copies of the first two decoy loci: the homolog is not in it
    plain = rerank(hits.slice(0, depth), {"q": query}, fetch, lengths, k)
    assert not any(start == homolog_start for start in plain.column("start").to_pylist())
    fetched.clear()
    groups, complete = hit_groups(hits, vectors, depth)
    assert complete and (groups >= 0).sum() == hits.num_rows  # 16 groups: every locus, copies collapsed
    found = rerank(hits, {"q": query}, fetch, lengths, k, groups=groups).to_pylist()
    # the homolog's copies fill the top k, each with its own evidence, ranked by its own bit score
    assert [hit["start"] for hit in found] == [homolog_start] * k
    assert len({hit["genome"] for hit in found}) == k
    bits = [hit["protein_bit_score"] for hit in found]
    assert bits == sorted(bits, reverse=True) and min(bits) > 100
    assert all(hit["protein_evalue"] < 1e-20 and hit["strand"] == "-" for hit in found)
    # one representative per group aligned, then the best group's members: not the 192 candidates
    assert len(fetched) == depth + k - 1


def test_search_cli_protein_rerank_over_near_identical_genomes(tmp_path):
    from typer.testing import CliRunner

    from genoembed.cli import app
    from genoembed.seqio import read_fasta

    (name, sequence), = [(n, s.upper()) for n, s in read_fasta(CHLOROPLAST_FASTA)]
    sequence = sequence[:60_000]
    rng = np.random.default_rng(7)
    fastas = []
    for copy in range(3):
        codes = np.array(list(sequence))
        where = rng.random(len(codes)) < 0.01
        codes[where] = rng.choice(list("ACGT"), where.sum())
        fastas.append(tmp_path / f"strain{copy}.fa")
        fastas[-1].write_text(f">{name}\n{''.join(codes)}\n")
    runner = CliRunner()
    store = tmp_path / "pangenome"
    result = runner.invoke(app, ["index", *(a for f in fastas for a in ("--fasta", str(f))), "--output", str(store),
                                 "--model", "protein", "--window", "1000", "--stride", "500", "-q"])
    assert result.exit_code == 0, result.output
    from genoembed.search import tile_vectors
    from genoembed.store import Store

    opened = Store.open(store)
    ids, stored = (np.concatenate(parts) for parts in zip(*opened.iter_embeddings()))
    assert len(opened.shards) > 1  # vectors read across shards, in the order asked
    picked = np.random.default_rng(8).permutation(len(ids))[:60]
    np.testing.assert_array_equal(tile_vectors(opened, ids[picked]), stored[picked])
    gene = max((g for g in _genes()[1] if g.end <= 60_000), key=lambda g: len(g.dna))
    query = _recoded(gene.dna[:900], 0.6, 9)
    result = runner.invoke(app, ["search", str(store), "--sequence", query, "-k", "3", "--protein-rerank", "4",
                                 "--tiles", "--no-save", "-f", "jsonl", "-q"])
    assert result.exit_code == 0, result.output
    hits = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    # the gene in each of the three strains, each with its own protein evidence
    assert sorted(h["genome"] for h in hits) == ["strain0", "strain1", "strain2"]
    for hit in hits:
        assert gene.start - 60 <= hit["protein_target_start"] < hit["protein_target_end"] <= gene.end + 60
        assert hit["protein_evalue"] < 1e-20 and 0.45 < hit["protein_identity"] < 0.8
