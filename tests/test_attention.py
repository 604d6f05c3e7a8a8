"""Multi-head attention: agreement with PyTorch and plain math, masks, and the key/value cache."""

import math

import pytest
import torch
from torch import nn

from attnkit.models.attention import KVCache, MultiHeadAttention, key_padding_mask

D, H = 16, 4


def make_pair(seed: int = 0) -> tuple[MultiHeadAttention, nn.MultiheadAttention]:
    """Our attention and PyTorch's, with the same random weights and biases."""
    torch.manual_seed(seed)
    reference = nn.MultiheadAttention(D, H, batch_first=True).eval()
    for parameter in (reference.in_proj_bias, reference.out_proj.bias):
        nn.init.normal_(parameter)
    ours = MultiHeadAttention(d_model=D, n_heads=H).eval()
    with torch.no_grad():
        ours.in_proj.weight.copy_(reference.in_proj_weight)
        ours.in_proj.bias.copy_(reference.in_proj_bias)
        ours.out_proj.weight.copy_(reference.out_proj.weight)
        ours.out_proj.bias.copy_(reference.out_proj.bias)
    return ours, reference


def lengths_mask(lengths: list[int], length: int) -> torch.Tensor:
    """(B, length), True on the first lengths[b] positions of row b."""
    return torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]


def plain_attention(attention: MultiHeadAttention, query, memory, mask) -> torch.Tensor:
    """softmax(QK^T/sqrt(Dh) + mask) V, head by head, written out without any fused kernel."""
    w, b = attention.in_proj.weight, attention.in_proj.bias
    heads = []
    for h in range(H):
        rows = slice(h * (D // H), (h + 1) * (D // H))
        q = query @ w[:D][rows].T + b[:D][rows]
        k = memory @ w[D : 2 * D][rows].T + b[D : 2 * D][rows]
        v = memory @ w[2 * D :][rows].T + b[2 * D :][rows]
        scores = q @ k.transpose(-2, -1) / math.sqrt(D // H)
        scores = scores.masked_fill(~mask, float("-inf"))
        heads.append(scores.softmax(-1) @ v)
    return attention.out_proj(torch.cat(heads, dim=-1))


# The three ways attention runs: the fused kernel (no gradient, as in decoding), the softmax
# written out (training on short sequences), and the written-out softmax returning its weights.
KERNELS = ["fused", "explicit", "weights"]


def attend(attention: MultiHeadAttention, *args, kernel: str, **kwargs):
    """Call `attention` so that it takes the path `kernel` names."""
    grad = torch.enable_grad() if kernel == "explicit" else torch.no_grad()
    with grad:
        return attention(*args, need_weights=kernel == "weights", **kwargs)


@pytest.mark.parametrize("kernel", KERNELS)
def test_self_attention_with_padding_matches_pytorch_and_plain_math(kernel):
    ours, reference = make_pair()
    x = torch.randn(3, 7, D)
    keep = lengths_mask([7, 4, 2], 7)
    attended = attend(ours, x, mask=key_padding_mask(keep), kernel=kernel)
    expected, expected_weights = reference(x, x, x, key_padding_mask=~keep)
    torch.testing.assert_close(attended.context, expected, atol=1e-5, rtol=1e-5)
    plain = plain_attention(ours, x, x, keep[:, None, :])
    torch.testing.assert_close(attended.context, plain, atol=1e-5, rtol=1e-5)
    if kernel == "weights":
        torch.testing.assert_close(attended.weights.mean(1), expected_weights, atol=1e-6, rtol=0)
    else:
        assert attended.weights is None


@pytest.mark.parametrize("kernel", KERNELS)
def test_cross_attention_matches_pytorch_and_plain_math(kernel):
    ours, reference = make_pair(1)
    query, memory = torch.randn(2, 5, D), torch.randn(2, 9, D)
    keep = lengths_mask([9, 3], 9)
    attended = attend(ours, query, memory, mask=key_padding_mask(keep), kernel=kernel)
    expected, expected_weights = reference(query, memory, memory, key_padding_mask=~keep)
    torch.testing.assert_close(attended.context, expected, atol=1e-5, rtol=1e-5)
    plain = plain_attention(ours, query, memory, keep[:, None, :])
    torch.testing.assert_close(attended.context, plain, atol=1e-5, rtol=1e-5)
    if kernel == "weights":
        torch.testing.assert_close(attended.weights.mean(1), expected_weights, atol=1e-6, rtol=0)


@pytest.mark.parametrize("kernel", KERNELS)
def test_causal_self_attention_matches_pytorch_and_plain_math(kernel):
    ours, reference = make_pair(2)
    x = torch.randn(2, 6, D)
    attended = attend(ours, x, causal=True, kernel=kernel)
    future = torch.ones(6, 6, dtype=torch.bool).triu(1)
    expected, expected_weights = reference(x, x, x, attn_mask=future)
    torch.testing.assert_close(attended.context, expected, atol=1e-5, rtol=1e-5)
    plain = plain_attention(ours, x, x, ~future)
    torch.testing.assert_close(attended.context, plain, atol=1e-5, rtol=1e-5)
    if kernel == "weights":
        torch.testing.assert_close(attended.weights.mean(1), expected_weights, atol=1e-6, rtol=0)


def test_causal_and_padding_together_match_plain_math():
    ours, _ = make_pair(3)
    x = torch.randn(2, 5, D)
    keep = lengths_mask([5, 3], 5)
    allowed = keep[:, None, :] & torch.ones(5, 5, dtype=torch.bool).tril()  # (B, T, T)
    plain = plain_attention(ours, x, x, allowed)
    for kernel in KERNELS:
        attended = attend(ours, x, mask=key_padding_mask(keep), causal=True, kernel=kernel)
        torch.testing.assert_close(attended.context, plain, atol=1e-5, rtol=1e-5)


def test_weights_rows_sum_to_one_and_are_zero_on_padding():
    ours, _ = make_pair()
    query, memory = torch.randn(3, 4, D), torch.randn(3, 6, D)
    keep = lengths_mask([6, 2, 5], 6)
    weights = ours(query, memory, mask=key_padding_mask(keep), need_weights=True).weights
    assert weights.shape == (3, H, 4, 6)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, H, 4))
    padded = ~keep[:, None, None, :].expand_as(weights)
    assert torch.all(weights[padded] == 0)


def test_extend_one_position_at_a_time_equals_causal_attention():
    ours, _ = make_pair()
    x = torch.randn(2, 20, D)  # past MIN_CACHE_CAPACITY, so the buffer grows
    expected = ours(x, causal=True).context
    cache = ours.empty_cache(2, x.device)
    outputs = []
    for t in range(20):
        attended, cache = ours.extend(x[:, t : t + 1], cache)
        outputs.append(attended.context)
    assert cache.keys.shape == (2, H, 20, D // H)
    torch.testing.assert_close(torch.cat(outputs, dim=1), expected, atol=1e-5, rtol=1e-5)


def test_extend_several_positions_at_once_is_causal():
    ours, _ = make_pair()
    x = torch.randn(2, 7, D)
    expected = ours(x, causal=True).context
    first, cache = ours.extend(x[:, :3], ours.empty_cache(2, x.device))
    rest, cache = ours.extend(x[:, 3:], cache)
    torch.testing.assert_close(torch.cat([first.context, rest.context], 1), expected)


def test_cache_extended_twice_keeps_both_continuations():
    """Two continuations of one cache share its buffer; neither may overwrite the other."""
    keys = torch.randn(1, 1, 2, 3)
    start = KVCache(torch.zeros(1, 1, 8, 3), torch.zeros(1, 1, 8, 3), 0).append(keys, keys)
    a, b = torch.ones(1, 1, 1, 3), 2 * torch.ones(1, 1, 1, 3)
    after_a = start.append(a, a)
    after_b = start.append(b, b)
    torch.testing.assert_close(after_a.keys, torch.cat([keys, a], 2))
    torch.testing.assert_close(after_b.values, torch.cat([keys, b], 2))
    torch.testing.assert_close(start.keys, keys)


def test_cache_reorder_selects_rows():
    keys = torch.randn(3, 2, 4, 5)
    cache = KVCache.of(keys, -keys).reorder(torch.tensor([2, 2, 0]))
    torch.testing.assert_close(cache.keys, keys[[2, 2, 0]])
    torch.testing.assert_close(cache.values, -keys[[2, 2, 0]])


def test_a_reordered_cache_keeps_its_room_and_grows_on():
    """Reordering copies the filled positions into buffers of the same capacity; appending
    afterwards writes in place and sees exactly the reordered rows plus the new position."""
    keys = torch.randn(3, 2, 5, 4)
    with torch.no_grad():
        cache = KVCache(torch.zeros(3, 2, 16, 4), torch.zeros(3, 2, 16, 4), 0).append(keys, -keys)
        moved = cache.reorder(torch.tensor([1, 1, 0]))
        new = torch.randn(3, 2, 1, 4)
        grown = moved.append(new, -new)
    assert moved.key_buffer.shape == (3, 2, 16, 4) and grown.key_buffer is moved.key_buffer
    torch.testing.assert_close(grown.keys, torch.cat([keys[[1, 1, 0]], new], 2))
    torch.testing.assert_close(grown.values, -torch.cat([keys[[1, 1, 0]], new], 2))


def test_width_must_divide_into_heads():
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadAttention(d_model=10, n_heads=4)
