"""Patching in the admin: maintenance windows with their blackouts, policies with their rings and their
preview, rollouts (resume / abort) and each machine's turns, read-only.

Saves go through Django's atomic change form and are recorded by policies_app.services.rollouts in the
same transaction; rollout actions call rollout_resume / rollout_abort.
"""

from __future__ import annotations

from zoneinfo import ZoneInfo

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.db.models import Count, F, Q
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html

from advisories_app.admin import RiskAgentAdmin
from agents_app.admin.common import GREEN, GREY, ORANGE, RED, badge
from agents_app.admin.updates import next_windows_source_set
from agents_app.choices import PackageType
from agents_app.models import Agent
from policies_app.choices import (
    FAILED_TURN_STATES,
    LAST_DAY_OF_MONTH,
    SUCCEEDED_TURN_STATES,
    RolloutStatus,
    TurnState,
)
from policies_app.models import WEEKDAY_NAMES, Blackout, MachineTurn, MaintenanceWindow, Policy, Rollout, RolloutStage
from policies_app.preview import policy_preview
from policies_app.selection import next_window_for_agent, next_windows_for_agents
from policies_app.services.rollouts import policy_changed, rollout_abort, rollout_resume, window_changed
from policies_app.windows import current_or_next
from redflag.admin_scoping import ScopedAdminMixin, ScopedInlineMixin
from redflag.admin_site import ReadOnlyAdminMixin

MONTH_DAY_CHOICES = [(str(d), str(d)) for d in range(1, 32)] + [(str(LAST_DAY_OF_MONTH), "last day")]
ROLLOUT_COLOURS = {RolloutStatus.RUNNING: GREEN, RolloutStatus.HALTED: RED, RolloutStatus.ABORTED: GREY,
                   RolloutStatus.COMPLETED: GREY}
TURN_COLOURS = {TurnState.DONE: GREEN, TurnState.NOTHING_TO_DO: GREY, TurnState.FAILED: RED,
                TurnState.MISSED: ORANGE, TurnState.WAITING_ADMIN: ORANGE}


def occurrence_words(occurrence, zone: str) -> str:
    if occurrence is None:
        return "never"
    local = occurrence.start.astimezone(ZoneInfo(zone))
    state = "open now, " if occurrence.contains(timezone.now()) else ""
    return f"{state}{local:%a %Y-%m-%d %H:%M %Z} ({occurrence.start:%H:%M} UTC)"


class MaintenanceWindowForm(forms.ModelForm):
    weekdays = forms.TypedMultipleChoiceField(
        choices=[(str(i), name) for i, name in enumerate(WEEKDAY_NAMES)], coerce=int, required=False,
        widget=forms.CheckboxSelectMultiple)
    month_days = forms.TypedMultipleChoiceField(choices=MONTH_DAY_CHOICES, coerce=int, required=False,
                                                widget=forms.CheckboxSelectMultiple,
                                                help_text="A day a month does not have is skipped that month.")

    class Meta:
        model = MaintenanceWindow
        fields = ["name", "time_zone", "weekdays", "month_days", "start_time", "duration_minutes"]


class BlackoutInline(admin.TabularInline):
    model = Blackout
    extra = 0


@admin.register(MaintenanceWindow)
class MaintenanceWindowAdmin(ScopedAdminMixin, admin.ModelAdmin):
    scope_agent_path = None  # a window reaches no machine by itself
    form = MaintenanceWindowForm
    inlines = [BlackoutInline]
    list_display = ["name", "recurrence", "next_opening"]
    search_fields = ["name"]

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("blackouts")

    @admin.display(description="Next opening")
    def next_opening(self, window):
        return occurrence_words(current_or_next(window.spec(), timezone.now()), window.time_zone)

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        window_changed(window=form.instance, actor=request.user.get_username(), created=not change)


class RolloutStageInline(ScopedInlineMixin, admin.TabularInline):
    scope_parent_agent_path = None  # the policy page's own scope decides; rings offer only groups in scope
    model = RolloutStage
    extra = 0
    filter_horizontal = []
    fields = ["position", "name", "groups", "soak_hours", "success_percent", "minimum_machines",
              "halt_failure_percent"]


class PolicyForm(forms.ModelForm):
    package_types = forms.TypedMultipleChoiceField(choices=PackageType.choices, required=False,
                                                   widget=forms.CheckboxSelectMultiple,
                                                   help_text="None ticked: every package manager.")

    class Meta:
        model = Policy
        fields = "__all__"


@admin.register(Policy)
class PolicyAdmin(ScopedAdminMixin, admin.ModelAdmin):
    # A scoped user sees the policies whose every group their roles name (redflag.admin_scoping).
    scope_agent_path = None
    scope_group_path = "groups"
    form = PolicyForm
    inlines = [RolloutStageInline]
    list_display = ["name", "enabled", "window", "next_window", "action", "reboot"]
    list_filter = ["enabled", "window"]
    search_fields = ["name"]
    filter_horizontal = ["groups"]
    fieldsets = [
        (None, {"fields": ["name", "description", "enabled", "groups", "window"]}),
        ("Which updates it approves", {"fields": [
            "approval_scope", "minimum_severity", "package_types", "include_patterns", "exclude_patterns",
            "minimum_age_days", "exploited_override"]}),
        ("What it does in the window", {"fields": ["action", "reboot", "reboot_max_concurrent",
                                                   "reboot_delay_minutes", "missed_window"]}),
    ]

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("window").prefetch_related("window__blackouts")

    @admin.display(description="Next window")
    def next_window(self, policy):
        return occurrence_words(current_or_next(policy.window.spec(), timezone.now()), policy.window.time_zone)

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        policy_changed(policy=form.instance, actor=request.user.get_username(), created=not change)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra_context = extra_context or {}
        policy = self.get_object(request, object_id)
        if policy is not None and request.method == "GET":
            preview = policy_preview(policy, timezone.now())
            extra_context["preview"] = preview
            extra_context["preview_when"] = occurrence_words(preview.occurrence, policy.window.time_zone)
        return super().change_view(request, object_id, form_url, extra_context)


@admin.register(Rollout)
class RolloutAdmin(ScopedAdminMixin, admin.ModelAdmin):
    scope_agent_path = None
    scope_group_path = "policy__groups"
    list_display = ["policy", "status_badge", "stage_position", "done", "failed", "waiting", "started_at",
                    "halted_reason"]
    list_filter = ["status", "policy"]
    actions = ["resume", "abort"]
    readonly_fields = ["policy", "status", "stage_position", "stage_started_at", "stage_finished_at",
                       "halted_reason", "started_at", "finished_at"]

    def get_queryset(self, request):
        # The counts are of the current ring's turns; one aggregate query for the page.
        current = Q(turns__stage_position=F("stage_position"))
        return super().get_queryset(request).select_related("policy").annotate(
            done_count=Count("turns", filter=current & Q(turns__state__in=SUCCEEDED_TURN_STATES)),
            failed_count=Count("turns", filter=current & Q(turns__state__in=FAILED_TURN_STATES)),
            waiting_count=Count("turns", filter=current & ~Q(turns__state__in=(
                *SUCCEEDED_TURN_STATES, *FAILED_TURN_STATES))),
        )

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description="Status", ordering="status")
    def status_badge(self, rollout):
        return badge(rollout.get_status_display(), ROLLOUT_COLOURS.get(rollout.status, GREY))

    @admin.display(description="Done (ring)")
    def done(self, rollout):
        return rollout.done_count

    @admin.display(description="Failed (ring)")
    def failed(self, rollout):
        return rollout.failed_count

    @admin.display(description="Waiting (ring)")
    def waiting(self, rollout):
        url = reverse("admin:policies_app_machineturn_changelist") + f"?rollout__id__exact={rollout.pk}"
        return format_html('<a href="{}">{}</a>', url, rollout.waiting_count)

    @admin.action(description="Resume past the halted ring", permissions=["approve"])
    def resume(self, request, queryset):
        done = sum(rollout_resume(rollout=r, actor=request.user.get_username()) for r in queryset)
        self.message_user(request, f"{done} rollout(s) resumed.", messages.SUCCESS if done else messages.WARNING)

    @admin.action(description="Abort", permissions=["approve"])
    def abort(self, request, queryset):
        done = sum(rollout_abort(rollout=r, actor=request.user.get_username()) for r in queryset)
        self.message_user(request, f"{done} rollout(s) aborted.", messages.SUCCESS if done else messages.WARNING)


@admin.register(MachineTurn)
class MachineTurnAdmin(ScopedAdminMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    scope_agent_path = "agent"
    list_display = ["agent", "policy", "occurrence_start", "stage_position", "state_badge", "packages_short",
                    "note", "changed_at"]
    list_filter = ["state", "policy", "rollout"]
    search_fields = ["agent__hostname"]
    list_select_related = ["agent", "policy"]
    date_hierarchy = "occurrence_start"

    @admin.display(description="State", ordering="state")
    def state_badge(self, turn):
        return badge(turn.get_state_display(), TURN_COLOURS.get(turn.state, "#1565c0"))

    @admin.display(description="Packages")
    def packages_short(self, turn):
        names = turn.packages or []
        return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


class NextWindowChangeList(ChangeList):
    """The agent list's page, with each machine's next window looked up once for the page (one query per
    enabled policy, not per row)."""

    def get_results(self, request):
        super().get_results(request)
        found = next_windows_for_agents([agent.pk for agent in self.result_list], timezone.now())
        for agent in self.result_list:
            agent.next_policy_window = found.get(agent.pk)


class PatchingAgentAdmin(RiskAgentAdmin):
    """The fleet's agent page and list (advisories_app's, itself agents_app's) with the machine's next
    maintenance window: the fleet cannot import the policies, so the policies extend its admin."""

    list_display = (*RiskAgentAdmin.list_display, "next_window_short")
    readonly_fields = (*RiskAgentAdmin.readonly_fields, "next_window")

    def get_changelist(self, request, **kwargs):
        return NextWindowChangeList

    def get_fieldsets(self, request, obj=None):
        return [*super().get_fieldsets(request, obj), ("Patching", {"fields": ("next_window",)})]

    @admin.display(description="Next window")
    def next_window_short(self, agent):
        found = getattr(agent, "next_policy_window", None)
        if found is None:
            return "–"
        policy, occurrence = found
        local = occurrence.start.astimezone(ZoneInfo(policy.window.time_zone))
        return "open now" if occurrence.contains(timezone.now()) else f"{local:%a %d %b %H:%M}"

    @admin.display(description="Next maintenance window")
    def next_window(self, agent):
        found = next_window_for_agent(agent, timezone.now()) if agent.pk else None
        if found is None:
            return "No enabled policy patches this machine."
        policy, occurrence = found
        url = reverse("admin:policies_app_policy_change", args=[policy.pk])
        return format_html('{} (policy <a href="{}">{}</a>, window {})',
                           occurrence_words(occurrence, policy.window.time_zone), url, policy.name,
                           policy.window.name)


admin.site.unregister(Agent)
admin.site.register(Agent, PatchingAgentAdmin)
# The fleet's update pages say in which window an approved update will be installed; agents_app may not
# import the policy engine, so the engine hands it its answer when the admin loads.
next_windows_source_set(next_windows_for_agents)
