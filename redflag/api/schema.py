"""drf-spectacular extensions: how agents authenticate, in the OpenAPI schema."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class AgentTokenAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "redflag.api.security.AgentTokenAuthentication"
    name = "AgentBearer"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "The agent's access token (renew it at /api/v1/agents/renew). Every request also "
                           "carries X-Machine-ID, X-Request-Nonce and X-Request-Timestamp.",
        }
