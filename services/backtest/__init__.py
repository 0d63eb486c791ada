"""Backtests: replaying history through the strategy core (in-process or the real process tree), reports and parameter sweeps."""
