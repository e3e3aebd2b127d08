"""The admin index opens on the books' health (billing_project.books_health), above the app list."""

from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from django.template.response import TemplateResponse

from billing_project.books_health import books_health

_stock_index = admin.site.index


def index_with_books_health(request: HttpRequest, extra_context: dict[str, Any] | None = None) -> TemplateResponse:
    return _stock_index(request, extra_context={**(extra_context or {}), "books_health": books_health()})


admin.site.index = index_with_books_health  # type: ignore[method-assign]
admin.site.index_template = "admin/books_health_index.html"
