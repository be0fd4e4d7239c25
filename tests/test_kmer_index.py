"""seqio.kmer_index, the one k-mer indexer (k-mer spectra, tokenisation, token tables, strand evidence, pair
mining), against a pure-Python oracle: each k-mer's letters read as a base-4 number."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genoembed.seqio import encode_bases, kmer_index, reverse_complement, reverse_complement_codes


def oracle(sequence: str, k: int, step: int) -> tuple[list[int], list[bool]]:
    """Index and cleanliness of the k-mer at every step-th start; an ambiguous base counts as T."""
    index, clean = [], []
    for start in range(0, len(sequence) - k + 1, step):
        kmer = sequence[start : start + k].upper()
        index.append(int("".join(str("ACGT".index(c)) if c in "ACGT" else "3" for c in kmer), 4))
        clean.append(all(c in "ACGT" for c in kmer))
    return index, clean


@st.composite
def equal_length_rows(draw) -> list[str]:
    length = draw(st.integers(0, 40))
    letters = st.lists(st.sampled_from("ACGTacgtNRY-"), min_size=length, max_size=length).map("".join)
    return draw(st.lists(letters, min_size=1, max_size=4))


@settings(max_examples=300, deadline=None)
@given(equal_length_rows(), st.integers(1, 17), st.integers(1, 9))
def test_kmer_index_equals_the_python_oracle(sequences, k, step):
    codes = np.stack([encode_bases(s) for s in sequences])
    index, clean = kmer_index(codes, k, step)
    for row, sequence in enumerate(sequences):
        expected_index, expected_clean = oracle(sequence, k, step)
        assert index[row].tolist() == expected_index
        assert clean[row].tolist() == expected_clean
    assert index.dtype == (np.int32 if k <= 15 else np.int64)


def test_kmer_index_of_a_long_k_and_of_rows_shorter_than_k():
    sequence = "ACGTTGCAACGTTGCAACGTTGCAT"  # k = 20 needs int64
    index, clean = kmer_index(encode_bases(sequence)[None, :], 20)
    assert index[0].tolist() == oracle(sequence, 20, 1)[0] and clean.all()
    index, clean = kmer_index(encode_bases("ACG")[None, :], 4)
    assert index.shape == clean.shape == (1, 0)
    with pytest.raises(ValueError):
        kmer_index(encode_bases("ACGT"), 2)  # 1-D: rows are explicit


def test_reverse_complement_codes_is_reverse_complement():
    sequence = "ACGTNNacgtRYGATTACA"
    assert (reverse_complement_codes(encode_bases(sequence)) == encode_bases(reverse_complement(sequence))).all()
    rows = np.stack([encode_bases("ACGTN"), encode_bases("GGATC")])
    assert (reverse_complement_codes(rows)[1] == encode_bases("GATCC")).all()
