"""Full-text search over the department's Drive documents (the built-in `search_documents` tool).

The connection must be a tenant connection (`db.connect_tenant` / server settings from
`naming.tenant_server_settings`): table names are unqualified and row-level security keeps the
rows to the caller's department. Any text is a valid query: websearch_to_tsquery never raises on
user input, and a query without searchable words (empty, punctuation, stop words) finds nothing.

Matching is strict first (every word, websearch syntax: "phrases", -exclusions, OR), then, when
that finds nothing, loose: any of the words. A caller's spoken question ("how many vacation days
do I get") rarely has every word in one document, yet the document with most of them should win.

Cost is bounded, whatever the query matches (budget: p99 <= 20 ms over 10,000 documents,
bench/db_bench.py). Measured on 10,000 documents of 150-600 words, where a common word matches
up to 83 % of them, the three costs were:
- Finding the matches: only through the GIN indexes, which needs `ts_match_vq` (the `@@`
  operator) marked LEAKPROOF: with row-level security FORCEd, PostgreSQL evaluates a
  non-leakproof condition only after the policy, so it cannot be an index condition and every
  search became a sequential scan reading all 10,000 whole-text vectors (~100 ms).
  `python -m aio_agent.tenant create` (a superuser) marks it; see tenant.py for why that is safe
  and for managed servers that refuse it (search then still works, as a sequential scan).
- Ranking: ts_rank_cd reads each candidate's whole-text vector (~4 kB, TOASTed): ranking every
  match of a common word (8,300 rows) cost 120 ms. So only a bounded candidate set is ranked:
  up to CANDIDATES documents whose *title* matches (their own small vector `title_search` and its
  index, migration 0005) plus up to CANDIDATES documents whose text matches, in index order. A
  query matching more documents than that does not discriminate: among its body-only matches the
  ranked ones are a sample, while title matches (the strongest signal) are found first.
- Snippets: ts_headline parses and stems the whole text it is given (~1 ms per 4 kB document), so
  it runs only for the final `limit` rows (after LIMIT, in the outer query) and only on a window
  of WINDOW_CHARS characters that starts just before the first word that begins like one of the
  query's lexemes (a case-insensitive regular expression, regexp_instr: PostgreSQL 15 or later).
  A long document costs no more than a short one.
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
CANDIDATES = 30  # ranked per source (title matches, text matches): at most 2 * CANDIDATES rows
WINDOW_CHARS = 1000  # text given to ts_headline: about 150 words, room for 2 fragments of 35
WINDOW_BEFORE = 100  # characters kept before the first hit
MAX_NEEDLES = 16  # query lexemes used to place the snippet window
_WORD_RE = re.compile(r"[^\W_]+")

# $1 query text, $2 limit, $3 CANDIDATES, $4 headline options, $5 WINDOW_BEFORE, $6 WINDOW_CHARS.
# `candidates` carries no document text: content is read (and windowed) for the final rows only.
# The needle pattern: each query lexeme minus its last letter (stemming changes word endings:
# polici <- policy), at a word start, regex metacharacters escaped; none found -> window at 1.
_SEARCH_TEMPLATE = r"""
WITH candidates AS (
    (SELECT id, updated_at, ts_rank_cd(search, TSQUERY) AS rank
     FROM drive_documents
     WHERE title_search @@ TSQUERY AND search @@ TSQUERY
     LIMIT $3)
    UNION
    (SELECT id, updated_at, ts_rank_cd(search, TSQUERY) AS rank
     FROM drive_documents
     WHERE search @@ TSQUERY
     LIMIT $3)
),
best AS (
    SELECT id, updated_at, rank FROM candidates
    ORDER BY rank DESC, updated_at DESC, id
    LIMIT $2
),
needle AS (
    SELECT '\m(?:' || string_agg(
               regexp_replace(left(w, greatest(length(w) - 1, least(length(w), 3))),
                              '([^[:alnum:]])', '\\\1', 'g'),
               '|') || ')' AS pattern
    FROM unnest((tsvector_to_array(to_tsvector('english', $1)))[1:MAX_NEEDLES]) AS w
)
SELECT d.drive_file_id, d.title, best.rank,
       ts_headline('english', substr(coalesce(d.content, ''), greatest(1, hit.pos - $5), $6),
                   TSQUERY, $4) AS snippet,
       left(coalesce(d.content, ''), 240) AS opening
FROM best
JOIN drive_documents AS d ON d.id = best.id
CROSS JOIN needle
CROSS JOIN LATERAL (
    SELECT coalesce(nullif(regexp_instr(d.content, needle.pattern, 1, 1, 0, 'i'), 0), 1) AS pos
) AS hit
ORDER BY best.rank DESC, best.updated_at DESC, best.id
""".replace("MAX_NEEDLES", str(MAX_NEEDLES))
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
    args = (limit, CANDIDATES, HEADLINE_OPTIONS, WINDOW_BEFORE, WINDOW_CHARS)
    rows = await conn.fetch(STRICT_SQL, text, *args)
    if not rows and len(words) > 1:
        rows = await conn.fetch(LOOSE_SQL, " | ".join(words), *args)
    return [_result(row) for row in rows]


def _result(row: Any) -> dict[str, Any]:
    snippet = " ".join((row["snippet"] or "").split()) or " ".join(row["opening"].split())
    return {
        "drive_file_id": row["drive_file_id"],
        "title": row["title"],
        "snippet": snippet,
        "rank": float(row["rank"]),
    }
