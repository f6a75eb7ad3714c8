"""binance.errors: one row per code in the table, plus HTTP-status mapping and should_retry."""

from __future__ import annotations

import pytest

from binance import errors as E

# code -> (class, should_retry, category)
CASES: list[tuple[int, type[E.BinanceError], bool, str]] = [
    (-1000, E.UnknownOutcome, True, "retry"),
    (-1001, E.Retryable, True, "retry"),
    (-1003, E.RateLimited, True, "rate_limited"),
    (-1006, E.UnknownOutcome, True, "retry"),
    (-1007, E.UnknownOutcome, True, "retry"),
    (-1008, E.Retryable, True, "retry"),
    (-1015, E.RateLimited, True, "rate_limited"),
    (-1016, E.Retryable, True, "retry"),
    (-1021, E.TimestampRejected, True, "retry"),
    (-5028, E.TimestampRejected, True, "retry"),
    (-1002, E.AuthFailed, False, "auth"),
    (-1022, E.AuthFailed, False, "auth"),
    (-2014, E.AuthFailed, False, "auth"),
    (-2015, E.AuthFailed, False, "auth"),
    (-2018, E.InsufficientMargin, False, "margin"),
    (-2019, E.InsufficientMargin, False, "margin"),
    (-1013, E.FilterRejected, False, "filter"),
    (-1111, E.FilterRejected, False, "filter"),
    (-4003, E.FilterRejected, False, "filter"),
    (-4004, E.FilterRejected, False, "filter"),
    (-4005, E.FilterRejected, False, "filter"),
    (-4013, E.FilterRejected, False, "filter"),
    (-4014, E.FilterRejected, False, "filter"),
    (-4016, E.FilterRejected, False, "filter"),
    (-4023, E.FilterRejected, False, "filter"),
    (-4024, E.FilterRejected, False, "filter"),
    (-4164, E.FilterRejected, False, "filter"),
    (-1102, E.Rejected, False, "rejected"),
    (-1106, E.Rejected, False, "rejected"),
    (-1115, E.Rejected, False, "rejected"),
    (-1116, E.Rejected, False, "rejected"),
    (-1117, E.Rejected, False, "rejected"),
    (-1121, E.Rejected, False, "rejected"),
    (-1125, E.Rejected, False, "rejected"),
    (-2010, E.Rejected, False, "rejected"),
    (-2011, E.Rejected, False, "rejected"),
    (-2013, E.Rejected, False, "rejected"),
    (-2021, E.Rejected, False, "rejected"),
    (-2022, E.AlreadyFlat, False, "flat"),
    (-2024, E.Rejected, False, "rejected"),
    (-2025, E.Rejected, False, "rejected"),
    (-4015, E.Rejected, False, "rejected"),
    (-4046, E.Rejected, False, "rejected"),
    (-4047, E.Rejected, False, "rejected"),
    (-4048, E.Rejected, False, "rejected"),
    (-4059, E.Rejected, False, "rejected"),
    (-4061, E.Rejected, False, "rejected"),
    (-4062, E.Rejected, False, "rejected"),
    (-4116, E.Rejected, False, "rejected"),
    (-4118, E.Rejected, False, "rejected"),
    (-4120, E.Rejected, False, "rejected"),
    (-4131, E.Rejected, False, "rejected"),
    (-4142, E.Rejected, False, "rejected"),
    (-4161, E.Rejected, False, "rejected"),
    (-5021, E.Rejected, False, "rejected"),
    (-5022, E.Rejected, False, "rejected"),
    (-4130, E.CloseStopExists, False, "rejected"),
    (-4509, E.AlreadyFlat, False, "flat"),
    (-4045, E.Rejected, False, "rejected"),
    (-4067, E.Rejected, False, "rejected"),
    (-4068, E.Rejected, False, "rejected"),
    (-4183, E.FilterRejected, False, "filter"),
    (-4184, E.FilterRejected, False, "filter"),
    (-4189, E.Rejected, False, "rejected"),
    (-4192, E.Rejected, False, "rejected"),
    (-4210, E.FilterRejected, False, "filter"),
    (-4211, E.FilterRejected, False, "filter"),
    (-4531, E.Rejected, False, "rejected"),
]


def test_every_table_code_has_a_case() -> None:
    assert {c for c, *_ in CASES} == set(E.CODE_CLASSES)


@pytest.mark.parametrize(("code", "klass", "retry", "cat"), CASES)
def test_code_mapping(code: int, klass: type[E.BinanceError], retry: bool, cat: str) -> None:
    err = E.from_response(400, {"code": code, "msg": "m"}, method="POST")
    assert type(err) is klass
    assert err.code == code
    assert err.msg == "m"
    assert err.http_status == 400
    assert E.should_retry(err) is retry
    assert E.category(err) == cat


def test_unknown_code_falls_back_to_rejected() -> None:
    err = E.from_response(400, {"code": -9999, "msg": "odd"})
    assert type(err) is E.Rejected
    assert E.should_retry(err) is False


@pytest.mark.parametrize(
    ("status", "method", "klass"),
    [
        (500, "POST", E.UnknownOutcome),
        (502, "DELETE", E.UnknownOutcome),
        (503, "POST", E.UnknownOutcome),
        (504, "GET", E.Retryable),
        (500, "GET", E.Retryable),
        (408, "POST", E.UnknownOutcome),
        (401, "GET", E.AuthFailed),
        (403, "GET", E.Rejected),
        (404, "GET", E.Rejected),
        (429, "GET", E.RateLimited),
        (418, "POST", E.RateLimited),
    ],
)
def test_status_mapping_without_code(status: int, method: str, klass: type[E.BinanceError]) -> None:
    err = E.from_response(status, None, method=method)
    assert type(err) is klass
    assert err.code == 0
    assert err.http_status == status


def test_503_service_unavailable_is_a_plain_retry() -> None:
    err = E.from_response(503, {"code": 0, "msg": "Service Unavailable."}, method="POST")
    assert type(err) is E.Retryable


def test_429_carries_retry_after() -> None:
    err = E.from_response(429, {"code": -1003, "msg": "Too many requests"}, retry_after_s=7.0)
    assert isinstance(err, E.RateLimited)
    assert err.retry_after_s == 7.0
    assert err.banned_until_ms is None


def test_418_ban_until_parsed_from_message() -> None:
    msg = "Way too many requests; IP banned until 1565123456789. Please use the websocket."
    err = E.from_response(418, {"code": -1003, "msg": msg})
    assert isinstance(err, E.RateLimited)
    assert err.banned_until_ms == 1565123456789
    assert E.banned_until_from_msg("no ban here") is None


def test_string_code_is_read() -> None:
    err = E.from_response(400, {"code": "-2019", "msg": "Margin is insufficient."}, method="POST")
    assert type(err) is E.InsufficientMargin


def test_subclass_relations() -> None:
    assert issubclass(E.InsufficientMargin, E.Rejected)
    assert issubclass(E.FilterRejected, E.Rejected)
    assert issubclass(E.TimestampRejected, E.Retryable)
    assert E.should_retry(E.BinanceError(0, "x")) is False
    assert E.category(E.BinanceError(0, "x")) == "rejected"
