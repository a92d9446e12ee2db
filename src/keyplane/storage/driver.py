"""INSERTs whose result nobody reads, and reads of one row by key, run on SQLite by the driver's
own cursor.

SQLAlchemy's ``Connection.execute`` costs ~25 µs of Python per statement on SQLite (building the
execution context, the parameters, the result), against ~3 µs for the driver's
``sqlite3.Connection.execute``; a create runs five such INSERTs on the write lane's one thread.
:func:`insert` compiles a Core INSERT once per set of columns given and hands the driver the SQL
and the values in order, each through its type's bind processor as SQLAlchemy would (a Boolean
becomes 0 or 1). Anything else that needs SQLAlchemy's side of an execute (another engine, a
column default to fill in) goes through ``Connection.execute`` as before, and so does a
statement the driver refuses: it runs again through SQLAlchemy, which raises the error it would
have raised (an INSERT that fails on SQLite changes nothing, and the write it belongs to is rolled
back as a whole when the error propagates).

:func:`first` does the same for a statement that returns at most a row or two (a SELECT by key,
an UPDATE ... RETURNING of one row): it fetches them all (a RETURNING statement left unfinished
would hold up the COMMIT) and hands back the first as a named tuple, each value through its
type's result processor, as SQLAlchemy's ``Row`` would carry it. :func:`statement` runs a
plain statement with no parameters and no result (the write lane's ``SAVEPOINT`` and ``RELEASE``).
"""

from __future__ import annotations

import sqlite3
from collections import namedtuple
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Insert
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ClauseElement, Executable

__all__ = ["first", "insert", "statement"]

#: How the driver runs an INSERT: its SQL, the columns in the order of its values, and the bind
#: processors to apply (by position).
_Plan = tuple[str, tuple[str, ...], tuple[tuple[int, Callable[[Any], Any]], ...]]
#: Per (statement, columns given): its plan, or None when it needs SQLAlchemy (a default).
_plans: dict[tuple[Insert, tuple[str, ...]], _Plan | None] = {}


def insert(
    conn: Connection, statement: Insert, rows: Mapping[str, Any] | Sequence[Mapping[str, Any]]
) -> None:
    """``conn.execute(statement, rows)``, by the driver on SQLite: one row (a mapping) or many
    rows with the same columns."""
    if conn.dialect.name != "sqlite" or not rows:
        conn.execute(statement, rows)
        return
    first = rows if isinstance(rows, Mapping) else rows[0]
    columns = tuple(first)
    key = (statement, columns)
    try:
        plan = _plans[key]
    except KeyError:
        plan = _plans[key] = _plan(conn, statement, columns)
    if plan is None:
        conn.execute(statement, rows)
        return
    sql, order, processors = plan
    driver = conn.connection.driver_connection
    assert isinstance(driver, sqlite3.Connection)
    try:
        if isinstance(rows, Mapping):
            driver.execute(sql, _values(rows, order, processors))
        else:
            driver.executemany(sql, [_values(row, order, processors) for row in rows])
    except sqlite3.Error:
        conn.execute(statement, rows)  # raises as SQLAlchemy does (see the module docstring)


def _values(
    row: Mapping[str, Any],
    order: tuple[str, ...],
    processors: tuple[tuple[int, Callable[[Any], Any]], ...],
) -> list[Any]:
    values = [row[name] for name in order]
    for at, process in processors:
        values[at] = process(values[at])
    return values


def _plan(conn: Connection, statement: Insert, columns: tuple[str, ...]) -> _Plan | None:
    compiled = statement.compile(dialect=conn.dialect, column_keys=list(columns))
    order = compiled.positiontup
    if compiled.insert_prefetch or compiled.postfetch or order is None:
        return None
    if len(order) != len(columns) or set(order) != set(columns):
        return None
    given = compiled._bind_processors
    processors: list[tuple[int, Callable[[Any], Any]]] = []
    for at, name in enumerate(order):
        process = given.get(name)
        if process is None:
            continue
        if not callable(process):  # a tuple type's processors: not a plain INSERT's
            return None
        processors.append((at, process))
    return compiled.string, tuple(order), tuple(processors)


#: How the driver runs a one-row read: its SQL, the parameters in order, the values of those the
#: statement holds itself (a literal it was built with), the row's type and the result
#: processors to apply (by position).
_ReadPlan = tuple[
    str, tuple[str, ...], dict[str, Any], Any, tuple[tuple[int, Callable[[Any], Any]], ...]
]
_reads: dict[Executable, _ReadPlan | None] = {}


def first(conn: Connection, statement: Executable, params: Mapping[str, Any]) -> Any:
    """``conn.execute(statement, params).first()``, by the driver on SQLite: the first row (a
    named tuple of the statement's columns), or None."""
    if conn.dialect.name != "sqlite":
        return conn.execute(statement, params).first()
    try:
        plan = _reads[statement]
    except KeyError:
        plan = _reads[statement] = _read_plan(conn, statement)
    if plan is None:
        return conn.execute(statement, params).first()
    sql, order, held, row_type, processors = plan
    given = {**held, **params}
    try:
        values = [given[name] for name in order]
    except KeyError:  # a parameter missing: SQLAlchemy says so
        return conn.execute(statement, params).first()
    driver = conn.connection.driver_connection
    assert isinstance(driver, sqlite3.Connection)
    try:
        rows = driver.execute(sql, values).fetchall()
    except sqlite3.Error:
        return conn.execute(statement, params).first()  # raises as SQLAlchemy does
    if not rows:
        return None
    row = list(rows[0])
    for at, process in processors:
        row[at] = process(row[at])
    return row_type._make(row)


def _read_plan(conn: Connection, statement: Executable) -> _ReadPlan | None:
    if not isinstance(statement, ClauseElement):
        return None
    compiled = statement.compile(dialect=conn.dialect)
    if not isinstance(compiled, SQLCompiler):
        return None
    order = compiled.positiontup
    columns = compiled._result_columns
    if (
        order is None
        or not columns
        or compiled.post_compile_params
        or compiled.literal_execute_params
    ):
        return None
    held: dict[str, Any] = {}
    for name in order:
        bind = compiled.binds[name]
        if bind.callable is not None:
            return None
        if not bind.required:
            held[name] = bind.value
    names = [column[0] for column in columns]
    if len(set(names)) != len(names) or not all(name.isidentifier() for name in names):
        return None
    processors: list[tuple[int, Callable[[Any], Any]]] = []
    for at, column in enumerate(columns):
        process = column[3].result_processor(conn.dialect, None)
        if process is not None:
            processors.append((at, process))
    row_type = namedtuple("Row", names)  # type: ignore[misc]
    return compiled.string, tuple(order), held, row_type, tuple(processors)


def statement(conn: Connection, sql: str) -> None:
    """``conn.exec_driver_sql(sql)`` for a statement with no parameters and no result, by the
    driver on SQLite; one the driver refuses runs again through SQLAlchemy, which raises."""
    if conn.dialect.name != "sqlite":
        conn.exec_driver_sql(sql)
        return
    driver = conn.connection.driver_connection
    assert isinstance(driver, sqlite3.Connection)
    try:
        driver.execute(sql)
    except sqlite3.Error:
        conn.exec_driver_sql(sql)
