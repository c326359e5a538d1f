"""recgen/core/claims.py: instruction leaks and attribute claims, on real catalog titles."""

from __future__ import annotations

import pytest

from recgen.core.claims import (
    ItemClaimFacts,
    Vocabulary,
    attribute_claims,
    clause_start,
    end_at,
    leak_at,
    violations,
)
from recgen.core.grounding import GroundingChecker
from recgen.core.prompt import PLAIN_INSTRUCTIONS

CATALOG = ["Heat (1995)", "Star Wars (1977)", "Contact (1997)", "Crying Game, The (1992)", "Toy Story (1995)"]
HEAT, STAR_WARS, CONTACT, CRYING_GAME, TOY_STORY = range(5)
FACTS = {
    HEAT: ItemClaimFacts(("Action", "Crime", "Thriller"), year=1995),
    STAR_WARS: ItemClaimFacts(("Action", "Adventure", "Romance", "Sci-Fi", "War"), year=1977),
    CONTACT: ItemClaimFacts(
        ("Drama", "Sci-Fi"), "A scientist hears a signal from space; a mystery. Remastered in 2009.", 1997
    ),
    CRYING_GAME: ItemClaimFacts(("Drama", "Romance", "War"), year=1992),
    TOY_STORY: ItemClaimFacts(("Animation", "Children's", "Comedy"), year=1995),
}
VOCAB = Vocabulary({c for f in FACTS.values() for c in f.categories} | {"Horror", "Western", "Mystery"})
CHECKER = GroundingChecker(CATALOG, boundary="word")


def claims_of(text: str):
    return attribute_claims(text, CHECKER.find_mentions(text), FACTS, VOCAB)


@pytest.mark.parametrize(
    "text, leaked",
    [
        (
            "You will enjoy a mix of action, comedy, and romance, but I will not suggest any other movie.",
            "I will",
        ),
        ("You will enjoy a mix of both, but I will not name any other movie.", "I will"),
        ("Do not name any other movie. Heat is great.", "Do not"),
        ("As an AI language model, I cannot watch films.", "As an AI"),
        ("I'm sorry for any confusion.", "I'm sorry"),
        ("Heat is a thriller which suits me.", "suits me"),
        # Copied back from the prompt's own instructions (five words in a row).
        ("Heat (1995): in one sentence, tell me why the picked movies work.", "in one sentence"),
    ],
)
def test_leaks_are_found_where_they_start(text: str, leaked: str) -> None:
    at = leak_at(text, PLAIN_INSTRUCTIONS)
    assert at is not None and text[at:].startswith(leaked), (text, at)


@pytest.mark.parametrize(
    "text",
    [
        "Because you liked Heat (1995), try Contact (1997), a drama and sci-fi film about a signal.",
        "You will enjoy Star Wars, an adventure film that other fans loved.",
        "It is not a comedy, but it is a classic.",
    ],
)
def test_clean_texts_have_no_leak(text: str) -> None:
    assert leak_at(text, PLAIN_INSTRUCTIONS) is None


def test_leak_before_start_is_ignored_and_copies_need_five_words() -> None:
    text = "I won't lie: Heat is great."
    assert leak_at(text) == 0 and leak_at(text, start=5) is None
    assert leak_at("Tell me why it works.", ("Tell me why the picked movies suit me.",)) is None


def test_cut_goes_to_the_clause_start_never_below_the_floor() -> None:
    text = "You will enjoy a mix of action, comedy, and romance, but I will not suggest any other movie."
    at = leak_at(text)
    assert at is not None
    cut = clause_start(text, at)
    assert end_at(text, cut) == "You will enjoy a mix of action, comedy, and romance."
    primer = "Because you liked Heat (1995), try Contact (1997), a drama and sci-fi film"
    text = primer + " that I will not suggest."
    cut = clause_start(text, leak_at(text) or 0, floor=len(primer))
    assert cut == len(primer) and end_at(text, cut) == primer + "."


def test_attribute_claims_attach_to_the_nearest_item() -> None:
    text = (
        "Because you liked Heat (1995), try Contact (1997), a drama and horror film. Toy Story is a comedy."
    )
    got = [(c.word, c.item, c.ok) for c in claims_of(text)]
    assert got == [("drama", CONTACT, True), ("horror", CONTACT, False), ("comedy", TOY_STORY, True)]
    bad = violations(text, CHECKER.find_mentions(text), FACTS, VOCAB)
    assert [(c.category, c.item) for c in bad] == [("horror", CONTACT)]


def test_synonyms_titles_and_catalog_text() -> None:
    # "science fiction" is Sci-Fi; "War" inside "Star Wars" is a title, not a claim;
    # "mystery" is not among Contact's categories but is in its catalog text.
    text = "Star Wars (1977) is science fiction. Contact (1997) is a mystery, and a romantic western."
    got = [(c.category, c.item, c.ok) for c in claims_of(text)]
    assert got == [
        ("sci-fi", STAR_WARS, True),
        ("mystery", CONTACT, True),
        ("romance", CONTACT, False),
        ("western", CONTACT, False),
    ]
    assert claims_of("The Crying Game (1992), a war drama.")[0].category == "war"


def test_claim_without_any_item_named_is_not_counted_against_one() -> None:
    (c,) = claims_of("A horror film for tonight.")
    assert c.item is None and c.ok
    # Said after the item, in a later sentence: the last item named before it.
    (c,) = claims_of("Try Heat (1995). It is a horror film.")
    assert (c.item, c.ok) == (HEAT, False)


def test_years_are_claims_about_the_nearest_item() -> None:
    # A title's own year is part of the title; a year said of an item must be its year,
    # or written in its catalog text. Decades and other numbers are not year claims.
    text = "Because you liked Heat (1995), try Contact, from 1997. It was remastered in 2009."
    assert [(c.word, c.item, c.ok) for c in claims_of(text) if c.category == "year"] == [
        ("1997", CONTACT, True),
        ("2009", CONTACT, True),
    ]
    wrong = "Try Contact (1997), a drama from 1996, or Toy Story, from 1995."
    bad = violations(wrong, CHECKER.find_mentions(wrong), FACTS, VOCAB)
    assert [(c.word, c.item) for c in bad] == [("1996", CONTACT)]
    numbers = claims_of("Heat is a 1990s classic, 120 minutes, 12,000 fans.")
    assert [c for c in numbers if c.category == "year"] == []
