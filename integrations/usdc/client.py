"""Reading USDC transfers from an EVM chain over JSON-RPC (web3.py), with ordered fallbacks.

BILLING_USDC_RPC_URLS lists RPC endpoints in order; each request goes to the first that answers, each endpoint
with its own timeout (BILLING_USDC_RPC_TIMEOUT_SECONDS) and request-rate limit (BILLING_USDC_RPC_MAX_PER_SECOND).
Nothing here decides whether a payment counts: it reports what the chain says (payments.usdc does the judging).
"""

import threading
import time
from dataclasses import dataclass

from django.conf import settings
from web3 import Web3
from web3.exceptions import TransactionNotFound
from web3.providers.base import BaseProvider

# keccak("Transfer(address,address,uint256)"): topic 0 of every ERC-20 transfer log.
TRANSFER_TOPIC = "0x" + Web3.keccak(text="Transfer(address,address,uint256)").hex().removeprefix("0x")


class ChainUnavailable(Exception):
    """No RPC endpoint answered (each one failed or timed out)."""


@dataclass(frozen=True)
class TokenTransfer:
    token: str
    sender: str
    receiver: str
    units: int  # the token's smallest units (USDC: 6 decimals)


@dataclass(frozen=True)
class TransactionOutcome:
    """What the chain says of a transaction: not found (None), or mined with its status and transfers."""

    succeeded: bool
    block_number: int
    block_hash: str
    confirmations: int
    transfers: tuple[TokenTransfer, ...]


class _RateLimit:
    def __init__(self, per_second: float) -> None:
        self.interval = 1 / per_second if per_second > 0 else 0.0
        self.next_at = 0.0
        self.lock = threading.Lock()

    def wait(self) -> None:
        with self.lock:
            now = time.monotonic()
            delay = self.next_at - now
            self.next_at = max(now, self.next_at) + self.interval
        if delay > 0:
            time.sleep(delay)  # pacing requests to a public RPC, not a test waiting for something


_LIMITS: dict[str, _RateLimit] = {}
# Chains reached in-process rather than over HTTP, by the URL that names them in BILLING_USDC_RPC_URLS: the
# tests register an eth-tester (py-evm) chain as "ethtester://…". Every other URL is JSON-RPC over HTTP.
IN_PROCESS_PROVIDERS: dict[str, BaseProvider] = {}


def _address(topic: bytes | str) -> str:
    raw = topic.hex() if isinstance(topic, bytes | bytearray) else str(topic)
    return Web3.to_checksum_address("0x" + raw.removeprefix("0x")[-40:])


def _endpoints() -> list[str]:
    return [url.strip() for url in settings.BILLING_USDC_RPC_URLS.split(",") if url.strip()]


def _web3(url: str) -> Web3:
    provider = IN_PROCESS_PROVIDERS.get(url) or Web3.HTTPProvider(
        url, request_kwargs={"timeout": settings.BILLING_USDC_RPC_TIMEOUT_SECONDS}
    )
    return Web3(provider)


def transaction_outcome(tx_hash: str) -> TransactionOutcome | None:
    """The transaction's receipt as the first answering endpoint reports it; None when it is not (or no longer)
    in the chain. Raises ChainUnavailable when no endpoint answered."""
    errors = []
    for url in _endpoints():
        _LIMITS.setdefault(url, _RateLimit(settings.BILLING_USDC_RPC_MAX_PER_SECOND)).wait()
        try:
            w3 = _web3(url)
            if w3.eth.chain_id != settings.BILLING_USDC_CHAIN_ID:
                errors.append(f"{url}: chain {w3.eth.chain_id}, not {settings.BILLING_USDC_CHAIN_ID}")
                continue
            try:
                receipt = w3.eth.get_transaction_receipt(tx_hash)
            except TransactionNotFound:
                return None
            latest = w3.eth.block_number
            block = w3.eth.get_block(receipt["blockNumber"])
        except Exception as exc:  # noqa: BLE001 - any failure of one endpoint moves on to the next
            errors.append(f"{url}: {type(exc).__name__}: {str(exc)[:200]}")
            continue
        if block["hash"] != receipt["blockHash"]:
            return None  # the block that held it was replaced (a reorg): not in the chain now
        transfers = tuple(
            TokenTransfer(
                token=Web3.to_checksum_address(log["address"]),
                sender=_address(log["topics"][1]),
                receiver=_address(log["topics"][2]),
                units=int.from_bytes(bytes(log["data"])[-32:], "big"),
            )
            for log in receipt["logs"]
            if len(log["topics"]) == 3 and "0x" + bytes(log["topics"][0]).hex().removeprefix("0x") == TRANSFER_TOPIC
        )
        return TransactionOutcome(
            succeeded=receipt["status"] == 1,
            block_number=receipt["blockNumber"],
            block_hash="0x" + bytes(receipt["blockHash"]).hex().removeprefix("0x"),
            confirmations=max(0, latest - receipt["blockNumber"] + 1),
            transfers=transfers,
        )
    raise ChainUnavailable("no USDC RPC endpoint answered: " + "; ".join(errors or ["BILLING_USDC_RPC_URLS is empty"]))
