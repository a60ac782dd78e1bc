from django.urls import path

from reports_app.metrics import metrics_view

urlpatterns = [
    path("metrics", metrics_view, name="metrics"),
]
