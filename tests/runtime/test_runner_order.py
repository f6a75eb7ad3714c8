"""The scenario runners feed the venue's answers in the daemon's order (issue #11 step 7).

The daemon (``Daemon._consume``) carries out every command of an event, appends their answers to
one first-in first-out queue, and handles that queue before the next outside event. A runner that
handled each answer's own answers first (depth first) would decide in another order than the
daemon whose journal it is meant to reproduce.
"""

from __future__ import annotations

from typing import Any

from fsm import commands as cmd
from fsm import events as ev
from fsm.harness.scenario import Runner


class _ScriptedEngine:
    """Answers each event (told apart by its time) with the commands of a script, and records."""

    def __init__(self, script: dict[int, list[str]]) -> None:
        self.script = script
        self.handled: list[int] = []

    def handle(self, event: ev.Event) -> list[cmd.Command]:
        self.handled.append(event.now_ms)
        return [cmd.Log(kind="probe", reason=name) for name in self.script.get(event.now_ms, [])]


class _ScriptedRunner(Runner):
    """The venue answers each probe command with the events of a script."""

    def __init__(self, answers: dict[str, list[int]]) -> None:
        super().__init__({})
        self.answers = answers

    def answer(self, command: cmd.Command) -> list[ev.Event]:
        assert isinstance(command, cmd.Log)
        return [ev.Tick(now_ms=at) for at in self.answers.get(command.reason, [])]


def _run(engine: _ScriptedEngine, runner: _ScriptedRunner, outside: list[int]) -> list[int]:
    fake: Any = engine
    runner.engine = fake
    runner.feed([ev.Tick(now_ms=at) for at in outside])
    return engine.handled


def test_answers_queue_first_in_first_out_before_the_next_outside_event() -> None:
    # Outside events 1 and 2. Event 1 sends a and b, answered by 10 and 20; the answer 10 sends c,
    # answered by 30. The daemon handles 1, 10, 20, 30, then 2 (depth first would be 1, 10, 30, 20, 2).
    engine = _ScriptedEngine({1: ["a", "b"], 10: ["c"]})
    runner = _ScriptedRunner({"a": [10], "b": [20], "c": [30]})
    assert _run(engine, runner, [1, 2]) == [1, 10, 20, 30, 2]


def test_an_answer_with_several_events_keeps_their_order() -> None:
    engine = _ScriptedEngine({1: ["a", "b"], 11: ["c"]})
    runner = _ScriptedRunner({"a": [10, 11], "b": [20], "c": [30]})
    assert _run(engine, runner, [1]) == [1, 10, 11, 20, 30]
