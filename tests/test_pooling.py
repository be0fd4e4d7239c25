"""genoembed.embedders.pooling against hand-written numpy references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genoembed.embedders.pooling import (
    average_strands,
    cls_pool,
    combine_chunks,
    content_mask,
    max_pool,
    mean_pool,
    pool,
)
from genoembed.embedders.tokenize import chunk_spans
from genoembed.seqio import reverse_complement
from genoembed.errors import InputError


@pytest.fixture
def states():
    rng = np.random.default_rng(1)
    hidden = rng.normal(size=(3, 7, 5)).astype(np.float32)
    attention = np.array([[1] * 7, [1] * 5 + [0] * 2, [1] * 3 + [0] * 4])
    special = np.zeros_like(attention)
    special[:, 0] = 1  # <cls>
    special[0, 6] = special[1, 4] = special[2, 2] = 1  # <eos>
    special[attention == 0] = 1  # padding
    return hidden, attention, special


def _reference(hidden, attention, special, how):
    out = []
    for h, a, s in zip(hidden, attention, special):
        rows = h[(a == 1) & (s == 0)]
        out.append({"mean": rows.mean(axis=0), "max": rows.max(axis=0), "cls": h[0]}[how])
    return np.stack(out)


@pytest.mark.parametrize("how", ["mean", "max", "cls"])
def test_token_pooling_matches_numpy(states, how):
    hidden, attention, special = states
    mask = content_mask(torch.from_numpy(attention), torch.from_numpy(special))
    got = pool(torch.from_numpy(hidden), mask, how).numpy()
    np.testing.assert_allclose(got, _reference(hidden, attention, special, how), rtol=1e-6, atol=1e-6)


def test_pooling_ignores_special_tokens_not_just_padding(states):
    hidden, attention, special = states
    attention_only = torch.from_numpy(attention).bool()
    with_specials = mean_pool(torch.from_numpy(hidden), attention_only).numpy()
    assert not np.allclose(with_specials, _reference(hidden, attention, special, "mean"))


def test_max_and_cls_pool_direct(states):
    hidden, attention, special = states
    mask = content_mask(torch.from_numpy(attention), torch.from_numpy(special))
    np.testing.assert_allclose(max_pool(torch.from_numpy(hidden), mask).numpy(),
                               _reference(hidden, attention, special, "max"))
    np.testing.assert_allclose(cls_pool(torch.from_numpy(hidden)).numpy(), hidden[:, 0])


def test_bfloat16_states_pool_in_float32(states):
    hidden, attention, special = states
    mask = content_mask(torch.from_numpy(attention), torch.from_numpy(special))
    got = mean_pool(torch.from_numpy(hidden).to(torch.bfloat16), mask)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), _reference(hidden, attention, special, "mean"), atol=2e-2)


def test_empty_content_is_an_error():
    with pytest.raises(InputError, match="no base tokens"):
        mean_pool(torch.zeros(1, 3, 2), torch.zeros(1, 3, dtype=torch.bool))


def test_unknown_pooling():
    with pytest.raises(InputError, match="unknown pooling"):
        pool(torch.zeros(1, 1, 1), torch.ones(1, 1, dtype=torch.bool), "median")


@pytest.mark.parametrize(("length", "max_bases", "multiple"), [
    (1000, 366, 6), (366, 366, 6), (367, 366, 6), (10, 3, 1), (7, 100, 6), (1001, 300, 6), (5, 6, 6),
])
def test_chunk_spans_tile_the_sequence(length, max_bases, multiple):
    spans = chunk_spans(length, max_bases, multiple)
    assert spans[0, 0] == 0 and spans[-1, 1] == length
    np.testing.assert_array_equal(spans[1:, 0], spans[:-1, 1])  # contiguous, no overlap
    sizes = spans[:, 1] - spans[:, 0]
    assert (sizes > 0).all() and (sizes <= max_bases).all()
    assert (spans[:-1, 1] % multiple == 0).all()
    assert len(spans) == -(-(-(-length // multiple)) // (max_bases // multiple))  # fewest chunks
    assert sizes.max() - sizes.min() < 2 * multiple  # balanced (the last k-block may be partial)


def test_chunk_spans_bad_arguments():
    assert chunk_spans(0, 10).shape == (0, 2)
    with pytest.raises(InputError):
        chunk_spans(10, 5, 6)


def test_combine_chunks_weighted_mean_and_max():
    rng = np.random.default_rng(2)
    vectors = rng.normal(size=(5, 4))
    owners = np.array([0, 1, 0, 2, 0])
    weights = np.array([300, 50, 300, 10, 120])
    mean = combine_chunks(vectors, weights, owners, 3)
    expected0 = (vectors[0] * 300 + vectors[2] * 300 + vectors[4] * 120) / 720
    np.testing.assert_allclose(mean[0], expected0, rtol=1e-6)
    np.testing.assert_allclose(mean[1], vectors[1], rtol=1e-6)
    np.testing.assert_allclose(mean[2], vectors[3], rtol=1e-6)
    assert mean.dtype == np.float32
    top = combine_chunks(vectors, weights, owners, 3, how="max")
    np.testing.assert_allclose(top[0], vectors[[0, 2, 4]].max(axis=0), rtol=1e-6)
    with pytest.raises(InputError, match="at least one chunk"):
        combine_chunks(vectors, weights, owners, 4)


def test_average_strands_and_reverse_complement():
    a, b = np.ones((2, 3)), np.zeros((2, 3))
    np.testing.assert_allclose(average_strands(a, b), 0.5)
    assert reverse_complement("AACGTTN") == "NAACGTT"
    assert reverse_complement("acgGT") == "ACcgt"
    assert reverse_complement("RYKM") == "KMRY"
    assert reverse_complement(reverse_complement("ACGTNRYSWKMBDHV")) == "ACGTNRYSWKMBDHV"
