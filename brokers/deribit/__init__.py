"""Deribit API v2 (JSON-RPC 2.0 over HTTP and WebSocket): the ``deribit`` broker.

``adapter`` (the module contract: BROKER, CAPABILITIES, CREDENTIALS, build, authenticator; the
execution and market-data roles), ``auth`` (tokens: client credentials, refresh, fork, exchange),
``parse`` (pure wire ↔ domain functions), ``rpc`` (JSON-RPC over HTTP and the error table), ``ws``
(JSON-RPC over the WebSocket).
"""
