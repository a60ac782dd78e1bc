"""``has_tag``: one element of a JSON list of strings equals the value, on SQLite and PostgreSQL alike.

Django's JSON ``contains`` is not available on SQLite, and a text match on the stored JSON would depend
on each database's escaping; this lookup asks each database for list membership in its own terms.
"""

from django.db.models import JSONField, Lookup


@JSONField.register_lookup
class HasTag(Lookup):
    lookup_name = "has_tag"
    prepare_rhs = False

    def get_prep_lookup(self):
        if not isinstance(self.rhs, str):
            raise TypeError("has_tag compares with one tag (a string)")
        return self.rhs

    def get_db_prep_lookup(self, value, connection):
        return "%s", [value]

    def as_sql(self, compiler, connection):  # SQLite (JSON1)
        lhs, lhs_params = self.process_lhs(compiler, connection)
        rhs, rhs_params = self.process_rhs(compiler, connection)
        return (f"EXISTS (SELECT 1 FROM json_each({lhs}) WHERE json_each.type = 'text' "
                f"AND json_each.value = {rhs})", [*lhs_params, *rhs_params])

    def as_postgresql(self, compiler, connection):
        lhs, lhs_params = self.process_lhs(compiler, connection)
        rhs, rhs_params = self.process_rhs(compiler, connection)
        return f"({lhs} @> jsonb_build_array({rhs}::text))", [*lhs_params, *rhs_params]
