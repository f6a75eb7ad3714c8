"""Ed25519 request signing: the client picks it from a PEM secret, the simulated venue verifies it."""

from __future__ import annotations

import base64
import logging
from decimal import Decimal
from pathlib import Path
from urllib.parse import quote, unquote

import httpx
import pytest
from binance_simkit import KEY, SECRET, run
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import generate_private_key

from binance import errors as E
from binance import parse
from binance.rest import BinanceRest, Ed25519Signer, HmacSigner, make_signer, signed_query
from binance.sim.clock import SimClock
from binance.sim.exchange import SimExchange
from binance.sim.server import SimVenue, signature_valid

ED_KEY = "sim-ed25519-key"


def new_key() -> tuple[Ed25519PrivateKey, str, str]:
    """A fresh key pair: (key, private PEM, public PEM)."""
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public_pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return key, private_pem, public_pem


def pem_body(pem: str) -> str:
    return "".join(line for line in pem.splitlines() if not line.startswith("-----"))


def test_make_signer_picks_hmac_or_ed25519_from_the_secret(tmp_path: Path) -> None:
    _key, private_pem, _public = new_key()
    assert isinstance(make_signer("plain-hmac-secret"), HmacSigner)
    assert make_signer("plain-hmac-secret").method == "HMAC"
    from_text = make_signer(private_pem)
    assert isinstance(from_text, Ed25519Signer)
    assert from_text.method == "Ed25519"
    assert isinstance(make_signer("\n" + private_pem + "\n"), Ed25519Signer)
    path = tmp_path / "binance-ed25519.pem"
    path.write_text(private_pem)
    from_path = make_signer(str(path))
    assert from_path.method == "Ed25519"
    assert from_path.sign("a=1") == from_text.sign("a=1")  # same key, deterministic signature


def test_ed25519_signed_query_is_base64_of_the_signature_url_encoded() -> None:
    key, private_pem, _public = new_key()
    q = signed_query({"symbol": "BTCUSDT", "side": "BUY"}, private_pem, 1499827319559, 5000)
    body, sig = q.rsplit("&signature=", 1)
    assert body == "symbol=BTCUSDT&side=BUY&recvWindow=5000&timestamp=1499827319559"
    raw = key.sign(body.encode())
    assert sig == quote(base64.b64encode(raw).decode(), safe="")
    assert base64.b64decode(unquote(sig)) == raw
    assert len(raw) == 64
    assert all(c not in sig for c in "+/=")  # percent-encoded, never raw base64 specials


def test_bad_pem_secrets_are_refused_without_echoing_the_key(tmp_path: Path) -> None:
    rsa_pem = (
        generate_private_key(public_exponent=65537, key_size=2048)
        .private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        .decode()
    )
    with pytest.raises(ValueError, match="only Ed25519 private keys are supported") as rsa:
        make_signer(rsa_pem)
    assert pem_body(rsa_pem)[:40] not in str(rsa.value)

    key = Ed25519PrivateKey.generate()
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase-for-test"),
    ).decode()
    with pytest.raises(ValueError, match="encrypted PEM keys are not supported"):
        make_signer(encrypted)

    garbage = "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n"
    with pytest.raises(ValueError, match="not a readable PEM private key") as bad:
        make_signer(garbage)
    assert "bm90IGEga2V5" not in str(bad.value)

    with pytest.raises(ValueError, match="cannot read key file"):
        make_signer(str(tmp_path / "missing.pem"))


def test_signers_never_show_key_material() -> None:
    _key, private_pem, _public = new_key()
    signer = make_signer(private_pem)
    assert repr(signer) == "Ed25519Signer(<private key>)"
    assert repr(make_signer("hmac-secret-value")) == "HmacSigner(<secret>)"


def test_sim_signature_check_accepts_only_the_matching_key() -> None:
    key, _private, public_pem = new_key()
    _other, _, other_public = new_key()
    payload = "symbol=BTCUSDT&timestamp=1"
    good = base64.b64encode(key.sign(payload.encode())).decode()
    assert signature_valid(public_pem, payload, good) is True
    assert signature_valid(other_public, payload, good) is False
    assert signature_valid(public_pem, payload + "0", good) is False
    assert signature_valid(public_pem, payload, good.lower()) is False  # case-sensitive, unlike HMAC
    assert signature_valid(public_pem, payload, "not base64 !!") is False
    assert signature_valid(public_pem, payload, "") is False
    assert (
        signature_valid("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----", payload, good) is False
    )


def ed_venue(public_pem: str) -> tuple[SimClock, SimExchange]:
    clock = SimClock()
    return clock, SimExchange(clock=clock, api_keys={KEY: SECRET, ED_KEY: public_pem})


def test_ed25519_client_trades_against_the_venue_over_loopback(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    _key, private_pem, public_pem = new_key()

    async def go() -> None:
        clock, ex = ed_venue(public_pem)
        async with (
            SimVenue(ex) as v,
            BinanceRest(
                api_key=ED_KEY, api_secret=private_pem, base_url=v.rest_url, clock_ms=clock.now_ms
            ) as rest,
        ):
            assert rest.signing_method == "Ed25519"
            wallet, available = parse.balance_from_rest(await rest.balance())
            assert (wallet, available) == (Decimal("10000.00000000"), Decimal("10000.00000000"))
            placed = await rest.place_order(
                {
                    "symbol": "BTCUSDT",
                    "side": "SELL",
                    "type": "LIMIT",
                    "quantity": "0.010",
                    "price": "96000.0",
                    "timeInForce": "GTC",
                    "newClientOrderId": "ed-ENTRY1-0",
                }
            )
            assert (placed["clientOrderId"], placed["status"], placed["price"]) == (
                "ed-ENTRY1-0",
                "NEW",
                "96000.0",
            )
            algo = await rest.place_algo_order(
                {
                    "algoType": "CONDITIONAL",
                    "symbol": "BTCUSDT",
                    "side": "BUY",
                    "type": "STOP_MARKET",
                    "triggerPrice": "99000.0",
                    "workingType": "MARK_PRICE",
                    "quantity": "0.010",  # closePosition needs a position (-4509); this one is flat
                    "clientAlgoId": "ed-SL-0",
                }
            )
            assert (algo["clientAlgoId"], algo["algoStatus"]) == ("ed-SL-0", "NEW")
            cancelled = await rest.cancel_order("BTCUSDT", "ed-ENTRY1-0")
            assert cancelled["status"] == "CANCELED"
            # USER_STREAM endpoints take the API key only, whatever the key type.
            listen_key = await rest.new_listen_key()
            assert ex.listen_key_valid(listen_key)
            await rest.keepalive_listen_key()

    run(go())
    assert pem_body(private_pem)[:40] not in caplog.text
    assert pem_body(public_pem)[:40] not in caplog.text


def test_ed25519_wrong_key_or_hmac_signature_is_minus_1022() -> None:
    _key, _private, public_pem = new_key()
    _other, other_private, _ = new_key()

    async def go() -> None:
        clock, ex = ed_venue(public_pem)
        async with SimVenue(ex) as v:
            wrong_key = BinanceRest(
                api_key=ED_KEY, api_secret=other_private, base_url=v.rest_url, clock_ms=clock.now_ms
            )
            hmac_for_ed = BinanceRest(
                api_key=ED_KEY, api_secret=SECRET, base_url=v.rest_url, clock_ms=clock.now_ms
            )
            ed_for_hmac = BinanceRest(
                api_key=KEY, api_secret=other_private, base_url=v.rest_url, clock_ms=clock.now_ms
            )
            try:
                for rest in (wrong_key, hmac_for_ed, ed_for_hmac):
                    with pytest.raises(E.AuthFailed) as err:
                        await rest.balance()
                    assert (err.value.code, err.value.http_status, err.value.msg) == (
                        -1022,
                        400,
                        "Signature for this request is not valid.",
                    )
            finally:
                for rest in (wrong_key, hmac_for_ed, ed_for_hmac):
                    await rest.aclose()

            # A tampered request: signed, then a parameter changed on the way.
            query = signed_query({"symbol": "BTCUSDT"}, _private, clock.now_ms(), 5000)
            tampered = query.replace("symbol=BTCUSDT", "symbol=ETHUSDT")
            async with httpx.AsyncClient(base_url=v.rest_url) as client:
                ok = await client.get(f"/fapi/v3/positionRisk?{query}", headers={"X-MBX-APIKEY": ED_KEY})
                bad = await client.get(f"/fapi/v3/positionRisk?{tampered}", headers={"X-MBX-APIKEY": ED_KEY})
            assert (ok.status_code, ok.json()) == (200, [])
            assert (bad.status_code, bad.json()) == (
                400,
                {"code": -1022, "msg": "Signature for this request is not valid."},
            )

    run(go())


def test_ed25519_timestamp_rejection_resyncs_and_resigns() -> None:
    _key, private_pem, public_pem = new_key()
    drift = [0]

    async def go() -> None:
        clock, ex = ed_venue(public_pem)
        async with (
            SimVenue(ex) as v,
            BinanceRest(
                api_key=ED_KEY,
                api_secret=private_pem,
                base_url=v.rest_url,
                clock_ms=lambda: clock.now_ms() + drift[0],
            ) as rest,
        ):
            await rest.balance()
            drift[0] = -20_000
            rows = await rest.balance()
            assert rows[0]["asset"] == "USDT"
            assert rest.time_offset_ms == 20_000
            assert v.requests.count(("GET", "/fapi/v3/balance")) == 3
            assert v.requests.count(("GET", "/fapi/v1/time")) == 2

    run(go())
