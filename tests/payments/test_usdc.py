"""USDC on-chain purchases, verified on an in-process eth-tester (py-evm) chain with a deployed 6-decimal ERC-20.

The token (tests/payments/contracts/usdc_like.vy) is compiled by the vyper package and deployed twice: the
configured USDC and a look-alike at another address. The chain is reached through web3 like a real RPC
(registered as "ethtester://chain"); a dead HTTP endpoint in front of it proves the failover. Every scenario
ends with the books tying.
"""

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
import vyper
from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import timezone
from eth_tester import EthereumTester, PyEVMBackend
from web3 import EthereumTesterProvider, Web3

from accounts.models import BillingAccount, LedgerReason
from integrations.usdc import client as usdc_client
from payments.models import AttemptStatus, PaymentAttempt
from payments.services import usdc_transaction_submit, verify_pending_usdc, verify_usdc_attempt
from tests.books import ledger_total
from tests.factories import BillingAccountFactory
from tests.paths import REPO_ROOT

CONTRACT = REPO_ROOT / "tests/payments/contracts/usdc_like.vy"
CHAIN_URL = "ethtester://chain"
PASSWORD = "correct horse battery"


@dataclass
class Chain:
    tester: EthereumTester
    w3: Web3
    usdc: Any
    lookalike: Any
    minter: str
    payer: str
    receiver: str
    stranger: str

    def pay(self, *, units: int, token: Any = None, sender: str | None = None, to: str | None = None) -> str:
        token = token or self.usdc
        tx = token.functions.transfer(to or self.receiver, units).transact({"from": sender or self.payer})
        return "0x" + bytes(tx).hex()

    def mine(self, blocks: int) -> None:
        self.tester.mine_blocks(blocks)


def _deploy(w3: Web3, compiled: dict[str, Any], owner: str, name: str) -> Any:
    contract = w3.eth.contract(abi=compiled["abi"], bytecode=compiled["bytecode"])
    receipt = w3.eth.wait_for_transaction_receipt(contract.constructor(name, "USDC").transact({"from": owner}))
    return w3.eth.contract(address=receipt.contractAddress, abi=compiled["abi"])


@pytest.fixture
def chain(settings: Any) -> Iterator[Chain]:
    tester = EthereumTester(PyEVMBackend())
    provider = EthereumTesterProvider(tester)
    w3 = Web3(provider)
    compiled = vyper.compile_code(CONTRACT.read_text(), output_formats=["abi", "bytecode"])
    minter, payer, receiver, stranger = w3.eth.accounts[:4]
    usdc = _deploy(w3, compiled, minter, "USD Coin")
    lookalike = _deploy(w3, compiled, minter, "USD Coin (not really)")
    for token in (usdc, lookalike):
        for holder in (payer, stranger):
            token.functions.mint(holder, 1_000 * 10**6).transact({"from": minter})
    usdc_client.IN_PROCESS_PROVIDERS[CHAIN_URL] = provider
    settings.BILLING_USDC_RPC_URLS = CHAIN_URL
    settings.BILLING_USDC_CHAIN_ID = w3.eth.chain_id
    settings.BILLING_USDC_TOKEN_ADDRESS = usdc.address
    settings.BILLING_USDC_RECEIVER = receiver
    settings.BILLING_USDC_CONFIRMATIONS = 3
    settings.BILLING_USDC_RPC_MAX_PER_SECOND = 0  # no pacing against an in-process chain
    yield Chain(tester, w3, usdc, lookalike, minter, payer, receiver, stranger)
    usdc_client.IN_PROCESS_PROVIDERS.pop(CHAIN_URL, None)


@pytest.fixture
def owner(db: None) -> Any:
    return get_user_model().objects.create_user(username="onchain", password=PASSWORD)


@pytest.fixture
def account(owner: Any) -> BillingAccount:
    return BillingAccountFactory(name="Onchain Ltd", owner=owner)


def _client(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _open(client: Client, account: BillingAccount, *, amount: str, wallet: str) -> PaymentAttempt:
    response = client.post(
        "/billing/credits/usdc", {"amount_usd": amount, "wallet": wallet, "account": account.public_id}
    )
    assert response.status_code == 303, response.content
    return PaymentAttempt.objects.get(public_id=response["Location"].rstrip("/").rsplit("/", 1)[-1])


def _submit(client: Client, attempt: PaymentAttempt, tx_hash: str) -> Any:
    return client.post(f"/billing/credits/purchases/{attempt.public_id}/tx", {"tx_hash": tx_hash})


def _books_tie(account: BillingAccount) -> None:
    account.refresh_from_db()
    assert account.balance_credits == ledger_total(account=account)


def test_a_confirmed_transfer_credits_what_arrived_once(chain: Chain, owner: Any, account: BillingAccount) -> None:
    client = _client(owner)
    attempt = _open(client, account, amount="25", wallet=chain.payer)
    page = client.get(f"/billing/credits/purchases/{attempt.public_id}/").content.decode()
    link = f"ethereum:{chain.usdc.address}@{chain.w3.eth.chain_id}/transfer?address={chain.receiver}&uint256=25000000"
    assert link.replace("&", "&amp;") in page and 'data-form="usdc-tx"' in page
    tx = chain.pay(units=25_000_000)
    assert _submit(client, attempt, tx).status_code == 303
    attempt.refresh_from_db()
    assert attempt.status == AttemptStatus.PENDING and "1 of 3 confirmations" in attempt.failure_reason
    chain.mine(2)
    assert verify_usdc_attempt(attempt=attempt) == "credited 25,000,000 credits for 25 USDC"
    assert verify_usdc_attempt(attempt=attempt).startswith("nothing to verify")
    attempt.refresh_from_db()
    assert (attempt.status, attempt.received_usd, attempt.mismatch) == (AttemptStatus.SUCCEEDED, Decimal("25"), "")
    [entry] = account.ledger_entries.all()
    assert (entry.reason, entry.amount_credits) == (LedgerReason.ONCHAIN_DEPOSIT, 25_000_000)
    assert entry.idempotency_key == f"usdc:{chain.w3.eth.chain_id}:{tx}:deposit"
    _books_tie(account)


@pytest.mark.parametrize("wrong", ["token", "receiver", "sender"])
def test_a_transfer_of_another_token_to_another_receiver_or_from_another_wallet_credits_nothing(
    chain: Chain, owner: Any, account: BillingAccount, wrong: str
) -> None:
    attempt = _open(_client(owner), account, amount="10", wallet=chain.payer)
    tx = chain.pay(
        units=10_000_000,
        token=chain.lookalike if wrong == "token" else None,
        to=chain.stranger if wrong == "receiver" else None,
        sender=chain.stranger if wrong == "sender" else None,
    )
    chain.mine(5)
    usdc_transaction_submit(attempt=attempt, tx_hash=tx)
    found = verify_usdc_attempt(attempt=attempt)
    assert {"token": "configured token", "receiver": "receiver", "sender": "attempt's wallet"}[wrong] in found
    attempt.refresh_from_db()
    assert attempt.status == AttemptStatus.FAILED and not account.ledger_entries.exists()
    _books_tie(account)


def test_a_hash_pays_one_attempt_ever_and_a_malformed_hash_is_refused(
    chain: Chain, owner: Any, account: BillingAccount
) -> None:
    client = _client(owner)
    first = _open(client, account, amount="5", wallet=chain.payer)
    second = _open(client, account, amount="5", wallet=chain.payer)
    tx = chain.pay(units=5_000_000)
    chain.mine(3)
    assert _submit(client, first, tx).status_code == 303
    reused = _submit(client, second, tx)
    assert reused.status_code == 400 and "already paid another attempt" in reused.content.decode()
    for bad in ("0x1234", "not a hash", tx[:-1] + "g"):
        answer = _submit(client, second, bad)
        assert answer.status_code == 400 and 'data-field="tx_hash"' in answer.content.decode()
    assert account.ledger_entries.count() == 1
    second.refresh_from_db()
    assert second.status == AttemptStatus.PENDING and second.provider_reference is None
    _books_tie(account)


def test_an_attempt_is_opened_only_by_its_owner_with_a_valid_wallet_and_amount(
    chain: Chain, owner: Any, account: BillingAccount
) -> None:
    stranger = get_user_model().objects.create_user(username="other", password=PASSWORD)
    refused = _client(stranger).post(
        "/billing/credits/usdc", {"amount_usd": "10", "wallet": chain.payer, "account": account.public_id}
    )
    assert refused.status_code == 404
    for data, field in (
        ({"amount_usd": "10", "wallet": "0xnope"}, "wallet"),
        ({"amount_usd": "1", "wallet": chain.payer}, "amount_usd"),
    ):
        answer = _client(owner).post("/billing/credits/usdc", {**data, "account": account.public_id})
        assert answer.status_code == 400 and f'data-field="{field}"' in answer.content.decode()
    assert not PaymentAttempt.objects.exists()


def test_a_reorg_before_the_confirmations_keeps_the_attempt_pending_until_it_expires(
    chain: Chain, owner: Any, account: BillingAccount
) -> None:
    attempt = _open(_client(owner), account, amount="8", wallet=chain.payer)
    before = chain.tester.take_snapshot()
    tx = chain.pay(units=8_000_000)
    usdc_transaction_submit(attempt=attempt, tx_hash=tx)
    assert "confirmations" in verify_usdc_attempt(attempt=attempt)
    chain.tester.revert_to_snapshot(before)  # the block that held it is gone
    chain.mine(5)
    assert "not in the chain" in verify_usdc_attempt(attempt=attempt)
    attempt.refresh_from_db()
    assert attempt.status == AttemptStatus.PENDING and not account.ledger_entries.exists()
    counts = verify_pending_usdc(now=timezone.now() + timedelta(hours=2))  # past BILLING_USDC_PENDING_TTL_SECONDS
    assert counts["expired"] == 1
    attempt.refresh_from_db()
    assert attempt.status == AttemptStatus.EXPIRED
    _books_tie(account)


def _dead_endpoint() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"  # nothing listens there once closed


def test_a_dead_rpc_falls_over_to_the_next_and_no_rpc_at_all_keeps_it_pending(
    chain: Chain, owner: Any, account: BillingAccount, settings: Any
) -> None:
    attempt = _open(_client(owner), account, amount="6", wallet=chain.payer)
    tx = chain.pay(units=6_000_000)
    chain.mine(3)
    usdc_transaction_submit(attempt=attempt, tx_hash=tx)
    settings.BILLING_USDC_RPC_URLS = _dead_endpoint()
    settings.BILLING_USDC_RPC_TIMEOUT_SECONDS = 2
    assert verify_usdc_attempt(attempt=attempt).startswith("the chain could not be read")
    attempt.refresh_from_db()
    assert attempt.status == AttemptStatus.PENDING and not account.ledger_entries.exists()
    settings.BILLING_USDC_RPC_URLS = f"{_dead_endpoint()},{CHAIN_URL}"
    assert verify_usdc_attempt(attempt=attempt) == "credited 6,000,000 credits for 6 USDC"
    _books_tie(account)


def test_an_under_payment_credits_what_arrived_and_is_flagged_for_staff(
    chain: Chain, owner: Any, account: BillingAccount
) -> None:
    attempt = _open(_client(owner), account, amount="25", wallet=chain.payer)
    tx = chain.pay(units=20_500_000)
    chain.mine(3)
    usdc_transaction_submit(attempt=attempt, tx_hash=tx)
    assert verify_usdc_attempt(attempt=attempt) == (
        "credited 20,500,000 credits for 20.5 USDC (underpaid: 25.00 USD asked)"
    )
    attempt.refresh_from_db()
    assert (attempt.amount_usd, attempt.received_usd, attempt.mismatch) == (Decimal("25"), Decimal("20.5"), "underpaid")
    staff = get_user_model().objects.create_superuser(username="staff", password=PASSWORD)
    response = _client(staff).post(
        "/admin/payments/paymentattempt/",
        {"action": "mark_mismatch_resolved", "_selected_action": [attempt.pk]},
        follow=True,
    )
    assert [str(m) for m in response.context["messages"]] == ["1 payments marked resolved"]
    attempt.refresh_from_db()
    assert attempt.mismatch_resolved_at is not None and attempt.mismatch_resolved_by == staff
    _books_tie(account)
