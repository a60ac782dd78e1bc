from __future__ import annotations

from datetime import timedelta

from django import forms
from django.contrib import admin, messages
from django.template.response import TemplateResponse
from django.utils.html import format_html

from redflag.models import ServerSettings
from tokens_app.choices import TokenStatus
from tokens_app.models import RegistrationToken, SigningKey
from tokens_app.services import token_create, token_revoke, token_update

STATUS_COLOURS = {
    TokenStatus.ACTIVE: "#2e7d32",
    TokenStatus.EXPIRED: "#8d6e63",
    TokenStatus.REVOKED: "#c62828",
    TokenStatus.EXHAUSTED: "#ef6c00",
}


TOKEN_VARIABLE = "REDFLAG_REGISTRATION_TOKEN"
LIST_TIME = "%Y-%m-%d %H:%M"  # times in the list, UTC (the server's time zone)


def install_commands(secret: str) -> dict[str, str]:
    """The one-liners shown with a new token. The URL is the configured public URL, never the Host header.

    The token travels in an environment variable, set by a shell builtin (export, $env:), never as an
    argument: every local user can read any process's arguments, not another user's environment.
    """
    base = (ServerSettings.current().public_url or "https://YOUR-REDFLAG-SERVER").rstrip("/")
    return {
        "python": python_agent_command(secret, base),
        "linux": f"export {TOKEN_VARIABLE}='{secret}'; curl -sfL {base}/install/linux.sh"
                 f" | sudo --preserve-env={TOKEN_VARIABLE} bash",
        "windows": f"$env:{TOKEN_VARIABLE}='{secret}'; & ([scriptblock]::Create((irm {base}/install/windows.ps1)))",
        "agent": f"export {TOKEN_VARIABLE}='{secret}'; sudo --preserve-env={TOKEN_VARIABLE}"
                 f" python3 {INSTALLED_AGENT} --config {INSTALLED_CONFIG} register --server {base}",
    }


# Where the Linux installer (templates/install/linux.sh) puts the agent and its config.
INSTALLED_AGENT = "/usr/local/lib/redflag/redflag-agent.pyz"
INSTALLED_CONFIG = "/etc/redflag/agent/config.json"
# Where the Python-only command keeps the agent, its three dependencies, its config and its state.
PYTHON_AGENT_DIRECTORY = "$HOME/redflag-agent"


def python_agent_command(secret: str, base: str) -> str:
    """The agent for a machine that has only Python 3.9+: the server's latest release (redflag-agent.pyz) and
    its three dependencies in a virtual environment under the user's home, registered, then run in the foreground.

    The config goes where --config says (without it the agent would write /etc/redflag/agent, root's), the
    token travels in the environment and is unset once used, and the download uses Python, not curl, which such
    a machine may lack. The release comes over the server's own URL, as the installer script itself does; the
    Linux installer also checks the release's signed manifest, which this short path leaves out.
    """
    directory = PYTHON_AGENT_DIRECTORY
    agent = f'"{directory}/venv/bin/python" "{directory}/redflag-agent.pyz" --config "{directory}/config.json"'
    return "\n".join((
        f"export {TOKEN_VARIABLE}='{secret}'",
        f'mkdir -p "{directory}" && python3 -m venv "{directory}/venv"',
        f'"{directory}/venv/bin/pip" install --quiet requests psutil cryptography',
        f"python3 -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])'"
        f' {base}/install/redflag-agent.pyz "{directory}/redflag-agent.pyz"',
        f"{agent} register --server {base}",
        f"unset {TOKEN_VARIABLE}",
        f"{agent} run",
    ))


class StatusFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request, model_admin):
        return TokenStatus.choices

    def queryset(self, request, queryset):
        if self.value() in TokenStatus.values:
            return queryset.filter(computed_status=self.value())
        return queryset


class RegistrationTokenCreateForm(forms.ModelForm):
    expires_in_hours = forms.IntegerField(min_value=1, initial=24, help_text="Hours until the token expires.")

    class Meta:
        model = RegistrationToken
        fields = ("label", "max_seats")

    def clean_expires_in_hours(self):
        hours = self.cleaned_data["expires_in_hours"]
        cap = ServerSettings.current().registration_token_max_hours
        if hours > cap:
            raise forms.ValidationError(f"At most {cap} hours (Server settings: registration token max hours).")
        return hours


@admin.register(RegistrationToken)
class RegistrationTokenAdmin(admin.ModelAdmin):
    list_display = ("label", "prefix", "status_badge", "seats", "expires", "created")
    list_filter = (StatusFilter,)
    search_fields = ("label", "prefix")
    actions = ("revoke_selected",)
    readonly_fields = ("prefix", "status_badge", "seats", "expires_at", "revoked_at", "created_by", "created_at")
    fields = ("label", *readonly_fields)

    def get_queryset(self, request):
        return super().get_queryset(request).with_status().select_related("created_by")

    def get_form(self, request, obj=None, change=False, **kwargs):
        if obj is None:
            kwargs["form"] = RegistrationTokenCreateForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fields(self, request, obj=None):
        return ("label", "max_seats", "expires_in_hours") if obj is None else self.fields

    def get_readonly_fields(self, request, obj=None):
        return () if obj is None else self.readonly_fields

    @admin.display(description="status", ordering="computed_status")
    def status_badge(self, token: RegistrationToken):
        status = TokenStatus(getattr(token, "computed_status", None) or token.status)
        return format_html(
            '<span style="color:#fff;background:{};padding:2px 8px;border-radius:8px">{}</span>',
            STATUS_COLOURS[status],
            status.label,
        )

    @admin.display(description="seats used")
    def seats(self, token: RegistrationToken) -> str:
        return f"{token.seats_used} / {token.max_seats}"

    @admin.display(description="expires", ordering="expires_at")
    def expires(self, token: RegistrationToken):
        return format_html('<span style="white-space:nowrap">{}</span>', f"{token.expires_at:{LIST_TIME}}")

    @admin.display(description="created", ordering="created_at")
    def created(self, token: RegistrationToken):
        """Who and when in one column, so the list fits a 1366 px screen (tests/browser/test_layout_browser.py)."""
        by = f" by {token.created_by}" if token.created_by else ""
        return format_html('<span style="white-space:nowrap">{}</span>{}', f"{token.created_at:{LIST_TIME}}", by)

    def save_model(self, request, obj, form, change):
        if change:  # the label is the only editable field
            token_update(token=obj, label=form.cleaned_data["label"], actor=request.user.get_username())
            return
        token, secret = token_create(
            label=form.cleaned_data["label"],
            max_seats=form.cleaned_data["max_seats"],
            expires_in=timedelta(hours=form.cleaned_data["expires_in_hours"]),
            created_by=request.user,
        )
        obj.pk = token.pk
        obj.refresh_from_db()
        request.redflag_new_token_secret = secret

    def response_add(self, request, obj, post_url_continue=None):
        """Show the plaintext once, in this response only (never in a message or the session)."""
        secret = request.redflag_new_token_secret
        response = TemplateResponse(
            request,
            "admin/tokens_app/registrationtoken/created.html",
            {
                **self.admin_site.each_context(request),
                "opts": self.model._meta,
                "title": "Registration token created",
                "token": obj,
                "secret": secret,
                "commands": install_commands(secret),
                "public_url_missing": not ServerSettings.current().public_url,
                "insecure_public_url": ServerSettings.current().insecure_public_url,
            },
        )
        response["Cache-Control"] = "no-store"
        return response

    @admin.action(description="Revoke selected registration tokens", permissions=["change"])
    def revoke_selected(self, request, queryset):
        revoked = sum(token_revoke(token=token, actor=request.user.get_username()) for token in queryset)
        self.message_user(request, f"Revoked {revoked} token(s).", messages.SUCCESS)


@admin.register(SigningKey)
class SigningKeyAdmin(admin.ModelAdmin):
    list_display = ("key_id", "is_primary", "created_at", "retired_at")
    readonly_fields = ("key_id", "public_key", "is_primary", "created_at", "retired_at")

    def has_add_permission(self, request) -> bool:
        return False  # keys come from `manage.py rotate_signing_key`

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
