"""Venue adapters behind one facade (``base.BrokerFacade``), canonical instruments and symbols,
the shared HTTP seam and error types, and the local venue simulator (``brokers.sim``).

``brokers`` may import ``schema``; it never imports ``bus`` or ``services``.
"""
