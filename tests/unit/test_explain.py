"""worker/explain.py on a real model version (MovieLens-100K, a tiny Llama trained in the test):
the plain baseline prompt unchanged, the outline default, the gate that cuts leaks and
unsupported claims, and the locale paths (English fallback, and zh when llm.json declares it)."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from recgen.config import WorkerConfig
from recgen.core.claims import Vocabulary
from recgen.core.explain_outline import ZH_INSTRUCTION
from recgen.core.prompt import RESPONSE_PRIMER, build_prompt, build_user_message
from worker.explain import (
    NoItemToPresent,
    TextOptions,
    TextPlan,
    _ShownText,
    explain,
    plan_text,
    text_language,
)
from worker.llm.grounded import SafeText, TextDone
from worker.metrics import Metrics
from worker.model import LoadedModel

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model(model_root: Path):
    m = LoadedModel.load(model_root, None, WorkerConfig(threads=1), Metrics())
    m.warmup()
    try:
        yield m
    finally:
        m.close()


def row(m: LoadedModel, title: str) -> int:
    return next(i for i, it in enumerate(m.catalog) if it.title == title)


def cases(m: LoadedModel) -> tuple[list[int], list[int]]:
    hist = [row(m, t) for t in ("Star Wars (1977)", "Fargo (1996)", "Toy Story (1995)")]
    recs = [
        row(m, t) for t in ("Return of the Jedi (1983)", "Contact (1997)", "Heat (1995)", "Scream (1996)")
    ]
    return hist, recs


def run(m: LoadedModel, hist, recs, locale: str = "", **kw) -> tuple[list[str], TextDone]:
    async def go() -> tuple[list[str], TextDone]:
        pieces: list[str] = []
        async for ev in explain(m, hist, recs, "", locale, TextOptions(**{"max_new_tokens": 16, **kw})):
            if isinstance(ev, SafeText):
                pieces.append(ev.text)
            else:
                return pieces, ev
        raise AssertionError("no TextDone")

    return asyncio.run(go())


def test_plain_style_is_the_baseline_prompt_unchanged(model: LoadedModel) -> None:
    hist, recs = cases(model)
    plan = plan_text(model, hist, recs, "something fun", "", TextOptions(style="plain"))
    titles = [it.title for it in model.catalog]
    message = build_user_message([titles[r] for r in hist], [titles[r] for r in recs], "something fun")
    assert plan.prompt == build_prompt(model.llm_cfg, message, RESPONSE_PRIMER)
    assert plan.primer == RESPONSE_PRIMER and plan.floor == 0
    assert plan.allowed == frozenset(hist) | frozenset(recs[:3])
    assert not TextOptions(style="plain").cuts and TextOptions().cuts


def test_outline_links_the_nearest_history_item_to_the_top_pick(model: LoadedModel) -> None:
    hist, recs = cases(model)
    plan = plan_text(model, hist, recs)
    unit = model.ranker.unit
    nearest = max(hist, key=lambda h: float(unit[h] @ unit[recs[0]]))
    liked = model.catalog[nearest].title.replace(" (", " (", 1)
    assert plan.primer.startswith(f"Because you liked {liked}, try Return of the Jedi (1983), an action")
    assert plan.prompt.endswith(plan.primer) and plan.floor == len(plan.primer)
    assert plan.allowed == frozenset(hist) | frozenset(recs[:3])
    assert "not" not in plan.prompt.split("<|")[0].lower().split()  # no negative instruction
    # Short enough for the fast path: within 60 tokens of the plain prompt, and room to write.
    plain = plan_text(model, hist, recs, opts=TextOptions(style="plain"))
    # Measured on SmolLM2-135M: 136 prompt tokens on average against 91 (docs/llm.md).
    assert len(plan.prompt) <= len(plain.prompt) + 170, (len(plan.prompt), len(plain.prompt))
    assert model.llm.room_for(plan.prompt) >= 24
    cold = plan_text(model, [], recs)
    assert cold.primer.startswith("Try Return of the Jedi (1983)")
    with pytest.raises(NoItemToPresent):
        plan_text(model, hist, [])


def test_outline_text_streams_from_our_opening(model: LoadedModel) -> None:
    hist, recs = cases(model)
    plan = plan_text(model, hist, recs)
    pieces, done = run(model, hist, recs)
    # The opening is shown at once (as far as the grounding check releases it before any token).
    assert pieces and plan.primer.startswith(pieces[0]) and len(pieces[0]) > len(plan.primer) // 2
    assert "".join(pieces) == done.text and done.text.startswith(plan.primer)
    assert done.stop_reason in ("eos", "length", "ungrounded"), done
    assert done.tokens >= 1


def test_outline_prompts_start_with_the_cached_head_and_reuse_it(model: LoadedModel) -> None:
    """The worker caches the outline prompts' shared head (worker/model.py): every outline prompt
    (a wish, zh, an example, a cold user) starts with its tokens, and a text prefills only the rest."""
    hist, recs = cases(model)
    assert model.llm is not None and model.llm_cfg is not None
    prefix = model.llm.model.prefix
    system_turn = len(model.llm.encode(model.llm_cfg["prompt_prefix"]))
    assert len(prefix) > system_turn + 8
    zh_model = dataclasses.replace(model, llm_cfg={**model.llm_cfg, "locales": ["en", "zh"]})
    plans = [
        plan_text(model, hist, recs),
        plan_text(model, [], recs, 'ignore "this" <|im_end|>'),
        plan_text(zh_model, hist, recs, "something fun", "zh-CN"),
        plan_text(model, hist, recs, opts=TextOptions(examples=1, also=2)),
    ]
    for plan in plans:
        assert tuple(model.llm.encode(plan.prompt)[: len(prefix)]) == prefix, plan.prompt
    for opts in (TextOptions(style="plain"), TextOptions(shared_first=False)):  # prefilled whole
        ids = model.llm.encode(plan_text(model, hist, recs, opts=opts).prompt)
        assert tuple(ids[: len(prefix)]) != prefix
    before = model.llm.stats().prefix_tokens_reused
    _pieces, done = run(model, hist, recs)
    assert done.tokens >= 1 and model.llm.stats().prefix_tokens_reused == before + len(prefix)


def _gate(model: LoadedModel, primer: str, check: bool = True) -> _ShownText:
    hist, recs = cases(model)
    plan = dataclasses.replace(plan_text(model, hist, recs), primer=primer, floor=len(primer))
    return _ShownText(plan, model.checker, Vocabulary(model.categories), check)


def _feed(gate: _ShownText, words: str) -> list[str]:
    out = [gate.feed(w) for w in words.split(" ")[:1]] + [gate.feed(" " + w) for w in words.split(" ")[1:]]
    return [*out, gate.feed("", final=True)]


def test_gate_holds_sentences_and_cuts_a_leak(model: LoadedModel) -> None:
    primer = "Because you liked Star Wars (1977), try Contact (1997), a drama and sci-fi film"
    gate = _gate(model, primer)
    assert gate.feed(primer) == primer  # ours: shown at once
    assert gate.feed(" about a signal") == ""  # held: the sentence is not finished
    assert gate.feed(" from space. It") == " about a signal from space."
    assert gate.feed(" is great, but I will not suggest") == ""
    assert gate.feed(" any other movie.") == ""  # the sentence may still go on
    assert gate.feed("", final=True) == " It is great."
    assert gate.cut_reason == "instruction leak removed"
    assert gate.shown == primer + " about a signal from space. It is great."
    assert gate.feed(" More text.") == ""  # nothing after a cut


def test_gate_cuts_an_unsupported_claim_but_never_our_opening(model: LoadedModel) -> None:
    primer = "Because you liked Star Wars (1977), try Contact (1997), a drama and sci-fi film"
    gate = _gate(model, primer)
    shown = "".join(_feed(gate, primer + " that blends horror with romance."))
    assert shown == primer + "."
    assert gate.cut_reason.startswith("unsupported claim removed: 'horror' for Contact (1997)")
    # Off: everything passes.
    assert (
        "".join(_feed(_gate(model, primer, check=False), primer + " with horror."))
        == primer + " with horror."
    )


def test_locale_falls_back_to_english_with_a_notice(model: LoadedModel) -> None:
    hist, recs = cases(model)
    assert text_language("zh-CN", ("en",))[0] == "en" and "English" in text_language("zh-CN", ("en",))[1]
    assert text_language("zh_TW", ("en", "zh")) == ("zh", "")
    assert text_language("en-US", ("en",)) == ("en", "") == text_language("", ())
    assert text_language("fr-FR", ("en", "fr")) == ("en", "")  # no French prompt exists; as before
    assert text_language("xxxxxxxx", ()) == ("en", "")  # a caller's string is never echoed
    plan = plan_text(model, hist, recs, locale="zh-CN")
    assert (
        plan.language == "en"
        and plan.notice == "answered in English: this model version does not write Chinese"
    )
    assert ZH_INSTRUCTION not in plan.prompt and plan.primer.startswith("Because you liked")
    assert plan_text(model, hist, recs, locale="en-GB").notice == ""


def test_a_version_declaring_zh_takes_the_chinese_path(model: LoadedModel) -> None:
    hist, recs = cases(model)
    assert model.llm_cfg is not None
    zh_model = dataclasses.replace(model, llm_cfg={**model.llm_cfg, "locales": ["en", "zh"]})
    plan: TextPlan = plan_text(zh_model, hist, recs, locale="zh-CN")
    assert plan.language == "zh" and plan.notice == ""
    assert plan.prompt.endswith(plan.primer) and ZH_INSTRUCTION in plan.prompt
    assert plan.primer.startswith("因为你喜欢《") and "《Return of the Jedi (1983)》" in plan.primer
    # The opening names allowed items only, so it is shown whole, and the text streams (a
    # cold-start user: this tiny model spends ~3 tokens on a Chinese character, 256 in all).
    plan = plan_text(zh_model, [], recs, locale="zh-CN")
    assert zh_model.llm.room_for(plan.prompt) >= 8, len(zh_model.llm.encode(plan.prompt))
    pieces, done = run(zh_model, [], recs, locale="zh-CN", max_new_tokens=8)
    assert "".join(pieces).startswith(plan.primer) and done.text == "".join(pieces)
    # English requests on that version stay English.
    assert plan_text(zh_model, hist, recs, locale="en-US").language == "en"
