"""Sign-in routes, mounted by redflag/urls.py ahead of the admin so that its log-in address is this page."""

from django.urls import include, path

from accounts_app.signin import views

urlpatterns = [
    path("admin/login/", views.sign_in, name="sign_in"),
    path("accounts/login/", views.sign_in),  # allauth's own address for it (account_login), same page
    path("accounts/", include("allauth.urls")),
]
