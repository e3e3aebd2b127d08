"""LiteLLM: every HTTP call billing makes to the proxy goes through client.py."""
