"""The ``tradovate`` broker: REST for orders and account state, the market-data WebSocket for bars.

``adapter`` is the module the registry loads; ``auth`` obtains and renews tokens; ``rest`` is the
authorised HTTP seam; ``ws`` speaks Tradovate's WebSocket framing; ``parse`` holds the pure wire ↔
domain functions (no I/O).
"""
