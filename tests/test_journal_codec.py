"""The journal's exact codec (``fsm.journal``): every event an engine receives decodes to an equal
event, so a replay feeds the engine exactly what the daemon fed it."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from dataclasses import replace

import pytest

from fsm import commands as cmd
from fsm import events as ev
from fsm.harness.scenario import Runner, load_scenarios
from fsm.journal import decode_event, encode_event, encode_snapshot
from fsm.model import encode
from fsm.runtime.store import dumps, risk_message_from_journal

SCENARIOS = load_scenarios()
CHOSEN = ["W55", "W56", "W57", "R15", "R20", "W22", "restart-decided-close", "restart-scale-in-filled-unseen"]


class _Recording(Runner):
    def __init__(self, doc: dict[str, object]) -> None:
        super().__init__(doc)  # type: ignore[arg-type]
        self.seen: list[ev.Event] = []

    def feed(self, events: Iterable[ev.Event]) -> list[cmd.Command]:
        def recorded() -> Iterable[ev.Event]:
            for event in events:
                self.seen.append(event)
                yield event

        out = super().feed(recorded())
        return out


@pytest.mark.parametrize("sid", CHOSEN)
def test_every_event_of_a_scenario_round_trips(sid: str) -> None:
    runner = _Recording(copy.deepcopy(SCENARIOS[sid]))
    runner.run()
    assert runner.seen
    for event in runner.seen:
        assert decode_event(encode_event(event)) == event


@pytest.mark.parametrize("sid", CHOSEN)
def test_the_fast_encoder_writes_what_json_writes(sid: str) -> None:
    """orjson writes the payloads; the text is the one ``json.dumps`` (compact, non-ASCII kept)
    wrote before it, so older journals and goldens read the same."""
    runner = _Recording(copy.deepcopy(SCENARIOS[sid]))
    runner.run()
    for event in runner.seen:
        assert encode_event(event) == json.dumps(encode(event), ensure_ascii=False, separators=(",", ":"))
    snapshot = {"run_start": True, "engine": runner.engine.snapshot()}
    assert encode_snapshot(snapshot) == json.dumps(snapshot, ensure_ascii=False, separators=(",", ":"))


@pytest.mark.parametrize(
    "text",
    ['\x00\x1f\x7f \u2028\u2029 "q" \\ 손절 😀', "\ud800 lone surrogate"],
    ids=["controls-and-non-ascii", "lone-surrogate"],
)
def test_odd_text_and_huge_ids_encode_as_json_does(text: str) -> None:
    event = ev.MessageReceived(
        now_ms=1,
        chat_id=-100,
        message_id=2**70,
        telegram_date_ms=0,
        parsed=ev.EntrySignal(raw_token=text, symbol=None),
    )
    payload = encode_event(event)
    assert payload == json.dumps(encode(event), ensure_ascii=False, separators=(",", ":"))
    assert decode_event(payload) == event


def test_a_row_in_the_old_codec_or_not_an_event_is_refused() -> None:
    tick = ev.Tick(now_ms=5)
    with pytest.raises(ValueError, match="before the exact codec"):
        decode_event(dumps(tick))
    with pytest.raises(ValueError, match="not an event"):
        decode_event(json.dumps(encode(ev.RiskSignal(raw_token="BTC", symbol="BTCUSDT"))))
    assert risk_message_from_journal(encode_event(tick)) is None


def test_a_risk_message_journaled_in_the_exact_codec_is_re_run_as_it_came() -> None:
    message = ev.MessageReceived(
        now_ms=10, chat_id=-100, message_id=5001, telegram_date_ms=9,
        parsed=ev.RiskSignal(raw_token="BTC", symbol="BTCUSDT"), rerun=True,
    )  # fmt: skip
    assert risk_message_from_journal(encode_event(message)) == replace(message, rerun=False)
