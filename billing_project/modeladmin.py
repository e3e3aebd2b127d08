"""Admin pieces that stay fast on tables with millions of rows (receipts, ledger entries).

- EstimatedCountPaginator: counts exactly up to a cap, then asks the planner,
  so a page view never runs COUNT(*) over the whole table.
- InputListFilter: a text box filter (account id) instead of a link per
  related row, which would list every account.
- IndexedValuesFilter: the distinct values of an indexed column, read with a
  loose index scan (one index probe per value) instead of SELECT DISTINCT.
- ExactSearchMixin: search by exact equality, which uses the btree indexes
  (Django's "=field" search is iexact, i.e. UPPER(col) = UPPER(%s): a full scan).
"""

import json
from collections.abc import Iterator
from typing import Any

from django.contrib import admin
from django.contrib.admin.views.main import ChangeList
from django.core.paginator import Paginator
from django.db import connections
from django.db.models import Model, Q, QuerySet
from django.http import HttpRequest, QueryDict
from django.utils.functional import cached_property


class EstimatedCountPaginator(Paginator):
    """Exact counts up to `exact_limit` rows; beyond that the planner's estimate (never below the cap)."""

    exact_limit = 10_000

    @cached_property
    def count(self) -> int:
        queryset = self.object_list
        if not isinstance(queryset, QuerySet):
            return super().count
        capped = queryset.order_by().values("pk")[: self.exact_limit + 1].count()
        if capped <= self.exact_limit:
            return capped
        return max(capped, self._planner_estimate(queryset))

    @staticmethod
    def _planner_estimate(queryset: QuerySet) -> int:
        try:
            plan = json.loads(queryset.order_by().values("pk").explain(format="json"))
            return int(plan[0]["Plan"]["Plan Rows"])
        except (ValueError, KeyError, IndexError, TypeError):
            return 0


class InputListFilter(admin.SimpleListFilter):
    """A sidebar filter with a text box. Subclasses implement `queryset()` for `self.value()`."""

    template = "admin/input_filter.html"
    placeholder = ""

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return []

    def has_output(self) -> bool:
        return True

    def choices(self, changelist: ChangeList) -> Iterator[dict[str, Any]]:
        others = QueryDict(changelist.get_query_string(remove=[self.parameter_name, "p"]).lstrip("?"))
        yield {
            "parameter_name": self.parameter_name,
            "value": self.value() or "",
            "placeholder": self.placeholder,
            "hidden": [(key, value) for key, values in others.lists() for value in values],
            "clear_url": changelist.get_query_string(remove=[self.parameter_name]),
            "selected": self.value() is not None,
        }


class IndexedValuesFilter(admin.SimpleListFilter):
    """Links for each distinct value of `field_name`, found by a loose index scan.

    The column must lead a btree index. At most `max_values` values are listed.
    """

    field_name: str = ""
    max_values = 100

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        model: type[Model] = model_admin.model
        connection = connections[model_admin.get_queryset(request).db]
        quote = connection.ops.quote_name
        table = quote(model._meta.db_table)
        column = quote(model._meta.get_field(self.field_name).column)
        sql = f"""
            WITH RECURSIVE walk(value) AS (
                (SELECT {column} FROM {table} WHERE {column} IS NOT NULL ORDER BY {column} LIMIT 1)
                UNION ALL
                SELECT (SELECT {column} FROM {table} WHERE {column} > walk.value ORDER BY {column} LIMIT 1)
                  FROM walk WHERE walk.value IS NOT NULL
            )
            SELECT value FROM walk WHERE value IS NOT NULL LIMIT %s
        """
        with connection.cursor() as cursor:
            cursor.execute(sql, [self.max_values])
            values = [row[0] for row in cursor.fetchall()]
        return [(value, value or "(empty)") for value in values]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = self.value()
        if value is None:
            return queryset
        return queryset.filter(**{self.field_name: value})


class ExactSearchMixin:
    """Search = an OR of exact matches on `exact_search_fields` (index lookups, no UPPER(), no LIKE)."""

    exact_search_fields: tuple[str, ...] = ()

    def get_search_results(self, request: HttpRequest, queryset: QuerySet, search_term: str) -> tuple[QuerySet, bool]:
        term = search_term.strip()
        if not term:
            return queryset, False
        condition = Q()
        for field in self.exact_search_fields:
            condition |= Q(**{field: term})
        return queryset.filter(condition), False


class ReadOnlyMixin:
    """Admin for immutable records (ledger entries, receipts): view only."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def adopt_created_row(obj: Model, created: Model) -> None:
    """Make the admin's unsaved instance the row a service just created (so the admin can go on with it)."""
    for field in obj._meta.concrete_fields:
        setattr(obj, field.attname, getattr(created, field.attname))
    obj._state.adding = False
    obj._state.db = created._state.db
