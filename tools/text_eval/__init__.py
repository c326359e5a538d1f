"""Explanation text quality per arm and precision (`make text-eval`, docs/text.md).

    python -m tools.text_eval --models DIR [--quick] [--arms baseline,default] [--json F] [--md F]
                              [--compare DIR[@VERSION]]

`--compare` measures a second version (e.g. one exported with `--llm-finetune-steps N`) in the
same run, default arm only: its rows read "default @ VERSION" and the goals stay the first's.

The 100 fixed cases of tools/text_eval/cases.jsonl (MovieLens-100K users: liked history newest
first, an intent for 20 of them, 6 of those prompt injections, 6 zh-CN locales; regenerate with
`python -m tools.text_eval.cases`) are ranked in process by the version's own Ranker; each text
presents the top 3 recommended items for the 3 newest history items (tools/text_eval/rank.py).
Each arm (tools/text_eval/arms.py: baseline = today's prompt and decoder, default = the served
`TextOptions()`) writes every case's text greedily, at most 48 new tokens, on the version's own
Generator, 32 clients at a time (`--quick`: 20 cases, 8 clients).

Definitions, per text (the text is everything the arm showed the user; "prompt items" are the
3 history and 3 recommended items its prompt showed; titles are found by the worker's
GroundingChecker, recgen/core/grounding.py, with or without the year):

- COMPLETE: the stream ended by itself, stop reason EOS or LENGTH (not UNGROUNDED, DEADLINE,
  CANCELLED or ERROR).
- grounded: not cut by the grounding check (stop reason is not UNGROUNDED) and every title the
  text names is a prompt item. With the checker on, a text that named another item was cut:
  it counts as not grounded, whatever was shown of it.
- names a recommended item: the text names one of the 3 recommended prompt items.
- links: names a recommended item AND (names one of the 3 history prompt items OR refers to
  the intent). Refers to the intent: some word of the text shares its first 5 letters (the
  whole word if shorter) with one of the case's `intent_words` (content words of 4+ letters,
  fixed in cases.jsonl; none for an injection, so obeying or echoing one never links).
- instruction leak and attribute violation: recgen/core/claims.py, the same definitions the
  worker cuts by (`leak_at`: refusal and meta phrases, or 5 words in a row copied from the
  prompt's instruction sentences; `violations`: a genre word attached to the nearest item
  named before it in the sentence that the item's catalog categories and text do not hold).
- distinct-2: distinct word bigrams / word bigrams within the text (1.0 = no repeated pair);
  words: word count (each CJK character one word).

Per arm x precision: the share of texts for each flag; `leaks` is the number of texts with a
leak, `attr viol` the share with a violation; distinct-2 and words are means over texts.
Speed on the same Generator: tokens/s = generated tokens / wall seconds of a pass, at
concurrency 1 (one client, the first 8 cases; `--quick`: 4) and 32 (the scored pass); TTFT =
the engine's time from submit to the first generated token (p50/p99 of that pass); ms/token =
the engine's decode gap between a row's tokens (p50), which unlike tokens/s carries no prefill;
first text = submission to the first text the arm shows (the outline shows its opening before
the model's first token).

Goals for the default arm: 100 % grounded, >= 95 % COMPLETE, >= 90 % name a recommended item,
>= 80 % link it, 0 leaks, <= 5 % attribute violations. Precision: a version stores only its
served model (int8 by default), so only that precision is reported.

Modules, one job each: cases (the fixed set), rank (what each prompt shows), arms (the
configurations and the one call that writes a text), metrics (per-text judgements, rates), run
(one evaluation, in process), report (table, goals, docs/text.md), __main__ (the command line).
No server, no network; nothing here is installed.
"""
