"""Admin for notifications: destinations (secrets write-only), rules, and the delivery log (read-only)."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.utils.html import format_html

from events_app.choices import EventType
from notifications_app.choices import DestinationKind, Trigger
from notifications_app.matching import UNROUTED_TYPES
from notifications_app.models import Delivery, DeliveryAttempt, Destination, Rule
from notifications_app.services import (
    MIN_SIGNING_SECRET_LENGTH,
    destination_save,
    destination_test,
    destination_url_error,
    rule_save,
)
from redflag.admin_site import ReadOnlyAdminMixin

LIST_TIME = "%Y-%m-%d %H:%M"


def _time(value) -> str:
    return f"{value:{LIST_TIME}}" if value else "—"


class DestinationForm(forms.ModelForm):
    # Not model fields: what is typed here is encrypted by destination_save and never rendered back.
    url = forms.CharField(
        label="URL", required=False, max_length=2000, strip=True,
        widget=forms.TextInput(attrs={"size": 90, "autocomplete": "off", "spellcheck": "false"}),
        help_text="An Apprise URL (mailtos://user:password@example.com?to=…, ntfys://token@ntfy.sh/topic, "
                  "gotify://host/token, discord://id/token, tgram://bot_token/chat_id, …) or, for a webhook, "
                  "its http(s):// address. Stored encrypted and never shown again: leave it blank to keep it.")
    signing_secret = forms.CharField(
        required=False, strip=False, widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        help_text=f"Webhooks only: the HMAC-SHA256 key your receiver checks (at least {MIN_SIGNING_SECRET_LENGTH} "
                  "characters). Stored encrypted; leave it blank to keep it.")

    class Meta:
        model = Destination
        fields = ("name", "kind", "enabled")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.fields["url"].widget.attrs["placeholder"] = f"{self.instance.url_masked} (kept if left blank)"
            if self.instance.signing_secret_encrypted:
                self.fields["signing_secret"].widget.attrs["placeholder"] = "•••••• (kept if left blank)"

    def clean(self):
        cleaned = super().clean()
        kind, url = cleaned.get("kind"), cleaned.get("url", "")
        kind_changed = bool(self.instance.pk) and kind != self.instance.kind
        if url:
            error = destination_url_error(kind, url)
            if error:
                self.add_error("url", error)
        elif not self.instance.pk or kind_changed:
            self.add_error("url", "Enter the URL" + (" again for the new kind." if kind_changed else "."))
        secret = cleaned.get("signing_secret", "")
        if kind == DestinationKind.WEBHOOK:
            if secret and len(secret) < MIN_SIGNING_SECRET_LENGTH:
                self.add_error("signing_secret", f"Use at least {MIN_SIGNING_SECRET_LENGTH} characters.")
            elif not secret and not self.instance.signing_secret_encrypted:
                self.add_error("signing_secret", "A webhook needs a signing secret.")
        return cleaned


@admin.register(Destination)
class DestinationAdmin(admin.ModelAdmin):
    form = DestinationForm
    list_display = ("name", "kind", "url_masked", "enabled", "health", "consecutive_failures", "last_success")
    list_filter = ("kind", "enabled")
    search_fields = ("name",)
    actions = ("send_test",)
    readonly_fields = ("url_masked", "failing_since", "consecutive_failures", "last_success_at", "last_failure_at")
    fieldsets = ((None, {"fields": ("name", "kind", "url", "signing_secret", "enabled")}),
                 ("State", {"fields": readonly_fields}))

    @admin.display(description="health")
    def health(self, destination: Destination) -> str:
        if destination.is_failing:
            return format_html('<span style="color:#c62828;font-weight:600">Failing since {}</span>',
                               _time(destination.failing_since))
        return format_html('<span style="color:#2e7d32">{}</span>', "OK")

    @admin.display(description="last success", ordering="last_success_at")
    def last_success(self, destination: Destination) -> str:
        return _time(destination.last_success_at)

    def save_model(self, request, obj, form, change):
        destination_save(destination=obj, url=form.cleaned_data.get("url", ""),
                         signing_secret=form.cleaned_data.get("signing_secret", ""),
                         actor=request.user.get_username())

    @admin.action(description="Send a test notification")
    def send_test(self, request, queryset):
        for destination in queryset:
            destination_test(destination=destination, actor=request.user.get_username())
        self.message_user(request, f"Queued a test notification to {queryset.count()} destination(s); "
                                   "the delivery log shows how it went.", messages.SUCCESS)


class RuleForm(forms.ModelForm):
    event_types = forms.MultipleChoiceField(
        required=False, widget=forms.CheckboxSelectMultiple,
        choices=[(value, label) for value, label in EventType.choices if value not in UNROUTED_TYPES],
        help_text="For 'Events of the chosen types' only. None chosen: every type (check-ins included).")

    class Meta:
        model = Rule
        fields = ("name", "enabled", "trigger", "event_types", "min_severity", "group", "offline_minutes", "cadence",
                  "destinations")
        widgets = {"destinations": forms.CheckboxSelectMultiple}

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("trigger") == Trigger.AGENT_OFFLINE and not cleaned.get("offline_minutes"):
            self.add_error("offline_minutes", "Say after how many minutes offline (at least 1).")
        if cleaned.get("trigger") != Trigger.EVENT:
            cleaned["event_types"] = []
        return cleaned


@admin.register(Rule)
class RuleAdmin(admin.ModelAdmin):
    form = RuleForm
    list_display = ("name", "enabled", "trigger", "min_severity", "group", "cadence", "destination_names")
    list_filter = ("enabled", "trigger", "cadence")
    search_fields = ("name",)

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("group").prefetch_related("destinations")

    @admin.display(description="destinations")
    def destination_names(self, rule: Rule) -> str:
        return ", ".join(destination.name for destination in rule.destinations.all())

    def save_model(self, request, obj, form, change):
        rule_save(rule=obj, actor=request.user.get_username())


class DeliveryAttemptInline(admin.TabularInline):
    model = DeliveryAttempt
    extra = 0
    can_delete = False
    fields = ("number", "attempted_at", "succeeded", "error", "duration_ms")
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Delivery)
class DeliveryAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("created", "subject", "destination_name", "kind", "status", "attempts", "next_attempt",
                    "last_error")
    list_filter = ("status", "kind", "destination_name")
    search_fields = ("subject", "destination_name")
    list_select_related = ()
    inlines = (DeliveryAttemptInline,)
    exclude = ("payload",)

    @admin.display(description="created", ordering="created_at")
    def created(self, delivery: Delivery) -> str:
        return _time(delivery.created_at)

    @admin.display(description="next attempt", ordering="next_attempt_at")
    def next_attempt(self, delivery: Delivery) -> str:
        return _time(delivery.next_attempt_at) if delivery.status in ("queued", "sending") else "—"


@admin.register(DeliveryAttempt)
class DeliveryAttemptAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """The delivery log: every try, newest first."""

    list_display = ("attempted", "destination_name", "subject", "number", "succeeded", "error", "duration_ms")
    list_filter = ("succeeded", "destination_name")
    list_select_related = ("delivery",)

    @admin.display(description="when", ordering="attempted_at")
    def attempted(self, attempt: DeliveryAttempt) -> str:
        return _time(attempt.attempted_at)

    @admin.display(description="message")
    def subject(self, attempt: DeliveryAttempt) -> str:
        return attempt.delivery.subject
