"""Reconciliation: receipts against LiteLLM's spend logs, and the books against themselves (services.py)."""
