"""`attnkit export --to ctranslate2`: the exported model scores and translates as attnkit does."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_one_line_error, run_cli, tiny_training

ctranslate2 = pytest.importorskip("ctranslate2")

VARIANTS = {
    "pre-norm, sinusoids, joint vocabulary": [],
    "post-norm, learned positions, two vocabularies": [
        "model.norm=post",
        "model.positions=learned",
        "data.joint_vocab=false",
        "model.tie_embeddings=false",
    ],
}
LINES = ["The young woman sees the small dogs.", "A man reads a book.", "The cat sleeps."]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("export-data")
    done = run_cli("data", "synth", "--out", str(root), "--size", "300")
    assert done.returncode == 0, done.stderr
    return root


def _train(data, run_dir, *extra):
    layers = ("model.encoder_layers=2", "model.decoder_layers=2", "train.max_steps=30")
    done = run_cli("train", *tiny_training(data, run_dir, *layers, *extra))
    assert done.returncode == 0, done.stderr
    return run_dir


@pytest.fixture(scope="module", params=list(VARIANTS))
def exported(request, data, tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    run = _train(data, root / "run", *VARIANTS[request.param])
    done = run_cli("export", str(run), "--to", "ctranslate2", str(root / "ct2"))
    assert done.returncode == 0, done.stderr
    return run, root / "ct2"


def _ct2(out):
    return ctranslate2.Translator(str(out), device="cpu", compute_type="float32")


@pytest.mark.slow
def test_the_exported_model_scores_each_token_as_attnkit_does(exported):
    from attnkit.generation.translator import Translator
    from attnkit.models.protocol import padding_mask

    run, out = exported
    translator = Translator.from_run(run)
    src_tok, tgt_tok = translator.tokenizers.src, translator.tokenizers.tgt
    targets = translator.translate_text(LINES, translator.options.replace(beam=1))
    for line, target in zip(LINES, targets, strict=True):
        src = torch.tensor([src_tok.encode([line])[0] + [3]])
        tgt = tgt_tok.encode([target])[0] + [3]
        with torch.inference_mode():
            logits = translator.model(src, padding_mask(src), torch.tensor([[2, *tgt[:-1]]]))
        ours = logits.log_softmax(-1)[0].gather(1, torch.tensor(tgt)[:, None])[:, 0]
        (scored,) = _ct2(out).score_batch(
            [src_tok.id_pieces(src[0, :-1].tolist())], [tgt_tok.id_pieces(tgt[:-1])]
        )
        assert scored.log_probs == pytest.approx(ours.tolist(), abs=2e-4)


@pytest.mark.slow
def test_the_exported_model_decodes_greedily_as_attnkit_does(exported):
    from attnkit.generation.translator import Translator

    run, out = exported
    translator = Translator.from_run(run)
    src_tok, tgt_tok = translator.tokenizers.src, translator.tokenizers.tgt
    ours = [
        hyps[0].tokens for hyps in translator.translate(LINES, translator.options.replace(beam=1))
    ]
    pieces = [src_tok.pieces(line) for line in LINES]
    found = _ct2(out).translate_batch(pieces, beam_size=1, max_decoding_length=60)
    for mine, result, line in zip(ours, found, LINES, strict=True):
        theirs = tgt_tok.ids(result.hypotheses[0])
        # attnkit stops at its output limit (1.5 x source + 10), CTranslate2 at 60 tokens
        limit = int(1.5 * (len(src_tok.encode([line])[0]) + 1) + 10)
        assert theirs[: len(mine)] == mine
        assert len(theirs) == len(mine) or len(mine) >= limit - 1


@pytest.mark.slow
def test_export_errors_are_one_line(cli, data, tmp_path, exported):
    run, out = exported
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    assert_one_line_error(
        cli("export", str(run), "--to", "ctranslate2", str(tmp_path / "taken")),
        "not a CTranslate2 model",
    )
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"
    assert_one_line_error(
        cli("export", str(tmp_path / "nope"), "--to", "ctranslate2", str(tmp_path / "o"))
    )
    rnn = _train(data, tmp_path / "rnn", "model.arch=rnn", "model.preset=tiny")
    assert_one_line_error(
        cli("export", str(rnn), "--to", "ctranslate2", str(tmp_path / "o")), "recurrent model"
    )
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_an_earlier_export_is_replaced_and_int8_translates(cli, exported, tmp_path):
    run, _ = exported
    out = tmp_path / "int8"
    for _ in range(2):
        done = cli("export", str(run), "--to", "ctranslate2", str(out), "--quantization", "int8")
        assert done.returncode == 0, done.stderr
    (result,) = _ct2(out).translate_batch(
        [["▁A", "▁cat", "."]], beam_size=2, max_decoding_length=10
    )
    assert len(result.hypotheses[0]) >= 1
