"""Length-bucketed batches: coverage, budget, determinism, masks and shifted targets."""

import numpy as np
import pytest
import torch

from attnkit.data.batching import (
    Batch,
    collate,
    encode_source_batches,
    make_batches,
    padding_ratio,
)
from attnkit.data.corpus import TokenizedCorpus
from attnkit.data.tokenizer import BOS_ID, EOS_ID, PAD_ID
from attnkit.errors import UserError


def multi30k_like_lengths(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Source lengths ~ N(13, 5) in [1, 60]; target lengths about 1.1x the source, with noise."""
    rng = np.random.default_rng(seed)
    src = np.clip(np.rint(rng.normal(13, 5, n)), 1, 60).astype(np.int64)
    tgt = np.clip(np.rint(src * 1.1 + rng.normal(0, 2, n)), 1, 80).astype(np.int64)
    return src, tgt


def random_corpus(n: int, seed: int = 0) -> TokenizedCorpus:
    """A corpus of random ids (4..99) with lengths 0..9, so some sides are empty."""
    rng = np.random.default_rng(seed)
    sides = {}
    for side in ("src", "tgt"):
        lengths = rng.integers(0, 10, n)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        sides[side] = rng.integers(4, 100, int(offsets[-1])).astype(np.uint16)
        sides[side + "_offsets"] = offsets
    return TokenizedCorpus(**sides)


def batch_cost(indices, src_lengths, tgt_lengths) -> int:
    return len(indices) * int(max(src_lengths[indices].max(), tgt_lengths[indices].max()) + 1)


@pytest.mark.parametrize("shuffle", [True, False])
def test_every_index_appears_exactly_once(shuffle):
    src, tgt = multi30k_like_lengths(5000)
    batches = make_batches(src, tgt, max_tokens=512, shuffle=shuffle, seed=3, epoch=2)
    assert np.array_equal(np.sort(np.concatenate(batches)), np.arange(5000))


def test_budget_is_respected_and_oversize_pairs_go_alone():
    src, tgt = multi30k_like_lengths(3000)
    src[[5, 17]] = 700  # longer than the whole budget
    tgt[99] = 900
    max_tokens = 600
    batches = make_batches(src, tgt, max_tokens=max_tokens, shuffle=True)
    for indices in batches:
        cost = batch_cost(indices, src, tgt)
        assert cost <= max_tokens or len(indices) == 1
    alone = sorted(int(b[0]) for b in batches if batch_cost(b, src, tgt) > max_tokens)
    assert alone == [5, 17, 99]


def test_batches_are_filled_greedily():
    src = tgt = np.full(100, 9)  # width 10 each: 40 pairs fit in 400 tokens
    batches = make_batches(src, tgt, max_tokens=400, shuffle=False)
    assert [len(b) for b in batches] == [40, 40, 20]
    assert np.array_equal(np.concatenate(batches), np.arange(100))  # ties keep corpus order


def test_same_seed_and_epoch_give_the_same_batches_and_other_epochs_differ():
    src, tgt = multi30k_like_lengths(5000)

    def run(seed, epoch):
        return make_batches(src, tgt, max_tokens=1024, shuffle=True, seed=seed, epoch=epoch)

    def same(a, b):
        return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))

    assert same(run(1, 0), run(1, 0))
    assert not same(run(1, 0), run(1, 1))
    assert not same(run(1, 0), run(2, 0))
    # Different epochs also group different pairs together, not only reorder the batches.
    compositions = [{frozenset(b.tolist()) for b in run(1, epoch)} for epoch in (0, 1)]
    assert compositions[0] != compositions[1]


def test_padding_ratio_is_small_on_a_realistic_length_distribution():
    src, tgt = multi30k_like_lengths(29_000)
    batches = make_batches(src, tgt, max_tokens=4096, shuffle=True)
    assert padding_ratio(batches, src, tgt) < 0.10


def test_padding_ratio_counts_both_sides():
    src, tgt = np.array([1, 3]), np.array([2, 2])
    # One batch: source positions 2 and 4 -> width 4, 2 padded; target 3 and 3 -> none padded.
    assert padding_ratio([np.array([0, 1])], src, tgt) == pytest.approx(2 / 14)
    assert padding_ratio([np.array([0]), np.array([1])], src, tgt) == 0.0


def test_make_batches_covers_a_million_pairs():
    # Scale, not speed: every pair lands in exactly one batch (speed lives in benchmarks/).
    src, tgt = multi30k_like_lengths(1_000_000)
    batches = make_batches(src, tgt, max_tokens=4096, shuffle=True)
    order = np.sort(np.concatenate(batches))
    assert np.array_equal(order, np.arange(1_000_000))


def test_bad_budget_and_empty_input():
    with pytest.raises(UserError, match="max_tokens must be a positive"):
        make_batches(np.array([1]), np.array([1]), max_tokens=0, shuffle=False)
    assert make_batches(np.array([], int), np.array([], int), max_tokens=10, shuffle=True) == []


def test_collate_pads_shifts_and_masks():
    corpus = random_corpus(50)
    indices = np.array([7, 3, 41, 0, 12])
    batch = collate(corpus, indices)
    assert batch.src.dtype == torch.long and batch.src_mask.dtype == torch.bool
    assert np.array_equal(batch.indices, indices)
    n_real = 0
    for row, i in enumerate(indices):
        x, y = (a.astype(np.int64).tolist() for a in corpus.pair(i))
        width_s, width_t = batch.src.shape[1], batch.tgt_in.shape[1]
        assert batch.src[row].tolist() == x + [EOS_ID] + [PAD_ID] * (width_s - len(x) - 1)
        assert batch.src_mask[row].tolist() == [True] * (len(x) + 1) + [False] * (
            width_s - len(x) - 1
        )
        assert batch.tgt_in[row].tolist() == [BOS_ID] + y + [PAD_ID] * (width_t - len(y) - 1)
        assert batch.tgt_out[row].tolist() == y + [EOS_ID] + [PAD_ID] * (width_t - len(y) - 1)
        n_real += len(y) + 1
    assert batch.n_tgt_tokens == n_real == int((batch.tgt_out != PAD_ID).sum())
    real = batch.tgt_out.reshape(-1) != PAD_ID
    assert batch.tgt_positions.equal(real.nonzero().squeeze(1))
    assert batch.real_targets().equal(batch.tgt_out.reshape(-1)[real])
    assert batch.src_mask.equal(batch.src != PAD_ID)  # real ids are never PAD_ID
    assert batch.src.shape[1] == max(len(corpus.pair(i)[0]) for i in indices) + 1
    assert batch.tgt_in.shape == batch.tgt_out.shape


def test_collate_every_batch_of_an_epoch():
    corpus = random_corpus(300, seed=1)
    src_len, tgt_len = corpus.src_lengths(), corpus.tgt_lengths()
    batches = make_batches(src_len, tgt_len, max_tokens=64, shuffle=True)
    for indices in batches:
        batch = collate(corpus, indices)
        assert batch.src.numel() <= 64 or len(indices) == 1
        assert batch.tgt_in[:, 1:].equal(
            batch.tgt_out[:, :-1].masked_fill(batch.tgt_out[:, :-1] == EOS_ID, PAD_ID)
        )


def test_batch_to_device_keeps_everything():
    batch = collate(random_corpus(10), np.arange(10))
    moved = batch.to("cpu")
    assert isinstance(moved, Batch) and moved.n_tgt_tokens == batch.n_tgt_tokens
    assert moved.src.equal(batch.src) and moved.src_mask.equal(batch.src_mask)
    assert moved.tgt_in.equal(batch.tgt_in) and moved.tgt_out.equal(batch.tgt_out)
    assert moved.tgt_positions.equal(batch.tgt_positions)


def test_encode_source_batches_for_inference():
    rng = np.random.default_rng(0)
    token_lists = [rng.integers(4, 50, rng.integers(0, 12)).tolist() for _ in range(200)]
    batches = encode_source_batches(token_lists, max_tokens=60)
    seen = np.sort(np.concatenate([indices for indices, _, _ in batches]))
    assert np.array_equal(seen, np.arange(200))
    for indices, src, src_mask in batches:
        assert src.numel() <= 60 or len(indices) == 1
        assert src.dtype == torch.long and src_mask.shape == src.shape
        for row, i in enumerate(indices):
            x = token_lists[i]
            assert src[row, : len(x) + 1].tolist() == x + [EOS_ID]
            assert src_mask[row].sum() == len(x) + 1
            assert (src[row, len(x) + 1 :] == PAD_ID).all()
