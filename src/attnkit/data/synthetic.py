"""Generated corpora: the built-in English-French demo corpus and the probe tasks of the study.

The demo corpus comes from a small grammar over `attnkit.data.lexicon`, so it needs no download
and its French is correct: determiners, adjectives and past participles agree, adjectives sit
before or after the noun as French places them, words elide (l'homme, qu'elle, n'a) and
contract (au, du, aux, des), negation is ne ... pas (with "de" for an indefinite object), and
the passé composé takes être or avoir. Each English sentence has exactly one translation: where
English hides a distinction the grammar always makes the same choice ("you" is vous; "I", "we",
"you" and "they" are masculine).

Relative clauses (qui, que) and phrases of place make sentences long and put a subject far from
the adjective or participle that agrees with it: "La femme qui voit les petits chiens près de la
maison est heureuse." That is the long-range dependency the study measures. `max_depth` is the
length knob, how deeply noun phrases nest: 0 gives single clauses of 2-18 words, the default 2
gives mostly 5-20 words with a tail of 30-60 (sentences drawn with LONG rates).

The probe tasks (copy, reverse, key recall) are sequences of symbols such as "s3 s17 s5".
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from functools import cache
from itertools import accumulate, islice
from pathlib import Path
from typing import NamedTuple

from attnkit.data.corpus import write_lines
from attnkit.data.lexicon import (
    ADJECTIVES,
    ANY,
    AVOIDED,
    AVOIR,
    DETERMINERS,
    DITRANSITIVE,
    ETRE,
    ETRE_IMPARFAIT,
    GOAL,
    INDIRECT,
    INTRANSITIVE,
    NO_POSSESSIVE,
    NOUNS,
    PERSON,
    PREPOSITIONS,
    PRONOUNS,
    TRANSITIVE,
    VERBS,
    Adjective,
    Noun,
    Verb,
    english_be,
    english_verb,
    finish_english,
    finish_french,
    participle,
    starts_with_vowel,
)
from attnkit.errors import UserError

MAX_WORDS = 60  # an English sentence longer than this is drawn again


class Rates(NamedTuple):
    """How often the grammar elaborates a sentence."""

    pronoun: float  # a subject is a pronoun rather than a noun phrase
    relative: float  # a noun phrase above max_depth takes a relative clause ...
    modifier: float  # ... or else a prepositional phrase
    adjunct: float  # a verb phrase ends with a phrase of place (twice as often if intransitive)


SHORT = Rates(pronoun=0.25, relative=0.25, modifier=0.15, adjunct=0.15)
LONG = Rates(pronoun=0.0, relative=0.75, modifier=0.25, adjunct=0.5)
LONG_SHARE = 0.06  # sentences drawn with LONG rates (when max_depth >= 2) and kept only if ...
LONG_WORDS = 30  # ... they have at least this many words: the tail of long sentences

COPULA = 0.3  # "X is ADJ" or "X is near Y" rather than a verb
PREDICATE_ADJECTIVE = 0.75  # a copula takes an adjective, else a phrase of place
PAST, NEGATED, PLURAL = 0.45, 0.25, 0.4
PRE_ADJECTIVE, POST_ADJECTIVE = 0.25, 0.3  # a noun takes an adjective before / after it
DETERMINER_WEIGHTS = dict(the=40, a=20, this=8, my=8, your=4, his=5, her=5, our=5, their=5)
_DETERMINERS = list(DETERMINER_WEIGHTS)
_DETERMINER_CUMULATIVE = list(accumulate(DETERMINER_WEIGHTS.values()))
_PREPOSITIONS = list(PREPOSITIONS)


class Agreement(NamedTuple):
    """One inflection the French sentence had to get right (for tests and diagnostics)."""

    kind: str  # "attributive" | "predicative" | "participle"
    lemma: str  # masculine singular
    form: str  # the form used
    gender: str  # of the controlling noun or pronoun
    plural: bool
    position: str = ""  # attributive: "pre" or "post" the noun
    phrase: tuple[str, ...] = ()  # attributive: determiner, adjectives, noun (before elision)
    noun: str = ""  # attributive: the noun's form in `phrase`


class Example(NamedTuple):
    """A generated sentence pair with the agreements its French side carries."""

    english: str
    french: str
    agreements: tuple[Agreement, ...]


class _Phrase(NamedTuple):
    """A noun phrase or pronoun in both languages, with what agreement needs."""

    en: list[str]
    fr: list[str]
    person: int  # index into the conjugation tables: 2 for "il", 5 for "ils"
    gender: str
    plural: bool
    kind: str
    noun: Noun | None = None


def _fits(noun: Noun, allowed: frozenset[str]) -> bool:
    return noun.kind in allowed or noun.en in allowed


@cache
def _nouns_for(allowed: frozenset[str]) -> tuple[Noun, ...]:
    return tuple(n for n in NOUNS if _fits(n, allowed))


@cache
def _adjectives_for(noun: Noun, before_noun: bool) -> tuple[Adjective, ...]:
    return tuple(
        a
        for a in ADJECTIVES
        if noun.kind in a.kinds and a.before_noun == before_noun and (a.en, noun.en) not in AVOIDED
    )


@cache
def _verbs_with_subject(kind: str) -> tuple[Verb, ...]:
    return tuple(v for v in VERBS if kind in v.subjects)


@cache
def _verbs_with_object(noun: Noun) -> tuple[Verb, ...]:
    return tuple(
        v for v in VERBS if v.frame in (TRANSITIVE, DITRANSITIVE) and _fits(noun, v.objects)
    )


def _negate(words: list[str], negated: bool) -> list[str]:
    return ["ne", words[0], "pas", *words[1:]] if negated else words


class _Grammar:
    """Draws sentences top-down: clause, noun phrases, relative clauses, phrases of place."""

    def __init__(self, rng: random.Random, max_depth: int) -> None:
        self.rng = rng
        self.max_depth = max_depth
        self.rates = SHORT
        self.agreements: list[Agreement] = []

    def example(self) -> Example:
        self.rates = LONG if self.max_depth >= 2 and self.rng.random() < LONG_SHARE else SHORT
        shortest = LONG_WORDS if self.rates is LONG else 1
        while True:
            self.agreements = []
            past, negated = self._tense()
            if self.rng.random() < COPULA:
                en, fr = self._copula_clause(past, negated)
            else:
                verb = self.rng.choice(VERBS)
                subject = self._subject(verb.subjects, 0)
                en, fr = self._verb_phrase(subject, verb, 0, past, negated)
                en, fr = subject.en + en, subject.fr + fr
            if shortest <= len(en) <= MAX_WORDS:
                return Example(finish_english(en), finish_french(fr), tuple(self.agreements))

    def _tense(self) -> tuple[bool, bool]:
        return self.rng.random() < PAST, self.rng.random() < NEGATED

    def _copula_clause(self, past: bool, negated: bool) -> tuple[list[str], list[str]]:
        """A clause with être: "X is ADJ" (the adjective agrees with X, however far) or "X is
        near Y"."""
        subject = self._subject(ANY, 0)
        en = subject.en + english_be(subject.person, past, negated)
        fr = subject.fr + _negate([(ETRE_IMPARFAIT if past else ETRE)[subject.person]], negated)
        if self.rng.random() < PREDICATE_ADJECTIVE:
            adjective = self.rng.choice([a for a in ADJECTIVES if subject.kind in a.kinds])
            form = adjective.form(subject.gender, subject.plural)
            self._agree("predicative", adjective.forms[0], form, subject)
            return en + [adjective.en], fr + [form]
        en_pp, fr_pp = self._place_phrase(self.rng.choice(_PREPOSITIONS), 1)
        return en + en_pp, fr + fr_pp

    def _subject(self, kinds: frozenset[str], depth: int) -> _Phrase:
        if PERSON in kinds and self.rng.random() < self.rates.pronoun:
            en, fr, person, gender, plural = self.rng.choice(PRONOUNS)
            return _Phrase([en], [fr], person, gender, plural, PERSON)
        return self._noun_phrase(kinds, depth)

    def _verb_phrase(
        self,
        subject: _Phrase,
        verb: Verb,
        depth: int,
        past: bool,
        negated: bool,
        gap: _Phrase | None = None,
    ) -> tuple[list[str], list[str]]:
        """The verb and its complements; `gap` is the antecedent of a "que" relative clause,
        the direct object that the clause leaves out and the participle agrees with."""
        en = english_verb(verb, subject.person, past, negated) + verb.en_prep.split()
        if past:
            controller = subject if verb.aux == "être" else gap
            form = verb.participle
            if controller is not None:
                form = participle(form, controller.gender, controller.plural)
                self._agree("participle", verb.participle, form, controller)
            fr = _negate([(ETRE if verb.aux == "être" else AVOIR)[subject.person], form], negated)
        else:
            fr = _negate([verb.fr[subject.person]], negated)
        if verb.frame in (TRANSITIVE, DITRANSITIVE) and gap is None:
            # A ditransitive object takes no clause: "gives the apple that falls to the king".
            object_depth = self.max_depth if verb.frame == DITRANSITIVE else depth
            direct = self._noun_phrase(verb.objects, object_depth, negated=negated)
            en, fr = en + direct.en, fr + direct.fr
        if verb.frame in (DITRANSITIVE, INDIRECT, GOAL):
            ditransitive = verb.frame == DITRANSITIVE
            allowed = verb.recipients if ditransitive else verb.objects
            other = self._noun_phrase(allowed, depth, in_pp=True)
            en += ["to", *other.en] if ditransitive else other.en
            fr += ["à" if ditransitive else verb.fr_prep, *other.fr]
        if self.rng.random() < self.rates.adjunct * (1 + (verb.frame == INTRANSITIVE)):
            en_pp, fr_pp = self._place_phrase(self.rng.choice(verb.adjuncts), depth + 1)
            en, fr = en + en_pp, fr + fr_pp
        return en, fr

    def _determiner(self, noun: Noun, plural: bool, in_pp: bool) -> str:
        det = self.rng.choices(_DETERMINERS, cum_weights=_DETERMINER_CUMULATIVE)[0]
        possessive = det not in ("a", "this", "the")
        if (in_pp and det == "a" and plural) or (possessive and noun.en in NO_POSSESSIVE):
            return "the"
        return det

    def _noun_phrase(
        self, kinds: frozenset[str], depth: int, *, negated: bool = False, in_pp: bool = False
    ) -> _Phrase:
        """Determiner, adjectives and noun, then maybe a relative clause or a phrase of place.

        `negated`: the direct object of a negated verb (un/une/des become de). `in_pp`: after a
        preposition, where no plural indefinite is drawn (to avoid "de des").
        """
        rng = self.rng
        noun = rng.choice(_nouns_for(kinds))
        plural = rng.random() < PLURAL
        det = self._determiner(noun, plural, in_pp)
        pre = rng.choice(_adjectives_for(noun, True)) if rng.random() < PRE_ADJECTIVE else None
        post = rng.choice(_adjectives_for(noun, False)) if rng.random() < POST_ADJECTIVE else None
        noun_fr = noun.fr_plural if plural else noun.fr
        en_singular, en_plural, masculine, feminine, plural_det = DETERMINERS[det]
        fr_det = plural_det if plural else feminine if noun.gender == "f" else masculine
        en_det = en_plural if plural else en_singular
        if det == "a" and negated:
            fr_det, en_det = "de", "any" if plural else "a"  # pas de chien, not any dogs
        elif det == "a" and plural and pre:
            fr_det = "de"  # de petits chats: des becomes de before an adjective
        vowel = starts_with_vowel(noun_fr)
        pre_form = [pre.form(noun.gender, plural, before_vowel=vowel)] if pre else []
        post_form = [post.form(noun.gender, plural)] if post else []
        core = (fr_det, *pre_form, noun_fr, *post_form)
        for adjective, forms, position in ((pre, pre_form, "pre"), (post, post_form, "post")):
            if adjective is not None:
                agreement = Agreement(
                    "attributive",
                    adjective.forms[0],
                    forms[0],
                    noun.gender,
                    plural,
                    position,
                    core,
                    noun_fr,
                )
                self.agreements.append(agreement)
        english_adjectives = sorted((a for a in (pre, post) if a), key=lambda a: a.rank)
        en = [en_det, *(a.en for a in english_adjectives), noun.en_plural if plural else noun.en]
        phrase = _Phrase(en, list(core), 5 if plural else 2, noun.gender, plural, noun.kind, noun)
        return self._modify(phrase, depth) if depth < self.max_depth else phrase

    def _modify(self, phrase: _Phrase, depth: int) -> _Phrase:
        """Add a relative clause or a phrase of place to a noun phrase. Never both: in "the dog
        near the house that sleeps" English would not say which noun "that" is about."""
        draw = self.rng.random()
        added = None
        if draw < self.rates.relative:
            added = self._relative_clause(phrase, depth + 1)
        elif draw < self.rates.relative + self.rates.modifier:
            added = self._noun_modifier(phrase, depth + 1)
        if added is None:
            return phrase
        return phrase._replace(en=phrase.en + added[0], fr=phrase.fr + added[1])

    def _relative_clause(self, head: _Phrase, depth: int) -> tuple[list[str], list[str]] | None:
        as_subject = _verbs_with_subject(head.kind)
        as_object = _verbs_with_object(head.noun) if head.noun else ()
        if not as_subject and not as_object:
            return None
        past, negated = self._tense()
        if as_object and (not as_subject or self.rng.random() < 0.5):
            verb = self.rng.choice(as_object)
            # The subject takes no clause of its own: no "the cat that the dog that ... sees".
            subject = self._subject(verb.subjects, self.max_depth)
            en, fr = self._verb_phrase(subject, verb, depth, past, negated, gap=head)
            return ["that", *subject.en, *en], ["que", *subject.fr, *fr]
        verb = self.rng.choice(as_subject)
        en, fr = self._verb_phrase(head, verb, depth, past, negated)
        return ["who" if head.kind == PERSON else "that", *en], ["qui", *fr]

    def _noun_modifier(self, head: _Phrase, depth: int) -> tuple[list[str], list[str]]:
        if head.noun is not None and head.noun.relational and self.rng.random() < 0.5:
            owner = self._noun_phrase(frozenset({PERSON}), depth, in_pp=True)
            return ["of", *owner.en], ["de", *owner.fr]  # l'ami du roi
        choices = [p for p in _PREPOSITIONS if p != "with" or head.kind == PERSON]
        return self._place_phrase(self.rng.choice(choices), depth)

    def _place_phrase(self, preposition: str, depth: int) -> tuple[list[str], list[str]]:
        french, kinds = PREPOSITIONS[preposition]
        phrase = self._noun_phrase(kinds, depth, in_pp=True)
        return preposition.split() + phrase.en, french.split() + phrase.fr

    def _agree(self, kind: str, lemma: str, form: str, controller: _Phrase) -> None:
        self.agreements.append(Agreement(kind, lemma, form, controller.gender, controller.plural))


def _stream(seed: int, max_depth: int) -> Iterator[Example]:
    _check_at_least("max_depth", max_depth, 0)
    return iter(_Grammar(random.Random(seed), max_depth).example, None)


def generate_examples(n: int, *, seed: int = 1, max_depth: int = 2) -> list[Example]:
    """`n` sentence pairs with the agreements they carry; the first k are the same for any n."""
    _check_at_least("n", n, 1)
    return list(islice(_stream(seed, max_depth), n))


def generate_pairs(n: int, *, seed: int = 1, max_depth: int = 2) -> list[tuple[str, str]]:
    """`n` (english, french) pairs of the built-in corpus, deterministic in `seed`."""
    return [(e.english, e.french) for e in generate_examples(n, seed=seed, max_depth=max_depth)]


def _split_seed(seed: int, split: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}/{split}".encode()).digest()[:8], "big")


def _held_out(count: int, seed: int, seen: set[str]) -> list[tuple[str, str]]:
    """`count` pairs whose English is not in `seen`, which grows with them."""
    pairs: list[tuple[str, str]] = []
    for example in islice(_stream(seed, 2), 100 * count + 1000):
        if len(pairs) == count:
            break
        if example.english not in seen:
            seen.add(example.english)
            pairs.append((example.english, example.french))
    if len(pairs) < count:
        raise UserError(f"could not draw {count} held-out sentences unseen in training")
    return pairs


def write_corpus(
    out_dir: str | Path, *, size: int = 20000, seed: int = 1, valid: int = 500, test: int = 500
) -> dict[str, Path]:
    """Write train/valid/test .en/.fr of the built-in corpus into `out_dir`; return the paths.

    Train holds `size` pairs (repeats allowed, as in real data); valid and test come from seeds
    derived from `seed` and hold no English sentence seen in train or in each other.
    """
    _check_at_least("size", size, 1)
    _check_at_least("valid", valid, 0)
    _check_at_least("test", test, 0)
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create {out_dir}: {error.strerror}") from None
    splits = {"train": generate_pairs(size, seed=seed)}
    seen = {english for english, _ in splits["train"]}
    splits["valid"] = _held_out(valid, _split_seed(seed, "valid"), seen)
    splits["test"] = _held_out(test, _split_seed(seed, "test"), seen)
    paths = {}
    for split, pairs in splits.items():
        for side, language in enumerate(("en", "fr")):
            paths[f"{split}.{language}"] = path = out_dir / f"{split}.{language}"
            write_lines(path, [pair[side] for pair in pairs])
    return paths


# Probe tasks ----------------------------------------------------------------------------------


def _check_at_least(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(f"{name} must be an integer of at least {minimum}, got {value!r}")


def _sequences(n: int, length: int | tuple[int, int], vocab: int, seed: int) -> list[list[str]]:
    """`n` random sequences of symbols s0..s{vocab-1}, `length` long or (min, max) inclusive."""
    _check_at_least("n", n, 1)
    _check_at_least("vocab", vocab, 1)
    if isinstance(length, tuple | list) and len(length) == 2:
        low, high = length
        _check_at_least("the minimum length", low, 1)
        _check_at_least("the maximum length", high, low)
    elif isinstance(length, int) and not isinstance(length, bool):
        _check_at_least("length", length, 1)
        low = high = length
    else:
        raise UserError(f"length must be an integer or a (min, max) pair, got {length!r}")
    rng = random.Random(seed)
    return [[f"s{rng.randrange(vocab)}" for _ in range(rng.randint(low, high))] for _ in range(n)]


def copy_task(
    n: int, *, length: int | tuple[int, int], vocab: int = 20, seed: int = 1
) -> list[tuple[str, str]]:
    """Pairs whose target repeats the source, e.g. "s3 s17 s5" -> "s3 s17 s5"."""
    return [(" ".join(s), " ".join(s)) for s in _sequences(n, length, vocab, seed)]


def reverse_task(
    n: int, *, length: int | tuple[int, int], vocab: int = 20, seed: int = 1
) -> list[tuple[str, str]]:
    """Pairs whose target is the source reversed, e.g. "s3 s17 s5" -> "s5 s17 s3"."""
    return [(" ".join(s), " ".join(s[::-1])) for s in _sequences(n, length, vocab, seed)]


def key_recall_task(
    n: int, *, distance: int, vocab: int = 20, pairs: int = 3, seed: int = 1
) -> list[tuple[str, str]]:
    """Pairs that ask for the value bound to a key, `distance` tokens after the value was seen.

    The source holds `pairs` bindings "key value" (keys k0.., values v0..; all keys distinct and
    all values distinct) among fillers f0.. (a separate alphabet, `vocab` symbols each), and
    ends with one of the keys again: the query. The target is that key's value, which stands
    exactly `distance` tokens before the query. The other bindings sit before the queried one
    or in the gap, e.g. with distance 5: "f3 k1 v3 k4 v7 f2 k0 v5 f9 k4" -> "v7". Matching the
    key or counting back, a model has to carry the value across `distance` positions.
    """
    _check_at_least("n", n, 1)
    _check_at_least("distance", distance, 1)
    _check_at_least("pairs", pairs, 1)
    _check_at_least("vocab (at least `pairs`)", vocab, pairs)
    rng = random.Random(seed)
    examples = []
    for _ in range(n):
        keys = [f"k{i}" for i in rng.sample(range(vocab), pairs)]
        values = [f"v{i}" for i in rng.sample(range(vocab), pairs)]
        free = distance - 1  # slots between the value and the query
        before = [[f"f{rng.randrange(vocab)}"] for _ in range(rng.randint(0, 2))]
        gap = []
        for binding in zip(keys[1:], values[1:], strict=True):
            if free >= 2 and rng.random() < 0.5:
                gap.append(list(binding))
                free -= 2
            else:
                before.append(list(binding))
        gap += [[f"f{rng.randrange(vocab)}"] for _ in range(free)]
        rng.shuffle(before)
        rng.shuffle(gap)
        tokens = [t for unit in [*before, [keys[0], values[0]], *gap, [keys[0]]] for t in unit]
        examples.append((" ".join(tokens), values[0]))
    return examples
