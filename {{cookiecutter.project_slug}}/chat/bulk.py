"""Many rows written in one statement, for the turns and replies of a busy second.

Django's bulk_create prepares every field of every row in its SQL compiler, and bulk_update
compiles a CASE WHEN per field and row: for a thousand turns a second, that Python took more
of the process than the database did (bench/README.md). These two write the same rows with one
``INSERT ... RETURNING`` per CHUNK rows, or one ``executemany`` UPDATE, and leave binding the
values to the database driver. Each value is still prepared by its field
(``get_db_prep_save``), as the ORM does, so the database sees exactly what it would.
"""

from collections.abc import Iterable, Sequence
from itertools import batched

from django.db import connections
from django.db.models import Field, Model

CHUNK = 500  # rows per INSERT: SQLite allows 32,766 parameters a statement


def fields_of(model: type[Model], names: list[str]) -> list[Field]:
    fields = [model._meta.get_field(name) for name in names]
    return [field for field in fields if isinstance(field, Field) and field.column]


def insert(objs: Sequence[Model], fields: list[str]) -> None:
    """``bulk_create(objs)`` for these fields (the rest are left to their column defaults);
    sets each object's primary key, from RETURNING, in the order of the rows, as bulk_create
    does on PostgreSQL and SQLite."""
    if not objs:
        return
    model = type(objs[0])
    connection = connections[model._default_manager.db]
    quote = connection.ops.quote_name
    meta_fields = fields_of(model, fields)
    columns = ", ".join(quote(str(field.column)) for field in meta_fields)
    row = "(" + ", ".join(["%s"] * len(meta_fields)) + ")"
    pk = quote(str(model._meta.pk and model._meta.pk.column))
    table = quote(model._meta.db_table)
    with connection.cursor() as cursor:
        for chunk in batched(objs, CHUNK):
            values = [
                field.get_db_prep_save(getattr(obj, field.attname), connection)
                for obj in chunk
                for field in meta_fields
            ]
            rows = ", ".join([row] * len(chunk))
            # Names from the model, quoted; every value is a parameter.
            insert = f"INSERT INTO {table} ({columns}) VALUES {rows} RETURNING {pk}"  # noqa: S608
            cursor.execute(insert, values)
            for obj, (key,) in zip(chunk, cursor.fetchall(), strict=True):
                obj.pk = key
                obj._state.adding = False
                obj._state.db = connection.alias


def update_each(model: type[Model], fields: list[str], rows: Iterable[Sequence], **where) -> None:
    """For each row (the fields' values, then a primary key):
    ``model.objects.filter(pk=row[-1], **where).update(**dict(zip(fields, row)))``, in one
    ``executemany``. ``where`` holds plain equalities on fields (status="streaming")."""
    connection = connections[model._default_manager.db]
    quote = connection.ops.quote_name
    meta_fields = fields_of(model, fields)
    conditions = dict(zip(fields_of(model, list(where)), where.values(), strict=True))
    assignments = ", ".join(f"{quote(str(field.column))} = %s" for field in meta_fields)
    pk = str(model._meta.pk and model._meta.pk.column)
    matches = " AND ".join(
        [f"{quote(pk)} = %s"] + [f"{quote(str(field.column))} = %s" for field in conditions]
    )
    fixed = [field.get_db_prep_save(value, connection) for field, value in conditions.items()]
    params = [
        [
            field.get_db_prep_save(value, connection)
            for field, value in zip(meta_fields, row[:-1], strict=True)
        ]
        + [row[-1]]
        + fixed
        for row in rows
    ]
    if params:
        # Names from the model, quoted; every value is a parameter.
        table = quote(model._meta.db_table)
        update = f"UPDATE {table} SET {assignments} WHERE {matches}"  # noqa: S608
        with connection.cursor() as cursor:
            cursor.executemany(update, params)
