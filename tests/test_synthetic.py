"""Properties of the generated corpora: correct French on samples, determinism, files, probes."""

from __future__ import annotations

import re
import statistics

import pytest

from attnkit.data import lexicon
from attnkit.data.synthetic import (
    copy_task,
    generate_examples,
    generate_pairs,
    key_recall_task,
    reverse_task,
    write_corpus,
)
from attnkit.errors import UserError

# Written here rather than taken from the lexicon, so that the checks do not share its mistakes.
VOWEL_INITIAL = re.compile(r"^[aeiouyàâéèêëîïôûœh]")
MUST_ELIDE = {"le", "la", "je", "ne", "que", "de", "me", "te", "se", "ce", "ma", "ta", "sa"}
ELIDED = {"l'", "j'", "n'", "qu'", "d'"}
CLAUSE_BOUNDARIES = {"qui", "que", "qu'"}
ETRE_PARTICIPLES = "allé|venu|arrivé|parti|entré|sorti|tombé|resté"


@pytest.fixture(scope="module")
def examples():
    return [e for seed in (1, 2, 3) for e in generate_examples(2000, seed=seed)]


def french_tokens(sentence: str) -> list[str]:
    """Lowercased words without the final period, elided words split off: l'homme -> l' homme."""
    tokens = []
    for word in sentence.rstrip(".").lower().split():
        head, apostrophe, rest = word.partition("'")
        tokens += [head + "'", rest] if apostrophe else [word]
    return tokens


def elision_errors(tokens: list[str]) -> list[tuple[str, str]]:
    """Adjacent pairs that break elision: a full form before a vowel, an elided one before not."""
    return [
        (word, following)
        for word, following in zip(tokens, tokens[1:], strict=False)
        if (word in MUST_ELIDE and VOWEL_INITIAL.match(following))
        or (word in ELIDED and not VOWEL_INITIAL.match(following))
    ]


def test_same_seed_same_corpus_and_another_seed_another():
    assert generate_pairs(300, seed=5) == generate_pairs(300, seed=5)
    assert generate_pairs(300, seed=5) != generate_pairs(300, seed=6)
    assert generate_pairs(300, seed=5)[:40] == generate_pairs(40, seed=5)


def test_each_english_sentence_has_one_translation(examples):
    translations: dict[str, str] = {}
    for example in examples:
        assert translations.setdefault(example.english, example.french) == example.french
    assert len(translations) > 0.8 * len(examples)


def test_sentences_are_capitalised_and_end_with_a_period(examples):
    for example in examples:
        for text in (example.english, example.french):
            assert text[0].isupper() and text.endswith(".") and not text.endswith(" .")


def test_lexicon_spells_irregular_forms():
    adjectives = {a.en: a for a in lexicon.ADJECTIVES}
    expected = {
        "beautiful": ("beau", "belle", "beaux", "belles"),
        "old": ("vieux", "vieille", "vieux", "vieilles"),
        "new": ("nouveau", "nouvelle", "nouveaux", "nouvelles"),
        "white": ("blanc", "blanche", "blancs", "blanches"),
        "happy": ("heureux", "heureuse", "heureux", "heureuses"),
        "kind": ("gentil", "gentille", "gentils", "gentilles"),
        "good": ("bon", "bonne", "bons", "bonnes"),
        "grey": ("gris", "grise", "gris", "grises"),
        "expensive": ("cher", "chère", "chers", "chères"),
        "sad": ("triste", "triste", "tristes", "tristes"),
    }
    for english, forms in expected.items():
        assert adjectives[english].forms == forms
    assert adjectives["old"].form("m", False, before_vowel=True) == "vieil"
    assert adjectives["old"].form("m", True, before_vowel=True) == "vieux"
    assert adjectives["beautiful"].form("f", False, before_vowel=True) == "belle"
    nouns = {n.en: n for n in lexicon.NOUNS}
    for english, plural, french_plural in [
        ("animal", "animals", "animaux"),
        ("bird", "birds", "oiseaux"),
        ("horse", "horses", "chevaux"),
        ("mouse", "mice", "souris"),
        ("man", "men", "hommes"),
        ("woman", "women", "femmes"),
        ("child", "children", "enfants"),
        ("fox", "foxes", "renards"),
        ("knife", "knives", "couteaux"),
        ("baby", "babies", "bébés"),
        ("bear", "bears", "ours"),
    ]:
        assert (nouns[english].en_plural, nouns[english].fr_plural) == (plural, french_plural)
    verbs = {v.infinitive: v for v in lexicon.VERBS}
    assert verbs["manger"].fr[3] == "mangeons" and verbs["voir"].fr[5] == "voient"
    assert verbs["aller"].aux == "être" and verbs["voir"].aux == "avoir"
    assert verbs["aller"].en == ("go", "goes", "went") and verbs["regarder"].en[1] == "watches"


def test_attributive_adjectives_agree_and_sit_where_french_puts_them(examples):
    adjectives = {a.forms[0]: a for a in lexicon.ADJECTIVES}
    nouns = {form: n for n in lexicon.NOUNS for form in (n.fr, n.fr_plural)}
    seen = set()
    for example in examples:
        tokens = french_tokens(example.french)
        for agreement in example.agreements:
            if agreement.kind != "attributive":
                continue
            adjective, noun = adjectives[agreement.lemma], nouns[agreement.noun]
            assert agreement.gender == noun.gender
            assert agreement.noun == (noun.fr_plural if agreement.plural else noun.fr)
            slot = [("m", False), ("f", False), ("m", True), ("f", True)].index(
                (noun.gender, agreement.plural)
            )
            expected = adjective.forms[slot]
            if slot == 0 and adjective.liaison and VOWEL_INITIAL.match(agreement.noun):
                expected = adjective.liaison  # un bel arbre, le vieil homme
            assert agreement.form == expected
            assert agreement.form.endswith(("", "e", ("s", "x"), "es")[slot])
            assert agreement.form in tokens
            before = agreement.phrase.index(agreement.form) < agreement.phrase.index(agreement.noun)
            assert before == adjective.before_noun == (agreement.position == "pre")
            seen.add((adjective.before_noun, noun.gender, agreement.plural))
    assert len(seen) == 8  # every placement, gender and number occurred


def test_predicative_adjectives_agree_with_a_distant_subject(examples):
    feminine = {a.forms[1] for a in lexicon.ADJECTIVES}
    masculine_plural = {a.forms[2] for a in lexicon.ADJECTIVES}
    pronoun_cases = 0
    for example in examples:
        for agreement in example.agreements:
            if agreement.kind == "predicative":
                adjective = next(a for a in lexicon.ADJECTIVES if a.forms[0] == agreement.lemma)
                assert agreement.form == adjective.form(agreement.gender, agreement.plural)
                assert french_tokens(example.french)[-1] == agreement.form
        sentence = example.french.lower()
        match = re.match(
            r"(elle|ils) (?:n')?(?:est|était|sont|étaient) (?:pas )?(\w+)\.$", sentence
        )
        if match and not re.fullmatch(rf"({ETRE_PARTICIPLES})e?s?", match[2]):
            pronoun_cases += 1
            assert match[2] in (feminine if match[1] == "elle" else masculine_plural)
    assert pronoun_cases > 20
    long_distance = [
        e
        for e in examples
        if any(a.kind == "predicative" for a in e.agreements) and " qui " in e.french
    ]
    assert long_distance  # "la femme qui voit ... est heureuse"


def test_passe_compose_with_etre_agrees_with_the_subject(examples):
    expected_ending = {"je": "", "il": "", "elle": "e", "nous": "s", "vous": "s", "ils": "s"}
    pattern = re.compile(
        rf"\b(je|il|elle|nous|vous|ils) (?:ne |n')?(?:suis|est|sommes|êtes|sont) (?:pas )?"
        rf"({ETRE_PARTICIPLES})(e?s?)\b"
    )
    found = set()
    for example in examples:
        for subject, _, ending in pattern.findall(example.french.lower()):
            assert ending == expected_ending[subject], example.french
            found.add(subject)
        for agreement in example.agreements:
            if agreement.kind == "participle":
                form = agreement.lemma + "e" * (agreement.gender == "f")
                form += "s" if agreement.plural and not form.endswith("s") else ""
                assert agreement.form == form and agreement.form in french_tokens(example.french)
    assert found == set(expected_ending)
    assert any(re.search(rf"\b({ETRE_PARTICIPLES})es\b", e.french) for e in examples)


def test_contractions(examples):
    text = " ".join(" " + e.french.lower() for e in examples)
    for wrong in (" de le ", " à le ", " de les ", " à les "):
        assert wrong not in text
    for right in (" du ", " au ", " aux ", " des ", " de la ", " à la ", " de l'", " à l'"):
        assert right in text


def test_elision(examples):
    wrong = french_tokens("Je aime le arbre que il a vu.")
    assert elision_errors(wrong) == [("je", "aime"), ("le", "arbre"), ("que", "il")]
    used = set()
    for example in examples:
        tokens = french_tokens(example.french)
        assert elision_errors(tokens) == [], example.french
        used |= ELIDED & set(tokens)
        words = example.english.lower().rstrip(".").split()
        for word, following in zip(words, words[1:], strict=False):
            assert (word == "an") == (word in ("a", "an") and following[0] in "aeiou")
    assert used == ELIDED
    assert any(" cet " in e.french for e in examples)
    assert any(re.search(r"\b(bel|vieil|nouvel) ", e.french) for e in examples)


def test_negation_is_ne_pas_and_do_not(examples):
    base_forms = {v.en[0] for v in lexicon.VERBS}
    negated = 0
    for example in examples:
        tokens = french_tokens(example.french)
        for i, token in enumerate(tokens):
            if token in ("ne", "n'"):
                negated += 1
                rest = tokens[i + 1 :]
                end = next((j for j, t in enumerate(rest) if t in CLAUSE_BOUNDARIES), len(rest))
                assert "pas" in rest[:end], example.french
        words = example.english.lower().rstrip(".").split()
        for i, word in enumerate(words):
            if word == "not":
                assert words[i - 1] in {"do", "does", "did", "am", "is", "are", "was", "were"}
                if words[i - 1] in ("do", "does", "did"):
                    assert words[i + 1] in base_forms
        assert tokens.count("pas") == tokens.count("ne") + tokens.count("n'")
    assert negated > 0.1 * len(examples)
    assert any(re.search(r"\bpas d(e |')", e.french) for e in examples)  # pas de chien


def test_relative_clauses_make_long_sentences(examples):
    relative = [e for e in examples if re.search(r" (qui|que|qu')\b", e.french)]
    assert len(relative) > 0.2 * len(examples)
    lengths = [len(e.english.split()) for e in examples]
    assert 6 <= statistics.median(lengths) <= 14
    assert sum(n >= 30 for n in lengths) > 0.02 * len(lengths)
    assert max(lengths) <= 60
    shallow = [len(e.split()) for e, _ in generate_pairs(500, seed=1, max_depth=0)]
    assert max(shallow) < 20


def test_write_corpus_writes_six_files_without_held_out_sentences_in_train(tmp_path):
    paths = write_corpus(tmp_path / "corpus", size=300, seed=4, valid=40, test=30)
    names = [
        f"{split}.{language}" for split in ("train", "valid", "test") for language in ("en", "fr")
    ]
    assert sorted(paths) == sorted(names)
    lines = {}
    for name, path in paths.items():
        text = path.read_text(encoding="utf-8")
        assert text.endswith("\n") and "\r" not in text
        lines[name] = text.splitlines()
        assert all(lines[name])
    for split, count in (("train", 300), ("valid", 40), ("test", 30)):
        assert len(lines[f"{split}.en"]) == len(lines[f"{split}.fr"]) == count
    train = set(lines["train.en"])
    assert not train & set(lines["valid.en"]) and not train & set(lines["test.en"])
    assert not set(lines["valid.en"]) & set(lines["test.en"])
    assert list(zip(lines["train.en"], lines["train.fr"], strict=True)) == generate_pairs(
        300, seed=4
    )
    assert not list((tmp_path / "corpus").glob("*.tmp"))
    again = write_corpus(tmp_path / "again", size=300, seed=4, valid=40, test=30)
    assert again["test.fr"].read_text(encoding="utf-8") == paths["test.fr"].read_text(
        encoding="utf-8"
    )


def test_copy_and_reverse_tasks():
    for source, target in copy_task(50, length=(3, 9), vocab=7, seed=2):
        assert source == target and 3 <= len(source.split()) <= 9
        assert all(s[0] == "s" and 0 <= int(s[1:]) < 7 for s in source.split())
    for source, target in reverse_task(50, length=6, seed=2):
        assert target.split() == source.split()[::-1] and len(source.split()) == 6
    assert copy_task(5, length=4, seed=3) == copy_task(5, length=4, seed=3)


@pytest.mark.parametrize("distance", [1, 2, 3, 10, 57])
def test_key_recall_carries_the_value_across_exactly_distance_tokens(distance):
    for source, target in key_recall_task(100, distance=distance, vocab=12, seed=distance):
        tokens = source.split()
        query = tokens[-1]
        assert query.startswith("k") and tokens.count(query) == 2
        cue = tokens.index(query)
        assert tokens[cue + 1] == target and target.startswith("v")
        assert len(tokens) - 1 - (cue + 1) == distance
        keys = [t for t in tokens[:-1] if t.startswith("k")]
        assert len(keys) == len(set(keys)) == 3
        for i, token in enumerate(tokens[:-1]):  # every key is followed by its value
            if token.startswith("k"):
                assert tokens[i + 1].startswith("v")


@pytest.mark.parametrize(
    "call",
    [
        lambda: copy_task(0, length=3),
        lambda: copy_task(2, length=0),
        lambda: copy_task(2, length=(5, 3)),
        lambda: copy_task(2, length="3"),
        lambda: reverse_task(2, length=3, vocab=0),
        lambda: key_recall_task(2, distance=0),
        lambda: key_recall_task(2, distance=3, vocab=2, pairs=3),
        lambda: generate_pairs(0),
        lambda: generate_pairs(2, max_depth=-1),
    ],
)
def test_bad_arguments_raise_user_error(call):
    with pytest.raises(UserError):
        call()


def test_write_corpus_rejects_a_bad_size(tmp_path):
    with pytest.raises(UserError, match="size"):
        write_corpus(tmp_path, size=0)
