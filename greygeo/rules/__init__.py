"""Deciding: the rules, rate limits and the engine that runs them in order.

Nothing in this package opens a socket or reads the clock: facts and the
current time come in as arguments, and decisions go out as values.
"""
