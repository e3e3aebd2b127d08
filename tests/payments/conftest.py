from collections.abc import Iterator
from typing import Any

import pytest

from tests.stripe_standin import SECRET_KEY, WEBHOOK_SECRET, StripeStandIn


@pytest.fixture
def stripe_api(settings: Any) -> Iterator[StripeStandIn]:
    """Stripe's API answered by a loopback stand-in; two webhook secrets configured (the second current)."""
    standin = StripeStandIn().start()
    settings.STRIPE_SECRET_KEY = SECRET_KEY
    settings.STRIPE_WEBHOOK_SECRET = f"whsec_old_rotated_out_{'z' * 20},{WEBHOOK_SECRET}"
    settings.STRIPE_API_BASE = standin.base_url
    yield standin
    standin.stop()
