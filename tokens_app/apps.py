from django.apps import AppConfig


class TokensAppConfig(AppConfig):
    name = "tokens_app"
    verbose_name = "Tokens and keys"
