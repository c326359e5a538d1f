"""Grounded by construction: a per-row decoding constraint that never lets a text name a
catalog item outside the request's allowed set.

"Names an item" means what recgen/core/grounding.py's `GroundingChecker` says
it means (titles with or without year or article, weak one-word titles only
when capitalised / quoted / followed by a year, ...). Re-implementing those
rules over tokens would drift from the checker, so the constraint asks the
checker itself, incrementally, as `StreamGuard` does:

* verify (exact, every step). A row's candidate token is accepted only if the
  text it makes (`IncrementalDecoder.peek`) keeps one of two states:
  **clean**, the checker's *final* scan of the text finds no mention outside
  `allowed` (the text could end right here: EOS is always allowed), or
  **inside an allowed title**: the final scan does find one (the "Batman" of
  "Batman Returns" when only the latter is allowed), the non-final scan has
  settled none (nothing after it can turn it grounded otherwise), and the
  text from a word start before that mention is a proper prefix
  (case-insensitive) of an allowed title's form, whose rest can be spelled in
  the tokens left and, appended, gives a clean text (checked once, on the
  decoded text). A token that leaves an invalid byte sequence (shown as
  U+FFFD) is rejected too. A rejected token is masked and the row re-chooses
  (`MAX_REPICKS`, same seeded generator); then the fallback is EOS when clean,
  else the next token of the verified spelling of the allowed title. The last
  token of max_new_tokens must leave the text clean. So a text that ends by
  EOS or LENGTH passes `checker.check(text, allowed)`: UNGROUNDED cannot
  happen, whatever the prompt or intent asked for.
* trie (steering). While a row is inside an allowed title, its logits are
  masked to the tokens whose text is a prefix of the title's rest: a
  character trie over the title, walked against the tokenizer's table of
  token texts (`TitleVocabulary`), so only the token sequences of allowed
  titles can continue it, and EOS cannot cut it.

Cost per decode step: one pass over the rows with a constraint; per row one
`peek` (two short decodes) and one checker scan of the unsettled tail (a few
words × the longest title); the rare rejected rows re-choose on their own
logits row only. The mask and the re-choice are numpy over the rows concerned.
The per-version structures are the checker (built at model load) and the
token table (built once per `Generator`); per request only the allowed titles'
forms are listed. The table decodes tokens one at a time: a tokenizer whose
decoder drops a word-initial space (Metaspace) spells fewer titles, which only
makes the steering stricter, never the verification wrong.

This module does not run the model or stream text; worker/llm/engine.py calls
`choose_constrained` where it would call `choose`.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer

from recgen.core.grounding import GroundingChecker
from recgen.core.titles import TOKEN_RE, display_title, split_title
from worker.llm.decoding import IncrementalDecoder, choose

LOG = logging.getLogger(__name__)

MAX_REPICKS = 8  # re-choices of a rejected row before its fallback


class TitleVocabulary:
    """The tokenizer's token texts, to spell a title's rest in tokens (built once per model)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        n = tokenizer.get_vocab_size()
        texts = tokenizer.decode_batch([[i] for i in range(n)], skip_special_tokens=True)
        self.by_text: dict[str, list[int]] = {}  # token text -> ids (complete characters only)
        for i, t in enumerate(texts):
            if t and "\ufffd" not in t:
                self.by_text.setdefault(t, []).append(i)
        self.max_len = max(map(len, self.by_text), default=0)

    def prefixes(self, rest: str) -> list[int]:
        """Ids of the tokens whose text is a prefix of `rest`."""
        out: list[int] = []
        for k in range(1, min(len(rest), self.max_len) + 1):
            out += self.by_text.get(rest[:k], ())
        return out

    def spell(self, rest: str) -> list[int] | None:
        """`rest` as tokens, longest token first; None when some character has no token."""
        out, i = [], 0
        while i < len(rest):
            for k in range(min(len(rest) - i, self.max_len), 0, -1):
                ids = self.by_text.get(rest[i : i + k])
                if ids:
                    out.append(ids[0])
                    i += k
                    break
            else:
                return None
        return out


@dataclass(frozen=True)
class Verdict:
    ok: bool
    path: list[int] | None = None  # inside an allowed title: tokens that finish it (verified)
    rests: tuple[str, ...] = ()  # the allowed titles' rests it may continue with


_REJECT = Verdict(False)
_CLEAN = Verdict(True)


class TitleConstraint:
    """One request's constraint: the allowed items, and the text generated so far.

    checker: the model version's; vocab: the Generator's `vocab`; allowed:
    catalog rows the text may name; primer: the answer's first words, already
    in the prompt (checked like the rest of the text).
    """

    def __init__(
        self, checker: GroundingChecker, vocab: TitleVocabulary, allowed: Collection[int], primer: str = ""
    ) -> None:
        self.checker, self.vocab = checker, vocab
        self.allowed = frozenset(allowed)
        forms: dict[str, str] = {}
        for row in sorted(self.allowed):
            if 0 <= row < len(checker.titles):
                title = checker.titles[row]
                name = split_title(title)[0]
                for f in (display_title(title), display_title(title, keep_year=True), name, title):
                    forms.setdefault(f.lower(), f)
        self.forms = [(low, f) for low, f in forms.items() if len(low) == len(f)]  # (lowercased, as written)
        self.text = primer  # what was emitted, primer included
        self.pos = 0  # the checker's scan has settled text[:pos]
        self.continuations: list[int] | None = None  # inside an allowed title: its next tokens
        self.path: list[int] | None = None  # ... and the verified tokens that finish it
        self.repicks = 0  # rejected candidates, over the request
        self._last = _CLEAN  # the verdict on the last candidate judged (the one chosen)

    def _grounded(self, text: str) -> tuple[bool, int]:
        """(no mention outside `allowed` if the text ended here, start of the first bad one)."""
        mentions, _ = self.checker.scan(text, self.pos, final=True)
        bad = next((m for m in mentions if not m.grounded_in(self.allowed)), None)
        return bad is None, -1 if bad is None else bad.start

    def judge(self, detok: IncrementalDecoder, token: int, eos: bool, budget: int) -> Verdict:
        """Accept `token` as the row's next? budget: tokens that may still follow it."""
        if eos:
            v = _CLEAN if self._grounded(self.text + detok.peek([]))[0] else _REJECT
        else:
            v = self._judge(detok, token, budget)
        self._last = v
        return v

    def _judge(self, detok: IncrementalDecoder, token: int, budget: int) -> Verdict:
        piece = detok.peek([token])
        if "\ufffd" in piece:  # bytes that cannot become a character: never shown text
            return _REJECT
        text = self.text + piece
        ok, bad_start = self._grounded(text)
        if ok:
            return _CLEAN
        if budget <= 0:
            return _REJECT
        settled, _ = self.checker.scan(text, self.pos, final=False)
        if any(not m.grounded_in(self.allowed) for m in settled):
            return _REJECT
        best: list[int] | None = None
        rests = []
        for w in TOKEN_RE.finditer(text, self.pos):
            if w.start() > bad_start:
                break
            seg = text[w.start() :].lower()
            for low, form in self.forms:
                if len(low) > len(seg) and low.startswith(seg):
                    rest = form[len(seg) :]
                    path = self.vocab.spell(rest)
                    if path is None or len(path) > budget:
                        continue
                    if not self._grounded(self.text + detok.peek([token, *path]))[0]:
                        continue
                    rests.append(rest)
                    best = path if best is None or len(path) < len(best) else best
        return _REJECT if best is None else Verdict(True, best, tuple(rests))

    def fallback(self, eos_token: int) -> int:
        """The row's token when every choice was rejected: EOS when clean, else the title's next."""
        return self.path[0] if self.path else eos_token

    def accept(self, piece: str) -> None:
        """The chosen token was pushed and `piece` emitted: advance the scan and the title state."""
        self.text += piece
        _, self.pos = self.checker.scan(self.text, self.pos, final=False)
        v = self._last
        self.path = v.path
        self.continuations = None
        if v.path is not None:
            self.continuations = sorted({t for r in v.rests for t in self.vocab.prefixes(r)})


def choose_constrained(
    logits: np.ndarray,
    temperature: np.ndarray,
    top_p: np.ndarray,
    rngs: list[np.random.Generator],
    constraints: list[TitleConstraint | None],
    detoks: list[IncrementalDecoder],
    budgets: np.ndarray,
    eos_tokens: tuple[int, ...],
) -> np.ndarray:
    """(B, V) logits -> (B,) next tokens, as `choose`, for rows with a constraint under it.

    Modifies `logits` in place (masked entries -inf). budgets: (B,) tokens that
    may follow this one per row. Rows without a constraint are chosen as by `choose`.
    """
    rows = [i for i, c in enumerate(constraints) if c is not None]
    for i in rows:  # the trie: inside an allowed title only its tokens continue it
        allow = constraints[i].continuations  # type: ignore[union-attr]
        if allow is not None:
            keep = logits[i, allow]
            logits[i] = -np.inf
            logits[i, allow] = keep
    tokens = choose(logits, temperature, top_p, rngs)
    eos = frozenset(eos_tokens)
    pending = rows
    for attempt in range(MAX_REPICKS + 1):
        bad = []
        for i in pending:
            c, t = constraints[i], int(tokens[i])
            assert c is not None
            if not c.judge(detoks[i], t, t in eos, int(budgets[i])).ok:
                c.repicks += 1
                bad.append(i)
        if not bad:
            break
        idx = np.array(bad)
        logits[idx, tokens[idx]] = -np.inf
        spent = np.isneginf(logits[idx]).all(axis=1) | (attempt == MAX_REPICKS)  # no choice left
        for i in idx[spent].tolist():
            tokens[i] = _fallback(constraints[i], detoks[i], int(budgets[i]), eos_tokens)  # type: ignore[arg-type]
        idx = idx[~spent]
        if not idx.size:
            break
        pending = idx.tolist()
        sampled = rngs and bool((temperature[idx] > 0).any())
        tokens[idx] = choose(
            logits[idx], temperature[idx], top_p[idx], [rngs[i] for i in pending] if sampled else []
        )
    return tokens


def _fallback(c: TitleConstraint, detok: IncrementalDecoder, budget: int, eos_tokens: tuple[int, ...]) -> int:
    token = c.fallback(eos_tokens[0])
    if not c.judge(detok, token, token in eos_tokens, budget).ok:  # cannot happen for a sound tokenizer
        LOG.warning("constraint fallback %d rejected; ending the text", token)
        c.judge(detok, eos_tokens[0], True, budget)
        return eos_tokens[0]
    return token
