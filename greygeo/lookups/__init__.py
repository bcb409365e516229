"""Lookups supply facts (the client's country, stored state); they decide nothing."""
