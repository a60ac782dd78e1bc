from django.urls import path

from advisories_app import views

app_name = "advisories"

urlpatterns = [
    path("advisories/exposures.<str:export_format>", views.export, name="export"),
    path("api/v1/advisories/exposures", views.ExposuresView.as_view(), name="api-exposures"),
]
