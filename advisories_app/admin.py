"""CVEs, who is exposed, feed imports and sources in the admin; risk columns on the fleet's pages.

The fleet's own admin classes (agents_app.admin) know nothing of advisories (imports flow one way):
this module re-registers them as subclasses that add the risk columns, filters and the agent's
exposures, so their pages keep whatever else they do.
"""

from __future__ import annotations

from django.contrib import admin
from django.db.models import F
from django.urls import reverse
from django.utils.html import format_html

from advisories_app.choices import ExposureStatus
from advisories_app.models import Exposure, FeedImport, FeedSource, Vulnerability
from advisories_app.risk import HIGHEST_RISK_FIRST, with_update_risk
from agents_app.admin.agents import AgentAdmin
from agents_app.admin.common import ReadOnlyDetailMixin, changelist_url
from agents_app.admin.updates import PackageUpdateAdmin
from agents_app.models import Agent, PackageUpdate
from redflag.access import agents_in_scope
from redflag.admin_scoping import ScopedAdminMixin

RED, ORANGE, GREY = "#ba2121", "#c77c02", "#666"


def kev_badge(known_exploited: bool):
    if not known_exploited:
        return "—"
    return format_html('<span style="color:#fff;background:{};padding:1px 6px;border-radius:3px">KEV</span>', RED)


def cvss_badge(score: float | None):
    if score is None:
        return "—"
    colour = RED if score >= 9 else ORANGE if score >= 7 else GREY
    return format_html('<strong style="color:{}">{}</strong>', colour, f"{score:.1f}")


def epss_text(score: float | None) -> str:
    return "—" if score is None else f"{score:.1%}"


# --- filters on the updates list -----------------------------------------------------------------


class KnownExploitedFilter(admin.SimpleListFilter):
    title = "fixes a known-exploited CVE"
    parameter_name = "kev"

    def lookups(self, request, model_admin):
        return (("yes", "Yes"), ("no", "No"))

    def queryset(self, request, queryset):
        if self.value() in ("yes", "no"):
            return queryset.filter(known_exploited=self.value() == "yes")
        return queryset


class MinimumCvssFilter(admin.SimpleListFilter):
    title = "highest CVSS it fixes"
    parameter_name = "cvss_min"

    def lookups(self, request, model_admin):
        return (("9", "Critical (9.0+)"), ("7", "High (7.0+)"), ("4", "Medium (4.0+)"))

    def queryset(self, request, queryset):
        return queryset.filter(max_cvss__gte=float(self.value())) if self.value() in ("9", "7", "4") else queryset


class MinimumEpssFilter(admin.SimpleListFilter):
    title = "highest EPSS it fixes"
    parameter_name = "epss_min"

    def lookups(self, request, model_admin):
        return (("0.5", "50 % or more"), ("0.1", "10 % or more"), ("0.01", "1 % or more"))

    def queryset(self, request, queryset):
        if self.value() in ("0.5", "0.1", "0.01"):
            return queryset.filter(max_epss__gte=float(self.value()))
        return queryset


class RiskPackageUpdateAdmin(PackageUpdateAdmin):
    """'Updates across the fleet' with what each update fixes: CVE count, highest CVSS and EPSS, KEV."""

    list_display = (*PackageUpdateAdmin.list_display, "cves", "max_cvss_badge", "max_epss_text", "kev")
    list_filter = (*PackageUpdateAdmin.list_filter, KnownExploitedFilter, MinimumCvssFilter, MinimumEpssFilter)

    def get_queryset(self, request):
        return with_update_risk(super().get_queryset(request))

    @admin.display(description="CVEs fixed", ordering=F("risk__cve_count").desc(nulls_last=True))
    def cves(self, update: PackageUpdate):
        if not update.cve_count:
            return "—"
        return format_html('<a href="{}">{}</a>', changelist_url(Exposure, package_update__id__exact=update.pk),
                           update.cve_count)

    @admin.display(description="max CVSS", ordering=HIGHEST_RISK_FIRST[1])
    def max_cvss_badge(self, update: PackageUpdate):
        return cvss_badge(update.max_cvss)

    @admin.display(description="max EPSS", ordering=F("risk__max_epss").desc(nulls_last=True))
    def max_epss_text(self, update: PackageUpdate):
        return epss_text(update.max_epss)

    @admin.display(description="known exploited", ordering=HIGHEST_RISK_FIRST[0])
    def kev(self, update: PackageUpdate):
        return kev_badge(update.known_exploited)


class AgentExposureInline(admin.TabularInline):
    """The agent page: CVEs its installed packages are exposed to, most urgent first."""

    model = Exposure
    fk_name = "agent"
    extra = 0
    can_delete = False
    verbose_name_plural = "CVEs this machine is exposed to (packages with a pending update)"
    fields = ("cve", "package", "status", "fixed_version", "cvss", "epss", "kev")
    readonly_fields = fields

    def get_queryset(self, request):
        return (super().get_queryset(request).select_related("vulnerability", "package_update")
                .order_by("-vulnerability__known_exploited", F("vulnerability__cvss_score").desc(nulls_last=True)))

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description="CVE")
    def cve(self, exposure: Exposure):
        url = reverse("admin:advisories_app_vulnerability_change", args=[exposure.vulnerability_id])
        return format_html('<a href="{}">{}</a>', url, exposure.vulnerability.cve_id)

    @admin.display(description="package")
    def package(self, exposure: Exposure) -> str:
        update = exposure.package_update
        return f"{update.name} {update.current_version} → {update.available_version}"

    @admin.display(description="CVSS")
    def cvss(self, exposure: Exposure):
        return cvss_badge(exposure.vulnerability.cvss_score)

    @admin.display(description="EPSS")
    def epss(self, exposure: Exposure) -> str:
        return epss_text(exposure.vulnerability.epss_score)

    @admin.display(description="KEV")
    def kev(self, exposure: Exposure):
        return kev_badge(exposure.vulnerability.known_exploited)


class RiskAgentAdmin(AgentAdmin):
    inlines = (*AgentAdmin.inlines, AgentExposureInline)


admin.site.unregister(PackageUpdate)
admin.site.register(PackageUpdate, RiskPackageUpdateAdmin)
admin.site.unregister(Agent)
admin.site.register(Agent, RiskAgentAdmin)


# --- CVEs and exposures --------------------------------------------------------------------------


@admin.register(Vulnerability)
class VulnerabilityAdmin(ReadOnlyDetailMixin, admin.ModelAdmin):
    """The CVE page: its scores, KEV dates and who is exposed ("who is exposed to CVE-…")."""

    list_display = ("cve_id", "cvss", "epss", "kev", "exposed", "fixable", "no_fix")
    list_filter = ("known_exploited", "kev_ransomware")
    search_fields = ("=cve_id",)
    fields = ("cve_id", "summary", "cvss_score", "cvss_vector", "epss_score", "epss_percentile", "epss_date",
              "known_exploited", "kev_date_added", "kev_due_date", "kev_ransomware", "exposed", "fixable", "no_fix")
    readonly_fields = fields

    def get_queryset(self, request):
        # Machines counted only within the reader's agents (redflag.access): the CVE list itself is shared knowledge.
        return super().get_queryset(request).with_exposure_counts(
            agents=agents_in_scope(request.user, "advisories_app.view_exposure"))

    @admin.display(description="CVSS", ordering=F("cvss_score").desc(nulls_last=True))
    def cvss(self, vulnerability: Vulnerability):
        return cvss_badge(vulnerability.cvss_score)

    @admin.display(description="EPSS", ordering=F("epss_score").desc(nulls_last=True))
    def epss(self, vulnerability: Vulnerability) -> str:
        return epss_text(vulnerability.epss_score)

    @admin.display(description="KEV", ordering="-known_exploited")
    def kev(self, vulnerability: Vulnerability):
        return kev_badge(vulnerability.known_exploited)

    def _machines(self, vulnerability: Vulnerability, count: int, **query):
        if not count:
            return "0"
        url = changelist_url(Exposure, vulnerability__id__exact=vulnerability.pk, **query)
        return format_html('<a href="{}">{} machine(s)</a>', url, count)

    @admin.display(description="exposed machines", ordering="-exposed_machines")
    def exposed(self, vulnerability: Vulnerability):
        return self._machines(vulnerability, vulnerability.exposed_machines)

    @admin.display(description="a pending update fixes it")
    def fixable(self, vulnerability: Vulnerability):
        return self._machines(vulnerability, vulnerability.fixable_machines,
                              status__exact=ExposureStatus.FIXED_BY_UPDATE)

    @admin.display(description="no fix yet")
    def no_fix(self, vulnerability: Vulnerability):
        return self._machines(vulnerability, vulnerability.no_fix_machines, status__exact=ExposureStatus.NO_FIX_YET)


@admin.register(Exposure)
class ExposureAdmin(ScopedAdminMixin, ReadOnlyDetailMixin, admin.ModelAdmin):
    """Exposed machines per CVE, with the pending update that fixes it (or why none does)."""

    list_display = ("vulnerability", "agent", "update", "status", "fixed_version", "source")
    list_filter = ("status", "source", "vulnerability__known_exploited", "agent__os_name")
    search_fields = ("=vulnerability__cve_id", "agent__hostname", "package_update__name")
    list_select_related = ("vulnerability", "agent", "package_update")
    fields = ("vulnerability", "agent", "package_update", "status", "fixed_version", "source")
    readonly_fields = fields

    @admin.display(description="pending update", ordering="package_update__name")
    def update(self, exposure: Exposure) -> str:
        update = exposure.package_update
        return f"{update.name} {update.current_version} → {update.available_version}"


@admin.register(FeedImport)
class FeedImportAdmin(ReadOnlyDetailMixin, admin.ModelAdmin):
    list_display = ("feed", "feed_format", "status", "started_at", "finished_at", "source")
    list_filter = ("status", "feed")
    fields = ("feed", "feed_format", "source", "sha256", "status", "started_at", "finished_at", "counts", "error")
    readonly_fields = fields


@admin.register(FeedSource)
class FeedSourceAdmin(admin.ModelAdmin):
    """Download URLs (mirrors welcome); disable all of them on an air-gapped server."""

    list_display = ("name", "feed_format", "url", "enabled")
    list_editable = ("enabled",)
