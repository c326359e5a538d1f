"""worker/llm/constraint.py: grounded by construction, with the after-the-fact check off.

A tiny Llama is trained here, in the test, to answer the recommendation prompt
with one fixed text that names "Fargo (1996)", a catalog title outside the
allowed set. Unconstrained it writes that title (so the test can fail);
decoded under the constraint, with the StreamGuard switched off, it never
does, by the checker's own reading of the full text, and still ends COMPLETE
(EOS or LENGTH). The catalog also holds "Star (1999)", a disallowed title that
is a word prefix of the allowed "Star Wars": the allowed title must still
come out whole (the trie continues it).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from recgen.core.grounding import GroundingChecker
from recgen.core.prompt import build_prompt, build_user_message
from worker.llm.engine import Generator
from worker.llm.grounded import SafeText, TextDone, generate_grounded

pytestmark = pytest.mark.slow

CATALOG = ["Star Wars (1977)", "Usual Suspects, The (1995)", "Fargo (1996)", "Heat (1995)", "Star (1999)"]
STAR_WARS, SUSPECTS, FARGO, HEAT, STAR = range(5)
HISTORY, RECOMMENDED = ("Star Wars (1977)",), ("Usual Suspects, The (1995)",)
ALLOWED = {STAR_WARS, SUSPECTS}
TARGET = "You liked Star Wars. You will love Fargo (1996) too. It is a great film, trust me."
COMPLETE = ("eos", "length")
MAX_NEW = 64


@pytest.fixture(scope="module")
def llm_dir(tmp_path_factory) -> Path:
    pytest.importorskip("torch")
    pytest.importorskip("optimum.exporters.onnx")
    from export.llm.onnx_export import export_llm
    from tests.llm_fixtures import train_tiny_llm

    root = tmp_path_factory.mktemp("constrained")
    ckpt = train_tiny_llm(root, TARGET, history=HISTORY, recommended=RECOMMENDED)
    export_llm(ckpt, root / "llm", wheels_dir=root / "no-wheels", quantize="none", progress=False)
    return root / "llm"


@pytest.fixture(scope="module")
def checker() -> GroundingChecker:
    return GroundingChecker(CATALOG, boundary="word")


def _prompt(gen: Generator) -> str:
    return build_prompt(gen.config, build_user_message(list(HISTORY), list(RECOMMENDED)))


async def _text(gen: Generator, checker: GroundingChecker, allowed: set[int], **kw) -> TextDone:
    shown = []
    async for ev in generate_grounded(gen, checker, _prompt(gen), allowed, **kw):
        if isinstance(ev, SafeText):
            shown.append(ev.text)
        else:
            assert isinstance(ev, TextDone)
            assert "".join(shown) == ev.text
            return ev
    raise AssertionError("no TextDone")


def _named(checker: GroundingChecker, text: str) -> set[int]:
    return {c for m in checker.find_mentions(text) for c in m.candidates}


def test_unconstrained_model_names_the_unlisted_title(llm_dir, checker):
    with Generator(llm_dir, threads=1) as gen:
        done = asyncio.run(
            _text(gen, checker, ALLOWED, max_new_tokens=MAX_NEW, constrained=False, check=False)
        )
    assert done.text == TARGET  # the model learned its line
    assert FARGO in _named(checker, done.text) and not checker.check(done.text, ALLOWED).ok


def test_constrained_decoder_never_names_it_and_ends_complete(llm_dir, checker):
    with Generator(llm_dir, threads=1) as gen:
        done = asyncio.run(_text(gen, checker, ALLOWED, max_new_tokens=MAX_NEW, check=False))
        checked = asyncio.run(_text(gen, checker, ALLOWED, max_new_tokens=MAX_NEW))
    assert done.stop_reason in COMPLETE, done
    assert checker.check(done.text, ALLOWED).ok, done.text
    assert FARGO not in _named(checker, done.text) and "Fargo" not in done.text
    # The allowed title still comes out whole, though "Star" alone is a disallowed title.
    assert done.text.startswith("You liked Star Wars. You will love")
    assert STAR_WARS in _named(checker, done.text)
    # With the check on as well, it has nothing to cut: the same text, COMPLETE.
    assert checked.stop_reason == done.stop_reason and checked.text == done.text


def test_rows_with_different_allowed_sets_share_decode_steps(llm_dir, checker):
    cases = [ALLOWED, ALLOWED | {FARGO}, {SUSPECTS}, {HEAT}]

    async def main(gen: Generator) -> list[TextDone]:
        runs = [_text(gen, checker, a, max_new_tokens=MAX_NEW, check=False) for a in cases]
        runs.append(_text(gen, checker, ALLOWED, max_new_tokens=MAX_NEW, constrained=False, check=False))
        return await asyncio.gather(*runs)

    with Generator(llm_dir, threads=1) as gen:
        batched = asyncio.run(main(gen))
        assert gen.stats().max_rows_per_step == len(cases) + 1  # all in one decode step
        alone = [asyncio.run(_text(gen, checker, a, max_new_tokens=MAX_NEW, check=False)) for a in cases]
    for allowed, done, ref in zip(cases, batched[: len(cases)], alone, strict=True):
        assert done.stop_reason in COMPLETE and checker.check(done.text, allowed).ok, (allowed, done)
        assert done.text == ref.text  # a row's text does not depend on its neighbours
    assert batched[1].text == TARGET  # everything it names is allowed: untouched
    assert _named(checker, batched[2].text) <= {SUSPECTS}  # not even "Star" or "Star Wars"
    assert batched[-1].text == TARGET  # an unconstrained row in the same step


def test_every_length_and_seed_ends_grounded(llm_dir, checker):
    """Cut anywhere (max_new_tokens 1..40, a title may be half written) or sampled:
    the text is grounded and COMPLETE, and a seed gives the same text twice."""

    async def main(gen: Generator) -> list[TextDone]:
        greedy = [_text(gen, checker, ALLOWED, max_new_tokens=n, check=False) for n in range(1, 41)]
        sampled = [
            _text(gen, checker, ALLOWED, max_new_tokens=40, check=False, temperature=1.5, seed=s)
            for s in (1, 2, 3, 4, 1)
        ]
        return await asyncio.gather(*greedy, *sampled)

    with Generator(llm_dir, threads=1, max_seqs=64) as gen:
        results = asyncio.run(main(gen))
    for done in results:
        assert done.stop_reason in COMPLETE, done
        assert checker.check(done.text, ALLOWED).ok, done.text
    assert results[-1].text == results[-5].text  # seed 1 twice
