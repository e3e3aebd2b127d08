"""Clients of the systems billing talks to (not a Django app)."""
