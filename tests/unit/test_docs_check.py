"""tools/docs_check.py: the real README.md and docs/*.md pass, and a deliberately broken doc fails.

Runs `python -m tools.X --help` once per tool the docs name (a few seconds); no server.
"""

from __future__ import annotations

from tools.docs_check import check_files, check_text, default_files, make_targets, recgen_subcommands

BROKEN = """# A page

Start it with `make no-such-target`, then `recgen serve --models models --no-such-flag`.
Tune it with `--no-such-bare-flag`; `--workers` exists.

```
recgen no-such-subcommand --models models
python -m tools.chaos --quick --no-such-chaos-flag
python -m tools.no_such_tool
make chaos   # this one exists
```
"""


def messages(text: str) -> list[str]:
    return [p.message for p in check_text("x.md", text)]


def test_the_repository_docs_name_only_commands_and_flags_that_exist() -> None:
    problems = check_files(default_files())
    assert not problems, "\n".join(map(str, problems))


def test_a_broken_doc_fails_on_each_missing_target_subcommand_flag_and_tool() -> None:
    problems = check_text("x.md", BROKEN)
    text = "\n".join(map(str, problems))
    assert "`make no-such-target`: no such Makefile target" in text
    assert "has no --no-such-flag" in text
    assert "`recgen no-such-subcommand`: no such subcommand" in text
    assert "has no --no-such-chaos-flag" in text
    assert "`python -m tools.no_such_tool`: no such module" in text
    assert "`--no-such-bare-flag`: no recgen or tool named here has it" in text
    assert len(problems) == 6, text  # `make chaos`, `--quick` and `--workers` exist: not reported
    assert sorted(p.line for p in problems) == [3, 3, 4, 7, 8, 9]


def test_the_known_commands_are_found() -> None:
    assert {"test", "chaos", "eval", "loadtest", "bench"} <= make_targets()
    subs = recgen_subcommands()
    assert "--workers" in subs["serve"] and "--log-level" in subs["serve"]  # recgen's own flags too
    assert not messages("`recgen --log-level INFO serve --models m --workers 2`")
    assert not messages("`HYPOTHESIS_PROFILE=chaos make chaos CHAOS_ARGS=--quick`")
    assert not messages("`.venv/bin/python -m pytest -q tests/unit/test_docs_check.py::test_x`")
    gone = messages("`python -m pytest -q tests/e2e/test_no_such_file.py::test_x`")
    assert gone == [
        "`python -m pytest -q tests/e2e/test_no_such_file.py::test_x`: no such test path "
        "tests/e2e/test_no_such_file.py::test_x"
    ]


def test_a_measured_figure_must_name_its_command() -> None:
    table = "| run | p99 |\n|---|---|\n| a | 12 ms |\n"
    assert any("name no command" in m for m in messages(f"## Speed\n\nWe measured:\n\n{table}"))
    # named in the section above, or just after, or explicitly exempt
    assert not messages(f"## Speed\n\nFrom `make loadtest`:\n\n{table}")
    assert not messages(f"## Speed\n\n{table}\nRerun with `python -m tools.loadtest --echo`.\n")
    assert not messages(f"## Speed\n\n<!-- docs-check: not measured (a spec) -->\n{table}")
    # a command in an earlier section does not count for this one
    assert any("name no command" in m for m in messages(f"`make chaos`\n\n## Speed\n\n{table}"))
    # ... and a named command that does not exist is reported, not accepted
    assert any("no such Makefile target" in m for m in messages(f"`make gone`\n\n{table}"))
    # a table without a number and a unit is not a figure
    assert not messages("| flag | meaning |\n|---|---|\n| `--workers` | worker processes |\n")
