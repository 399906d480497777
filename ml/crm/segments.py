"""The seed's CRM segments as tables in ``crm``, materialised per run_date, and the read-only CRM role.

Every segment table has the export fields ``user_id, segment, recommended_merchant_id,
recommended_merchant_name, score``, the user's ``platform`` and ``home_zone`` (export filters),
then the segment's own fields. The marts hold only the latest dbt build, so the rows are copied
per run_date: a past date's export reads that day's rows, not today's marts (only the marketing
consent is today's). Every segment keeps only the users marketing may reach
(``marts.MARKETABLE_USERS_SQL``: opted in to marketing).

``score`` is normalised to [0, 1] per user, as a fraction of that user's best recommendation:
raw / best, measured from zero, or from the list's lowest score when the model gives negative
ones, so 1 = the user's top pick. Raw scores are only comparable within one user's list: users
the model does not know get popularity counts (tens) while known users get cosine sums (below a
few), and a LambdaRank score means nothing across users. ``crm_affinity_threshold`` = 0.5 thus
keeps recommendations more than half as strong as the user's best. For merchant superfans the
score is the user's order_count as a fraction of the merchant's top fan's.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import psycopg
from psycopg import sql

from ml.crm.publish import analyze
from ml.recommend.modes import DISCOVERY, WINBACK
from ml.settings import Settings
from ml.warehouse import ddl
from ml.warehouse.marts import MARKETABLE_USERS_SQL

SHARE_OF_BEST = (
    "Normalised score in [0, 1]: the model's raw score as a fraction of the user's best recommendation "
    "of run_date (measured from zero, or from the list's lowest score if negative); 1 = the user's top pick."
)
SHARE_OF_TOP_FAN = "Normalised score in (0, 1]: order_count as a fraction of the merchant's top fan's order_count."
RANK = ("rank", "integer")  # position in the user's list in crm.recommendations, 1 = best


@dataclass(frozen=True)
class Segment:
    """A seed segment: its table, its own fields (after the common ones) and who belongs to it.

    ``members_sql`` selects the user, the recommended merchant's id and name, the normalised score
    and then ``fields``, in that order (columns are named by position). It can use the CTEs
    ``scored`` (run_date's recommendations in the segment's ``mode``, with the normalised score and the
    merchant's category) and ``ordered`` (the merchants each user ordered from, with counts and category).
    """

    name: str
    description: str
    fields: tuple[tuple[str, str], ...]
    members_sql: str
    mode: str | None
    score_description: str = SHARE_OF_BEST

    @property
    def table_comment(self) -> str:
        return self.description + (f" Recommendations: the {self.mode} list." if self.mode else "")

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.fields)


HIGH_AFFINITY_PROSPECTS = Segment(
    "high_affinity_prospects",
    "Recommendations with a normalised score above crm_affinity_threshold for a merchant the user never ordered from.",
    (RANK,),
    """
    SELECT s.user_id, s.merchant_id, s.merchant_name, s.score, s.rank
    FROM scored s
    WHERE s.score > %(affinity_threshold)s
      AND NOT EXISTS (
          SELECT 1 FROM ordered o WHERE o.user_id = s.user_id AND o.merchant_id = s.merchant_id
      )
    """,
    DISCOVERY,
)

LAPSED_PERSONALISED = Segment(
    "lapsed_personalised",
    "Users with no order in the last crm_lapsed_days days or more, with their top crm_top_k recommendations.",
    (RANK, ("days_since_last_order", "integer")),
    """
    SELECT s.user_id, s.merchant_id, s.merchant_name, s.score, s.rank, u.days_since_last_order
    FROM scored s
    JOIN marts.user_features u ON u.user_id = s.user_id
    WHERE u.days_since_last_order >= %(lapsed_days)s
      AND s.rank <= %(top_k)s
    """,
    WINBACK,
)

CATEGORY_EXPLORERS = Segment(
    "category_explorers",
    "Users who have ordered, with their best crm_top_k recommendations in a category they never ordered from.",
    (RANK, ("category", "text")),
    """
    SELECT user_id, merchant_id, merchant_name, score, rank, category
    FROM (
        SELECT s.*, row_number() OVER (PARTITION BY s.user_id ORDER BY s.rank) AS pick
        FROM scored s
        -- A filter on each user's tried categories, not an anti-join on (user, category): the planner takes
        -- those two columns for independent and, at 550,000 users, estimates the anti-join at one row and
        -- nests loops over a million rows (over 20 minutes instead of 12 s).
        JOIN (
            SELECT user_id,
                   coalesce(array_agg(DISTINCT category) FILTER (WHERE category IS NOT NULL), '{}') AS categories
            FROM ordered
            GROUP BY user_id
        ) tried ON tried.user_id = s.user_id
        WHERE s.category IS NOT NULL
          AND s.category <> ALL (tried.categories)
    ) untried
    WHERE pick <= %(top_k)s
    """,
    DISCOVERY,
)

MERCHANT_SUPERFANS = Segment(
    "merchant_superfans",
    "For each merchant, its crm_superfans_per_merchant customers with the most orders (then the most spent).",
    (("fan_rank", "integer"), ("order_count", "bigint"), ("total_spent", "numeric(14, 2)")),
    """
    SELECT user_id, merchant_id, merchant_name, score, fan_rank, order_count, order_value
    FROM (
        SELECT o.*,
               o.order_count::double precision / max(o.order_count) OVER (PARTITION BY o.merchant_id) AS score,
               row_number() OVER (
                   PARTITION BY o.merchant_id ORDER BY o.order_count DESC, o.order_value DESC, o.user_id
               ) AS fan_rank
        FROM ordered o
    ) fans
    WHERE fan_rank <= %(superfans_per_merchant)s
    """,
    None,  # ranks customers by their orders, not by recommendations
    SHARE_OF_TOP_FAN,
)

CROSS_SELL_TARGETS = Segment(
    "cross_sell_targets",
    "Users whose most-ordered merchant is A, with their best crm_top_k recommendations B of another category "
    "and a normalised score above crm_affinity_threshold.",
    (
        RANK,
        ("ordered_merchant_id", "text"),
        ("ordered_merchant_name", "text"),
        ("ordered_category", "text"),
        ("recommended_category", "text"),
    ),
    """
    SELECT user_id, merchant_id, merchant_name, score, rank,
           ordered_merchant_id, ordered_merchant_name, ordered_category, recommended_category
    FROM (
        SELECT s.user_id, s.merchant_id, s.merchant_name, s.score, s.rank,
               a.merchant_id   AS ordered_merchant_id,
               a.merchant_name AS ordered_merchant_name,
               a.category      AS ordered_category,
               s.category      AS recommended_category,
               row_number() OVER (PARTITION BY s.user_id ORDER BY s.rank) AS pick
        FROM scored s
        JOIN (
            SELECT DISTINCT ON (user_id) user_id, merchant_id, merchant_name, category
            FROM ordered
            ORDER BY user_id, order_count DESC, order_value DESC, last_order_at DESC, merchant_id
        ) a ON a.user_id = s.user_id
        WHERE s.score > %(affinity_threshold)s
          AND s.category <> a.category
    ) cross_sell
    WHERE pick <= %(top_k)s
    """,
    DISCOVERY,
)

NEW_USER_ONBOARDING = Segment(
    "new_user_onboarding",
    "Users with fewer than crm_new_user_max_orders orders, with their top crm_top_k recommendations.",
    (RANK, ("order_count", "bigint"), ("tenure_days", "integer")),
    """
    SELECT s.user_id, s.merchant_id, s.merchant_name, s.score, s.rank, u.order_count, u.tenure_days
    FROM scored s
    JOIN marts.user_features u ON u.user_id = s.user_id
    WHERE u.order_count < %(new_user_max_orders)s
      AND s.rank <= %(top_k)s
    """,
    WINBACK,
)

SEGMENTS: dict[str, Segment] = {
    segment.name: segment
    for segment in (
        HIGH_AFFINITY_PROSPECTS,
        LAPSED_PERSONALISED,
        CATEGORY_EXPLORERS,
        MERCHANT_SUPERFANS,
        CROSS_SELL_TARGETS,
        NEW_USER_ONBOARDING,
    )
}
COMMON_COLUMNS = (
    "run_date",
    "segment",
    "user_id",
    "recommended_merchant_id",
    "recommended_merchant_name",
    "score",
    "platform",
    "home_zone",
)


def _table_sql(segment: Segment) -> str:
    own = "".join(f"\n    {name:<25} {type_}," for name, type_ in segment.fields)
    table = f"crm.{segment.name}"
    return f"""
CREATE TABLE IF NOT EXISTS {table} (
    run_date                  date   NOT NULL,
    segment                   text   NOT NULL,
    user_id                   text   NOT NULL,
    recommended_merchant_id   text   NOT NULL,
    recommended_merchant_name text,
    score                     double precision NOT NULL,
    platform                  text,
    home_zone                 text,{own}
    PRIMARY KEY (run_date, user_id, recommended_merchant_id)
);
COMMENT ON TABLE {table} IS {sql.Literal(segment.table_comment).as_string()};
COMMENT ON COLUMN {table}.score IS {sql.Literal(segment.score_description).as_string()};"""


# The segment tables stay generated: a segment's fields, its table and the query that fills them change together,
# so they have one definition, the Segment above (the static crm tables are in ml/warehouse/schema/crm.sql).
CRM_SEGMENTS_SQL = "".join(_table_sql(s) for s in SEGMENTS.values()) + "\n"

# Shared by every segment's members_sql; an unreferenced CTE is never evaluated.
_SOURCES_SQL = """
WITH score_ranges AS (
    SELECT user_id, max(score) AS best, least(0, min(score)) AS zero
    FROM crm.recommendations
    WHERE run_date = %(run_date)s AND mode = %(mode)s
    GROUP BY user_id
),
scored AS (
    SELECT r.user_id, r.rank, r.merchant_id, r.merchant_name, m.category,
           coalesce((r.score - g.zero) / nullif(g.best - g.zero, 0), 1) AS score
    FROM crm.recommendations r
    JOIN score_ranges g ON g.user_id = r.user_id
    LEFT JOIN marts.merchant_features m ON m.merchant_id = r.merchant_id
    WHERE r.run_date = %(run_date)s AND r.mode = %(mode)s
),
ordered AS (
    -- pairs with at least one order: page views alone do not make a merchant "ordered from"
    SELECT user_id, merchant_id, merchant_name, category, order_count, order_value, last_order_at
    FROM marts.user_merchant_orders
)
"""


def ensure_tables(conn: psycopg.Connection) -> None:
    """Every crm table: the static ones (ml/warehouse/schema/crm.sql) and the segment tables."""
    ddl.ensure(conn, "crm")
    conn.execute(CRM_SEGMENTS_SQL)


def refresh_segments(conn: psycopg.Connection, run_date: date, settings: Settings) -> dict[str, int]:
    """Replace run_date's rows in every segment table from ``crm.recommendations`` and the marts, for the
    users marketing may reach.

    Call inside the caller's transaction (it does not commit), after run_date's recommendations are
    written and analysed. Returns the rows written per segment.
    """
    ensure_tables(conn)
    params = _params(run_date, settings)
    # Every statement here reads a whole day's rows, where hash and merge joins are right; a nested loop comes
    # only from an estimate gone wrong, and at 550,000 users one (the score ranges joined back to a day's
    # recommendations, estimated at a seventh of their users) ran for over 20 minutes. SET LOCAL ends with the
    # transaction (also when it fails); RESET restores the setting for the rest of the caller's transaction.
    conn.execute("SET LOCAL enable_nestloop = off")
    rows = {name: _replace_segment(conn, segment, params) for name, segment in SEGMENTS.items()}
    conn.execute("RESET enable_nestloop")
    return rows


def _params(run_date: date, settings: Settings) -> dict:
    return {
        "run_date": run_date,
        "affinity_threshold": settings.crm_affinity_threshold,
        "top_k": settings.crm_top_k,
        "lapsed_days": settings.crm_lapsed_days,
        "new_user_max_orders": settings.crm_new_user_max_orders,
        "superfans_per_merchant": settings.crm_superfans_per_merchant,
    }


def _replace_segment(conn: psycopg.Connection, segment: Segment, params: dict) -> int:
    table = sql.Identifier("crm", segment.name)
    conn.execute(sql.SQL("DELETE FROM {} WHERE run_date = %(run_date)s").format(table), params)
    inserted = conn.execute(_insert_sql(segment), {**params, "segment": segment.name, "mode": segment.mode})
    analyze(conn, f"crm.{segment.name}")
    return inserted.rowcount


def _insert_sql(segment: Segment) -> sql.Composed:
    fields = [sql.Identifier(name) for name in segment.field_names]
    return sql.SQL(
        """INSERT INTO {table} ({columns})
        {sources}
        SELECT %(run_date)s, %(segment)s, m.user_id, m.merchant_id, m.merchant_name, m.score,
               u.platform, u.home_zone, {member_fields}
        FROM ({members}) AS m (user_id, merchant_id, merchant_name, score, {fields})
        LEFT JOIN marts.user_features u ON u.user_id = m.user_id
        WHERE m.user_id IN ({marketable})"""
    ).format(
        table=sql.Identifier("crm", segment.name),
        columns=sql.SQL(", ").join([sql.Identifier(c) for c in COMMON_COLUMNS] + fields),
        sources=sql.SQL(_SOURCES_SQL),
        member_fields=sql.SQL(", ").join(sql.SQL("m.{}").format(f) for f in fields),
        members=sql.SQL(segment.members_sql),
        fields=sql.SQL(", ").join(fields),
        marketable=sql.SQL(MARKETABLE_USERS_SQL),
    )


def ensure_reader_role(conn: psycopg.Connection, settings: Settings) -> None:
    """The CRM's login role: reads every table and view in ``crm`` (also later ones) and nothing else.

    Idempotent, and safe to call from every database of a cluster (the role is cluster-wide, the
    grants are per database). Needs CREATEROLE. Tables created later in ``crm`` are readable when
    the role running this creates them (ALTER DEFAULT PRIVILEGES covers the current user).
    """
    role = sql.Identifier(settings.crm_reader_role)
    _ensure_login_role(conn, settings.crm_reader_role, settings.crm_reader_password)
    statements = [
        sql.SQL("CREATE SCHEMA IF NOT EXISTS crm"),
        sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(conn.info.dbname), role),
        # Postgres < 15 lets everyone create objects in public; the reader must not write anywhere.
        sql.SQL("REVOKE CREATE ON SCHEMA public FROM PUBLIC"),
        sql.SQL("REVOKE ALL ON SCHEMA public FROM {}").format(role),
        # Start from nothing so a grant made by hand cannot survive, then give exactly read access.
        *read_grants(role, ("crm",)),
    ]
    for statement in statements:
        conn.execute(statement)


def read_grants(role: sql.Identifier, schemas) -> list[sql.Composed]:
    """Exactly read access to every table of ``schemas``, also tables created later by the role running them;
    anything granted by hand before is revoked first."""
    statements = []
    for schema in schemas:
        name = sql.Identifier(schema)
        statements += [
            sql.SQL("REVOKE ALL ON SCHEMA {} FROM {}").format(name, role),
            sql.SQL("REVOKE ALL ON ALL TABLES IN SCHEMA {} FROM {}").format(name, role),
            sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(name, role),
            sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}").format(name, role),
            sql.SQL("ALTER DEFAULT PRIVILEGES IN SCHEMA {} GRANT SELECT ON TABLES TO {}").format(name, role),
        ]
    return statements


def _ensure_login_role(conn: psycopg.Connection, role: str, password: str) -> None:
    exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
    conn.execute(
        sql.SQL(
            "{action} ROLE {role} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS "
            "PASSWORD {password}"
        ).format(
            action=sql.SQL("ALTER" if exists else "CREATE"),
            role=sql.Identifier(role),
            password=sql.Literal(password) if password else sql.SQL("NULL"),
        )
    )
