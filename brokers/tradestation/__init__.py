"""The TradeStation API v3 broker: OAuth2 refresh with rotating refresh tokens, REST orders and
queries, HTTP-chunked bar streams (see ``brokers.tradestation.adapter``)."""
