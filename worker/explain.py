"""The text that presents a recommendation: prompt, grounded generation, and what may be shown.

One path for the servicer (worker/service.py Generate) and the offline
evaluation (tools/text_eval): `plan_text` picks the items, the language and
the prompt; `explain` streams the model's text through the grounding check
(worker/llm/grounded.py) and then through a second gate that holds the text
back to sentence ends and cuts it at the first instruction leak or attribute
claim the catalog does not hold (recgen/core/claims.py).

Styles. "outline" (the default): the answer's opening is ours ("Because you
liked Star Wars (1977), try Contact (1997), a drama and sci-fi film", shown
at once) and the model continues it from the catalog facts in the prompt
(recgen/core/explain_outline.py). "plain": today's baseline prompt and primer
("You will enjoy"), unchanged, for before/after comparisons; the gate is off for
it unless `TextOptions.cut` says otherwise. `constrained` and `check` go to
`generate_grounded` as they are. Design and measurements: docs/llm.md.

A cut text ends at the clause before the problem with a full stop, never
inside our own opening; it ends with StopReason.EOS (the text is finished, not
truncated) and the reason says what was removed ("instruction leak removed",
"unsupported claim removed: ..."). A cut after another stop (ungrounded, deadline)
keeps that stop reason.

Locales. A text is written in Chinese only when the locale asks for it (zh-*)
and the version's llm.json declares it ("locales": ["en", "zh"]); otherwise it
is English and `TextPlan.notice` says so (the gateway shows it as text_reason).

This module builds no protobuf and knows nothing of gRPC.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Literal

from recgen.core.claims import (
    ItemClaimFacts,
    Vocabulary,
    clause_start,
    end_at,
    leak_at,
    sentence_ends,
    violations,
)
from recgen.core.explain_outline import ZH, ItemFacts, build_outline, nearest_history
from recgen.core.grounding import GroundingChecker
from recgen.core.prompt import PLAIN_INSTRUCTIONS, RESPONSE_PRIMER, build_prompt, build_user_message
from recgen.core.titles import split_title
from worker.llm.api import StopReason
from worker.llm.grounded import SafeText, TextDone, TextEvent, generate_grounded
from worker.model import LoadedModel

LOG = logging.getLogger(__name__)

SHOW_HISTORY = 3  # history items the text may link (most recent first)
SHOW_RECOMMENDED = 3  # recommended items the text may name (best first)
EXAMPLE_POOL = 50  # the most popular items, where facts-only examples come from
WRITTEN = ("en", ZH)  # languages a prompt exists for
LANGUAGE_NAMES = {ZH: "Chinese"}  # asked for but not written: the text says so (text_reason)


class NoLanguageModel(Exception):
    """The model version has no language model."""


class NoItemToPresent(ValueError):
    """None of the recommended items is in this version's catalog."""


class PromptTooLong(Exception):
    """The prompt alone fills the language model's context."""


@dataclass(frozen=True)
class TextOptions:
    style: Literal["outline", "plain"] = "outline"  # plain: the baseline prompt and primer
    constrained: bool = True  # decode under the title constraint (worker/llm/grounded.py)
    check: bool = True  # the grounding check on the stream (worker/llm/grounded.py)
    cut: bool | None = None  # cut leaks and unsupported claims; None: on for outline, off for plain
    opening: bool = True  # outline: we write the answer's opening; False: the model writes it all
    examples: int = 0  # facts-only examples in the outline (measured: they hurt SmolLM2-135M)
    also: int = 0  # further recommendations whose facts the outline lists
    shared_first: bool = (
        True  # outline: the shared head first (False: the prompt before it, see build_outline)
    )
    max_new_tokens: int = 48
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int = 0

    @property
    def cuts(self) -> bool:
        return self.cut if self.cut is not None else self.style == "outline"


@dataclass(frozen=True)
class TextPlan:
    """Everything decided before the model runs."""

    prompt: str
    primer: str  # the answer's first words, at the end of the prompt; shown first
    allowed: frozenset[int]  # rows the text may name (history and recommendations shown)
    instructions: tuple[str, ...]  # the prompt's instruction sentences (leak check)
    facts: dict[int, ItemClaimFacts]  # what the catalog holds of each allowed row
    language: str  # "en" or "zh": the language the prompt asks for
    notice: str = ""  # for the caller, e.g. that the text is English although zh was asked
    floor: int = 0  # chars of the primer shown at once and never cut


def text_language(locale: str, declared: Sequence[str]) -> tuple[str, str]:
    """(language to write, notice): the locale's language if the model declares it and a
    prompt exists for it; else English, with a notice for a language callers are told
    about (LANGUAGE_NAMES: Chinese). Other locales get English silently, as before."""
    lang = locale.replace("_", "-").split("-")[0].strip().lower()
    if lang in WRITTEN and lang in declared:
        return lang, ""
    if lang in LANGUAGE_NAMES:
        return "en", f"answered in English: this model version does not write {LANGUAGE_NAMES[lang]}"
    return "en", ""


@functools.lru_cache(maxsize=8)
def _vocabulary(categories: frozenset[str]) -> Vocabulary:
    return Vocabulary(categories)


def _facts(model: LoadedModel, row: int) -> ItemFacts:
    it = model.catalog[row]
    return ItemFacts(it.title, tuple(it.categories), it.text)


def _example(model: LoadedModel, exclude: set[int]) -> tuple[ItemFacts, ItemFacts] | None:
    """Two popular items outside the answer that share a category, as (liked, picked)."""
    pool = [int(r) for r in model.ranker.pop_order[:EXAMPLE_POOL] if int(r) not in exclude]
    for a in pool:
        for b in pool:
            if a != b and set(model.catalog[a].categories) & set(model.catalog[b].categories):
                return _facts(model, a), _facts(model, b)
    return None


def plan_text(
    model: LoadedModel,
    history_rows: Sequence[int],
    rec_rows: Sequence[int],
    intent: str = "",
    locale: str = "",
    opts: TextOptions = TextOptions(),
) -> TextPlan:
    """The prompt for presenting `rec_rows` (best first) to a user with `history_rows`
    (most recent first). Raises NoLanguageModel, or NoItemToPresent without recommendations."""
    if model.llm is None or model.llm_cfg is None:
        raise NoLanguageModel(f"model version {model.name} has no language model")
    hist = [int(r) for r in history_rows][:SHOW_HISTORY]
    recs = [int(r) for r in rec_rows][:SHOW_RECOMMENDED]
    if not recs:
        raise NoItemToPresent("recommended_item_ids has no item of this catalog")
    allowed = frozenset(hist) | frozenset(recs)
    facts = {r: _claim_facts(model, r) for r in allowed}
    declared = tuple(model.llm_cfg.get("locales", ("en",)))
    lang, notice = text_language(locale, declared)
    if opts.style == "plain":
        if lang != "en":
            lang, notice = "en", "answered in English: the plain style writes English only"
        titles = [model.catalog[r].title for r in hist], [model.catalog[r].title for r in recs]
        message = build_user_message(*titles, intent)
        prompt = build_prompt(model.llm_cfg, message, RESPONSE_PRIMER)
        return TextPlan(prompt, RESPONSE_PRIMER, allowed, PLAIN_INSTRUCTIONS, facts, lang, notice, 0)
    hf, rf = [_facts(model, r) for r in hist], [_facts(model, r) for r in recs]
    unit = model.ranker.unit
    liked = nearest_history(unit[recs[0]], unit[hist] if hist else None, rf[0], hf)
    example = _example(model, set(allowed)) if opts.examples > 0 else None
    outline = build_outline(
        hf,
        rf,
        intent,
        liked=liked,
        example=example,
        also=opts.also,
        locale=lang,
        shared_first=opts.shared_first,
    )
    primer = outline.primer if opts.opening else ""
    prompt = build_prompt(model.llm_cfg, outline.message, primer)
    return TextPlan(prompt, primer, allowed, outline.instructions, facts, lang, notice, len(primer))


def _claim_facts(model: LoadedModel, row: int) -> ItemClaimFacts:
    it = model.catalog[row]
    return ItemClaimFacts(tuple(it.categories), it.text, split_title(it.title)[2])


class _ShownText:
    """The gate after the grounding check: releases the opening at once, then whole
    sentences only once they hold no instruction leak and no unsupported claim."""

    def __init__(
        self, plan: TextPlan, checker: GroundingChecker, vocabulary: Vocabulary, check: bool
    ) -> None:
        self.plan, self.checker, self.vocabulary, self.check = plan, checker, vocabulary, check
        self.text = ""  # everything the grounding check released
        self.released = 0  # chars of `text` shown
        self.cut_reason = ""  # set once the text was cut; nothing more is shown
        self._cut_text = ""

    @property
    def shown(self) -> str:
        return self.text[: self.released] if not self.cut_reason else self._cut_text

    def _problem(self, upto: int) -> tuple[int, str] | None:
        """(position, reason) of the first problem in text[:upto], or None."""
        if not self.check:
            return None
        text = self.text[:upto]
        found = []
        leak = leak_at(text, self.plan.instructions, self.plan.floor)
        if leak is not None:
            found.append((leak, "instruction leak removed"))
        mentions = self.checker.find_mentions(text)
        for c in violations(text, mentions, self.plan.facts, self.vocabulary):
            if c.start >= self.plan.floor:
                title = self.checker.titles[c.item] if c.item is not None else "?"
                found.append((c.start, f"unsupported claim removed: {c.word!r} for {title}"))
                break
        return min(found) if found else None

    def feed(self, piece: str, *, final: bool = False) -> str:
        """New text from the grounding check -> the text that may be shown now."""
        if self.cut_reason:
            return ""
        self.text += piece
        if final:
            upto = len(self.text)
        else:
            ends = [e for e in sentence_ends(self.text) if e < len(self.text)]  # a space follows
            upto = max([self.plan.floor, *ends]) if ends else min(self.plan.floor, len(self.text))
        problem = self._problem(upto)
        if problem is not None:
            pos, self.cut_reason = problem
            cut = max(clause_start(self.text, pos, self.plan.floor), self.released)
            self._cut_text = end_at(self.text, cut)
            if not self._cut_text.startswith(self.text[: self.released]):  # never unsay shown text
                self._cut_text = self.text[: self.released]
            out = self._cut_text[self.released :]
            self.released = len(self._cut_text)
            return out
        upto = min(upto, len(self.text))
        if upto <= self.released:
            return ""
        out = self.text[self.released : upto]
        self.released = upto
        return out


async def explain(
    model: LoadedModel,
    history_rows: Sequence[int],
    rec_rows: Sequence[int],
    intent: str = "",
    locale: str = "",
    opts: TextOptions = TextOptions(),
    deadline: float | None = None,
    *,
    plan: TextPlan | None = None,
) -> AsyncIterator[TextEvent]:
    """SafeText pieces that may be shown, then one TextDone whose text is all of them.

    history_rows: most recent first; rec_rows: best first. plan: `plan_text`'s for
    these arguments, when the caller made it already (to read its notice).
    Raises NoLanguageModel, NoItemToPresent, PromptTooLong, or what
    Generator.submit raises (QueueFull) before the first event. Stopping early
    cancels the generation."""
    if plan is None:
        plan = plan_text(model, history_rows, rec_rows, intent, locale, opts)
    llm, checker = model.llm, model.checker
    if llm is None or checker is None:
        raise NoLanguageModel(f"model version {model.name} has no language model")
    max_new = min(opts.max_new_tokens, llm.room_for(plan.prompt))
    if max_new < 1:
        raise PromptTooLong("the prompt alone fills the language model's context")
    gate = _ShownText(plan, checker, _vocabulary(frozenset(model.categories)), opts.cuts)
    stream: AsyncGenerator[TextEvent, None] = generate_grounded(  # type: ignore[assignment]
        llm,
        checker,
        plan.prompt,
        plan.allowed,
        primer=plan.primer,
        constrained=opts.constrained,
        check=opts.check,
        max_new_tokens=max_new,
        temperature=opts.temperature,
        top_p=opts.top_p or 1.0,
        seed=opts.seed,
        deadline=deadline,
    )
    async with contextlib.aclosing(stream):
        async for ev in stream:
            if isinstance(ev, SafeText):
                out = gate.feed(ev.text)
                if out:
                    yield SafeText(out)
                if gate.cut_reason:  # leaving the loop closes the stream: the generation stops
                    tokens = len(llm.encode(gate.text[len(plan.primer) :]))
                    yield _done(gate, StopReason.EOS, "", tokens)
                    return
                continue
            assert isinstance(ev, TextDone)
            out = gate.feed("", final=True)
            if out:
                yield SafeText(out)
            yield _done(gate, ev.stop_reason, ev.reason, ev.tokens, ev)
            return


def _done(
    gate: _ShownText, stop: StopReason, reason: str, tokens: int, ev: TextDone | None = None
) -> TextDone:
    violation = ev.violation if ev is not None else None
    if gate.cut_reason:
        LOG.info("text cut: %s", gate.cut_reason)
        if stop in (StopReason.EOS, StopReason.LENGTH):
            stop, reason = StopReason.EOS, gate.cut_reason
        else:
            reason = f"{reason}; {gate.cut_reason}"
    return TextDone(stop, reason, gate.shown, tokens, violation)
