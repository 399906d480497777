"""The stakeholder dashboard (``rekindle dashboard``): six tabs over the published day, the MLflow runs and the
pipeline's own records. Reads go through ``ml.dashboard.queries`` (the API's read layer and the dashboard's own
SQL); results are cached per publication: every cached read takes the latest run_date as an argument, so a new
publication is a new cache key. The reads that list users take the time of the last erasure too, so that an erased
user leaves the page at once, not at the next publication.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime

import altair as alt
import pandas as pd
import streamlit as st

from ml.crm import segments
from ml.dashboard import runs
from ml.dashboard.queries import DashboardWarehouse, ExportFilters
from ml.experiments.statistics import wilson_interval
from ml.recommend.modes import DISCOVERY, MODES, WINBACK
from ml.serving.app import offer_answer
from ml.serving.queries import load_catalogue
from ml.serving.session import Sessions
from ml.serving.variants import ServingExperiment
from ml.settings import Settings
from ml.warehouse import postgres
from ml.warehouse.postgres import login_url

PIPELINE_RUN_DATES = 7
PREVIEW_ROWS = 20


@st.cache_resource
def settings() -> Settings:
    return Settings.from_env()


@st.cache_resource
def owner_url() -> str:
    return postgres.start(settings())


@st.cache_resource
def warehouse() -> DashboardWarehouse:
    """crm and marts, as the dashboard's role (``rekindle dashboard`` creates it)."""
    return DashboardWarehouse(login_url(owner_url(), settings().dashboard_role, settings().dashboard_role_password))


@st.cache_resource
def operations() -> DashboardWarehouse:
    """The pipeline's own records (ops, raw), which the dashboard's role may not read: read-only sessions of the
    warehouse URL's user, like the MLflow store's."""
    return DashboardWarehouse(owner_url())


@dataclass(frozen=True)
class Shown:
    """What the page shows: the latest publication's run date (None before the first), every published run date,
    and when a user was last erased (the key of the cached reads that list users)."""

    run_date: date | None
    run_dates: list[date]
    last_erasure: datetime | None


# Cached per publication: ``run_date`` is the key even where the read does not use it.


@st.cache_data(show_spinner=False)
def model_runs(run_date: date | None) -> tuple[pd.DataFrame, dict, str | None]:
    client = runs.client_for(settings(), owner_url())
    name = settings().ranker_model_name
    table, details = runs.ranker_runs(client, name)
    return table, details, runs.champion_version(client, name)


@st.cache_data(show_spinner=False)
def curves(run_date: date | None, run_id: str) -> pd.DataFrame | None:
    return runs.metric_at_k(runs.client_for(settings(), owner_url()), run_id)


@st.cache_resource(show_spinner=False, max_entries=2)  # this publication's and the one before
def catalogue(run_date: date):
    return load_catalogue(warehouse().connection(), run_date)


@st.cache_data(show_spinner=False)
def merchant_view(run_date: date, last_erasure: datetime | None, merchant_id: str) -> dict[str, pd.DataFrame]:
    db = warehouse()
    return {
        "prospects": db.prospects(run_date, merchant_id),
        "superfans": db.superfans(run_date, merchant_id),
        "cross_sell": db.cross_sell_partners(run_date, merchant_id),
    }


@st.cache_data(show_spinner=False)
def export_filter_values(segment: str, run_date: date) -> dict[str, list[str]]:
    return warehouse().export_filter_values(segment, run_date)


@st.cache_data(show_spinner=False, max_entries=64)
def segment_export(
    segment: str, run_date: date, filters: ExportFilters, last_erasure: datetime | None
) -> tuple[str, bytes]:
    return warehouse().segment_export(segment, run_date, filters)


@st.cache_data(show_spinner=False, max_entries=64)
def export_preview(
    segment: str, run_date: date, filters: ExportFilters, last_erasure: datetime | None
) -> tuple[int, pd.DataFrame]:
    """The export's row count and first rows: parsed once per export, not on every rerun of the page."""
    _, content = segment_export(segment, run_date, filters, last_erasure)
    ids = {"user_id": str, "recommended_merchant_id": str, "merchant_id": str}  # a segment table's, a member file's
    rows = pd.read_csv(io.BytesIO(content), dtype=ids)
    return len(rows), rows.head(PREVIEW_ROWS)


@st.cache_data(show_spinner=False)
def experiments(run_date: date | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    return warehouse().experiment_results(), operations().serving_ab()


@st.cache_data(show_spinner=False)
def pipeline_health(run_date: date | None) -> dict[str, pd.DataFrame]:
    db = operations()
    return {
        "steps": db.pipeline_steps(PIPELINE_RUN_DATES),
        "quarantine": db.quarantine_by_reason(),
        "freshness": db.freshness(),
    }


def line_chart(data: pd.DataFrame, x: str, y: str, colour: str, x_title: str, y_title: str, **x_options):
    return (
        alt.Chart(data)
        .mark_line(point=True)
        .encode(
            x=alt.X(x, title=x_title, **x_options),
            y=alt.Y(y, title=y_title),
            color=alt.Color(colour, title=colour.replace("_", " ")),
            tooltip=[x, y, colour],
        )
    )


def bar_chart(data: pd.DataFrame, x: str, y: str, x_title: str, y_title: str, colour: str | None = None):
    encoding = {"x": alt.X(x, title=x_title, sort=None), "y": alt.Y(y, title=y_title), "tooltip": list(data.columns)}
    if colour is not None:
        encoding.update(color=alt.Color(colour, title=colour), xOffset=alt.XOffset(colour))
    return alt.Chart(data).mark_bar().encode(**encoding)


# ------------------------------------------------------------------------------------------------------------------


def model_performance(run_date: date | None) -> None:
    table, details, champion = model_runs(run_date)
    if table.empty:
        st.info("No ranker run in MLflow yet: run `rekindle run` first.")
        return
    mode = st.radio("Mode", MODES, horizontal=True, key="performance_mode")
    # The champion's own run (the judged comparison it won), else the latest run.
    champion_runs = table[table["version"] == champion]
    shown = (champion_runs if not champion_runs.empty else table).iloc[-1]
    run = details[shown["run_id"]]
    st.caption(
        f"{'Champion' if shown['version'] == champion else 'Latest'} ranker run: {shown['run_date']} "
        f"(v{shown['version']}; champion: {'v' + champion if champion else 'none'}), judged beside its generators "
        "and the baselines on the last days before its run date."
    )
    k_curves = curves(run_date, shown["run_id"])
    if k_curves is None or k_curves.empty:
        st.info("This run predates the metric@K curves: the next daily run logs them.")
    else:
        metric = st.selectbox("Metric@K", ("ndcg", "precision", "recall", "hit_rate"), key="performance_metric")
        chosen = k_curves[(k_curves["mode"] == mode) & (k_curves["metric"] == metric)]
        st.altair_chart(
            line_chart(
                chosen,
                "k:Q",
                "value:Q",
                "model",
                "K (recommendations shown)",
                f"{metric}@K (fraction, 0-1)",
                scale=alt.Scale(domain=[1, int(chosen["k"].max())]),
                axis=alt.Axis(tickMinStep=1, format="d"),
            ),
            width="stretch",
        )
    st.subheader("Every model at a glance")
    st.dataframe(runs.summary_table(run, mode), width="stretch")
    st.caption(
        "coverage: share of the catalogue in at least one list; diversity: share of pairs within a list from "
        "different categories; novelty: mean -log2 of the items' popularity (bits)."
    )
    by_segment = runs.segment_table(run, mode)
    if not by_segment.empty:
        st.subheader("NDCG@10 per lifecycle segment")
        st.altair_chart(
            bar_chart(by_segment, "segment:N", "ndcg_at_10:Q", "lifecycle segment", "NDCG@10 (0-1)", "model"),
            width="stretch",
        )
    st.subheader("Trend over run dates (ranker)")
    st.altair_chart(
        line_chart(
            runs.trend_table(table, details, mode),
            "yearmonthdate(run_date):T",
            "value:Q",
            "metric",
            "run date",
            "metric (0-1)",
            # Ticks on days only: between two run dates Vega-Lite would otherwise label the hours.
            axis=alt.Axis(format="%Y-%m-%d", tickCount={"interval": "day", "step": 1}),
        ),
        width="stretch",
    )
    st.subheader("Champion / challenger history")
    st.dataframe(
        table.drop(columns=["run_id"])
        .iloc[::-1]
        .rename(columns={runs.GATE_METRIC_KEY: "gate NDCG@10 (mean of modes)"}),
        width="stretch",
        hide_index=True,
    )


class _OfferLookup:
    """What ``ml.serving.app.offer_answer`` reads of the API's server, so the dashboard gives the API's answer
    (from the publication alone: the dashboard holds no API sessions, so their opt-outs since are not seen)."""

    def __init__(self, db: DashboardWarehouse, run_date: date):
        self.warehouse, self.settings, self._catalogue = db, settings(), catalogue(run_date)
        self.sessions = Sessions()

    def require_catalogue(self):
        return self._catalogue


def user_lookup(run_date: date | None) -> None:
    user_id = st.text_input("User id", key="user_id", placeholder="a user_id as in raw.events").strip()
    if not user_id:
        st.info("Enter a user id to see their profile, orders, recommendations and offer.")
        return
    if run_date is None:
        st.info("Nothing published yet: run `rekindle run` first.")
        return
    db = warehouse()
    user, published, _ = db.user_context(run_date, user_id)
    if user is None:
        st.warning(f"Unknown user {user_id!r}: not in marts.user_features.")
        return
    columns = st.columns(4)
    columns[0].metric("Lifecycle segment", user["lifecycle_segment"] or "-")
    columns[1].metric("Value tier", user["value_tier"] or "-")
    columns[2].metric("Orders", user["order_count"])
    columns[3].metric(
        "Days since last order", "-" if user["days_since_last_order"] is None else user["days_since_last_order"]
    )
    st.write(
        f"Favourite category: **{user['favourite_category'] or '-'}**; lately: "
        f"**{user['recent_favourite_category'] or '-'}**{' (taste drifted)' if user['taste_drift'] else ''}. "
        f"Platform {user['platform'] or '-'}, home zone {user['home_zone'] or '-'}, "
        f"marketing opt-in: {'yes' if user['marketing_opt_in'] else 'no'}."
    )
    st.subheader("Order history")
    st.dataframe(db.user_orders(user_id), width="stretch", hide_index=True)
    st.caption("Merchants ordered from, the most recent first:")
    st.dataframe(pd.DataFrame(db.user_merchants(user_id)), width="stretch", hide_index=True)
    merchants = catalogue(run_date).merchants
    for mode, column in zip((WINBACK, DISCOVERY), st.columns(2)):
        column.subheader(f"Recommendations: {mode}")
        rows = pd.DataFrame([{k: v for k, v in row.items() if k != "mode"} for row in published if row["mode"] == mode])
        if rows.empty:
            column.write(f"No {mode} list published for this user on {run_date}.")
            continue
        rows.insert(1, "merchant", [merchants[m].name if m in merchants else m for m in rows["merchant_id"]])
        column.dataframe(rows, width="stretch", hide_index=True)
    st.subheader("Today's offer")
    answer = offer_answer(_OfferLookup(db, run_date), user_id)
    if answer["offer"]:
        offer = answer["offer"]
        st.success(
            f"{offer['event_type']} {offer['reward_size']:g} (campaign {offer['campaign_id']}, valid until {offer['valid_until']})"
        )
    else:
        st.write(f"No offer today: {answer['reason']}.")
    experiment = ServingExperiment.from_settings(settings().serving_experiment, settings().serving_strategies)
    st.write(f"Serving variant (the API's A/B test): **{experiment.variant(user_id)}**")


def merchant_analysis(run_date: date | None, last_erasure: datetime | None) -> None:
    if run_date is None:
        st.info("Nothing published yet: run `rekindle run` first.")
        return
    merchants = catalogue(run_date).merchants
    choice = st.selectbox(
        "Merchant",
        sorted(merchants, key=lambda m: (merchants[m].name, m)),
        format_func=lambda m: f"{merchants[m].name} ({m})",
        key="merchant",
    )
    merchant = merchants[choice]
    st.caption(f"{merchant.category or 'no category'}, zone {merchant.zone or '-'}; publication of {run_date}.")
    view = merchant_view(run_date, last_erasure, choice)
    neighbours = catalogue(run_date).neighbours.get(choice, [])[:10]
    st.subheader("Similar merchants (ordered by the same customers)")
    st.dataframe(
        pd.DataFrame(
            [(m, merchants[m].name if m in merchants else m, round(s, 4)) for m, s in neighbours],
            columns=["merchant_id", "merchant", "cosine similarity (0-1)"],
        ),
        width="stretch",
        hide_index=True,
    )
    prospects = view["prospects"]
    st.subheader(f"High-affinity prospects: {len(prospects)} users")
    if not prospects.empty:
        st.altair_chart(
            alt.Chart(prospects)
            .mark_bar()
            .encode(
                x=alt.X(
                    "score:Q",
                    bin=alt.Bin(step=0.05, extent=[0, 1]),
                    title="affinity score (share of the user's best, 0-1)",
                ),
                y=alt.Y("count():Q", title="users"),
            ),
            width="stretch",
        )
    st.dataframe(prospects.head(PREVIEW_ROWS), width="stretch", hide_index=True)
    st.subheader("Superfans")
    st.dataframe(view["superfans"], width="stretch", hide_index=True)
    st.subheader("Cross-sell partners")
    st.dataframe(view["cross_sell"], width="stretch", hide_index=True)


def crm_export(shown: Shown) -> None:
    if shown.run_date is None:
        st.info("Nothing published yet: run `rekindle run` first.")
        return
    scored = list(settings().score_segments)
    segment = st.selectbox("Segment", [*segments.SEGMENTS, *scored], key="export_segment")
    if segment in segments.SEGMENTS:
        st.caption(segments.SEGMENTS[segment].description)
    else:
        st.caption(f"The {segment} users' win-back lists as the daily run scored them (crm.segment_members).")
    chosen_date = st.selectbox("Run date", shown.run_dates, key="export_run_date")
    values = export_filter_values(segment, chosen_date)
    left, middle, right, last = st.columns(4)
    # The members of a scored lifecycle segment carry the ranker's own scores, on no fixed scale.
    min_score = (
        left.number_input("Minimum score (0-1)", 0.0, 1.0, 0.0, 0.05, key="export_min_score")
        if segment in segments.SEGMENTS
        else None
    )
    platform = middle.selectbox("Platform", ["all", *values["platform"]], key="export_platform")
    zone = right.selectbox("Zone", ["all", *values["zone"]], key="export_zone")
    lifecycle = last.selectbox("Lifecycle segment", ["all", *values["lifecycle_segment"]], key="export_lifecycle")
    filters = ExportFilters(
        min_score=min_score or None,
        platform=None if platform == "all" else platform,
        zone=None if zone == "all" else zone,
        lifecycle_segment=None if lifecycle == "all" else lifecycle,
    )
    name, content = segment_export(segment, chosen_date, filters, shown.last_erasure)
    row_count, preview = export_preview(segment, chosen_date, filters, shown.last_erasure)
    st.metric("Rows", row_count)
    st.dataframe(preview, width="stretch", hide_index=True)
    st.download_button("Download CSV", content, file_name=name, mime="text/csv", key="export_download")
    st.caption(f"The same bytes as `rekindle export {segment}` with these filters: {name}")


def experiment_results(run_date: date | None) -> None:
    readouts, serving = experiments(run_date)
    st.subheader("Campaign readouts")
    if readouts.empty:
        st.info("No campaign read out yet: a campaign is read out once its reactivation window has closed.")
    for (campaign_id, campaign_date), arms in readouts.groupby(["campaign_id", "campaign_date"], sort=False):
        heading = f"**{campaign_id}** (sent {campaign_date}, {arms['window_days'].iloc[0]}-day window)"
        read_at, window_end = arms["computed_at"].max(), arms["window_end"].iloc[0]
        if read_at < window_end:
            heading += (
                f": **interim**, read out {read_at:%Y-%m-%d %H:%M} UTC, before the window closes on "
                f"{window_end:%Y-%m-%d %H:%M} UTC; users are still coming back"
            )
        st.markdown(heading)
        st.dataframe(
            arms[
                [
                    "arm",
                    "users",
                    "re_engaged_users",
                    "re_engagement_rate",
                    "reward_cost_per_user",
                    "cost_per_incremental_reactivation",
                    "net_incremental_margin_per_user",
                    "abs_lift_vs_holdout",
                    "abs_lift_vs_holdout_ci_low",
                    "abs_lift_vs_holdout_ci_high",
                    "p_value_vs_holdout",
                    "abs_lift_vs_non_personalised",
                    "abs_lift_vs_non_personalised_ci_low",
                    "abs_lift_vs_non_personalised_ci_high",
                    "p_value_vs_non_personalised",
                    "rel_lift_vs_non_personalised",
                    "meets_seed_criterion",
                    "seed_criterion_significant",
                ]
            ],
            width="stretch",
            hide_index=True,
        )
        st.caption(
            "Lifts are in percentage points of re-engagement (95% intervals); the 15% criterion: personalised "
            "re-engages at least 15% more (relative) than non-personalised."
        )
    st.subheader("Serving A/B test")
    if serving.empty:
        st.info("No impression tracked by the API carries a variant yet.")
        return
    intervals = [wilson_interval(int(x), int(n)) for x, n in zip(serving["converted_users"], serving["users"])]
    serving = serving.assign(
        conversion_rate=serving["converted_users"] / serving["users"],
        ci_low=[i.low for i in intervals],
        ci_high=[i.high for i in intervals],
    )
    st.dataframe(serving, width="stretch", hide_index=True)
    st.altair_chart(
        bar_chart(
            serving,
            "variant:N",
            "conversion_rate:Q",
            "serving variant",
            "users who ordered after an impression (share)",
        ),
        width="stretch",
    )


def pipeline_health_tab(run_date: date | None) -> None:
    health = pipeline_health(run_date)
    steps = health["steps"]
    st.subheader("Last runs per task")
    if steps.empty:
        st.info("No pipeline step recorded yet.")
    else:
        latest = steps[steps["run_date"] == steps["run_date"].max()]
        st.altair_chart(
            bar_chart(
                latest, "step:N", "seconds:Q", f"task (run date {latest['run_date'].iloc[0]})", "duration (seconds)"
            ),
            width="stretch",
        )
        st.dataframe(steps.drop(columns=["summary"]), width="stretch", hide_index=True)
        st.subheader("Great Expectations results")
        checks = steps[steps["step"].str.startswith("check_")]
        st.dataframe(
            pd.DataFrame(
                [
                    {
                        "run_date": row.run_date,
                        "check": row.step,
                        "expectations passed": row.summary.get("expectations"),
                    }
                    for row in checks.itertuples()
                ]
            ),
            width="stretch",
            hide_index=True,
        )
    st.subheader("Quarantined rows by reason")
    quarantine = health["quarantine"]
    if quarantine.empty:
        st.write("No row quarantined.")
    else:
        st.altair_chart(bar_chart(quarantine, "reason:N", "rows:Q", "reason", "rows quarantined"), width="stretch")
        st.dataframe(quarantine, width="stretch", hide_index=True)
    st.subheader("Data freshness")
    st.dataframe(health["freshness"], width="stretch", hide_index=True)


# Each tab's view of what the page shows.
TAB_VIEWS: dict[str, Callable[[Shown], None]] = {
    "Model performance": lambda shown: model_performance(shown.run_date),
    "User lookup": lambda shown: user_lookup(shown.run_date),
    "Merchant analysis": lambda shown: merchant_analysis(shown.run_date, shown.last_erasure),
    "CRM export": crm_export,
    "Experiments": lambda shown: experiment_results(shown.run_date),
    "Pipeline health": lambda shown: pipeline_health_tab(shown.run_date),
}
TABS = tuple(TAB_VIEWS)


def page_header() -> Shown:
    """The title and the publication shown."""
    st.title("Rekindle")
    run_dates = warehouse().run_dates()
    run_date = run_dates[0] if run_dates else None
    st.caption(f"Publication of {run_date}" if run_date else "Nothing published yet.")
    return Shown(run_date, run_dates, operations().last_erasure())


def main() -> None:
    st.set_page_config(page_title="Rekindle dashboard", layout="wide")
    shown = page_header()
    for tab, view in zip(st.tabs(TABS), TAB_VIEWS.values(), strict=True):
        with tab:
            view(shown)


if __name__ == "__main__":  # streamlit runs this file as __main__; importing it draws nothing
    main()
