"""README's "Set up LiteLLM in five minutes", run exactly as written (issue 20), against the real service.

The three blocks are read from README.md: the pip command installs the plugin into LiteLLM's environment
(.venv-litellm), the config is used as is but for `model_list` (a mocked model: no provider key here), and
the shell block starts the proxy with each value written once. Then, through the real proxy:
- an account with 1,000 credits makes a call without max_tokens charged ~14 credits: allowed (its hold is
  sized for the output its key uses, not the model's 16,384-token limit), billed, hold settled;
- the same account with nothing left: an OpenAI SDK client gets HTTP 402 whose message is the sentence.
A wrong plugin token is one startup error naming the setting.
"""

import json
import os
import re
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml

from accounts.services import grant_credits
from holds.models import CreditHold
from integrations.litellm.keys import LITELLM_MASTER_KEY_HASH
from payers.models import ApiKeyBinding
from receipts.models import ChargeReceipt
from tests import processes
from tests.factories import BillingAccountFactory
from tests.gunicorn_server import Service
from tests.litellm_proxy import LITELLM_PYTHON, base_env, mocked_model, proxy_config, running_litellm_proxy
from tests.processes import ROOT, RunningProcess, free_port, serving

pytestmark = pytest.mark.e2e

VENV_BIN = LITELLM_PYTHON.parent
MASTER_KEY = "sk-master-five-minutes"


def readme_blocks() -> tuple[str, str, str]:
    """The section's ```sh, ```yaml and ```sh blocks, in order."""
    section = (ROOT / "README.md").read_text().split("## Set up LiteLLM in five minutes", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```(sh|yaml)\n(.*?)```", section, re.S)
    assert [kind for kind, _ in blocks] == ["sh", "yaml", "sh"], blocks
    return blocks[0][1], blocks[1][1], blocks[2][1]


def test_the_readme_setup_installs_the_package_not_the_repository(tmp_path: Path) -> None:
    install, _, _ = readme_blocks()
    env = {**base_env(), "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", "-ec", install], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    # Where the package is found, without importing LiteLLM (the proxy tests load the hook itself).
    probe = (
        "import importlib.util, json\n"
        "print(json.dumps({'plugin': importlib.util.find_spec('litellm_billing_plugin.hook').origin, "
        "'service': [m for m in ('accounts', 'receipts', 'invoices', 'billing_project', 'integrations', 'tests') "
        "if importlib.util.find_spec(m)]}))"
    )
    plugin_env = {**env, "BILLING_SERVICE_URL": "http://127.0.0.1:9", "BILLING_AUTHORIZE_TOKEN": "t"}
    found = subprocess.run(
        [str(LITELLM_PYTHON), "-c", probe], cwd=tmp_path, env=plugin_env, capture_output=True, text=True, timeout=120
    )
    assert found.returncode == 0, found.stderr[-2000:]
    seen = json.loads(found.stdout.strip().splitlines()[-1])
    assert "site-packages" in seen["plugin"] and seen["service"] == []


def test_the_readme_setup_bills_a_call_and_a_client_reads_the_402(live_service: Service, tmp_path: Path) -> None:
    _, config_text, start = readme_blocks()
    config = yaml.safe_load(config_text)
    config["model_list"] = [mocked_model("gpt-4o-mini")]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    port = free_port()
    command = start.replace("--port 4000", f"--port {port}")
    assert command != start
    env = {
        **base_env(),
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
        "BILLING_AUTHORIZE_TOKEN": os.environ["BILLING_AUTHORIZE_TOKEN"],
        "BILLING_INGEST_TOKEN": os.environ["BILLING_INGEST_TOKEN"],
        "LITELLM_MASTER_KEY": MASTER_KEY,
        "DATABASE_URL": "postgresql://must-not-reach-litellm/",  # the block's `env -u` keeps it from LiteLLM
        "DEFAULT_FLUSH_INTERVAL_SECONDS": "1",
    }
    command = command.replace("http://127.0.0.1:8000", live_service.base_url)
    account = BillingAccountFactory(name="Five minutes Inc.")
    ApiKeyBinding.objects.create(key_hash=LITELLM_MASTER_KEY_HASH, account=account)
    grant_credits(account=account, amount_credits=1_000, reason="grant", idempotency_key="five-minutes")

    proxy = RunningProcess.start(
        "litellm (README)",
        ["bash", "-c", command],
        port=port,
        log_path=tmp_path / "litellm.log",
        env=env,
        cwd=tmp_path,
        own_group=True,
    )
    with serving(proxy, "/health/liveliness", deadline_s=120.0):
        with httpx.Client(base_url=proxy.base_url, timeout=60.0, trust_env=False) as client:
            answer = client.post(
                "/v1/chat/completions",
                json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello."}]},
                headers={"Authorization": f"Bearer {MASTER_KEY}"},
            )
        assert answer.status_code == 200, answer.text
        call_id = answer.headers["x-litellm-call-id"]
        hold = CreditHold.objects.get(litellm_call_id=call_id)
        assert hold.held_credits < 1_000  # the model's whole output limit would be ~9,833
        processes.wait_until(
            lambda: CreditHold.objects.filter(litellm_call_id=call_id, status="settled").exists(),
            "the hold settled by the callback the plugin pointed at the service",
            deadline_s=45.0,
            detail=proxy.log_tail,
        )
        receipt = ChargeReceipt.objects.get(litellm_call_id=call_id)
        assert 0 < receipt.charged_credits < 100
        account.refresh_from_db()
        assert account.balance_credits == 1_000 - receipt.charged_credits

        # Nothing left: an OpenAI SDK client reads HTTP 402 with the sentence as its message.
        grant_credits(
            account=account, amount_credits=-account.balance_credits, reason="adjustment", idempotency_key="spent"
        )
        sdk = (
            "import json, openai\n"
            f"client = openai.OpenAI(base_url='{proxy.base_url}/v1', api_key='{MASTER_KEY}', max_retries=0)\n"
            "try:\n"
            "    client.chat.completions.create(model='gpt-4o-mini', messages=[{'role': 'user', 'content': 'hi'}])\n"
            "except openai.APIStatusError as exc:\n"
            "    print(json.dumps({'status': exc.status_code, 'message': exc.message, 'body': exc.body}))\n"
        )
        done = subprocess.run(
            [str(LITELLM_PYTHON), "-c", sdk], cwd=tmp_path, env=base_env(), capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr[-2000:]
        refused = json.loads(done.stdout.strip().splitlines()[-1])
    assert refused["status"] == 402
    assert "This account's prepaid credit is used up: $0.00 available, this call needs up to $" in refused["message"]
    assert refused["body"]["provider_specific_fields"]["reason"] == "insufficient_credits"


def test_a_wrong_plugin_token_is_one_clear_startup_error(live_service: Service, tmp_path: Path) -> None:
    config = proxy_config(mocked_model(), plugin=True)
    env = {"BILLING_SERVICE_URL": live_service.base_url, "BILLING_AUTHORIZE_TOKEN": "not-the-authorize-token"}
    with running_litellm_proxy(config, workdir=tmp_path, env=env) as proxy:
        processes.wait_until(
            lambda: "billing plugin:" in proxy.log_text(), "the plugin's startup check", deadline_s=30.0
        )
        errors = [line for line in proxy.log_text().splitlines() if "billing plugin:" in line]
    assert len(errors) == 1, errors
    assert "refuses BILLING_AUTHORIZE_TOKEN (HTTP 401)" in errors[0]
