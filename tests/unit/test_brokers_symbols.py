from __future__ import annotations

import pytest

from brokers.errors import UnknownSymbol
from brokers.instruments import INSTRUMENTS
from brokers.symbols import SYMBOL_ADAPTERS, symbol_adapter

REF = 2026

# (broker, canonical root) → (broker root form, broker form of the Z6 contract); None = not carried.
EXPECTED: dict[tuple[str, str], tuple[str, str | None] | None] = {
    ("tradestation", "ES"): ("@ES", "ESZ26"),
    ("tradestation", "NQ"): ("@NQ", "NQZ26"),
    ("tradestation", "6E"): ("@EC", "ECZ26"),
    ("tradestation", "CL"): ("@CL", "CLZ26"),
    ("tradestation", "GC"): ("@GC", "GCZ26"),
    ("tradovate", "ES"): ("ES", "ESZ6"),
    ("tradovate", "NQ"): ("NQ", "NQZ6"),
    ("tradovate", "6E"): ("6E", "6EZ6"),
    ("tradovate", "CL"): ("CL", "CLZ6"),
    ("tradovate", "GC"): ("GC", "GCZ6"),
    ("schwab", "ES"): ("/ES", "/ESZ26"),
    ("schwab", "NQ"): ("/NQ", "/NQZ26"),
    ("schwab", "6E"): ("/6E", "/6EZ26"),
    ("schwab", "CL"): ("/CL", "/CLZ26"),
    ("schwab", "GC"): ("/GC", "/GCZ26"),
    ("deribit", "BTC-PERPETUAL"): ("BTC-PERPETUAL", None),
    ("sim", "ES"): ("ES", "ESZ6"),
    ("sim", "NQ"): ("NQ", "NQZ6"),
    ("sim", "6E"): ("6E", "6EZ6"),
    ("sim", "CL"): ("CL", "CLZ6"),
    ("sim", "GC"): ("GC", "GCZ6"),
    ("sim", "BTC-PERPETUAL"): ("BTC-PERPETUAL", None),
}

PAIRS = [(broker, root) for broker in SYMBOL_ADAPTERS for root in INSTRUMENTS]


@pytest.mark.parametrize(("broker", "root"), PAIRS)
def test_every_broker_instrument_pair_round_trips_or_is_refused_clearly(broker: str, root: str) -> None:
    adapter = symbol_adapter(broker, reference_year=REF)
    expected = EXPECTED.get((broker, root))
    if expected is None:
        # Given an instrument the broker does not carry, when translated, then the error names both.
        with pytest.raises(UnknownSymbol, match=broker) as info:
            adapter.to_broker(root)
        assert root in str(info.value)
        return
    broker_root, broker_contract = expected
    assert adapter.to_broker(root) == broker_root
    assert adapter.to_canonical(broker_root) == root
    if broker_contract is not None:
        canonical = f"{root}Z6"
        assert adapter.to_broker(canonical) == broker_contract
        assert adapter.to_canonical(broker_contract) == canonical
        assert adapter.to_broker(adapter.to_canonical(broker_contract)) == broker_contract


def test_two_digit_canonical_input_is_normalised() -> None:
    assert symbol_adapter("tradestation", reference_year=REF).to_broker("ESZ26") == "ESZ26"
    assert symbol_adapter("tradovate", reference_year=REF).to_broker("ESZ26") == "ESZ6"
    assert symbol_adapter("sim", reference_year=REF).to_broker("ESZ26") == "ESZ6"


def test_tradovate_tolerates_two_digit_years_on_input() -> None:
    tradovate = symbol_adapter("tradovate", reference_year=REF)
    assert tradovate.to_canonical("ESZ25") == "ESZ5"
    assert tradovate.to_canonical("ESM24") == "ESM4"
    assert tradovate.to_canonical("6EZ5") == "6EZ5"


def test_one_digit_years_across_a_decade_boundary() -> None:
    tradestation = symbol_adapter("tradestation", reference_year=2029)
    assert tradestation.to_broker("ESH0") == "ESH30"
    assert tradestation.to_canonical("ESH30") == "ESH0"


@pytest.mark.parametrize(
    ("broker", "symbol"),
    [
        ("tradestation", "ES"),       # TradeStation's continuous form needs the @
        ("tradestation", "@XX"),
        ("tradestation", "6EZ25"),    # TradeStation calls Euro FX EC
        ("tradovate", "/ES"),
        ("tradovate", "ESF6"),        # January is not listed for ES
        ("schwab", "ESZ25"),          # Schwab futures carry the slash
        ("deribit", "BTC-27DEC25"),   # dated Deribit futures are not canonical instruments (yet)
        ("sim", "@ES"),
    ],
)
def test_unknown_broker_symbols_raise_naming_broker_and_symbol(broker: str, symbol: str) -> None:
    with pytest.raises(UnknownSymbol) as info:
        symbol_adapter(broker, reference_year=REF).to_canonical(symbol)
    assert broker in str(info.value) and symbol in str(info.value)
    assert isinstance(info.value, ValueError)


def test_unknown_broker_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="known: tradestation, tradovate, schwab, deribit, sim"):
        symbol_adapter("ibkr")
