"""tools/text_eval: every text metric on hand-written texts (each can fail), the committed case
set, and a small run of the whole harness on the tiny exported model (3 cases)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recgen.core.grounding import GroundingChecker
from recgen.core.prompt import PLAIN_INSTRUCTIONS
from tools.text_eval import cases as cases_mod
from tools.text_eval.metrics import ClaimChecks, distinct_2, score_text, summarize, words

TITLES = [
    "Toy Story (1995)",
    "Heat (1995)",
    "Star Wars (1977)",
    "Fargo (1996)",
    "Scream (1996)",
    "Emma (1996)",
]
GENRES = [
    ("Animation", "Children's", "Comedy"),
    ("Action", "Crime", "Thriller"),
    ("Action", "Adventure", "Romance", "Sci-Fi", "War"),
    ("Crime", "Drama", "Thriller"),
    ("Horror", "Thriller"),
    ("Drama", "Romance"),
]
HIST, RECS = (0, 1), (3, 4)  # Toy Story, Heat liked; Fargo, Scream recommended; Star Wars, Emma not shown
CHECKER = GroundingChecker(TITLES, boundary="word")
CHECKS = ClaimChecks.build(GENRES)


def score(text: str, stop: str = "eos", intent_words: tuple[str, ...] = ()):
    return score_text(
        "c",
        text,
        stop,
        history_rows=HIST,
        rec_rows=RECS,
        intent_words=intent_words,
        instructions=PLAIN_INSTRUCTIONS,
        checker=CHECKER,
        checks=CHECKS,
    )


def test_complete_is_eos_or_length_only() -> None:
    assert score("You will enjoy Fargo.", "eos").complete
    assert score("You will enjoy Fargo and", "length").complete
    for stop in ("ungrounded", "deadline", "cancelled", "error"):
        assert not score("You will enjoy Fargo.", stop).complete


def test_grounded_fails_on_an_item_outside_the_prompt_and_on_a_cut_text() -> None:
    assert score("You will enjoy Fargo, like Heat.").grounded
    assert not score("You will enjoy Star Wars.").grounded
    # Cut by the checker: what was shown is clean, but the text named another item.
    assert not score("You will enjoy", "ungrounded").grounded


def test_names_a_recommended_item() -> None:
    assert score("You will enjoy Fargo (1996).").names_recommended
    assert score('You will enjoy "Scream" tonight').names_recommended
    assert not score("you will scream tonight").names_recommended  # a one-word title in lower case
    assert not score("You will enjoy Heat and Toy Story again.").names_recommended
    assert not score("You will enjoy these picks.").names_recommended


def test_links_need_a_recommended_item_and_the_history_or_the_intent() -> None:
    assert score("Since you liked Heat, you will enjoy Fargo.").links
    assert score("You will enjoy Scream, scary fun.", intent_words=("scary", "dark")).links
    assert score("You will enjoy Fargo, full of comedies.", intent_words=("comedy",)).links  # 5-letter stem
    assert not score("You will enjoy Fargo.").links
    assert not score("You will enjoy Fargo.", intent_words=("scary",)).links
    assert not score("Since you liked Heat and Toy Story, you will enjoy these.").links
    assert not score("You will enjoy Fargo, as you asked.", intent_words=()).links  # an injection has none


def test_instruction_leaks() -> None:
    """recgen/core/claims.py's definition: refusals and meta talk, and copies of the prompt's instructions."""
    assert score("You will enjoy Fargo. Do not name any other movie.").leaks
    assert score("I will not suggest other titles, but Fargo is good.").leaks
    assert score("You will enjoy Fargo, tell me why the picked movies fit.").leaks  # 5 words copied
    assert score("You will enjoy Fargo, as an AI I think so.").leaks
    assert score("You will enjoy Fargo, a tense story told with dark humour.").leaks == []


def test_attribute_violations() -> None:
    """recgen/core/claims.py's definition: a category word said of the nearest title, against the catalog."""
    assert score("You will enjoy Fargo, a horror film.").attribute_violations == ["horror -> Fargo"]
    assert score("You will enjoy Fargo, a crime drama.").attribute_violations == []
    assert (
        score(
            "Since you liked the animated comedy Toy Story, try Scream, a horror film."
        ).attribute_violations
        == []
    )
    assert score("Heat is a romantic comedy.").attribute_violations == ["romantic -> Heat", "comedy -> Heat"]
    assert score("A comedy night: you will enjoy these.").attribute_violations == []  # said of no title


def test_repetition_and_length() -> None:
    assert distinct_2(words("a b a b a b")) == pytest.approx(2 / 5)
    assert distinct_2(words("You will enjoy Fargo.")) == 1.0
    loop = score("You will love it, you will love it, you will love it.")
    assert loop.words == 12 and loop.distinct_2 < 0.5
    assert words("我喜欢 Fargo") == ["我", "喜", "欢", "fargo"]


def test_summarize_rates() -> None:
    s = summarize(
        [score("Since you liked Heat, you will enjoy Fargo."), score("You will enjoy Star Wars.", "eos")]
    )
    assert s["texts"] == 2 and s["grounded"] == 0.5 and s["names_recommended"] == 0.5 and s["links"] == 0.5
    assert s["complete"] == 1.0 and s["leak_texts"] == 0 and s["stop_reasons"] == {"eos": 2}


def test_committed_cases() -> None:
    cs = cases_mod.load_cases()
    assert len(cs) == cases_mod.N_CASES == 100
    assert len({c.ml_user for c in cs}) == 100 and all(len(c.history) >= cases_mod.MIN_LIKED for c in cs)
    with_intent = [c for c in cs if c.intent]
    assert len(with_intent) == 20
    assert 4 <= sum(c.adversarial for c in cs) <= 8
    assert all(c.intent_words == () for c in cs if c.adversarial)
    assert all(c.intent_words for c in with_intent if not c.adversarial)
    assert any(c.locale == "zh-CN" for c in cs)


def test_cases_regenerate_identically(wheels_dir: Path) -> None:
    assert cases_mod.build_cases(wheels_dir) == cases_mod.load_cases()


def test_harness_end_to_end_on_the_tiny_model(model_root: Path, tmp_path: Path) -> None:
    from tools.text_eval.__main__ import main

    cases_file = tmp_path / "cases.jsonl"
    cases_file.write_text("".join(ln + "\n" for ln in cases_mod.CASES_FILE.read_text().splitlines()[:3]))
    out_json, out_md = tmp_path / "text.json", tmp_path / "text.md"
    args = [
        "--models",
        str(model_root),
        "--cases",
        str(cases_file),
        "--concurrency",
        "2",
        "--c1-requests",
        "1",
    ]
    args += ["--max-new-tokens", "24", "--threads", "1", "--json", str(out_json), "--md", str(out_md)]
    args += ["--arms", "baseline,facts-first,default", "--exactness"]
    assert main(args) == 0
    res = json.loads(out_json.read_text())
    assert res["cases"] == 3 and res["rows"]
    assert [r["arm"] for r in res["rows"]] == ["baseline", "facts-first", "default"]
    row = res["rows"][2]
    # The default's prompts start with the worker's cached head; the order before it does not.
    tokens = {r["arm"]: r["prompt_tokens"] for r in res["rows"]}
    head = tokens["default"]["cached_prefix"]
    assert head > 0 and tokens["default"]["mean_fed"] == pytest.approx(tokens["default"]["mean"] - head)
    assert tokens["facts-first"]["mean_fed"] == tokens["facts-first"]["mean"]
    assert res["rows"][1]["complete"] == 1.0 and res["rows"][1]["names_recommended"] == 1.0
    # fp32: the cached head and the batching change no token against the unbatched reference.
    ex = res["exactness"]
    assert ex["precision"] == "fp32" and ex["cached_prefix_tokens"] == head
    assert all(w["identical"] == w["n"] == 3 for w in ex["ways"].values()), ex["ways"]
    assert row["texts"] == 3 and row["precision"] == "fp32" and row["config"]["check"] is True
    assert len(row["samples"]) == 3 and row["samples"][0]["recommended"]
    # The tiny model writes garbage for these prompts (it was trained on another): the baseline's
    # texts name nothing; the default's opening is written for it, naming and linking the items.
    base = res["rows"][0]
    assert (
        base["complete"] == 1.0
        and base["names_recommended"] == 0.0
        and base["config"]["constrained"] is False
    )
    assert row["complete"] == 1.0 and row["names_recommended"] == 1.0 and row["links"] == 1.0
    assert row["speed"]["c1"]["tokens"] > 0 and row["speed"]["c2"]["ttft_ms"]["n"] == 3
    md = out_md.read_text()
    assert "| arm |" in md and "## Goals" in md and "Sample texts" in md and res["command"] in md
    assert "## Exactness (fp32)" in md and "| cached @1 | 3/3 |" in md
