"""Full-text search over the department's Drive documents (the built-in `search_documents` tool).

The connection must be a tenant connection (`db.connect_tenant` / server settings from
`naming.tenant_server_settings`): table names are unqualified and row-level security keeps the
rows to the caller's department. Any text is a valid query: websearch_to_tsquery never raises on
user input, and a query without searchable words (empty, punctuation, stop words) finds nothing.

Matching is strict first (every word, websearch syntax: "phrases", -exclusions, OR), then, when
that finds nothing, loose: any of the words. A caller's spoken question ("how many vacation days
do I get") rarely has every word in one document, yet the document with most of them should win.
"""

from __future__ import annotations

import re
from typing import Any

import asyncpg

MAX_QUERY_CHARS = 500
MAX_LIMIT = 20
HEADLINE_OPTIONS = (
    'StartSel="", StopSel="", MaxWords=35, MinWords=12, MaxFragments=2, FragmentDelimiter=" ... "'
)

MAX_LOOSE_WORDS = 32
_WORD_RE = re.compile(r"[^\W_]+")

# Rank in the inner query (GIN index for the match), headline only for the rows returned.
_SEARCH_TEMPLATE = """
WITH q AS (SELECT TSQUERY AS query),
best AS (
    SELECT d.id, d.drive_file_id, d.title, d.content, d.updated_at,
           ts_rank_cd(d.search, q.query) AS rank, q.query
    FROM drive_documents AS d, q
    WHERE d.search @@ q.query
    ORDER BY rank DESC, d.updated_at DESC, d.id
    LIMIT $2
)
SELECT drive_file_id, title,
       ts_headline('english', coalesce(content, ''), query, $3) AS snippet,
       left(coalesce(content, ''), 240) AS opening,
       rank
FROM best
ORDER BY rank DESC, updated_at DESC, id
"""
STRICT_SQL = _SEARCH_TEMPLATE.replace("TSQUERY", "websearch_to_tsquery('english', $1)")
# $1 is built from letter/digit runs joined by " | ": nothing in it is tsquery syntax but the ORs.
LOOSE_SQL = _SEARCH_TEMPLATE.replace("TSQUERY", "to_tsquery('english', $1)")


async def search_documents(conn: asyncpg.Connection, query: str, limit: int = 5) -> list[dict]:
    """Documents matching `query`, best first: {drive_file_id, title, snippet, rank}."""
    text = (query or "").replace("\x00", " ").strip()[:MAX_QUERY_CHARS]
    if not text:
        return []
    words = _WORD_RE.findall(text)[:MAX_LOOSE_WORDS]
    if not words:
        return []
    limit = max(1, min(int(limit), MAX_LIMIT))
    rows = await conn.fetch(STRICT_SQL, text, limit, HEADLINE_OPTIONS)
    if not rows and len(words) > 1:
        rows = await conn.fetch(LOOSE_SQL, " | ".join(words), limit, HEADLINE_OPTIONS)
    return [_result(row) for row in rows]


def _result(row: Any) -> dict[str, Any]:
    snippet = " ".join((row["snippet"] or "").split()) or " ".join(row["opening"].split())
    return {
        "drive_file_id": row["drive_file_id"],
        "title": row["title"],
        "snippet": snippet,
        "rank": float(row["rank"]),
    }
