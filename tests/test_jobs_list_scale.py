"""`harchos jobs list` over a large store: pages by key along an index, newest first with ties
ordered by id, `--json` entries with their planned start, and a store from before the index."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta

import pytest
from clirunner import Result, harchos

from harchos_cli import paths, state
from harchos_cli.jobs import store as store_module
from harchos_cli.jobs.store import ACTIVE, FINISHED, Job, JobStateName, JobStore


def one_error(result: Result) -> str:
    assert result.code == 2, result.err
    lines = [line for line in result.err.splitlines() if line.startswith("harchos: error: ")]
    assert len(lines) == 1, result.err
    assert "hint: " in result.err
    return result.err


def make_jobs(count: int, *, ties: int = 3) -> list[str]:
    """`count` finished jobs, `ties` at a time created in the same second, ids not in creation
    order within a second; their ids in listing order (newest first, then greatest id)."""
    start = datetime(2026, 3, 1, tzinfo=UTC)
    made: list[tuple[str, str]] = []
    store = JobStore()
    try:
        for n in range(count):
            created = (start + timedelta(seconds=n // ties)).strftime("%Y-%m-%dT%H:%M:%SZ")
            # The suffix runs against creation order, so only the id breaks a tie.
            job_id = f"20260301-000000-{(count - n) * 7 % 997:04x}{n:03d}"
            state = FINISHED[n % 3]
            store.create(
                Job(id=job_id, kind="batch", name=f"job{n}", project_dir="/p", state=state,
                    request={"kind": "batch", "argv": ["echo", str(n)]}, hub="local",
                    created_at=created, planned_start=created if n % 2 else None,
                    exit_code=0 if state == "done" else None)
            )  # fmt: skip
            made.append((created, job_id))
    finally:
        store.close()
    return [job_id for _, job_id in sorted(made, reverse=True)]


def table_ids(result: Result) -> list[str]:
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0].split() == ["job", "name", "kind", "state", "hub", "planned", "start", "exit"]
    return [line.split()[0] for line in lines[1:]]


def test_pages_walk_every_job_once_in_order_with_ties_on_created_at(
    capsys: pytest.CaptureFixture[str],
) -> None:
    expected = make_jobs(25)
    seen: list[str] = []
    before: list[str] = []
    while True:
        page = harchos(capsys, "jobs", "list", "--limit", "4", *before)
        ids = table_ids(page)
        seen += ids
        if len(seen) == len(expected):
            assert "older jobs" not in page.err
            break
        assert len(ids) == 4
        assert page.err.strip() == f"older jobs: harchos jobs list --before {ids[-1]}"
        before = ["--before", ids[-1]]
    assert seen == expected
    # The same pages as JSON, the cursor given as a unique prefix of the id.
    json_seen: list[str] = []
    before = []
    for _ in range(7):
        page = harchos(capsys, "jobs", "list", "--json", "--limit", "4", *before)
        assert page.code == 0, page.err
        json_seen += [entry["job_id"] for entry in page.json()]
        if not page.json():
            break
        before = ["--before", json_seen[-1][:-1]]
    assert json_seen == expected
    # Past the last job: an empty page, said so.
    last = harchos(capsys, "jobs", "list", "--before", expected[-1])
    assert (last.code, last.out.strip()) == (0, f"no jobs before {expected[-1]}")


def test_default_page_is_20_and_all_lists_every_job(capsys: pytest.CaptureFixture[str]) -> None:
    expected = make_jobs(23)
    first = harchos(capsys, "jobs", "list")
    assert table_ids(first) == expected[:20]
    assert f"--before {expected[19]}" in first.err
    every = harchos(capsys, "jobs", "list", "--all")
    assert table_ids(every) == expected
    assert every.err == ""
    older = harchos(capsys, "jobs", "list", "--all", "--before", expected[4], "--json")
    assert [entry["job_id"] for entry in older.json()] == expected[5:]


def test_json_entries_keep_planned_start(capsys: pytest.CaptureFixture[str]) -> None:
    make_jobs(6)
    entries = harchos(capsys, "jobs", "list", "--json").json()
    assert len(entries) == 6
    for entry in entries:
        assert "planned_start" in entry
        expected = entry["created_at"] if int(entry["name"][3:]) % 2 else None
        assert entry["planned_start"] == expected
    planned = [e for e in entries if e["planned_start"]]
    assert planned
    table = harchos(capsys, "jobs", "list").out
    for entry in planned:
        line = next(line for line in table.splitlines() if line.startswith(entry["job_id"]))
        assert entry["planned_start"] in line


def test_cancel_pending_shows_in_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    store = JobStore()
    try:
        states: list[tuple[str, JobStateName]] = [
            ("20260301-000000-aaaa", "paused"),
            ("20260301-000000-bbbb", "lost"),
        ]
        for job_id, job_state in states:
            store.create(Job(id=job_id, kind="batch", name="p", project_dir="/p", state=job_state,
                             request={"kind": "batch"}, cancel_requested=True))  # fmt: skip
    finally:
        store.close()
    table = harchos(capsys, "jobs", "list").out
    assert "lost, cancel pending" in table
    assert "paused, cancel pending" not in table


def test_listing_queries_run_along_the_indexes() -> None:
    make_jobs(30)
    store = JobStore()
    statements: list[str] = []
    try:
        names = {row[0] for row in store.db.execute("SELECT name FROM sqlite_master")}
        assert {"jobs_created", "jobs_state"} <= names
        store.db.set_trace_callback(statements.append)
        some = store.summaries(limit=5)
        store.list(limit=5, before=some[-1].id)
        store.summaries(limit=5, before=some[-1].id)
        store.ids(states=ACTIVE)
        store.db.set_trace_callback(None)
        listings = [s for s in statements if s.startswith("SELECT") and "ORDER BY" in s]
        assert len(listings) == 4, statements
        for sql in listings:
            plan = " ".join(row[3] for row in store.db.execute("EXPLAIN QUERY PLAN " + sql))
            if "state IN" in sql:
                assert "USING INDEX jobs_state" in plan, (sql, plan)
            else:
                assert "INDEX jobs_created" in plan, (sql, plan)
                assert "TEMP B-TREE" not in plan, (sql, plan)
    finally:
        store.close()


@pytest.mark.parametrize("sql_json", [True, False])
def test_a_damaged_row_is_refused_without_decoding_the_good_ones(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, sql_json: bool
) -> None:
    """SQLite's JSON check only vouches for rows; Python's parser judges the rest (with an
    SQLite lacking JSON functions, every row): NaN, which json.dumps writes, is no damage."""
    if not sql_json:
        monkeypatch.setattr(store_module, "_sql_json", lambda db: False)
    make_jobs(3)
    store = JobStore()
    try:
        odd = store.create(Job(id="20270101-000000-0000", kind="batch", name="p",
                               project_dir="/p", state="done", request={"kind": "batch"},
                               plan={"expected_intensity": float("nan")}))  # fmt: skip
        assert len(store.summaries()) == 4
        store.db.execute("UPDATE jobs SET request = '[1]' WHERE id = ?", (odd.id,))
        listed = harchos(capsys, "jobs", "list")
        assert odd.id in one_error(listed)
        assert "move harchos.db aside" in listed.err
        store.db.execute(
            "UPDATE jobs SET request = ?, plan = '{broken' WHERE id = ?",
            (json.dumps({"kind": "batch"}), odd.id),
        )
        listed = harchos(capsys, "jobs", "list")
        assert "its plan is not valid JSON" in one_error(listed)
    finally:
        store.close()


def test_bad_paging_options_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    make_jobs(2)
    assert "--all" in one_error(harchos(capsys, "jobs", "list", "--all", "--limit", "5"))
    one_error(harchos(capsys, "jobs", "list", "--limit", "0"))
    assert "no job 'nope'" in one_error(harchos(capsys, "jobs", "list", "--before", "nope"))
    assert "ambiguous" in one_error(harchos(capsys, "jobs", "list", "--before", "2026"))


def test_a_store_from_before_the_index_keeps_its_jobs(capsys: pytest.CaptureFixture[str]) -> None:
    previous = state.MIGRATIONS.index(state._m008_jobs_listing)
    path = paths.state_db()
    paths.private_dir(path.parent)
    db = sqlite3.connect(path, isolation_level=None)
    for migrate in state.MIGRATIONS[:previous]:
        migrate(db)
    db.execute(f"PRAGMA user_version = {previous}")
    stamps = ["2026-03-01T00:00:00Z", "2026-03-01T00:00:00Z", "2026-03-02T00:00:00Z"]
    for n, stamp in enumerate(stamps):
        db.execute(
            "INSERT INTO jobs (id, kind, name, project_dir, state, created_at, updated_at, "
            "planned_start, request) VALUES (?, 'batch', 'old', '/p', 'done', ?, ?, ?, ?)",
            (f"20260301-000000-000{n}", stamp, stamp, stamp, json.dumps({"kind": "batch"})),
        )
    db.close()
    listed = harchos(capsys, "jobs", "list", "--json")
    assert listed.code == 0, listed.err
    assert [(e["job_id"], e["planned_start"]) for e in listed.json()] == [
        ("20260301-000000-0002", "2026-03-02T00:00:00Z"),
        ("20260301-000000-0001", "2026-03-01T00:00:00Z"),
        ("20260301-000000-0000", "2026-03-01T00:00:00Z"),
    ]
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(state.MIGRATIONS)
        names = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        assert "jobs_created" in names
    finally:
        db.close()
