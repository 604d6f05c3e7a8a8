"""The words of the built-in English-French corpus, their inflection, and French spelling rules.

`attnkit.data.synthetic` builds sentences from these entries. Each entry carries every form the
grammar needs on both sides: regular forms come from the few rules here, irregular ones are
spelled out. Two kinds of word are left out on purpose: English words whose form hides a
distinction French makes (sheep, fish, read, put), so that every English sentence has exactly
one translation, and French words with an aspirated h (héros, haut), so that every French word
starting with a vowel letter or "h" takes elision.
"""

from __future__ import annotations

from dataclasses import dataclass

PERSON, ANIMAL, THING, FOOD, PLACE = "person", "animal", "thing", "food", "place"
ANIMATE = frozenset({PERSON, ANIMAL})
ANY = frozenset({PERSON, ANIMAL, THING, FOOD, PLACE})
_PEOPLE = frozenset({PERSON})

INTRANSITIVE, TRANSITIVE, DITRANSITIVE, INDIRECT, GOAL = "intr", "tr", "di", "ind", "goal"

_FRENCH_VOWELS = frozenset("aeiouyàâäéèêëîïôöûùüœæh")  # every h in this lexicon is mute


def starts_with_vowel(word: str) -> bool:
    """Whether a French word makes the word before it elide (l'homme, j'aime, qu'elle)."""
    return word[:1].lower() in _FRENCH_VOWELS


# Nouns ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Noun:
    """A noun in both languages, singular and plural."""

    en: str
    en_plural: str
    fr: str
    fr_plural: str
    gender: str  # "m" | "f"
    kind: str  # PERSON | ANIMAL | THING | FOOD | PLACE
    relational: bool = False  # takes an "of" complement: the friend of the king


def _english_plural(word: str) -> str:
    if word.endswith(("s", "x", "ch", "sh")):
        return word + "es"
    if word.endswith("y") and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


def _french_plural(word: str) -> str:
    if word.endswith(("s", "x", "z")):
        return word
    if word.endswith(("eau", "eu")):
        return word + "x"
    if word.endswith("al"):
        return word[:-2] + "aux"
    return word + "s"


def _nouns(kind: str, table: str) -> list[Noun]:
    """Parse comma-separated entries "english[/plural] french[/plural] gender [rel]"."""
    nouns = []
    for entry in table.replace("\n", ",").split(","):
        if not entry.strip():
            continue
        english, french, gender, *flags = entry.split()
        en, _, en_plural = english.partition("/")
        fr, _, fr_plural = french.partition("/")
        en_plural, fr_plural = en_plural or _english_plural(en), fr_plural or _french_plural(fr)
        nouns.append(Noun(en, en_plural, fr, fr_plural, gender, kind, relational="rel" in flags))
    return nouns


NOUNS: tuple[Noun, ...] = (
    *_nouns(
        PERSON,
        """man/men homme m, woman/women femme f, boy garçon m, girl fille f,
        child/children enfant m, baby bébé m, king roi m, queen reine f, teacher professeur m,
        doctor médecin m, nurse infirmière f, brother frère m rel, sister sœur f rel,
        father père m rel, mother mère f rel, uncle oncle m rel, friend ami m rel""",
    ),
    *_nouns(
        ANIMAL,
        """cat chat m, dog chien m, horse cheval m, bird oiseau m, mouse/mice souris f,
        rabbit lapin m, cow vache f, wolf/wolves loup m, fox renard m, duck canard m,
        elephant éléphant m, animal animal m, squirrel écureuil m, bear ours m""",
    ),
    *_nouns(
        THING,
        """book livre m, table table f, chair chaise f, letter lettre f, key clé f, car voiture f,
        ball ballon m, flower fleur f, hat chapeau m, knife/knives couteau m, painting tableau m,
        umbrella parapluie m, box boîte f, newspaper journal m, gift cadeau m, clock horloge f,
        door porte f, window fenêtre f""",
    ),
    *_nouns(FOOD, "apple pomme f, cake gâteau m, orange orange f, egg œuf m, banana banane f"),
    *_nouns(
        PLACE,
        """house maison f, garden jardin m, park parc m, school école f, church église f,
        hotel hôtel m, hospital hôpital m, station gare f, market marché m, museum musée m,
        forest forêt f, river rivière f, castle château m, shop magasin m, farm ferme f""",
    ),
)

# Places one goes "to" with French "à" (aller à la gare); "à la forêt" is avoided.
PLACES_TO = frozenset(n.en for n in NOUNS if n.kind == PLACE and n.en != "forest")

# Adjective-noun pairs that French reads as another word (beau-père, grand-père, petit ami,
# vieille fille, grand homme, bonne femme) are never generated; nor are possessives with "man"
# and "woman" (ma femme reads "my wife").
AVOIDED = frozenset(
    {(a, n.en) for n in NOUNS if n.relational for a in ("beautiful", "big", "small")}
    | {("old", "girl"), ("old", "boy"), ("big", "man"), ("good", "woman")}
)
NO_POSSESSIVE = frozenset({"man", "woman"})


# Adjectives -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Adjective:
    """An adjective with its four French forms and where it goes."""

    en: str
    forms: tuple[str, str, str, str]  # masculine singular, feminine singular, masc. pl., fem. pl.
    kinds: frozenset[str]  # the kinds of noun it can describe
    before_noun: bool  # French puts it before the noun (le petit chat), not after (le chat noir)
    rank: int  # English order: opinion 1, size 2, quality 3, age 4, colour 5
    liaison: str = ""  # masculine singular before a vowel: bel, vieil, nouvel

    def form(self, gender: str, plural: bool, *, before_vowel: bool = False) -> str:
        if self.liaison and before_vowel and gender == "m" and not plural:
            return self.liaison
        return self.forms[(gender == "f") + 2 * plural]


# The few adjectives French puts before the noun; the others follow it.
_BEFORE_NOUN = {"small", "big", "beautiful", "pretty", "young", "old", "good", "bad", "new"}


def _adjective(
    en: str, french: str, kinds: set[str] | frozenset[str], rank: int = 1, liaison: str = ""
) -> Adjective:
    """`french`: "masculine [feminine [masculine-plural]]", the rest by the regular rules."""
    ms, fs, mp = (french.split() + ["", ""])[:3]
    fs = fs or (ms if ms.endswith("e") else ms + "e")
    mp = mp or (ms if ms.endswith(("s", "x")) else ms + "s")
    forms = (ms, fs, mp, fs + "s")
    return Adjective(en, forms, frozenset(kinds), en in _BEFORE_NOUN, rank, liaison)


ADJECTIVES: tuple[Adjective, ...] = (
    _adjective("small", "petit", ANY, rank=2),
    _adjective("big", "grand", ANY, rank=2),
    _adjective("beautiful", "beau belle beaux", ANY, liaison="bel"),
    _adjective("pretty", "joli", ANY),
    _adjective("young", "jeune", ANIMATE, rank=4),
    _adjective("old", "vieux vieille", ANY - {FOOD}, rank=4, liaison="vieil"),
    _adjective("good", "bon bonne", ANIMATE | {FOOD}),
    _adjective("bad", "mauvais", ANIMATE | {FOOD}),
    _adjective("new", "nouveau nouvelle nouveaux", {PERSON, THING, PLACE}, 4, "nouvel"),
    _adjective("black", "noir", {ANIMAL, THING}, rank=5),
    _adjective("white", "blanc blanche", {ANIMAL, THING}, rank=5),
    _adjective("grey", "gris", {ANIMAL, THING}, rank=5),
    _adjective("red", "rouge", {THING, FOOD}, rank=5),
    _adjective("green", "vert", {THING, FOOD}, rank=5),
    _adjective("blue", "bleu", {THING}, rank=5),
    _adjective("yellow", "jaune", {THING, FOOD}, rank=5),
    _adjective("happy", "heureux heureuse", ANIMATE),
    _adjective("sad", "triste", ANIMATE),
    _adjective("tired", "fatigué", ANIMATE),
    _adjective("sick", "malade", ANIMATE),
    _adjective("clever", "intelligent", ANIMATE),
    _adjective("kind", "gentil gentille", ANIMATE),
    _adjective("curious", "curieux curieuse", ANIMATE),
    _adjective("angry", "fâché", ANIMATE),
    _adjective("busy", "occupé", _PEOPLE),
    _adjective("rich", "riche", _PEOPLE),
    _adjective("poor", "pauvre", _PEOPLE),
    _adjective("famous", "célèbre", {PERSON, PLACE}),
    _adjective("expensive", "cher chère", {THING}),
    _adjective("clean", "propre", {THING, PLACE}),
    _adjective("dirty", "sale", {THING, PLACE}),
    _adjective("heavy", "lourd", {THING}, rank=3),
    _adjective("broken", "cassé", {THING}, rank=3),
)


# Prepositions, verbs, pronouns, determiners ---------------------------------------------------

# English preposition -> French, and the kinds of noun it takes (phrases of place and company).
PREPOSITIONS: dict[str, tuple[str, frozenset[str]]] = {
    "near": ("près de", ANY - {FOOD}),
    "in": ("dans", frozenset({PLACE})),
    "behind": ("derrière", ANY - {FOOD}),
    "in front of": ("devant", ANY - {FOOD}),
    "next to": ("à côté de", ANY - {FOOD}),
    "with": ("avec", ANIMATE),
}


@dataclass(frozen=True)
class Verb:
    """A verb with its English forms, its French present and participle, and its frame.

    The complement after the verb (the object of TRANSITIVE, the second object of INDIRECT, the
    place of GOAL) is a noun of `objects` (kinds or English nouns), introduced by `en_prep`
    (look *for*, talk *to*) and `fr_prep` (parler *à*). DITRANSITIVE verbs take an object of
    `objects` then "to"/"à" and one of `recipients`.
    """

    infinitive: str
    en: tuple[str, str, str]  # base, third person singular, simple past
    fr: tuple[str, ...]  # present: je, tu, il, nous, vous, ils
    participle: str  # masculine singular
    aux: str  # "avoir" | "être"
    frame: str  # INTRANSITIVE | TRANSITIVE | DITRANSITIVE | INDIRECT | GOAL
    subjects: frozenset[str]
    objects: frozenset[str] = frozenset()
    recipients: frozenset[str] = frozenset()
    en_prep: str = ""
    fr_prep: str = ""
    adjuncts: tuple[str, ...] = tuple(PREPOSITIONS)  # phrases of place that may follow


# Present (je tu il nous vous ils) and past participle of the verbs that are not regular -er.
_IRREGULAR = {
    "voir": "vois vois voit voyons voyez voient vu",
    "prendre": "prends prends prend prenons prenez prennent pris",
    "faire": "fais fais fait faisons faites font fait",
    "avoir": "ai as a avons avez ont eu",
    "ouvrir": "ouvre ouvres ouvre ouvrons ouvrez ouvrent ouvert",
    "connaître": "connais connais connaît connaissons connaissez connaissent connu",
    "suivre": "suis suis suit suivons suivez suivent suivi",
    "attendre": "attends attends attend attendons attendez attendent attendu",
    "répondre": "réponds réponds répond répondons répondez répondent répondu",
    "obéir": "obéis obéis obéit obéissons obéissez obéissent obéi",
    "dormir": "dors dors dort dormons dormez dorment dormi",
    "courir": "cours cours court courons courez courent couru",
    "rire": "ris ris rit rions riez rient ri",
    "aller": "vais vas va allons allez vont allé",
    "venir": "viens viens vient venons venez viennent venu",
    "partir": "pars pars part partons partez partent parti",
    "sortir": "sors sors sort sortons sortez sortent sorti",
}
# Verbs of movement that form the passé composé with être (elle est allée).
_WITH_ETRE = {"aller", "venir", "arriver", "partir", "entrer", "sortir", "tomber", "rester"}


def _third_person(verb: str) -> str:
    return verb + "es" if verb.endswith("o") else _english_plural(verb)


def _verb(
    english: str,
    infinitive: str,
    frame: str,
    subjects: frozenset[str],
    objects: set[str] | frozenset[str] = frozenset(),
    prep: str = "/",
    **options: object,
) -> Verb:
    """`english`: "base past" or "base third past"; `prep`: "english/french" prepositions."""
    words = english.split()
    third = words[1] if len(words) == 3 else _third_person(words[0])
    if infinitive in _IRREGULAR:
        forms = _IRREGULAR[infinitive].split()
    else:  # a regular -er verb; -ger keeps its e before -ons (nous mangeons)
        stem = infinitive[:-2]
        nous = stem + ("eons" if stem.endswith("g") else "ons")
        forms = [stem + "e", stem + "es", stem + "e", nous, stem + "ez", stem + "ent", stem + "é"]
    en_prep, fr_prep = prep.split("/")
    aux = "être" if infinitive in _WITH_ETRE else "avoir"
    english_forms = (words[0], third, words[-1])
    return Verb(
        infinitive,
        english_forms,
        tuple(forms[:6]),
        forms[6],
        aux,
        frame,
        frozenset(subjects),
        frozenset(objects),
        en_prep=en_prep,
        fr_prep=fr_prep,
        **options,
    )


_HOLDABLE = {THING, FOOD, ANIMAL}
_OPENABLE = {"door", "window", "box", "book", "letter", "umbrella"}

VERBS: tuple[Verb, ...] = (
    _verb("like liked", "aimer", TRANSITIVE, ANIMATE, ANY),
    _verb("love loved", "adorer", TRANSITIVE, _PEOPLE, ANY),
    _verb("watch watched", "regarder", TRANSITIVE, ANIMATE, ANY - {FOOD}),
    _verb("look looked", "chercher", TRANSITIVE, ANIMATE, ANY - {PLACE}, "for/"),
    _verb("find found", "trouver", TRANSITIVE, ANIMATE, ANY - {PLACE}),
    _verb("carry carried", "porter", TRANSITIVE, _PEOPLE, _HOLDABLE),
    _verb("wash washed", "laver", TRANSITIVE, _PEOPLE, {THING, ANIMAL}),
    _verb("draw drew", "dessiner", TRANSITIVE, _PEOPLE, ANY),
    _verb("visit visited", "visiter", TRANSITIVE, _PEOPLE, {PLACE}),
    _verb("help helped", "aider", TRANSITIVE, ANIMATE, ANIMATE),
    _verb("listen listened", "écouter", TRANSITIVE, ANIMATE, ANIMATE, "to/"),
    _verb("forget forgot", "oublier", TRANSITIVE, _PEOPLE, {THING, FOOD}),
    _verb("catch caught", "attraper", TRANSITIVE, ANIMATE, {THING, ANIMAL}),
    _verb("eat ate", "manger", TRANSITIVE, ANIMATE, {FOOD}),
    _verb("see saw", "voir", TRANSITIVE, ANIMATE, ANY),
    _verb("take took", "prendre", TRANSITIVE, _PEOPLE, {THING, FOOD}),
    _verb("make made", "faire", TRANSITIVE, _PEOPLE, {THING, FOOD}),
    _verb("have has had", "avoir", TRANSITIVE, _PEOPLE, _HOLDABLE),
    _verb("open opened", "ouvrir", TRANSITIVE, _PEOPLE, _OPENABLE),
    _verb("know knew", "connaître", TRANSITIVE, ANIMATE, ANIMATE | {PLACE}),
    _verb("follow followed", "suivre", TRANSITIVE, ANIMATE, ANIMATE),
    _verb("wait waited", "attendre", TRANSITIVE, ANIMATE, ANIMATE, "for/"),
    _verb("give gave", "donner", DITRANSITIVE, _PEOPLE, {THING, FOOD}, recipients=ANIMATE),
    _verb("show showed", "montrer", DITRANSITIVE, _PEOPLE, _HOLDABLE, recipients=_PEOPLE),
    _verb("bring brought", "apporter", DITRANSITIVE, _PEOPLE, {THING, FOOD}, recipients=_PEOPLE),
    _verb("talk talked", "parler", INDIRECT, _PEOPLE, ANIMATE, "to/à"),
    _verb("call called", "téléphoner", INDIRECT, _PEOPLE, _PEOPLE, "/à"),
    _verb("answer answered", "répondre", INDIRECT, _PEOPLE, _PEOPLE, "/à"),
    _verb("obey obeyed", "obéir", INDIRECT, ANIMATE, _PEOPLE, "/à"),
    _verb("walk walked", "marcher", INTRANSITIVE, ANIMATE),
    _verb("sing sang", "chanter", INTRANSITIVE, ANIMATE),
    _verb("dance danced", "danser", INTRANSITIVE, _PEOPLE),
    _verb("play played", "jouer", INTRANSITIVE, ANIMATE),
    _verb("work worked", "travailler", INTRANSITIVE, _PEOPLE),
    _verb("sleep slept", "dormir", INTRANSITIVE, ANIMATE),
    _verb("swim swam", "nager", INTRANSITIVE, ANIMATE),
    _verb("run ran", "courir", INTRANSITIVE, ANIMATE),
    _verb("cry cried", "pleurer", INTRANSITIVE, _PEOPLE),
    _verb("laugh laughed", "rire", INTRANSITIVE, _PEOPLE),
    _verb("go goes went", "aller", GOAL, ANIMATE, PLACES_TO, "to/à"),
    _verb("come came", "venir", GOAL, ANIMATE, {PLACE}, "from/de"),
    _verb("arrive arrived", "arriver", GOAL, ANIMATE, PLACES_TO, "at/à"),
    _verb("enter entered", "entrer", GOAL, ANIMATE, {PLACE}, "/dans"),
    _verb("come came", "sortir", GOAL, ANIMATE, {PLACE}, "out of/de"),
    _verb("stay stayed", "rester", GOAL, ANIMATE, {PLACE}, "in/dans"),
    _verb("leave leaves left", "partir", INTRANSITIVE, ANIMATE, adjuncts=("with",)),
    _verb("fall fell", "tomber", INTRANSITIVE, ANY - {PLACE}),
)

PRONOUNS: tuple[tuple[str, str, int, str, bool], ...] = (
    # English, French, person (index into the conjugations), gender, plural. "you" is always
    # "vous" and, like "I", "we" and "they", masculine so that agreement is deterministic.
    ("I", "je", 0, "m", False),
    ("you", "vous", 4, "m", True),
    ("he", "il", 2, "m", False),
    ("she", "elle", 2, "f", False),
    ("we", "nous", 3, "m", True),
    ("they", "ils", 5, "m", True),
)

ETRE = ("suis", "es", "est", "sommes", "êtes", "sont")
ETRE_IMPARFAIT = ("étais", "étais", "était", "étions", "étiez", "étaient")
AVOIR = tuple(_IRREGULAR["avoir"].split()[:6])

# name -> English singular, English plural, French masculine, feminine, plural.
DETERMINERS: dict[str, tuple[str, str, str, str, str]] = {
    "the": ("the", "the", "le", "la", "les"),
    "a": ("a", "some", "un", "une", "des"),
    "this": ("this", "these", "ce", "cette", "ces"),
    "my": ("my", "my", "mon", "ma", "mes"),
    "your": ("your", "your", "votre", "votre", "vos"),
    "his": ("his", "his", "son", "sa", "ses"),
    "her": ("her", "her", "son", "sa", "ses"),
    "our": ("our", "our", "notre", "notre", "nos"),
    "their": ("their", "their", "leur", "leur", "leurs"),
}


# Inflection and spelling ----------------------------------------------------------------------


def participle(masculine: str, gender: str, plural: bool) -> str:
    """A past participle agreeing in gender and number: allé, allée, allés, allées; pris, prises."""
    form = masculine + "e" * (gender == "f")
    return form + "s" if plural and not form.endswith("s") else form


def english_verb(verb: Verb, person: int, past: bool, negated: bool) -> list[str]:
    """Present simple or simple past, with do-support under negation (does not see)."""
    base, third, simple_past = verb.en
    if negated:
        return ["did" if past else "does" if person == 2 else "do", "not", base]
    return [simple_past if past else third if person == 2 else base]


def english_be(person: int, past: bool, negated: bool) -> list[str]:
    if past:
        form = "was" if person in (0, 2) else "were"
    else:
        form = {0: "am", 2: "is"}.get(person, "are")
    return [form, "not"] if negated else [form]


def finish_english(tokens: list[str]) -> str:
    """Join words into a sentence: "a" becomes "an" before a vowel, capital, final period."""
    words = [
        "an" if word == "a" and following[0] in "aeiou" else word
        for word, following in zip(tokens, tokens[1:] + ["."], strict=True)
    ]
    text = " ".join(words)
    return text[0].upper() + text[1:] + "."


# Before a vowel: l'arbre, j'aime, n'a, qu'elle, d'un, cet arbre, mon école.
_ELIDED = dict(le="l'", la="l'", je="j'", ne="n'", que="qu'", de="d'", ce="cet", ma="mon", sa="son")
_CONTRACTED = {("à", "le"): "au", ("à", "les"): "aux", ("de", "le"): "du", ("de", "les"): "des"}


def finish_french(tokens: list[str]) -> str:
    """Join words into a sentence with contraction (au, du, aux, des) and elision, capital and
    final period. Contraction comes first but leaves "de l'arbre", "à l'école" alone."""
    vowel = [starts_with_vowel(t) for t in tokens] + [False, False]
    words: list[str] = []
    i = 0
    while i < len(tokens):
        pair = (tokens[i], tokens[i + 1] if i + 1 < len(tokens) else "")
        if pair in _CONTRACTED and not (pair[1] == "le" and vowel[i + 2]):
            words.append(_CONTRACTED[pair])
            i += 2
            continue
        words.append(_ELIDED.get(tokens[i], tokens[i]) if vowel[i + 1] else tokens[i])
        i += 1
    text = "".join(w if w.endswith("'") else w + " " for w in words).rstrip()
    return text[0].upper() + text[1:] + "."
