"""Retrieval quality against real ground truth (the `genoembed eval` command's library).

``truth`` builds alignment truth, ``metrics`` scores ranked hits, ``run`` is the evaluation run,
``families`` the gene-family agreement check, ``protein`` the protein-homolog truth across phyla. Everything public is re-exported here.
"""
from genoembed.eval.truth import (  # noqa: F401
    ALIGNMENTS, TRUTH, IDENTITY_BINS, read_coords, read_paf, split_at_indels, minimap2_available, run_minimap2, derive_truth_minimap2, truth_for_tiles, truth_lists)
from genoembed.eval.metrics import (  # noqa: F401
    correct_ranks, distinct_loci, recall_at_k, mrr, identity_bin, binned_recall, ann_recall)
from genoembed.eval.run import (  # noqa: F401
    QueryTile, IndexConfig, sample_query_tiles, mutated_sequences, tile_coordinates, spans_from_ids, minimap2_spans, build_reference_index, evaluate, safe_name, significant, summary_markdown, read_results)
from genoembed.eval.families import (  # noqa: F401
    FAMILY_FEATURE_TYPES, GENE_SYMBOL, family_key, GeneFeature, gene_features, family_ranks, chance_agreement, GeneTile, gene_tiles, own_gene_modes, family_agreement_rows, gene_family_agreement)

from genoembed.eval.protein import (  # noqa: F401
    DEFAULT_METHODS, PROTEIN_BINS, PROTEIN_TRUTH, Gene, Method, ProteinTask, best_tiles, call_genes, central_window, centred_unit, evaluate_task, method_for, protein_summary, protein_task, protein_truth, random_vectors, read_records, target_tiles)

__all__ = ['DEFAULT_METHODS', 'PROTEIN_BINS', 'PROTEIN_TRUTH', 'Gene', 'Method', 'ProteinTask', 'best_tiles', 'call_genes', 'central_window', 'centred_unit', 'distinct_loci', 'evaluate_task', 'method_for', 'protein_summary', 'protein_task', 'protein_truth', 'random_vectors', 'read_records', 'significant', 'target_tiles', 'ALIGNMENTS', 'FAMILY_FEATURE_TYPES', 'GeneFeature', 'GeneTile', 'IDENTITY_BINS', 'IndexConfig', 'QueryTile', 'TRUTH', 'GENE_SYMBOL', 'ann_recall', 'binned_recall', 'build_reference_index', 'chance_agreement', 'correct_ranks', 'derive_truth_minimap2', 'evaluate', 'family_agreement_rows', 'family_key', 'family_ranks', 'gene_family_agreement', 'gene_features', 'gene_tiles', 'identity_bin', 'minimap2_available', 'minimap2_spans', 'mrr', 'mutated_sequences', 'own_gene_modes', 'read_coords', 'read_paf', 'read_results', 'recall_at_k', 'run_minimap2', 'safe_name', 'sample_query_tiles', 'spans_from_ids', 'split_at_indels', 'summary_markdown', 'tile_coordinates', 'truth_for_tiles', 'truth_lists']
