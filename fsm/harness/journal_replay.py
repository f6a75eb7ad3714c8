"""``shortfsm replay --journal <db>``: re-feed a real run's journal to the engine and prove that it
answers exactly as it did.

The daemon journals every input, marks and ticks included, in the order it handled them, with the
engine's answer rendered (``fsm.journal``), and a checkpoint (the engine's snapshot) at the start of
each run and every hour. A replay restores the engine from a run's first checkpoint and feeds the
run's events; every answer must equal the recorded one, and at every later checkpoint the engine's
snapshot must equal the recorded one. The first difference is reported with its journal seq.

The database is opened read-only: a replay never changes what it reads.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fsm.engine import Engine
from fsm.journal import ENGINE_ROW, decode_event, render_all


class JournalError(Exception):
    """The database cannot be replayed (missing, not ours, no journal in the exact codec)."""


@dataclass(frozen=True, slots=True)
class Divergence:
    seq: int
    what: str  # the event type, or "checkpoint"
    recorded: str
    replayed: str


@dataclass
class RunReplay:
    start_seq: int
    started_ms: int
    run_start: bool  # False: the run's first rows were pruned, the replay starts at a later checkpoint
    events: int = 0
    commands: int = 0
    checkpoints: int = 0
    end_seq: int = 0
    divergence: Divergence | None = None

    @property
    def identical(self) -> bool:
        return self.divergence is None

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "start_seq": self.start_seq,
            "end_seq": self.end_seq,
            "started_ms": self.started_ms,
            "from_run_start": self.run_start,
            "events": self.events,
            "commands": self.commands,
            "checkpoints_checked": self.checkpoints,
            "identical": self.identical,
        }
        if self.divergence is not None:
            d = self.divergence
            out["divergence"] = {"seq": d.seq, "what": d.what, "recorded": d.recorded, "replayed": d.replayed}
        return out


@dataclass
class JournalReplay:
    runs: list[RunReplay] = field(default_factory=list)
    skipped_rows: int = 0  # rows before the first checkpoint (older shortfsm, or pruned run starts)

    @property
    def identical(self) -> bool:
        return all(r.identical for r in self.runs)


def replay_journal(path: Path) -> JournalReplay:
    if not path.is_file():
        raise JournalError(f"no database at {path}")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise JournalError(f"{path}: cannot open: {exc}") from exc
    try:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(journal)")}
        if "out" not in columns:
            raise JournalError(
                f"{path} has no replayable journal (written before shortfsm journaled answers)"
            )
        rows = conn.execute("SELECT seq, now_ms, type, payload, out FROM journal ORDER BY seq")
        return _replay_rows(rows)
    except sqlite3.DatabaseError as exc:
        raise JournalError(f"{path}: not a shortfsm database ({exc})") from exc
    finally:
        conn.close()


def _replay_rows(rows: Any) -> JournalReplay:
    result = JournalReplay()
    engine: Engine | None = None
    run: RunReplay | None = None
    for seq, now_ms, kind, payload, out in rows:
        if kind == ENGINE_ROW:
            try:
                checkpoint = json.loads(payload)
                run_start, state = bool(checkpoint["run_start"]), checkpoint["engine"]
                if run is None or run_start or run.divergence is not None or engine is None:
                    run = RunReplay(start_seq=seq, started_ms=now_ms, run_start=run_start)
                    result.runs.append(run)
                    engine = None
                    engine = Engine.restore(state)
                else:
                    run.checkpoints += 1
                    _compare_checkpoint(run, seq, engine, state)
            except (ValueError, KeyError, TypeError, AttributeError, ArithmeticError) as exc:
                # The engine's state cannot be read back: nothing after it can be checked (exit 2).
                detail = str(exc) or type(exc).__name__
                raise JournalError(f"journal seq {seq}: the checkpoint cannot be read ({detail})") from exc
            run.end_seq = seq
            continue
        if run is None or engine is None:
            result.skipped_rows += 1
            continue
        if run.divergence is not None:
            continue  # this run already differs: nothing after it can be compared
        run.end_seq = seq
        if out is None:
            run.divergence = Divergence(seq, kind, "<no recorded answer>", "")
            continue
        try:
            event = decode_event(payload)
        except ValueError as exc:
            run.divergence = Divergence(seq, kind, out, f"<undecodable row: {exc}>")
            continue
        commands = engine.handle(event)
        run.events += 1
        run.commands += len(commands)
        replayed = render_all(commands)
        if replayed != out:
            run.divergence = Divergence(seq, kind, out, replayed)
    return result


def _compare_checkpoint(run: RunReplay, seq: int, engine: Engine, recorded: dict[str, Any]) -> None:
    """The replayed engine's state against the recorded one, as today's codec reads it: a checkpoint
    an earlier version wrote in an older encoding (D-66's close flags) is the same state, not a
    divergence. What cannot be read at all is compared as it was written."""
    now = _plain(engine.snapshot())
    with contextlib.suppress(KeyError, TypeError, ValueError, ArithmeticError):
        recorded = _plain(Engine.restore(recorded).snapshot())
    if now != recorded:
        keys = sorted(k for k in set(now) | set(recorded) if now.get(k) != recorded.get(k))
        run.divergence = Divergence(seq, "checkpoint", f"engine state ({', '.join(keys)})", "differs")


def _plain(value: Any) -> Any:
    """As the snapshot reads back from its JSON row (tuples as lists)."""
    return json.loads(json.dumps(value, ensure_ascii=False))
