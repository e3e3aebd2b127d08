"""The API key hash LiteLLM logs in `metadata.user_api_key_hash`, computed from a raw key.

Mirrors LiteLLM 1.108.7: `UserAPIKeyAuth.check_api_key` stores
`_safe_hash_litellm_api_key(api_key)` (litellm/types/proxy/auth/user_api_key_auth.py),
which drops a leading "Bearer ", hashes `sk-` keys with `hash_token`
(sha256 hex, litellm/proxy/utils.py) and JWTs as `hashed-jwt-<sha256>`, and
keeps anything else as is; `get_logged_api_key`
(litellm/proxy/litellm_pre_call_utils.py) logs that value. The master key is
never hashed: the proxy substitutes the literal `litellm_proxy_master_key`.
"""

import hashlib
import hmac

# litellm.constants.LITELLM_PROXY_MASTER_KEY_ALIAS
LITELLM_MASTER_KEY_HASH = "litellm_proxy_master_key"


def _sha256_hex(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def strip_bearer(raw_key: str) -> str:
    """The key without a leading "Bearer " (any case), as LiteLLM reads it."""
    return raw_key[7:] if raw_key[:7].lower() == "bearer " else raw_key


def litellm_key_hash(raw_key: str, *, master_key: str = "") -> str:
    """The value LiteLLM logs as `user_api_key_hash` for a caller authenticated with `raw_key`.

    Pass the proxy's master key as `master_key` to recognise it (it is logged
    as `litellm_proxy_master_key`, not hashed).
    """
    key = strip_bearer(raw_key)
    if master_key and hmac.compare_digest(key.encode(), master_key.encode()):
        return LITELLM_MASTER_KEY_HASH
    if key.startswith("sk-"):
        return _sha256_hex(key)
    if len(key.split(".")) == 3:
        return f"hashed-jwt-{_sha256_hex(key)}"
    return key


def storable_key_hash(raw_key: str, *, master_key: str = "") -> str | None:
    """litellm_key_hash() of a raw key, or None when LiteLLM would log that key unhashed.

    Only `sk-` keys, JWTs and the master key are logged without the secret itself;
    anything else would put the raw key into the database.
    """
    logged = litellm_key_hash(raw_key, master_key=master_key)
    return None if logged == strip_bearer(raw_key) else logged
