"""Content negotiation of the API (REST_FRAMEWORK's DEFAULT_CONTENT_NEGOTIATION_CLASS).

Its own module: DRF imports it while rest_framework.views loads, so it must not import the views.
"""

from rest_framework import exceptions
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.request import Request


class FallbackContentNegotiation(DefaultContentNegotiation):
    """An Accept header no renderer satisfies (empty, or text/csv on a JSON endpoint) still gets the
    endpoint's first renderer (JSON), never a 406: every answer stays a JSON body that names the problem."""

    def select_renderer(self, request: Request, renderers: list, format_suffix: str | None = None) -> tuple:
        try:
            return super().select_renderer(request, renderers, format_suffix)
        except exceptions.NotAcceptable:
            return renderers[0], renderers[0].media_type
