"""Issue 17: protein-level truth (pyrodigal + pyopal, checked against blastp), the translated `aa:K`
embedder on hand-made codons, and the ranking fix (each locus counted once; 3 significant digits)."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from conftest import CHLOROPLAST_GENBANK as CHLOROPLAST
from genoembed.embedders import get_embedder, load_embedder
from genoembed.embedders.translated import (TranslatedProfileEmbedder, orf_mask, peptide_counts, six_frames,
                                            translate)
from genoembed.errors import InputError
from genoembed.eval.metrics import correct_ranks, distinct_loci, recall_at_k
from genoembed.eval.run import significant, spans_from_ids, summary_markdown
from genoembed.seqio import reverse_complement



# ---------------------------------------------------------------- aa:K embedder

def test_translation_of_known_codons():
    assert translate("ATGGCCTGGTAAGGN") == "MAW*X"
    assert translate("ATGGCCTGG", frame=1) == "WP"  # TGG CCT, trailing GG dropped
    assert translate("ATGGCCTGG", frame=3) == "PGH"  # reverse complement CCAGGCCAT


def test_six_frames_agree_with_biopython():
    from Bio.Seq import Seq

    rng = np.random.default_rng(1)
    sequence = "".join(rng.choice(list("ACGT"), 301))
    for frame in range(6):
        strand = sequence if frame < 3 else reverse_complement(sequence)
        offset = frame % 3
        codons = (len(strand) - offset) // 3 * 3
        assert translate(sequence, frame) == str(Seq(strand[offset:offset + codons]).translate())


def test_peptide_counts_skip_stops_and_dropped_residues():
    residues = six_frames("ATGGCCTGGTAAGCCATG")[0]  # M A W * A M
    counts = peptide_counts(residues, 2)
    index = {pair: "ACDEFGHIKLMNPQRSTVWY".index(pair[0]) * 20 + "ACDEFGHIKLMNPQRSTVWY".index(pair[1])
             for pair in ("MA", "AW", "AM")}
    assert counts.sum() == 3 and all(counts[i] == 1 for i in index.values())
    keep = np.array([True, True, False, False, True, True])
    assert peptide_counts(residues, 2, keep).sum() == 2  # MA and AM; AW touches a dropped residue


def test_orf_mask_keeps_long_stop_free_runs_only():
    residues = np.array([0, 0, 0, 20, 1, 20, 2, 2, 2, 2])
    assert orf_mask(residues, 3).tolist() == [True] * 3 + [False] * 3 + [True] * 4
    assert not orf_mask(residues, 5).any()


def test_reverse_strand_gives_the_same_six_frames_swapped():
    rng = np.random.default_rng(2)
    sequence = "".join(rng.choice(list("ACGT"), 500))
    embedder = TranslatedProfileEmbedder(k=2)
    forward, reverse = embedder.frame_vectors([sequence, reverse_complement(sequence)])
    np.testing.assert_allclose(reverse, forward[[3, 4, 5, 0, 1, 2]], atol=1e-6)
    for name in ("aa:2", "aa:2:orf"):
        vectors = get_embedder(name).embed([sequence, reverse_complement(sequence)])
        np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-6)


def test_registry_serves_and_rebuilds_aa_models():
    for name, dim in (("aa:2", 400), ("aa:1:orf", 20)):
        embedder = get_embedder(name)
        assert embedder.dim == dim
        assert load_embedder(embedder.describe()).fingerprint == embedder.fingerprint
    assert get_embedder("aa:2").fingerprint != get_embedder("aa:2:orf").fingerprint
    with pytest.raises(InputError, match="aa:K or aa:K:orf"):
        get_embedder("aa:x")
    with pytest.raises(InputError, match="unknown mode"):
        get_embedder("aa:2:frames")


# ---------------------------------------------------------------- ranking fix

def test_a_locus_on_both_strands_takes_one_place():
    hits = [("c", 0, 10, "+"), ("c", 0, 10, "-"), ("c", 10, 20, "-"), ("c", 10, 20, "+"), ("c", 20, 30, "+")]
    assert distinct_loci(hits) == [("c", 0, 10, "+-"), ("c", 10, 20, "-+"), ("c", 20, 30, "+")]
    truth = [[("c", 22, 28, "-")]]
    assert correct_ranks([hits], truth)[0] == 5  # duplicates push the locus down to rank 5 ...
    assert correct_ranks([distinct_loci(hits)], truth)[0] == 3  # ... it is the third distinct locus
    assert recall_at_k(ranks=correct_ranks([distinct_loci(hits)[:3]], truth), k=3) == 1.0
    assert correct_ranks([distinct_loci(hits)], truth, same_strand=True)[0] == 0
    assert correct_ranks([distinct_loci(hits)], [[("c", 12, 18, "+")]], same_strand=True)[0] == 2


def test_spans_from_ids_counts_loci_once_and_keeps_k():
    coordinates = (np.array(["c"] * 4, dtype=object), np.array([0, 0, 10, 10]), np.array([10, 10, 20, 20]),
                   np.array(["+", "-", "+", "-"], dtype=object))
    assert spans_from_ids(np.array([[0, 1, 2, 3]]), coordinates, k=2) == [[("c", 0, 10, "+-"), ("c", 10, 20, "+-")]]
    assert spans_from_ids(np.array([[1, -1]]), coordinates, k=2) == [[("c", 0, 10, "-")]]


def test_rates_print_three_significant_digits():
    assert [significant(x) for x in (0.075, 0.0049, 0.3333, 1.0, 0.0, None)] == \
        ["0.0750", "0.00490", "0.333", "1.00", "0", ""]
    row = {"method": "m", "index": "Flat", "substitution_rate": 0.0, "indel_rate": 0.0, "queries": 40,
           "identity_bin": "all", "recall_at_1": 0.075, "recall_at_10": 0.5, "mrr": 0.1}
    assert "| 0.0750 | 0.500 | 0.100 |" in summary_markdown([row], ks=(1, 10))


# ---------------------------------------------------------------- protein truth

def test_best_tiles_matches_brute_force_best_pair():
    from genoembed.eval.protein import best_tiles, centred_unit

    rng = np.random.default_rng(3)
    reference = centred_unit(rng.standard_normal((50, 6, 8)), None).reshape(50, 6, 8)
    queries = centred_unit(rng.standard_normal((7, 6, 8)), None).reshape(7, 6, 8)
    best_pair = np.einsum("qad,tbd->qtab", queries, reference).max(axis=(2, 3))
    expected = np.argsort(-best_pair, axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(best_tiles(reference, queries, 5), expected)


def _mutated_proteins(proteins, rng):
    """Each protein with 10-60 % of its residues replaced at random (known answer: its own copy)."""
    letters = np.array(list("ACDEFGHIKLMNPQRSTVWY"))
    out = []
    for protein in proteins:
        residues = np.array(list(protein))
        hit = rng.random(len(residues)) < rng.uniform(0.1, 0.6)
        residues[hit] = rng.choice(letters, hit.sum())
        out.append("".join(residues))
    return out


@pytest.fixture(scope="module")
def chloroplast_truth():
    pytest.importorskip("pyrodigal")
    pytest.importorskip("pyopal")
    from genoembed.eval.protein import call_genes, protein_truth, read_records

    genes = [g for g in call_genes(read_records(CHLOROPLAST)) if len(g.protein) >= 100][:50]
    queries = [g.protein for g in genes]
    targets = _mutated_proteins(queries, np.random.default_rng(4))
    return queries, targets, protein_truth(queries, targets, max_evalue=1e-5, min_coverage=0.5)


def test_protein_truth_finds_each_mutated_copy(chloroplast_truth):
    queries, _targets, truth = chloroplast_truth
    assert len(queries) == 50 and truth.num_rows >= 45
    assert truth.column("query_gene").to_pylist() == truth.column("target_gene").to_pylist()
    identities = truth.column("identity").to_numpy()
    assert identities.min() < 60 < identities.max() <= 100
    assert (truth.column("evalue").to_numpy() <= 1e-5).all()


@pytest.mark.skipif(shutil.which("blastp") is None, reason="blastp (Debian ncbi-blast+) not installed")
def test_protein_truth_agrees_with_blastp(chloroplast_truth, tmp_path):
    queries, targets, truth = chloroplast_truth
    (tmp_path / "q.fa").write_text("".join(f">q{i}\n{p}\n" for i, p in enumerate(queries)))
    (tmp_path / "t.fa").write_text("".join(f">t{i}\n{p}\n" for i, p in enumerate(targets)))
    result = subprocess.run(
        ["blastp", "-query", tmp_path / "q.fa", "-subject", tmp_path / "t.fa", "-matrix", "BLOSUM62",
         "-gapopen", "11", "-gapextend", "1", "-comp_based_stats", "0", "-seg", "no", "-evalue", "1e-5",
         "-max_hsps", "1", "-outfmt", "6 qseqid sseqid pident score"], capture_output=True, text=True, check=True)
    best = {}
    for line in result.stdout.splitlines():
        query, subject, pident, score = line.split("\t")
        if int(score) > best.get(query, ("", 0, 0))[2]:
            best[query] = (subject, float(pident), int(score))
    ours = {f"q{row['query_gene']}": row for row in truth.to_pylist()}
    assert set(best) == set(ours)
    for query, (subject, pident, score) in best.items():
        assert subject == f"t{ours[query]['target_gene']}"
        assert ours[query]["score"] >= score  # exact Smith-Waterman is never below BLAST's heuristic
        assert ours[query]["score"] - score <= 0.05 * score
        assert abs(ours[query]["identity"] - pident) < 3


def test_protein_eval_on_the_chloroplast_against_itself():
    pytest.importorskip("pyrodigal")
    pytest.importorskip("pyopal")
    from genoembed.eval.protein import evaluate_task, method_for, protein_summary, protein_task

    task = protein_task(CHLOROPLAST, CHLOROPLAST, n_queries=30, strands="both", seed=1)
    assert 0 < len(task.queries) <= 30 and all(len(q) % 3 == 0 for q in task.queries)
    rows = evaluate_task(task, [method_for(name) for name in ("random", "aa:2:frames", "aa:2")])
    overall = {row["method"]: row for row in rows if row["identity_bin"] == "all"}
    assert overall["aa:2:frames"]["vectors_per_tile"] == 6 and overall["aa:2"]["vectors_per_tile"] == 1
    assert overall["aa:2:frames"]["recall_at_10"] == 1.0  # every query gene is in the target itself
    assert overall["random"]["recall_at_10"] < 0.5
    assert "| aa:2:frames | 6 | 400 |" in protein_summary(rows)


def test_eval_cli_protein_truth(tmp_path):
    pytest.importorskip("pyrodigal")
    pytest.importorskip("pyopal")
    from typer.testing import CliRunner

    from genoembed.cli import app

    summary = tmp_path / "summary.md"
    result = CliRunner().invoke(app, ["eval", "--truth", "protein", str(CHLOROPLAST), str(CHLOROPLAST), "-m", "aa:2",
                                      "-n", "10", "--strands", "+", "--summary", str(summary), "-f", "json", "-q"])
    assert result.exit_code == 0, result.output
    assert '"method": "aa:2"' in result.output and "| aa:2 | 1 | 400 |" in summary.read_text()


# ---------------------------------------------------------------- the translation-aware model

def _tiny_model(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.numpy import save_file

    from genoembed.train.protein import ProteinTrainConfig, build_model, export_tensors

    torch.manual_seed(0)
    config = ProteinTrainConfig(output=tmp_path, related=[], validation=("", ""), embedding_dim=8, channels=12,
                                width=3, dim=16)
    model = build_model(config).eval()
    save_file(export_tensors(model), str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text('{"name": "tiny"}')
    return model, config


def test_numpy_protein_embedder_equals_the_torch_network(tmp_path):
    from genoembed.train.protein import embed_torch

    model, config = _tiny_model(tmp_path)
    rng = np.random.default_rng(5)
    sequences = ["".join(rng.choice(list("ACGT"), n)) for n in (999, 1000, 40, 7)] + ["ACGTNNNNACGTTGCA" * 20]
    embedder = get_embedder(f"protein:{tmp_path}")
    np.testing.assert_allclose(embedder.embed(sequences), embed_torch(model, sequences, config.width), atol=1e-5)
    assert load_embedder(embedder.describe()).fingerprint == embedder.fingerprint


def test_protein_embedder_is_strand_invariant(tmp_path):
    _tiny_model(tmp_path)
    sequence = "".join(np.random.default_rng(6).choice(list("ACGT"), 600))
    vectors = get_embedder(f"protein:{tmp_path}").embed([sequence, reverse_complement(sequence)])
    np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-5)


def test_protein_model_directory_errors_name_the_fix(tmp_path):
    from genoembed.errors import ModelError

    with pytest.raises(ModelError, match="not a protein model directory.*genoembed.train.protein"):
        get_embedder(f"protein:{tmp_path}")


def test_recoding_keeps_the_protein_and_changes_the_dna():
    from genoembed.train.protein import codon_usage, recode, substitution_table

    rng = np.random.default_rng(7)
    codons = [c for c in range(64) if translate("ACGT"[c // 16] + "ACGT"[c // 4 % 4] + "ACGT"[c % 4]) != "*"]
    dna = "".join("ACGT"[c // 16] + "ACGT"[c // 4 % 4] + "ACGT"[c % 4] for c in rng.choice(codons, 300))
    same_protein = recode(dna, 1.0, codon_usage([dna]), substitution_table(), rng)
    assert translate(same_protein) == translate(dna)
    assert np.mean([a == b for a, b in zip(same_protein, dna)]) < 0.9  # synonymous codons re-drawn
    diverged = recode(dna, 0.5, codon_usage([dna]), substitution_table(), rng)
    identity = np.mean([a == b for a, b in zip(translate(diverged), translate(dna))])
    assert 0.4 < identity < 0.6


def test_shipped_protein_model_loads_when_installed():
    from genoembed.resources import PACKAGE_PREFIX, PROTEIN_MODEL, resolve

    if not (resolve(PACKAGE_PREFIX + PROTEIN_MODEL) / "model.safetensors").is_file():
        pytest.skip("the protein model is not shipped in this checkout")
    embedder = get_embedder("protein")
    sequence = "".join(np.random.default_rng(8).choice(list("ACGT"), 1000))
    vectors = embedder.embed([sequence, reverse_complement(sequence)])
    assert vectors.shape == (2, embedder.dim) and np.allclose(vectors[0], vectors[1], atol=1e-5)


def test_eval_cli_protein_truth_refuses_alignment_options():
    from typer.testing import CliRunner

    from genoembed.cli import app

    result = CliRunner().invoke(app, ["eval", "--truth", "protein", str(CHLOROPLAST), str(CHLOROPLAST),
                                      "--index", "HNSW32", "-q"])
    assert result.exit_code != 0 and "--truth protein does not use --index" in result.output
