"""People: accounts and their roles, in the admin (the admin role's page; superusers see it too).

Roles are edited as rows on the person's page (role, whole fleet or agent groups) and saved through
the one write path, ``accounts_app.services.role_grants_replace`` (the ROLE_CHANGED event), never by
the inline formset itself. What would let someone who manages people become more than that is left
to superusers: making a superuser, Django's groups and raw permissions, and changing a superuser's
account (its password included).
"""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.core.exceptions import ValidationError

from accounts_app.choices import GrantSource
from accounts_app.models import RoleGrant
from accounts_app.services import FLEET_ONLY_ROLES, role_grants_replace

User = get_user_model()
SUPERUSER_ONLY_FIELDS = ("is_superuser", "groups", "user_permissions")


class RoleGrantForm(forms.ModelForm):
    class Meta:
        model = RoleGrant
        fields = ("role", "fleet_wide", "groups")

    def clean(self):
        data = super().clean()
        role, fleet_wide, groups = data.get("role"), data.get("fleet_wide"), data.get("groups")
        if role in FLEET_ONLY_ROLES and not fleet_wide:
            raise ValidationError(f"The {role} role is granted on the whole fleet only (it manages people).")
        if not fleet_wide and not groups:
            raise ValidationError("Tick “whole fleet” or pick the agent groups this role applies to.")
        if fleet_wide and groups:
            raise ValidationError("A whole-fleet role takes no groups: untick “whole fleet” or clear the groups.")
        return data


class RoleGrantInline(admin.TabularInline):
    model = RoleGrant
    form = RoleGrantForm
    extra = 0
    fields = ("role", "fleet_wide", "groups", "source", "granted_by", "granted_at")
    readonly_fields = ("source", "granted_by", "granted_at")
    filter_horizontal = ("groups",)
    verbose_name = "role"
    verbose_name_plural = "roles (each on the whole fleet or on some agent groups)"


@admin.display(description="roles")
def roles_column(user) -> str:
    grants = sorted(user.role_grants.all(), key=lambda grant: grant.role)
    return "; ".join(f"{grant.role} ({grant.scope_label()})" for grant in grants) or "—"


class PeopleAdmin(UserAdmin):
    inlines = (RoleGrantInline,)
    list_display = ("username", "email", "is_active", "is_staff", "is_superuser", roles_column, "last_login")
    list_filter = ("is_active", "is_staff", "is_superuser", "role_grants__role")

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("role_grants__groups")

    def get_fieldsets(self, request, obj=None):
        fieldsets = super().get_fieldsets(request, obj)
        if request.user.is_superuser:
            return fieldsets
        return [(name, {**options, "fields": tuple(field for field in options["fields"]
                                                   if field not in SUPERUSER_ONLY_FIELDS)})
                for name, options in fieldsets]

    def has_change_permission(self, request, obj=None) -> bool:
        # Whoever may change a superuser's account (its password) may become one.
        if obj is not None and obj.is_superuser and not request.user.is_superuser:
            return False
        return super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None) -> bool:
        if obj is not None and obj.is_superuser and not request.user.is_superuser:
            return False
        return super().has_delete_permission(request, obj)

    def save_formset(self, request, form, formset, change):
        """The roles inline: the whole set, through role_grants_replace (one event with before and after)."""
        if formset.model is not RoleGrant:
            return super().save_formset(request, form, formset, change)
        grants = []
        for inline_form in formset.forms:
            data = getattr(inline_form, "cleaned_data", None)
            if not data or data.get("DELETE") or not data.get("role"):
                continue
            groups = [] if data["fleet_wide"] else sorted(group.name for group in data["groups"])
            grants.append((data["role"], groups))
        try:
            role_grants_replace(user=form.instance, grants=grants, actor=request.user.get_username(),
                                source=GrantSource.ADMIN)
        except ValidationError as exc:  # validated by the forms already; a group deleted meanwhile lands here
            self.message_user(request, f"Roles not changed: {'; '.join(exc.messages)}", messages.ERROR)
        formset.new_objects, formset.changed_objects, formset.deleted_objects = [], [], []
        return None


admin.site.unregister(User)
admin.site.register(User, PeopleAdmin)
