"""recgen/core/grounding.py: which catalog titles a text names, and what may be shown."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recgen.core.grounding import GroundingChecker, StreamGuard, display_title, split_title

TITLES = [
    "Usual Suspects, The (1995)",  # 0
    "Star Wars (1977)",  # 1
    "City of Lost Children, The (1995)",  # 2
    "Seven (Se7en) (1995)",  # 3
    "unkonwn",  # 4
    "It (1990)",  # 5
    "Heat (1995)",  # 6
    "Big (1988)",  # 7
    "Kids (1995)",  # 8
    "Game, The (1997)",  # 9
    "Grand bleu, Le (1988)",  # 10
    "Empire Strikes Back, The (1980)",  # 11
    "Hamlet (1996)",  # 12
    "Hamlet (1948)",  # 13
    "Schindler's List (1993)",  # 14
    "1941 (1979)",  # 15
    "Amélie (2001)",  # 16
    "Die Hard (1988)",  # 17
    "Go (1999)",  # 18
    "Fargo (1996)",  # 19
    "Star Wars: Return of the Jedi (1983)",  # 20
    "Ran (1985)",  # 21
    "Vie est belle, La (Life is Rosy) (1987)",  # 22
]


@pytest.fixture(scope="module")
def checker() -> GroundingChecker:
    return GroundingChecker(TITLES)


@pytest.fixture(scope="module")
def word_checker() -> GroundingChecker:
    return GroundingChecker(TITLES, boundary="word")


def _found(checker: GroundingChecker, text: str) -> list[tuple[str, int]]:
    return [(m.matched, m.item_index) for m in checker.find_mentions(text)]


@pytest.mark.parametrize(
    "text, expected",
    [
        # Case, punctuation and the "X, The" <-> "The X" forms.
        ("I loved the usual suspects!", [("the usual suspects", 0)]),
        ("THE USUAL SUSPECTS rocks", [("THE USUAL SUSPECTS", 0)]),
        ("Usual Suspects, The is a classic.", [("Usual Suspects, The", 0)]),
        ("Try Usual Suspects.", [("Usual Suspects", 0)]),
        ("Watch star-wars tonight", [("star-wars", 1)]),
        ("The City of Lost Children (1995) is odd", [("The City of Lost Children (1995)", 2)]),
        ("Le Grand Bleu is blue.", [("Le Grand Bleu", 10)]),
        ("La vie est belle and Life Is Rosy", [("La vie est belle", 22), ("Life Is Rosy", 22)]),
        # Missing or wrong year: still the title; the span takes the year along.
        ("The Empire Strikes Back (1981) is the best", [("The Empire Strikes Back (1981)", 11)]),
        ("Star Wars", [("Star Wars", 1)]),
        # Alternate titles.
        ("Se7en, or Seven (Se7en) (1995).", [("Se7en", 3), ("Seven (Se7en) (1995)", 3)]),
        # Apostrophes and accents.
        ("Schindlers List; Schindler’s List", [("Schindlers List", 14), ("Schindler’s List", 14)]),
        ("Amelie!", [("Amelie", 16)]),
        # Longest match wins.
        ("Star Wars: Return of the Jedi", [("Star Wars: Return of the Jedi", 20)]),
        # Foreign-looking leading words are not articles: "Die Hard" is not "Hard".
        ("Die Hard", [("Die Hard", 17)]),
    ],
)
def test_finds_titles_in_many_forms(checker, text, expected):
    assert _found(checker, text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        # One-word titles that are common words: no mention in ordinary prose ...
        ("It was great. Kids will love it.", []),
        ("the heat of the moment, a big night, go home", []),
        ("seven days in 1941 with the kids", []),
        ("Go watch a movie.", []),
        ("the game was fun", []),
        ("I ran home.", []),
        # ... but they count with a year, in quotes, or capitalised mid-sentence.
        ("It (1990) is scary.", [("It (1990)", 5)]),
        ("“It” is scary.", [("It", 5)]),
        ('You will love "go".', [("go", 18)]),
        ("You will love It.", [("It", 5)]),
        ("Both Heat and Big are fun.", [("Heat", 6), ("Big", 7)]),
        ("Watch The Game tonight", [("The Game", 9)]),
        ("You'd like the Game", [("the Game", 9)]),
        ("1941 (1979) is loud", [("1941 (1979)", 15)]),
        ("*Ran* is epic", [("Ran", 21)]),
        # Sentence start: only words that are not frequent English words count.
        ("Fargo is snowy.", [("Fargo", 19)]),
        ("Heat is tense.", [("Heat", 6)]),
    ],
)
def test_common_word_titles(checker, text, expected):
    assert _found(checker, text) == expected


def test_year_narrows_same_named_items(checker):
    [exact] = checker.find_mentions("Hamlet (1948)")
    assert exact.candidates == (13,)
    [bare] = checker.find_mentions("Hamlet")
    assert set(bare.candidates) == {12, 13}
    [wrong] = checker.find_mentions("Hamlet (2000)")
    assert set(wrong.candidates) == {12, 13}
    assert checker.check("Hamlet is long.", {12}).ok
    assert not checker.check("Hamlet (1948) is long.", {12}).ok


def test_check_accepts_allowed_titles(checker):
    text = "Since you liked Star Wars (1977), you will love The Usual Suspects and Fargo."
    r = checker.check(text, {0, 1, 19})
    assert r.ok and r.first_bad is None and r.safe_prefix == text
    assert [m.item_index for m in r.mentions] == [1, 0, 19]


def test_check_rejects_title_outside_allowed(checker, word_checker):
    text = "You liked Star Wars (1977). You will love Fargo and heat. Also Heat (1995)!"
    r = checker.check(text, {1, 19})
    assert not r.ok
    assert r.first_bad.item_index == 6 and r.first_bad.matched == "Heat (1995)"
    assert r.safe_prefix == "You liked Star Wars (1977). You will love Fargo and heat."
    r = checker.check("Since you liked Star Wars, you will love Fargo.", {1})
    assert r.first_bad.item_index == 19 and r.safe_prefix == ""
    r = word_checker.check('Since you liked Star Wars, you will love "Fargo".', {1})
    assert r.safe_prefix == "Since you liked Star Wars, you will love"
    r = word_checker.check("Star Wars, Fargo", {1})
    assert r.safe_prefix == "Star Wars"


def test_title_helpers():
    assert split_title("Seven (Se7en) (1995)") == ("Seven", "Se7en", 1995)
    assert split_title("Blue Widget (large)") == ("Blue Widget (large)", None, None)
    assert split_title("unkonwn") == ("unkonwn", None, None)
    assert display_title("Usual Suspects, The (1995)") == "The Usual Suspects"
    assert display_title("Usual Suspects, The (1995)", keep_year=True) == "The Usual Suspects (1995)"
    assert display_title("Grand bleu, Le (1988)") == "Le Grand bleu"


def test_any_catalog_not_only_movies():
    shop = GroundingChecker(["Blue Widget (large)", "USB-C Cable 2m", "Go", "The Notebook"])
    assert _found(shop, "Get the blue widget (large) and a usb-c cable 2m.") == [
        ("blue widget (large)", 0),
        ("usb-c cable 2m", 1),
    ]
    assert _found(shop, "Go for it, or buy Go and a notebook") == [("Go", 2)]
    assert _found(shop, "Or The Notebook.") == [("The Notebook", 3)]


# -- streaming -----------------------------------------------------------------

STREAM_TEXTS = [
    "Since you liked Star Wars (1977), you will love The Usual Suspects. Heat (1995) too!",
    "You will love Fargo and The City of Lost Children. It is dark. Also Seven (Se7en).",
    "Watch The Empire Strikes Back (1981), then Hamlet (1948)\nand Hamlet.",
    "Try “It” and Big. The game is on, kids. Schindler's List, and Star Wars: Return of the Jedi.",
    "Star Wars",
    "Big",
    "No titles at all here... just words (and parentheses (19",
    "",
]
ALLOWED_SETS = [set(), {1}, {0, 1, 2, 19}, {1, 5, 6, 7, 11, 12}, set(range(len(TITLES)))]


def _stream(checker: GroundingChecker, allowed, pieces) -> tuple[str, StreamGuard]:
    guard = StreamGuard(checker, allowed)
    out = []
    for p in pieces:
        out.append(guard.feed(p))
        # Never ahead of what the full text can show.
        assert (
            checker.check(guard.text, allowed).safe_prefix.startswith(guard.released_text)
            or guard.violation is not None
        )
    out.append(guard.finish())
    return "".join(out), guard


@pytest.mark.parametrize("boundary", ["sentence", "word"])
def test_stream_in_one_char_pieces_equals_whole_text_check(boundary):
    checker = GroundingChecker(TITLES, boundary=boundary)
    for text in STREAM_TEXTS:
        for allowed in ALLOWED_SETS:
            released, guard = _stream(checker, allowed, list(text))
            r = checker.check(text, allowed)
            assert released == r.safe_prefix, (text, allowed)
            assert (guard.violation is None) == r.ok
            if not r.ok:
                assert guard.violation == r.first_bad


@settings(max_examples=150, deadline=None)
@given(
    parts=st.lists(
        st.sampled_from(
            [
                "Star",
                " Wars",
                "Star Wars",
                " (1977)",
                " (19",
                "77)",
                ", The",
                "The ",
                "Usual Suspects",
                "Heat",
                "heat",
                " It",
                "“It”",
                ". ",
                "!\n",
                " and ",
                "Fargo",
                "Hamlet",
                " (1948)",
                "Big",
                "Se7en",
                "Seven (Se7en)",
                "Empire Strikes Back",
                "'s",
                "go",
                " ",
                ",",
                "é",
                "Ame",
                "lie",
            ]
        ),
        max_size=25,
    ),
    cuts=st.lists(st.integers(1, 7), min_size=1, max_size=10),
    allowed=st.sets(st.integers(0, len(TITLES) - 1), max_size=6),
    boundary=st.sampled_from(["sentence", "word"]),
)
def test_stream_in_random_pieces_equals_whole_text_check(parts, cuts, allowed, boundary):
    checker = GroundingChecker(TITLES, boundary=boundary)
    text = "".join(parts)
    pieces, i, k = [], 0, 0
    while i < len(text):
        n = cuts[k % len(cuts)]
        pieces.append(text[i : i + n])
        i, k = i + n, k + 1
    released, guard = _stream(checker, allowed, pieces)
    r = checker.check(text, allowed)
    assert released == r.safe_prefix
    assert (guard.violation is None) == r.ok


def test_stream_holds_back_a_partial_title(word_checker):
    guard = StreamGuard(word_checker, {1})
    assert guard.feed("You will love ") == "You will love"
    assert guard.feed("The ") == ""  # "The ..." may start a title
    assert guard.feed("Usual") == ""
    assert guard.feed(" Sus") == ""
    assert guard.feed("pects") == ""
    assert guard.feed(" and") == ""  # a longer title may still follow
    assert guard.feed(" ") == ""
    assert guard.violation is not None and guard.violation.item_index == 0
    assert guard.feed(" Star Wars.") == ""  # nothing more after a violation
    assert guard.finish() == ""
    assert guard.released_text == "You will love"


def test_stream_releases_a_title_once_it_is_settled(word_checker):
    guard = StreamGuard(word_checker, {1, 6})
    assert guard.feed("Since you liked Star") == "Since you liked"
    assert guard.feed(" Wars") == ""
    assert guard.feed(" (19") == ""  # a year may follow
    assert guard.feed("77), see Heat") == " Star Wars (1977), see"
    assert guard.feed(". Done") == ""  # "Heat ... Done ..." could be a longer title
    assert guard.feed(" it") == " Heat. Done"
    assert guard.finish() == " it"
    assert guard.violation is None


def test_sentence_boundary_streams_whole_sentences(checker):
    guard = StreamGuard(checker, {1})
    assert guard.feed("You liked Star Wars. ") == ""  # "Star Wars. Return of the Jedi"?
    assert guard.feed("You will") == "You liked Star Wars."
    assert guard.feed(" love ") == ""
    assert guard.feed("Fargo (1996). ") == ""
    assert guard.violation is not None and guard.violation.item_index == 19
    assert guard.finish() == ""


def test_large_catalog_builds_and_scans():
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(5000)]
    titles = [
        " ".join(rng.choices(vocab, k=rng.randint(1, 6))) + f" ({1900 + i % 120})" for i in range(100_000)
    ]
    big = GroundingChecker(titles)
    text = f"I liked {titles[123]} and {titles[99_999].split(' (')[0]}."
    found = big.find_mentions(text)
    assert 123 in found[0].candidates and 99_999 in found[-1].candidates
