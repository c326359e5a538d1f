"""The export's overall progress display (export/progress.py): its ETA arithmetic on a fake
clock, its two output modes, and one real tiny export showing every stage in order."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest

from export.progress import (
    BY_KEY,
    PRIOR_S,
    ExportProgress,
    Stage,
    display_mode,
    plan,
    rows_guess,
)
from recgen.cli import main

STAGES = [Stage("a", "stage a", 10.0), Stage("b", "stage b", 20.0), Stage("c", "stage c", 30.0)]


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_eta_follows_the_expected_durations_then_this_machines_speed() -> None:
    clock = Clock()
    p = ExportProgress(STAGES, rows=0, mode="off", clock=clock)
    assert p.eta_s() == pytest.approx(60.0) and p.fraction() == 0.0
    p.start("a")
    clock.t += 5.0
    assert p.eta_s() == pytest.approx(55.0)  # on schedule: 5 s of a's 10 left, then 50
    assert p.fraction() == pytest.approx(5.0 / 60.0)
    clock.t += 15.0  # a took 20 s, twice its estimate: the rest is expected slower
    p.start("b")
    speed = (10.0 + PRIOR_S) / (20.0 + PRIOR_S)  # shrunk towards 1 while little has run
    assert p.speed() == pytest.approx(speed) and speed < 1.0
    assert p.eta_s() == pytest.approx((20.0 + 30.0) / speed)
    clock.t += 200.0  # b overran even that: the ETA stays positive and grows with the overrun
    eta = p.eta_s()
    assert 30.0 / speed < eta < 30.0 / speed + 0.05 * 200.0 + 1e-6
    p.finish()
    assert p.fraction() == pytest.approx(1.0, abs=0.02)


def test_stages_can_be_skipped_but_never_reordered() -> None:
    p = ExportProgress(STAGES, rows=0, mode="off", clock=Clock())
    p.start("b")  # a did not run: its time simply leaves the estimate
    assert p.eta_s() == pytest.approx(50.0)
    with pytest.raises(AssertionError, match="after"):
        p.start("a")
    with pytest.raises(AssertionError, match="not in this export's plan"):
        p.start("llm")


def test_plan_and_weights_follow_the_steps_and_the_data_size(tmp_path: Path) -> None:
    keys = [s.key for s in plan(tune=False, train=False, encoder=False, context=True, llm=False)]
    assert keys == ["read", "evaluate", "histories", "index", "context", "commit"]
    assert [s.key for s in plan()][1] == "tune" and "llm" in [s.key for s in plan()]
    # The LLM dominates a small export, tuning a large one; the LLM's cost does not grow with data.
    assert max(plan(), key=lambda s: s.expected_s(100_000)).key == "llm"
    assert max(plan(), key=lambda s: s.expected_s(10_000_000)).key == "tune"
    llm = BY_KEY["llm"]
    assert llm.expected_s(10_000_000) == llm.expected_s(100_000)
    csv = tmp_path / "x.csv"
    csv.write_text("u,i\n" * 240_000)  # 960 KB
    assert rows_guess([str(csv), None]) == 40_000
    assert rows_guess([None]) == 100_000


def test_log_mode_writes_one_line_per_stage_with_elapsed_and_eta(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    p = ExportProgress(STAGES, rows=0, mode="log", clock=clock)
    with caplog.at_level(logging.INFO, logger="export.progress"):
        p.start("a")
        clock.t += 20.0
        p.start("b")
        p.finish()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "export: [1/3] stage a (0s elapsed, ETA 1m00s)"
    assert lines[1] == "export: [2/3] stage b (20s elapsed, ETA 1m15s)"  # at 2/3 the reference speed
    assert lines[2].startswith("export: all 3 stages done in 20s")
    fields = [r.fields for r in caplog.records]  # type: ignore[attr-defined]
    assert fields[1] == {"stage": "b", "elapsed_s": 20.0, "eta_s": 75.0}


def test_bar_mode_draws_one_bar_with_the_stage_and_eta() -> None:
    out = io.StringIO()
    clock = Clock()
    p = ExportProgress(STAGES, rows=0, mode="bar", stream=out, clock=clock)
    p.start("a")
    clock.t += 30.0
    p.start("c")
    p.finish()
    text = out.getvalue()
    assert "export [1/3] stage a" in text and "export [3/3] stage c" in text
    assert "ETA 1m00s" in text and "100%" in text
    assert "stage b" not in text  # skipped


def test_display_mode_is_a_bar_only_on_a_terminal_or_when_forced() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert display_mode(False, io.StringIO()) == "log"
    assert display_mode(True, io.StringIO()) == "bar"
    assert display_mode(False, Tty()) == "bar"


def test_a_tiny_export_shows_every_stage_in_order(
    tmp_path: Path, wheels_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["export", "--models", str(tmp_path / "models"), "--wheels", str(wheels_dir), "--no-llm"]
    args += [
        "--no-encoder",
        "--no-context",
        "--factors",
        "8",
        "--reg",
        "0.1",
        "--alpha",
        "2",
        "--iterations",
        "2",
    ]
    assert main(args) == 0
    err = capsys.readouterr().err  # the CLI's own log handler writes there
    lines = [
        line.split("export.progress: ", 1)[1] for line in err.splitlines() if "export.progress: " in line
    ]
    want = ["read", "evaluate", "train", "histories", "index", "commit"]  # parameters given: no tuning
    assert [BY_KEY[k].label in line for k, line in zip(want, lines, strict=False)] == [True] * len(want)
    assert [f"[{i}/{len(want)}]" in line for i, line in enumerate(lines[: len(want)], 1)] == [True] * len(
        want
    )
    assert all("elapsed, ETA " in line for line in lines[: len(want)])
    assert lines[-1].startswith(f"export: all {len(want)} stages done in ")
