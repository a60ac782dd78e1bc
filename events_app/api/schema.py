"""drf-spectacular: the audit API's security scheme."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class AuditTokenAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "events_app.api.auth.AuditTokenAuthentication"
    name = "AuditToken"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer",
                "description": "A per-user audit API token (rfa_...), issued and revoked by an admin."}
