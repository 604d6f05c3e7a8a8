"""The settings that let one Transformer class compute Marian's models, without transformers:
sinusoids in halves, activations, the embedding scale, an output bias (through the fused
loss too), the feature permutation of the export, Marian's vocabulary, special ids in batches,
and old run configs that lack the new keys."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import sentencepiece as spm
import torch

from attnkit.config import ModelConfig, from_dict
from attnkit.data.batching import collate, encode_source_batches
from attnkit.data.corpus import TokenizedCorpus
from attnkit.data.tokenizer import ATTNKIT_IDS, SpecialIds, has_tokenizer, load_tokenizers
from attnkit.errors import UserError
from attnkit.interop.hf_weights import halves_permutation, permute_features
from attnkit.models.build import build_model
from attnkit.models.protocol import padding_mask
from attnkit.models.transformer import FeedForward, Transformer, sinusoids
from attnkit.training.loss import batch_loss, projected_smoothed_nll, smoothed_nll

pytestmark = pytest.mark.usefixtures("one_thread")

V = 29


def tiny(**overrides) -> Transformer:
    torch.manual_seed(0)
    options = dict(
        src_vocab=V, tgt_vocab=V, d_model=16, n_heads=2, d_ff=32, encoder_layers=2,
        decoder_layers=2, dropout=0.0, norm="post",
    )  # fmt: skip
    model = Transformer(**(options | overrides)).eval()
    with torch.no_grad():  # LayerNorms and biases away from their (symmetric) initial values
        for parameter in model.parameters():
            if parameter.dim() == 1:
                parameter.add_(torch.randn_like(parameter) * 0.3)
    return model


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    src = torch.randint(4, V, (3, 7), generator=generator)
    src[1, 5:] = 0
    return src, torch.randint(4, V, (3, 6), generator=generator)


def test_halves_are_marians_table():
    length, width = 50, 18
    j = np.arange(width)
    angle = np.arange(length)[:, None] / np.power(10000, 2 * (j // 2) / width)[None, :]
    expected = np.concatenate([np.sin(angle[:, 0::2]), np.cos(angle[:, 1::2])], axis=1)
    torch.testing.assert_close(
        sinusoids(length, width, "halves"), torch.tensor(expected, dtype=torch.float32),
        atol=1e-7, rtol=0,
    )  # fmt: skip


def test_interleaved_sinusoids_are_unchanged():
    length, width = 40, 16
    position = torch.arange(length, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, width, 2) * (-math.log(10000.0) / width))
    table = torch.zeros(length, width)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency)
    assert torch.equal(sinusoids(length, width), table)


def test_the_halves_table_grows_in_halves():
    model = tiny(sinusoids="halves", max_positions=8)
    longer = model.target_positions(20)
    torch.testing.assert_close(longer, sinusoids(20, 16, "halves"))


@pytest.mark.parametrize("name", ["relu", "gelu", "swish"])
def test_feed_forward_applies_its_activation(name):
    torch.manual_seed(0)
    ff = FeedForward(d_model=8, d_ff=16, activation=name)
    x = torch.randn(2, 3, 8)
    act = {"relu": torch.relu, "gelu": torch.nn.functional.gelu, "swish": torch.nn.functional.silu}
    expected = ff.linear2(act[name](ff.linear1(x)))
    torch.testing.assert_close(ff(x), expected)


def test_embeddings_unscaled_and_an_output_bias():
    model = tiny(scale_embeddings=False, output_bias=True)
    assert model.embedding_scale == 1.0 and model.output_projection.bias is not None
    src, tgt = batch()
    hidden = model(src, padding_mask(src), tgt, project=False)
    logits = model(src, padding_mask(src), tgt)
    torch.testing.assert_close(
        logits, hidden @ model.output_projection.weight.t() + model.output_projection.bias
    )


def test_cached_decoding_includes_the_output_bias():
    from conftest import decode_step_by_step

    model = tiny(output_bias=True, activation="swish", sinusoids="halves")
    src, tgt = batch()
    log_probs, _ = decode_step_by_step(model, src, tgt)
    expected = model(src, padding_mask(src), tgt).log_softmax(-1)
    torch.testing.assert_close(log_probs, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(output_bias=True, activation="gelu", scale_embeddings=False),
        dict(joint_vocab=False, tie_embeddings=True, output_bias=True),
        dict(tie_embeddings=False),
    ],
)
def test_permuting_features_puts_the_sinusoids_in_halves_and_keeps_the_function(options):
    interleaved = tiny(**options)
    halves = tiny(**options, sinusoids="halves")
    state = permute_features(interleaved.state_dict(), halves_permutation(16))
    halves.load_state_dict(state)
    src, tgt = batch()
    torch.testing.assert_close(
        halves(src, padding_mask(src), tgt),
        interleaved(src, padding_mask(src), tgt),
        atol=1e-5,
        rtol=0,
    )
    # the same table up to rounding: interleaved is computed in float32, halves in float64
    permuted = sinusoids(9, 16)[:, halves_permutation(16)]
    torch.testing.assert_close(permuted, sinusoids(9, 16, "halves"), atol=1e-6, rtol=0)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("with_bias", [True, False])
def test_fused_loss_with_an_output_bias_equals_the_unfused(smoothing, with_bias):
    torch.manual_seed(0)
    hidden = torch.randn(13, 6, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(11, 6, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(11, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 11, (13,))  # id 0 too: every row is a real target
    inputs = (hidden, weight, bias) if with_bias else (hidden, weight)

    def fused_loss(h, w, b=None):
        return projected_smoothed_nll(h, w, target, smoothing=smoothing, rows=4, bias=b)

    fused = fused_loss(*inputs)
    logits = hidden @ weight.t() + (bias if with_bias else 0)
    plain = smoothed_nll(logits, target, smoothing=smoothing, pad_id=None)
    torch.testing.assert_close(fused, plain)
    ours = torch.autograd.grad(1.5 * fused[0], inputs)
    theirs = torch.autograd.grad(1.5 * plain[0], inputs)
    torch.testing.assert_close(ours, theirs)
    assert torch.autograd.gradcheck(lambda *x: fused_loss(*x)[0], inputs)


def test_batch_loss_on_the_cpu_uses_the_output_bias():
    sides = {}
    for side, sizes in {"src": [3, 1, 2], "tgt": [2, 5, 1]}.items():
        sides[side] = np.arange(4, 4 + sum(sizes), dtype=np.uint16)
        sides[side + "_offsets"] = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    model = tiny(output_bias=True)
    data = collate(TokenizedCorpus(**sides), np.arange(3))
    loss, nll = batch_loss(model, data, smoothing=0.1)
    logits = model(data.src, data.src_mask, data.tgt_in)
    expected = smoothed_nll(logits, data.tgt_out, smoothing=0.1)
    torch.testing.assert_close((loss, nll), expected)


def test_the_plain_loss_counts_id_zero_when_told_every_target_is_real():
    logits, target = torch.randn(4, 7), torch.tensor([0, 3, 0, 5])
    _, masked = smoothed_nll(logits, target, smoothing=0.0)
    _, every = smoothed_nll(logits, target, smoothing=0.0, pad_id=None)
    expected = -logits.log_softmax(-1).gather(1, target[:, None]).sum()
    torch.testing.assert_close(every, expected)
    assert masked < every


def test_an_old_run_config_loads_with_todays_model():
    old = from_dict({"model": {"arch": "transformer", "preset": "tiny", "norm": "pre"}})
    model_cfg = old.model
    assert (model_cfg.sinusoids, model_cfg.activation) == ("interleaved", "relu")
    assert model_cfg.scale_embeddings and not model_cfg.output_bias
    model = build_model(model_cfg, src_vocab=V, tgt_vocab=V)
    assert "output_projection.bias" not in model.state_dict()
    assert model.embedding_scale == math.sqrt(64)


@pytest.mark.parametrize(("key", "value"), [("activation", "tanh"), ("sinusoids", "rotary")])
def test_unknown_settings_name_their_key(key, value):
    with pytest.raises(UserError, match=f"model.{key}: unknown value '{value}'"):
        build_model(ModelConfig(preset="tiny", **{key: value}), src_vocab=V, tgt_vocab=V)


def test_build_model_gives_the_embeddings_the_vocabularys_pad_row():
    model = build_model(ModelConfig(preset="tiny"), src_vocab=V, tgt_vocab=V, pad_id=V - 1)
    assert model.target_embedding.padding_idx == V - 1
    assert torch.equal(model.target_embedding.weight[V - 1], torch.zeros(64))


MARIAN_IDS = SpecialIds(pad=9, unk=1, bos=9, eos=0)


def corpus() -> TokenizedCorpus:
    sides = {}
    for side, sizes in {"src": [3, 1], "tgt": [2, 3]}.items():
        sides[side] = np.arange(2, 2 + sum(sizes), dtype=np.uint16)
        sides[side + "_offsets"] = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    return TokenizedCorpus(**sides)


def test_batches_take_the_vocabularys_special_ids():
    data = collate(corpus(), np.arange(2), ids=MARIAN_IDS)
    assert data.src.tolist() == [[2, 3, 4, 0], [5, 0, 9, 9]]
    assert data.tgt_in.tolist() == [[9, 2, 3, 9], [9, 4, 5, 6]]
    assert data.tgt_out.tolist() == [[2, 3, 0, 9], [4, 5, 6, 0]]
    assert data.n_tgt_tokens == 7 and data.real_targets().tolist() == [2, 3, 0, 4, 5, 6, 0]
    default = collate(corpus(), np.arange(2))
    assert default.tgt_in[:, 0].tolist() == [ATTNKIT_IDS.bos] * 2
    ((_, src, mask),) = encode_source_batches([[4, 5], [6]], max_tokens=100, ids=MARIAN_IDS)
    assert src.tolist() == [[6, 0, 9], [4, 5, 0]] and mask.sum().item() == 5


def _spm(lines: list[str], size: int) -> bytes:
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=size,
        hard_vocab_limit=False, num_threads=1, minloglevel=2,
    )  # fmt: skip
    return model.getvalue()


@pytest.fixture
def marian_vocab(tmp_path):
    """A Marian tokenizer directory: two SentencePiece models, one vocab.json whose ids are not
    theirs (EOS 0, UNK 1, a language code, the pieces, pad last), the source's "s" left out."""
    english = ["the cat sees the dog", "a small house", "the dogs sleep"] * 30
    french = ["le chat voit le chien", "une petite maison", "les chiens dorment"] * 30
    source, target = _spm(english, 30), _spm(french, 30)
    vocab = {"</s>": 0, "<unk>": 1, ">>fra<<": 2}
    for proto in (source, target):
        sp = spm.SentencePieceProcessor(model_proto=proto)
        for i in range(3, sp.get_piece_size()):
            if sp.id_to_piece(i) != "s":
                vocab.setdefault(sp.id_to_piece(i), len(vocab))
    vocab["<pad>"] = len(vocab)
    (tmp_path / "source.spm").write_bytes(source)
    (tmp_path / "target.spm").write_bytes(target)
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    return tmp_path, vocab


def test_a_marian_vocabulary_maps_pieces_through_vocab_json(marian_vocab):
    directory, vocab = marian_vocab
    assert has_tokenizer(directory)
    tokenizers = load_tokenizers(directory)
    assert tokenizers.joint and tokenizers.special_ids == SpecialIds(
        pad=vocab["<pad>"], unk=1, bos=vocab["<pad>"], eos=0
    )
    assert tokenizers.src.vocab_size == len(vocab)
    (ids,) = tokenizers.src.encode([">>fra<< the cats"])
    pieces = tokenizers.src.pieces(">>fra<< the cats")
    assert pieces[0] == ">>fra<<" and ids[0] == 2
    assert ids == [vocab.get(piece, 1) for piece in pieces]
    assert 1 in ids  # "s" is missing from vocab.json: unknown
    (text,) = tokenizers.tgt.decode([[vocab["<pad>"], *tokenizers.tgt.encode(["le chat"])[0], 0]])
    assert text == "le chat"


def test_a_bos_token_in_tokenizer_config_is_the_start_token(marian_vocab):
    directory, vocab = marian_vocab
    (directory / "tokenizer_config.json").write_text(json.dumps({"bos_token": ">>fra<<"}))
    assert load_tokenizers(directory).special_ids.bos == 2


def test_a_vocabulary_without_its_special_piece_is_refused(marian_vocab):
    directory, vocab = marian_vocab
    del vocab["<pad>"]
    (directory / "vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(UserError, match="no pad piece '<pad>'"):
        load_tokenizers(directory)
