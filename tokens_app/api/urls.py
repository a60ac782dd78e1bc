from django.urls import path

from tokens_app.api.views import SigningKeysView

urlpatterns = [
    path("api/v1/signing-keys", SigningKeysView.as_view(), name="signing-keys"),
]
