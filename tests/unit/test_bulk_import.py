"""The bulk checks of ImportEvents and `recgen import` (server/bulk_import.py): the
column-at-a-time fast path accepts exactly what SendFeedback's `feedback_from_pb`
accepts, and a bad row is named with SendFeedback's own message."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import sqlite3
from pathlib import Path

import pytest

from recgen.v1 import recommender_pb2 as pb
from server.bulk_import import MAX_IMPORT_ROWS, BadRow, _row_by_row, batch_from_pb, events_from_pb
from server.state import Event
from server.validation import InvalidArgument

CATALOG = {str(i) for i in range(1, 100)} | {"é" * 128}
NOW = 1_800_000_000.0


def good(i: int, **kw) -> pb.SendFeedbackRequest:
    fields = dict(event_id=f"e{i}", user_id=f"u{i % 3}", item_id=str(i % 50 + 1), type=pb.FEEDBACK_TYPE_CLICK)
    fields.update(kw)
    return pb.SendFeedbackRequest(**fields)


BAD = [
    (dict(event_id=""), "event_id must not be empty"),
    (dict(event_id="x" * 129), "event_id is 129 bytes; at most 128"),
    (dict(event_id="é" * 65), "event_id is 130 bytes; at most 128"),
    (dict(user_id=""), "user_id must not be empty"),
    (dict(user_id="a\x00b"), "user_id contains control characters"),
    (dict(user_id="a\x85b"), "user_id contains control characters"),
    (dict(item_id="\x7f"), "item_id contains control characters"),
    (dict(item_id="42000"), "unknown item '42000'"),
    (dict(request_id="r" * 65), "request_id is 65 bytes; at most 64"),
    (dict(type=pb.FEEDBACK_TYPE_UNSPECIFIED), "type 0 is not a known FeedbackType"),
    (dict(type=9), "type 9 is not a known FeedbackType"),
    (dict(type=pb.FEEDBACK_TYPE_RATE), "value is required for RATE (0..5)"),
    (dict(type=pb.FEEDBACK_TYPE_RATE, value=5.5), "value must be in 0..5 for RATE, got 5.5"),
    (dict(type=pb.FEEDBACK_TYPE_RATE, value=float("nan")), "value must be in 0..5 for RATE, got nan"),
    (dict(value=2e6), "value 2000000.0 is out of range"),
    (dict(timestamp="yesterday"), "timestamp 'yesterday' is not an RFC 3339 time"),
    (dict(timestamp="1900-01-01T00:00:00Z"), "timestamp year 1900 is out of range"),
]


@pytest.mark.parametrize(("change", "problem"), BAD, ids=[p for _, p in BAD])
def test_a_bad_row_is_named_with_sendfeedbacks_message(change: dict, problem: str) -> None:
    rows = [good(i) for i in range(6)]
    rows[3] = good(3, **change)
    with pytest.raises(BadRow) as e:
        events_from_pb(rows, CATALOG, NOW)
    assert e.value.index == 3
    assert e.value.problem.startswith(problem), e.value.problem
    with pytest.raises(InvalidArgument) as e2:  # as ImportEvents says it: the row's number in the call
        batch_from_pb(pb.ImportEventsRequest(events=rows), 101, CATALOG, NOW)
    assert str(e2.value).startswith(f"row 104 (event_id {rows[3].event_id[:128]!r}): {problem}")


def test_fast_path_equals_row_by_row_on_valid_rows() -> None:
    rows = [good(i) for i in range(20)]
    rows[1] = good(1, type=pb.FEEDBACK_TYPE_RATE, value=4.5, timestamp="2024-05-01T12:00:00+02:00")
    rows[2] = good(
        2, event_id="é" * 64, user_id="😀" * 64, item_id="é" * 128, request_id="r" * 64
    )  # at the limits
    rows[3] = good(3, type=pb.FEEDBACK_TYPE_DISMISS, value=-3.0, timestamp="2024-05-01T12:00:00Z")
    times = [None] * 20
    times[4] = 1_700_000_000.0  # the CLI's unix seconds for a row without an RFC 3339 time
    fast = events_from_pb(rows, CATALOG, NOW, times)
    assert fast == _row_by_row(rows, CATALOG, NOW, times)
    assert fast[1] == Event("e1", "u1", "2", "RATE", 4.5, 1714557600.0)
    assert fast[4].ts == 1_700_000_000.0 and fast[5].ts == NOW
    assert events_from_pb([], CATALOG, NOW) == []


def test_too_many_rows_in_one_message() -> None:
    msg = pb.ImportEventsRequest(events=[good(i) for i in range(MAX_IMPORT_ROWS + 1)])
    with pytest.raises(InvalidArgument, match=f"at most {MAX_IMPORT_ROWS}"):
        batch_from_pb(msg, 1, CATALOG, NOW)


@pytest.mark.parametrize("value", [None, 4.5, 0.1, 3.0, -0.0, 1e-7, 2, True, float("inf")])
@pytest.mark.parametrize("text", ["u", 'é"\\\n\u2028😀', ""])
def test_payload_hash_is_the_json_dumps_definition(value: object, text: str) -> None:
    """Stored hashes were written with json.dumps: the hand-written bytes must match."""
    ev = Event("e", text, "1", "RATE", value, 1.0, text)  # type: ignore[arg-type]
    raw = json.dumps([ev.user_id, ev.item_id, ev.type, ev.value, ev.request_id])
    assert ev.payload_hash() == hashlib.sha256(raw.encode()).hexdigest()


# ------------------------------------------------------------------ recgen import, without --models


def cli(tmp_path: Path, text: str, *extra: str) -> tuple[int, str, str]:
    from recgen.cli import main

    csv = tmp_path / "ev.csv"
    csv.write_text(text)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["import", "--quiet", "--state", str(tmp_path / "s.db"), "--events", str(csv), *extra])
    return code, out.getvalue(), err.getvalue()


def stored_ids(tmp_path: Path) -> list[str]:
    with sqlite3.connect(tmp_path / "s.db") as db:
        return [r[0] for r in db.execute("SELECT event_id FROM events ORDER BY seq")]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("user_id,item_id,kind\n", "ev.csv:1: unknown column 'kind'"),
        ("user_id,type\n", "ev.csv:1: missing column 'item_id'"),
        ("user_id,item_id,type\nu,1,CLICK\nu,2,LIKE\n", "ev.csv:3: type 'LIKE' is not one of VIEW"),
        ("user_id,item_id,type,value\nu,1,RATE,lots\n", "ev.csv:2: value 'lots' is not a number"),
        ("user_id,item_id,type,timestamp\nu,1,VIEW,-5\n", "ev.csv:2: timestamp '-5' is outside the years"),
        ("user_id,item_id,type,timestamp\nu,1,VIEW,noon\n", "ev.csv:2: timestamp 'noon' is not an RFC 3339"),
        ("user_id,item_id,type\nu,1\n", "ev.csv:2: 2 fields; the header has 3"),
        # A row SendFeedback refuses (line 3) before a row the CSV reader refuses (line 4):
        # the first bad line is named.
        ("user_id,item_id,type\nu,1,VIEW\n,2,VIEW\nu,3,NOPE\n", "ev.csv:3: user_id must not be empty"),
    ],
)
def test_cli_names_the_first_bad_line_and_stores_nothing_of_its_batch(
    tmp_path: Path, text: str, message: str
) -> None:
    code, _, err = cli(tmp_path, text)
    assert code == 1 and err.startswith(message), err
    assert stored_ids(tmp_path) == []


def test_cli_derives_event_ids_and_stops_at_a_conflict_in_an_earlier_batch(tmp_path: Path) -> None:
    rows = "user_id,item_id,type,value,timestamp\nu,1,CLICK,,1714564800\nu,2,RATE,4,\nu,2,rate, 4 ,\n"
    code, out, _ = cli(tmp_path, rows, "--batch", "2")
    assert code == 0 and "3 rows, 2 stored, 1 duplicates in 2 batches" in out
    first = stored_ids(tmp_path)
    assert len(first) == 2 and all(i.startswith("csv-") and len(i) == 36 for i in first)
    code, out, _ = cli(tmp_path, rows)  # the same file again: the same ids
    assert code == 0 and "3 rows, 0 stored, 3 duplicates" in out
    assert stored_ids(tmp_path) == first

    clash = "event_id,user_id,item_id,type\nk1,u,1,VIEW\nk2,u,2,VIEW\nk3,u,3,VIEW\nk4,u,4,VIEW\n"
    assert cli(tmp_path, clash, "--batch", "2")[0] == 0
    # k2 again with another item, in the first of three batches: named; only what came before it is stored.
    again = "event_id,user_id,item_id,type\nk2,u,9,VIEW\nk5,u,5,VIEW\nk6,u,6,VIEW\nk7,u,7,VIEW\n"
    code, _, err = cli(tmp_path, again, "--batch", "1")
    assert code == 1 and err.startswith("ev.csv:2: event_id 'k2' was stored with another payload"), err
    assert "nothing was stored" in err
    code, _, err = cli(
        tmp_path, again.replace("k2,u,9", "k2,u,2").replace("k7,u,7", "k1,u,7"), "--batch", "2"
    )
    assert code == 1 and err.startswith("ev.csv:5: event_id 'k1' was stored with another payload"), err
    assert "the 2 rows before its batch are durable (1 stored, 1 duplicates, 1 batch)" in err
    assert stored_ids(tmp_path)[-5:] == ["k1", "k2", "k3", "k4", "k5"]
