"""Filters on any dimension: `filter=dimension:op:value`, combinable (all must hold).

Operators: `eq`, `not`, `contains` (case-insensitive substring), `in` (values separated by `|`).
A value that no row can hold (an empty one, or one outside the dimension's ValueFormat) is a 400,
because it would otherwise return an empty report that reads as "no traffic".
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
        _check_values(DIMENSIONS[name], op, values, raw)
        filters.append(Filter(DIMENSIONS[name], op, values))
    return filters


def _check_values(dimension: Dimension, op: str, values: tuple[str, ...], raw: str) -> None:
    if values == ("",):
        empty_part = "the list of values" if op == "in" else "the value"
        raise BadRequest(f"invalid filter={raw!r}: {empty_part} after the second colon is empty; "
                         "give the value to match", parameter="filter")
    if "" in values:
        raise BadRequest(f"invalid filter={raw!r}: value {values.index('') + 1} of the list is empty; "
                         "separate values with one | and end the list without one", parameter="filter")
    value_format = dimension.value_format
    if value_format is None:
        return
    for value in values:
        if not value_format.accepts(op, value):
            raise BadRequest(f"invalid value {value!r} in filter={raw!r}: {dimension.name} takes "
                             f"{value_format.expected}", parameter="filter")


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
