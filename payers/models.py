"""Who pays (SERVER_DERIVES_IDENTITY): the bindings from what LiteLLM logs about a caller to a billing account.

The tables keep their first names (`accounts_*`, db_table): they moved here from accounts without moving data.
"""

from django.conf import settings
from django.db import models
from django.db.models import Q

from accounts.models import BillingAccount

# One binding per value (unique), never empty. Values are matched exactly as LiteLLM logs them.
BINDING_VALUE_MAX_LENGTH = 255


# A key hash as pages show it: this many characters and "…" (a hash of at most 16 is shown whole).
KEY_HASH_SHOWN_CHARS = 12


def shortened_key_hash(key_hash: str) -> str:
    """A key hash as pages and the admin show it: its first 12 characters, never the whole hash."""
    return f"{key_hash[:KEY_HASH_SHOWN_CHARS]}…" if len(key_hash) > KEY_HASH_SHOWN_CHARS + 4 else key_hash


class PayerSource(models.TextChoices):
    """Which binding decided the payer of a record (stored on receipts as `payer_source`)."""

    KEY = "key", "API key"
    TEAM = "team", "Team"
    RUN = "run", "Registered run"
    END_USER = "end_user", "End-user alias"


class ApiKeyBinding(models.Model):
    """A LiteLLM API key, by the hash LiteLLM logs for it (integrations.litellm.keys), bills to an account.

    A gateway key is held by a trusted server that names its own users: its
    records are billed by their registered run or end-user alias instead.
    """

    # sha256 hex (64) for sk- keys, but LiteLLM also logs literals such as
    # `litellm_proxy_master_key` and `hashed-jwt-<sha256>`.
    key_hash = models.CharField(max_length=BINDING_VALUE_MAX_LENGTH, unique=True)
    account = models.ForeignKey(BillingAccount, on_delete=models.PROTECT, related_name="key_bindings")
    is_gateway = models.BooleanField(
        default=False,
        help_text="A trusted server's key: its records bill the registered run or end-user alias they name.",
    )
    label = models.CharField(max_length=200, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        verbose_name = "API key binding"
        db_table = "accounts_apikeybinding"
        constraints = [models.CheckConstraint(condition=~Q(key_hash=""), name="apikeybinding_key_hash_not_empty")]

    def __str__(self) -> str:
        kind = "gateway key" if self.is_gateway else "key"
        return f"{kind} {shortened_key_hash(self.key_hash)}"


class TeamBinding(models.Model):
    """A LiteLLM team (the team of the caller's key) bills to an account."""

    team_id = models.CharField(max_length=BINDING_VALUE_MAX_LENGTH, unique=True)
    account = models.ForeignKey(BillingAccount, on_delete=models.PROTECT, related_name="team_bindings")
    label = models.CharField(max_length=200, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = "team binding"
        db_table = "accounts_teambinding"
        constraints = [models.CheckConstraint(condition=~Q(team_id=""), name="teambinding_team_id_not_empty")]

    def __str__(self) -> str:
        return f"team {self.team_id}"


class RunBinding(models.Model):
    """A registered external-executor run: every attempt of it bills to the account.

    Run ids are any printable text up to 255 characters and may contain "/":
    `end_user = "{run_id}/{attempt}"` is split at its last "/".
    """

    run_id = models.CharField(max_length=BINDING_VALUE_MAX_LENGTH, unique=True)
    account = models.ForeignKey(BillingAccount, on_delete=models.PROTECT, related_name="run_bindings")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = "run binding"
        db_table = "accounts_runbinding"
        constraints = [
            models.CheckConstraint(condition=~Q(run_id=""), name="runbinding_run_id_not_empty"),
            models.CheckConstraint(condition=~Q(run_id__regex=r"[[:cntrl:]]"), name="runbinding_run_id_printable"),
        ]

    def __str__(self) -> str:
        return f"run {self.run_id}"


class EndUserAlias(models.Model):
    """A LiteLLM `end_user` value that bills to an account (owned by the service, never the client)."""

    end_user = models.CharField(max_length=BINDING_VALUE_MAX_LENGTH, unique=True)
    account = models.ForeignKey(BillingAccount, on_delete=models.PROTECT, related_name="aliases")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "end user aliases"
        db_table = "accounts_enduseralias"

    def __str__(self) -> str:
        return self.end_user
