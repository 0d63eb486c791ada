from __future__ import annotations

import httpx
import pytest

from brokers.errors import (
    BrokerError,
    BrokerUnavailable,
    NotSupported,
    OutcomeUnknown,
    Retryable,
    UnexpectedResponse,
    redact,
)
from brokers.http import make_client, raise_for_status, retry_after_seconds, translate_errors

REQUEST = httpx.Request("POST", "http://venue.test/v1/orders?access_token=SECRET123")


def test_translate_errors_chains_and_never_leaks_the_query() -> None:
    with pytest.raises(OutcomeUnknown) as info:
        with translate_errors("sim", sends_order=True):
            raise httpx.ReadTimeout("timed out", request=REQUEST)
    assert isinstance(info.value.__cause__, httpx.ReadTimeout)
    assert "SECRET123" not in str(info.value) and "POST /v1/orders" in str(info.value)
    with pytest.raises(BrokerUnavailable):
        with translate_errors("sim", sends_order=True):
            raise httpx.ConnectError("refused", request=REQUEST)
    with pytest.raises(Retryable):
        with translate_errors("sim", sends_order=False):
            raise httpx.RemoteProtocolError("reset", request=REQUEST)
    with pytest.raises(BrokerError) as config_error:
        with translate_errors("sim", sends_order=True):
            raise httpx.UnsupportedProtocol("ftp?", request=REQUEST)
    assert not isinstance(config_error.value, Retryable | OutcomeUnknown)


def test_translate_errors_leaves_other_exceptions_alone() -> None:
    with pytest.raises(KeyError):
        with translate_errors("sim", sends_order=True):
            raise KeyError("x")


def test_raise_for_status_mapping_for_other_4xx() -> None:
    response = httpx.Response(418, text='{"access_token": "SECRET123", "msg": "teapot"}', request=REQUEST)
    with pytest.raises(UnexpectedResponse) as info:
        raise_for_status(response, broker="sim", sends_order=False)
    assert "SECRET123" not in str(info.value) and "teapot" in info.value.excerpt
    raise_for_status(httpx.Response(204, request=REQUEST), broker="sim", sends_order=True)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), ("", None), ("7", 7.0), ("1.5", 1.5), ("-3", 0.0), ("soon", None),
     ("Wed, 21 Oct 2015 07:28:10 GMT", 10.0)],
)
def test_retry_after(value: str | None, expected: float | None) -> None:
    assert retry_after_seconds(value, now=1445412480.0) == expected


def test_redact_masks_secrets_and_truncates() -> None:
    text = ('{"accessToken":"abc.def","password": "hunter2","name":"bob"} grant_type=refresh_token&'
            'refresh_token=r0t4t3&client_secret=s3cr3t Authorization: Bearer eyJhbGciOi.x.y')
    masked = redact(text, limit=1000)
    for secret in ("abc.def", "hunter2", "r0t4t3", "s3cr3t", "eyJhbGciOi"):
        assert secret not in masked
    assert '"name":"bob"' in masked
    assert redact("x" * 500).endswith("…") and len(redact("x" * 500)) == 201


def test_not_supported_names_broker_and_capability() -> None:
    assert str(NotSupported("schwab", "order execution")) == "broker 'schwab' does not support order execution"


def test_make_client_uses_the_transport() -> None:
    client = make_client("http://venue.test", 2.0, httpx.MockTransport(lambda r: httpx.Response(200, json={"ok": 1})))
    with client:
        assert client.get("/v1/health").json() == {"ok": 1}
        assert client.timeout.read == 2.0
