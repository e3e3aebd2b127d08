"""Pre-call credit authorization for the LiteLLM proxy.

LiteLLM loads `litellm_billing_plugin.hook.billing_plugin` from its config
(`litellm_settings: callbacks: [...]`). Only `hook` imports LiteLLM; the other
modules (settings, estimate, client, metrics) need nothing beyond httpx, so
they are testable without the proxy. No Django anywhere: this package runs
inside the LiteLLM container.
"""
