"""Agent releases."""

from __future__ import annotations

# --- agent releases ------------------------------------------------------------------------------
# Imported here rather than at the top: this section was appended with the releases feature.
from django import forms
from django.contrib import admin, messages
from django.template.defaultfilters import filesizeformat
from django.utils.html import format_html

from agents_app.models import AgentRelease
from agents_app.services.releases import (
    ReleaseError,
    latest_release_ids,
    release_create_from_upload,
    release_find,
    release_revoke,
    version_key,
)


class AgentReleaseUploadForm(forms.ModelForm):
    """Add an artifact built elsewhere; it is hashed and signed here exactly like a built release."""

    upload = forms.FileField(help_text="A built redflag-agent.pyz.")

    class Meta:
        model = AgentRelease
        fields = ["version", "platform"]

    def clean_version(self):
        version = self.cleaned_data["version"].strip()
        try:
            version_key(version)
        except ReleaseError as error:
            raise forms.ValidationError(str(error)) from None
        return version

    def clean(self):
        cleaned = super().clean()
        version, platform = cleaned.get("version"), cleaned.get("platform")
        if version and platform and release_find(version=version, platform=platform) is not None:
            self.add_error("version", f"Release {version} for platform {platform} already exists.")
        return cleaned


@admin.register(AgentRelease)
class AgentReleaseAdmin(admin.ModelAdmin):
    """Releases, newest first per platform, with the latest one (agents_app.services.releases.latest_release) marked.

    Build with ``manage.py build_agent_release --version V`` or upload here; revoke instead of deleting.
    """

    list_filter = ["platform", ("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["version", "sha256"]
    actions = ["revoke_releases"]
    readonly_fields = ["version", "platform", "artifact", "size", "sha256", "created_at", "created_by", "revoked_at",
                       "key_id", "signature", "manifest"]

    def get_list_display(self, request):
        latest_ids = latest_release_ids()  # one query per page, whatever the number of releases

        @admin.display(description="latest")
        def latest(release):
            if release.pk in latest_ids:
                return format_html('<strong class="latest-release">latest for {}</strong>', release.platform)
            return ""

        return ["version", "platform", latest, "size_display", "sha256_short", "key_id", "created_at",
                "revoked_at"]

    @admin.display(description="size", ordering="size")
    def size_display(self, release):
        return filesizeformat(release.size)

    @admin.display(description="SHA-256")
    def sha256_short(self, release):
        return format_html('<code title="{}">{}…</code>', release.sha256, release.sha256[:16])

    def get_form(self, request, obj=None, **kwargs):
        if obj is None:
            kwargs["form"] = AgentReleaseUploadForm
        return super().get_form(request, obj, **kwargs)

    def get_fields(self, request, obj=None):
        return ["version", "platform", "upload"] if obj is None else self.readonly_fields

    def get_readonly_fields(self, request, obj=None):
        return [] if obj is None else self.readonly_fields

    def save_model(self, request, obj, form, change):
        release = release_create_from_upload(upload=form.cleaned_data["upload"], version=obj.version,
                                             platform=obj.platform, actor=request.user.get_username())
        # The write path made the row; the admin's follow-up (log entry, redirect) needs it in ``obj``.
        obj.__dict__.update(release.__dict__)

    def save_related(self, request, form, formsets, change):
        pass  # no related objects; the default would save the form's m2m against a row it did not create

    def has_delete_permission(self, request, obj=None):
        return False  # revoke instead: agents and the audit trail refer to releases by version

    # Revoking changes what every agent may download: the admin role's (change), not any reader's.
    @admin.action(description="Revoke the selected releases (downloads answer 410)", permissions=["change"])
    def revoke_releases(self, request, queryset):
        revoked = sum(release_revoke(release=release, actor=request.user.get_username()) for release in queryset)
        self.message_user(request, f"Revoked {revoked} release(s).", messages.SUCCESS)
