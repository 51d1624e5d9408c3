"""Filters on any dimension: `filter=dimension:op:value`, combinable (all must hold).

Operators: `eq`, `not`, `contains` (case-insensitive substring), `in` (values separated by `|`).
"""

from __future__ import annotations

from dataclasses import dataclass

from query.dimensions import DIMENSIONS, Dimension
from query.params import BadRequest

OPERATORS = ("eq", "not", "contains", "in")
MAX_FILTERS = 10


@dataclass(frozen=True, slots=True)
class Filter:
    dimension: Dimension
    op: str
    values: tuple[str, ...]


def parse_filters(query) -> list[Filter]:
    """Read every `filter` parameter; a malformed one is a 400 naming it."""
    raw_filters = query.getall("filter", [])
    if len(raw_filters) > MAX_FILTERS:
        raise BadRequest(f"{len(raw_filters)} filters given; at most {MAX_FILTERS} are allowed", parameter="filter")
    filters = []
    for raw in raw_filters:
        parts = raw.split(":", 2)
        if len(parts) != 3:
            raise BadRequest(f"invalid filter={raw!r}: write dimension:op:value, e.g. country:eq:DE", parameter="filter")
        name, op, value = parts
        if name not in DIMENSIONS:
            raise BadRequest(f"unknown filter dimension {name!r} in filter={raw!r}; known: {', '.join(DIMENSIONS)}",
                             parameter="filter")
        if op not in OPERATORS:
            raise BadRequest(f"unknown filter operator {op!r} in filter={raw!r}; use one of {', '.join(OPERATORS)}",
                             parameter="filter")
        values = tuple(value.split("|")) if op == "in" else (value,)
        filters.append(Filter(DIMENSIONS[name], op, values))
    return filters


def _escape_like(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def condition(item: Filter, params: list) -> str:
    """Return the SQL condition of one filter, appending its values to `params`."""
    expression = item.dimension.expression
    if item.op == "in":
        params.append(list(item.values))
        clause = f"{expression} = ANY(${len(params)}::text[])"
    elif item.op == "contains":
        params.append(_escape_like(item.values[0]))
        clause = f"{expression} ILIKE '%' || ${len(params)} || '%'"
    elif item.op == "not":
        params.append(item.values[0])
        clause = f"{expression} IS DISTINCT FROM ${len(params)}"
    else:
        params.append(item.values[0])
        clause = f"{expression} = ${len(params)}"
    if item.dimension.condition:
        if item.op == "not":
            # "page is not /a" keeps every event except pageviews of /a.
            return f"NOT ({item.dimension.condition} AND {expression} IS NOT DISTINCT FROM ${len(params)})"
        return f"({item.dimension.condition} AND {clause})"
    return clause
