"""Corpus metrics: sacreBLEU agreement, ROUGE on any script, best-of references, the CLI output."""

from __future__ import annotations

import json

import pytest
from conftest import write

from attnkit.errors import UserError
from attnkit.evaluation.metrics import corpus_scores


def rouge(hyps: list[str], *refs: list[str]) -> dict[str, float]:
    scores = corpus_scores(hyps, list(refs), ("rouge",))
    return {name: s.score for name, s in scores.items()}


def test_bleu_equals_sacrebleu():
    import sacrebleu

    hyps = ["the cat sat on the mat .", "a dog runs in the park ."]
    refs = [["the cat sat on a mat .", "the dog runs in the park ."]]
    ours = corpus_scores(hyps, refs, ("bleu",))["bleu"]
    assert ours.score == pytest.approx(sacrebleu.corpus_bleu(hyps, refs).score)
    assert "nrefs:1" in ours.signature


def test_rouge_is_requested_as_one_name_and_gives_three_scores():
    scores = corpus_scores(["a b"], [["a b"]], ("bleu", "rouge"))
    assert list(scores) == ["bleu", "rouge1", "rouge2", "rougeL"]
    assert "tok:unicode-words" in scores["rouge1"].signature


def test_rouge_of_identical_text_is_100():
    text = ["le chat est noir .", "la maison est grande ."]
    assert rouge(text, text) == pytest.approx({"rouge1": 100, "rouge2": 100, "rougeL": 100})


def test_rouge_of_disjoint_text_is_0():
    assert rouge(["un deux trois"], ["quatre cinq six"]) == {"rouge1": 0, "rouge2": 0, "rougeL": 0}


def test_rouge_counts_accented_words():
    # Words l, été, était, chaud against l, été, était, froid: 3 of 4 unigrams match, 2 of 3
    # bigrams (l été, été était), and the longest common subsequence has 3 words.
    scores = rouge(["l'été était chaud"], ["l'été était froid"])
    assert scores == pytest.approx({"rouge1": 75, "rouge2": 200 / 3, "rougeL": 75})


def test_rouge_keeps_letters_that_the_default_tokenizer_deletes():
    # rouge-score's [a-z0-9] tokenizer reads "à côté" as "c t" and "été" as "t": a false match.
    assert rouge(["à côté"], ["été"])["rouge1"] == 0
    assert rouge(["Кошка спит"], ["кошка спит"])["rouge1"] == pytest.approx(100)


def test_rouge_stems_english_words_only():
    # Porter stemming, as rouge-score's use_stemmer=True: "summaries" and "summary" match ...
    assert rouge(["the summaries"], ["the summary"])["rouge1"] == pytest.approx(100)
    # ... while a word with letters outside a-z is never stemmed ("étés" is not "été").
    assert rouge(["les étés"], ["les été"])["rouge1"] == pytest.approx(50)


def test_rouge_equals_rouge_score_with_stemming_on_english():
    from rouge_score.rouge_scorer import RougeScorer

    hyps = ["#Person1# is asking about the meetings.", "They talked for hours, happily."]
    refs = ["#Person1# asks #Person2# about a meeting.", "They were talking happily."]
    scorer = RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    expected = dict.fromkeys(("rouge1", "rouge2", "rougeL"), 0.0)
    for hyp, ref in zip(hyps, refs, strict=True):
        for name, score in scorer.score(ref, hyp).items():
            expected[name] += 100 * score.fmeasure / len(hyps)
    assert rouge(hyps, refs) == pytest.approx(expected)


def test_rouge_takes_the_best_reference_per_sentence():
    hyps = ["the cat sleeps", "a red car"]
    first = ["the cat sleeps", "a blue boat"]
    second = ["a dog barks", "a red car"]
    assert rouge(hyps, first, second)["rouge1"] == pytest.approx(100)
    # Each reference set alone matches one sentence fully and the other in one word of three.
    assert rouge(hyps, first)["rouge1"] == pytest.approx((100 + 100 / 3) / 2)


def test_unknown_metric_is_a_user_error():
    with pytest.raises(UserError, match="unknown metric 'meteor'"):
        corpus_scores(["a"], [["a"]], ("bleu", "meteor"))


def test_evaluate_hyp_prints_every_score(cli, tmp_path):
    ref = write(tmp_path / "ref.fr", "l'été était froid .\nla maison est grande .\n")
    hyp = write(tmp_path / "hyp.fr", "l'été était chaud .\nla maison est grande .\n")
    result = cli("evaluate", "--hyp", str(hyp), "--ref", str(ref))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == [
        "BLEU",
        "CHRF",
        "TER",
        "ROUGE-1",
        "ROUGE-2",
        "ROUGE-L",
    ]
    assert all(len(line.split()) == 3 for line in lines)  # name, value, signature
    assert float(lines[3].split()[1]) == pytest.approx(87.5)  # (3/4 + 1) / 2

    result = cli("evaluate", "--hyp", str(hyp), "--ref", str(ref), "--ref", str(hyp), "--json")
    assert result.returncode == 0, result.stderr
    scores = json.loads(result.stdout)
    assert set(scores) == {"bleu", "chrf", "ter", "rouge1", "rouge2", "rougeL"}
    assert scores["rouge1"]["score"] == 100.0
    assert "nrefs:2" in scores["rouge1"]["signature"]


def test_evaluate_unknown_metric_is_one_line(cli, tmp_path):
    ref = write(tmp_path / "ref.fr", "a\n")
    result = cli("evaluate", "--hyp", str(ref), "--ref", str(ref), "--metrics", "bleu,rogue")
    assert result.returncode == 1
    assert result.stderr.startswith("attnkit: error: unknown metric 'rogue'")
