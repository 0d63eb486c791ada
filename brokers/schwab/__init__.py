"""The ``schwab`` broker: Charles Schwab's Trader API as a market-data source for futures.

The Trader API cannot place futures orders, so this broker has no execution role: the facade
answers every order call with ``NotSupported`` naming ``schwab`` and order execution.

Modules: ``adapter`` (the module contract: ``BROKER``, ``CAPABILITIES``, ``CREDENTIALS``, ``build``,
``authenticator``; the market-data role), ``auth`` (OAuth2 with HTTP Basic client auth and the
7-day refresh token), ``client`` (REST requests with the one-retry-after-401 rule), ``streamer``
(the WebSocket streamer: LOGIN, SUBS ``CHART_FUTURES``, re-LOGIN on a new token), ``bars`` (when a
bar counts as closed), ``parse`` (pure wire → domain translation and error mapping).
"""
