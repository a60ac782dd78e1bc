import json

from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.core.paginator import Paginator
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html
from django.utils.http import urlencode

from events_app.models import AuditApiToken, SystemEvent
from events_app.querysets import TEXT_SCAN_WINDOW
from events_app.services import audit_token_issue, audit_token_revoke
from redflag.admin_scoping import ScopedAdminMixin
from redflag.admin_site import ReadOnlyAdminMixin


class CappedCountPaginator(Paginator):
    """Counts at most COUNT_CAP + 1 rows: an exact COUNT(*) of ten million events is seconds on every page.

    The list then pages through the newest COUNT_CAP rows of the filter (OFFSET pages, whose cost grows with
    depth, stay shallow) and says "more than" (templates/admin/events_app/systemevent/pagination.html);
    the auditor's history (/audit/events/) pages through every row with a keyset cursor.
    """

    COUNT_CAP = 5_000

    @property
    def count(self) -> int:
        if not hasattr(self, "_capped_count"):
            self._capped_count = self.object_list[: self.COUNT_CAP + 1].count()
        return self._capped_count

    @property
    def count_is_capped(self) -> bool:
        return self.count > self.COUNT_CAP


@admin.register(SystemEvent)
class SystemEventAdmin(ScopedAdminMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    """Read-only history: events are append-only, for admins and auditors alike.

    Nothing on this list reads the whole table: the count is capped (CappedCountPaginator), there is no
    date drill-down (its year and month links are a DISTINCT over every row) and no facet counts; the
    date filter's fixed ranges (today, past 7 days...) use the time index. The search (message, hostname:
    no index serves "contains") covers the newest ``search_window`` events of the other filters, as the
    history's text filter does a page; the history goes on further back.
    """

    list_display = ("created_at", "event_type", "event_subtype", "severity", "component", "hostname", "actor",
                    "origin", "message", "history_link")
    list_filter = ("event_type", "event_subtype", "severity", "component", "origin", "created_at")
    search_fields = ("message", "hostname")
    list_select_related = False
    show_full_result_count = False  # a COUNT(*) over millions of rows on every page is not free
    paginator = CappedCountPaginator
    list_per_page = 50  # as the history: rendering a row costs more than reading it
    search_window = TEXT_SCAN_WINDOW
    show_facets = admin.ShowFacets.NEVER  # a count per filter choice, each over the whole table
    fields = (
        "id",
        "created_at",
        "event_type",
        "event_subtype",
        "severity",
        "component",
        "agent",
        "hostname",
        "actor",
        "origin",
        "reported_at",
        "message",
        "metadata_pretty",
    )
    readonly_fields = fields

    @admin.display(description="history")
    def history_link(self, event: SystemEvent) -> str:
        """Into the auditor's history (/audit/events/): the event, and its agent's timeline."""
        detail = format_html('<a href="{}">open</a>', reverse("events:detail", args=[event.pk]))
        if not event.agent_id:
            return detail
        timeline = reverse("events:history") + "?" + urlencode({"agent": event.agent_id})
        return format_html('{} · <a href="{}">agent timeline</a>', detail, timeline)

    @admin.display(description="metadata")
    def metadata_pretty(self, event: SystemEvent) -> str:
        return format_html("<pre>{}</pre>", json.dumps(event.metadata, indent=2, sort_keys=True))

    def get_search_results(self, request, queryset, search_term):
        """Search the newest ``search_window`` events of ``queryset`` (one index read finds where they end)."""
        if search_term:
            edge = list(queryset.order_by("-created_at", "-id").values_list("created_at", flat=True)
                        [self.search_window - 1:self.search_window])
            if edge:
                queryset = queryset.filter(created_at__gte=edge[0])
        return super().get_search_results(request, queryset, search_term)



class AuditApiTokenCreateForm(forms.ModelForm):
    user = forms.ModelChoiceField(
        queryset=get_user_model().objects.filter(is_staff=True, is_active=True).order_by("username"),
        help_text="The token reads with this user's rights: an auditor (staff, in Auditors) or an admin.",
    )

    class Meta:
        model = AuditApiToken
        fields = ("user", "label")


@admin.register(AuditApiToken)
class AuditApiTokenAdmin(admin.ModelAdmin):
    """Issue (plaintext shown once) and revoke read-API tokens; nothing else changes a token."""

    list_display = ("label", "prefix", "user", "state", "created_by", "created_at", "last_used_at")
    list_select_related = ("user",)
    search_fields = ("label", "prefix", "user__username")
    actions = ("revoke_selected",)
    readonly_fields = ("user", "label", "prefix", "state", "created_by", "created_at", "last_used_at", "revoked_at")

    @admin.display(description="state")
    def state(self, token: AuditApiToken) -> str:
        return "active" if token.is_active else f"revoked {token.revoked_at:%Y-%m-%d %H:%M}"

    def get_form(self, request, obj=None, change=False, **kwargs):
        if obj is None:
            kwargs["form"] = AuditApiTokenCreateForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fields(self, request, obj=None):
        return ("user", "label") if obj is None else self.readonly_fields

    def get_readonly_fields(self, request, obj=None):
        return () if obj is None else self.readonly_fields

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # revoke instead: the row stays as the record of what was issued

    def save_model(self, request, obj, form, change):
        if change:
            return  # every field is read-only once issued
        token, secret = audit_token_issue(user=form.cleaned_data["user"], label=form.cleaned_data["label"],
                                          issued_by=request.user.get_username())
        obj.pk = token.pk
        obj.refresh_from_db()
        request.redflag_audit_token_secret = secret

    def response_add(self, request, obj, post_url_continue=None):
        """The plaintext, in this response only (never in a message, the session or a log)."""
        response = TemplateResponse(request, "events/api_token_created.html", {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Audit API token issued",
            "token": obj,
            "secret": request.redflag_audit_token_secret,
            "api_path": reverse("events:api-events"),
        })
        response["Cache-Control"] = "no-store"
        return response

    @admin.action(description="Revoke selected audit API tokens", permissions=["change"])
    def revoke_selected(self, request, queryset):
        revoked = sum(audit_token_revoke(token=token, revoked_by=request.user.get_username())
                      for token in queryset.select_related("user"))
        self.message_user(request, f"Revoked {revoked} token(s).", messages.SUCCESS)
