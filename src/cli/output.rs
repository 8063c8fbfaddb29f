//! What the CLI prints: a table with a header row for people, JSON with stable keys for
//! scripts, written so that a closed pipe (`casola-auth token list | head -1`) ends the
//! command quietly instead of panicking the way `println!` does.

use std::io::{self, Write};

use chrono::{DateTime, SecondsFormat, Utc};
use clap::ValueEnum;
use serde::Serialize;

use crate::{event::TokenEvent, scope::Catalog, store::TokenRecord, token::display_prefix};

/// How a command prints what it found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns under a header row.
    #[default]
    Table,
    /// JSON with stable keys and RFC 3339 timestamps.
    Json,
}

/// A token as the CLI shows it: never its secret or hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenView {
    /// Token id (UUID).
    pub id: String,
    /// Label.
    pub name: String,
    /// Notes (empty when none).
    pub description: String,
    /// Display prefix, e.g. `csl_a3f9Qk`.
    pub prefix: String,
    /// Granted scopes (not expanded).
    pub scopes: Vec<String>,
    /// Owner organisation.
    pub org_id: String,
    /// Owner user.
    pub user_id: String,
    /// Creation time, RFC 3339.
    pub created_at: String,
    /// Expiry, RFC 3339; none: never expires.
    pub expires_at: Option<String>,
    /// Last successful use, RFC 3339 (written behind, so it trails the use itself).
    pub last_used_at: Option<String>,
    /// Revocation time, RFC 3339 (in the future while a rotation overlap runs).
    pub revoked_at: Option<String>,
    /// Why it was (or, inside a rotation overlap, will be) revoked: `revoked`, `rotated`,
    /// `exposed` or `offboarded`.
    pub revocation_reason: Option<String>,
    /// The token that replaced it in a rotation.
    pub replaced_by: Option<String>,
    /// `active`, `expired` or `revoked`, as of the command's clock.
    pub status: String,
    /// Active and expiring within the notice window (`expiry.soon_days`).
    pub expires_soon: bool,
    /// CIDR blocks it may be used from; empty: any network.
    pub allowed_networks: Vec<String>,
    /// Model names or patterns it may name; empty: any model.
    pub allowed_models: Vec<String>,
}

impl TokenView {
    /// The view of `record` as of `now`; `soon` is the `expires_soon` window.
    pub fn new(record: &TokenRecord, now: DateTime<Utc>, soon: chrono::Duration) -> Self {
        Self {
            id: record.id.to_string(),
            name: record.name.clone(),
            description: record.description.clone(),
            prefix: display_prefix(record.lookup_id.as_str()),
            scopes: record.scopes.clone(),
            org_id: record.owner.org_id.to_string(),
            user_id: record.owner.user_id.to_string(),
            created_at: rfc3339(record.created_at),
            expires_at: record.expires_at.map(rfc3339),
            last_used_at: record.last_used_at.map(rfc3339),
            revoked_at: record.revoked_at.map(rfc3339),
            revocation_reason: record.revocation_reason.map(|r| r.as_str().to_owned()),
            replaced_by: record.replaced_by.map(|id| id.to_string()),
            status: status(record, now),
            expires_soon: record.expires_soon(now, soon),
            allowed_networks: record.restrictions.networks_as_text(),
            allowed_models: record.restrictions.models_as_text(),
        }
    }
}

/// An audit event as the CLI shows it (events never hold a secret).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventView {
    /// Event id (grows with time).
    pub id: i64,
    /// The token it is about.
    pub token_id: String,
    /// The token's organisation.
    pub org_id: String,
    /// The token's user.
    pub user_id: String,
    /// `created`, `updated`, `rotated`, `revoked`, `first_used`, `expired`, `exposed` or
    /// `offboarded`.
    pub kind: String,
    /// When, RFC 3339.
    pub at: String,
    /// `token:<id>`, `admin:<id>`, `cli`, `system` or `anonymous`.
    pub actor: String,
    /// The request's id, if any.
    pub request_id: Option<String>,
    /// The caller's address, if known.
    pub source_addr: Option<String>,
    /// Kind-specific facts.
    pub detail: serde_json::Value,
}

impl EventView {
    /// The view of a stored event.
    pub fn new(e: &TokenEvent) -> Self {
        Self {
            id: e.id,
            token_id: e.event.token_id.to_string(),
            org_id: e.event.owner.org_id.to_string(),
            user_id: e.event.owner.user_id.to_string(),
            kind: e.event.kind.to_string(),
            at: rfc3339(e.event.at),
            actor: e.event.actor.to_string(),
            request_id: e.event.request_id.as_ref().map(ToString::to_string),
            source_addr: e.event.source_addr.map(|a| a.to_string()),
            detail: e.event.detail.clone(),
        }
    }
}

/// `events`: one row per event, newest first; the detail as compact JSON.
pub fn event_table(events: &[EventView]) -> Table {
    let mut table = Table::new(&[
        "ID", "AT", "KIND", "TOKEN", "ORG", "USER", "ACTOR", "REQUEST", "SOURCE", "DETAIL",
    ]);
    for e in events {
        let detail = match &e.detail {
            serde_json::Value::Object(m) if m.is_empty() => String::new(),
            other => other.to_string(),
        };
        table.row(vec![
            e.id.to_string(),
            short_time(&e.at),
            e.kind.clone(),
            e.token_id.clone(),
            e.org_id.clone(),
            e.user_id.clone(),
            e.actor.clone(),
            e.request_id.clone().unwrap_or_default(),
            e.source_addr.clone().unwrap_or_default(),
            detail,
        ]);
    }
    table
}

/// A token's status word. Derived through the wire conversion for now, so the CLI and the
/// API cannot disagree; the one place to change when the domain owns the status.
fn status(record: &TokenRecord, now: DateTime<Utc>) -> String {
    record.status_at(now).to_string()
}

/// RFC 3339 in UTC, with as many fraction digits as the time has.
fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// Columns under a header row, padded to the widest cell; the last column is not padded.
#[derive(Debug, Clone)]
pub struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// An empty table with these column titles.
    pub fn new(header: &[&'static str]) -> Self {
        Self {
            header: header.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; an empty cell shows as `-` so that every column stays visible.
    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.header.len(), "one cell per column");
        let cells = cells
            .into_iter()
            .map(|c| {
                if c.is_empty() {
                    "-".to_owned()
                } else {
                    one_line(c)
                }
            })
            .collect();
        self.rows.push(cells);
    }

    /// The table as text, one line per row, header first.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let header = self.header.iter().map(|h| (*h).to_owned()).collect();
        let mut out = String::new();
        for row in std::iter::once(&header).chain(&self.rows) {
            let last = row.len().saturating_sub(1);
            for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
                if i == last {
                    out.push_str(cell);
                } else {
                    let pad = width - cell.chars().count();
                    out.push_str(cell);
                    out.extend(std::iter::repeat_n(' ', pad + 2));
                }
            }
            out.push('\n');
        }
        out
    }
}

/// A cell on one line: descriptions may hold newlines and tabs, which would break the rows.
fn one_line(cell: String) -> String {
    if !cell.contains(['\n', '\r', '\t']) {
        return cell;
    }
    cell.replace('\n', "\\n")
        .replace('\r', "\\r")
        .replace('\t', "\\t")
}

/// `token list`: one row per token.
pub fn token_table(tokens: &[TokenView]) -> Table {
    let mut table = Table::new(&[
        "ID",
        "PREFIX",
        "NAME",
        "ORG",
        "USER",
        "STATUS",
        "SCOPES",
        "EXPIRES",
        "SOON",
        "LAST USED",
        "NETWORKS",
        "MODELS",
    ]);
    for t in tokens {
        table.row(vec![
            t.id.clone(),
            t.prefix.clone(),
            t.name.clone(),
            t.org_id.clone(),
            t.user_id.clone(),
            t.status.clone(),
            t.scopes.join(","),
            t.expires_at.as_deref().map(short_time).unwrap_or_default(),
            if t.expires_soon { "yes" } else { "" }.to_owned(),
            t.last_used_at
                .as_deref()
                .map(short_time)
                .unwrap_or_default(),
            t.allowed_networks.join(","),
            t.allowed_models.join(","),
        ]);
    }
    table
}

/// `token get`: one row per field, in the JSON keys' order.
pub fn token_detail(t: &TokenView) -> Table {
    let mut table = Table::new(&["FIELD", "VALUE"]);
    let optional = |v: &Option<String>| v.clone().unwrap_or_default();
    for (field, value) in [
        ("id", t.id.clone()),
        ("name", t.name.clone()),
        ("description", t.description.clone()),
        ("prefix", t.prefix.clone()),
        ("scopes", t.scopes.join(",")),
        ("org_id", t.org_id.clone()),
        ("user_id", t.user_id.clone()),
        ("created_at", t.created_at.clone()),
        ("expires_at", optional(&t.expires_at)),
        ("last_used_at", optional(&t.last_used_at)),
        ("revoked_at", optional(&t.revoked_at)),
        ("revocation_reason", optional(&t.revocation_reason)),
        ("replaced_by", optional(&t.replaced_by)),
        ("status", t.status.clone()),
        ("expires_soon", t.expires_soon.to_string()),
        ("allowed_networks", t.allowed_networks.join(",")),
        ("allowed_models", t.allowed_models.join(",")),
    ] {
        table.row(vec![field.to_owned(), value]);
    }
    table
}

/// A timestamp to the second, for a table column.
fn short_time(rfc3339: &str) -> String {
    DateTime::parse_from_rfc3339(rfc3339)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
        .unwrap_or_else(|_| rfc3339.to_owned())
}

/// The catalog as `scopes --output json` prints it.
#[derive(Debug, Serialize)]
pub struct CatalogView {
    categories: Vec<CategoryView>,
    presets: Vec<PresetView>,
}

#[derive(Debug, Serialize)]
struct CategoryView {
    name: String,
    description: String,
    scopes: Vec<ScopeView>,
}

#[derive(Debug, Serialize)]
struct ScopeView {
    name: String,
    description: String,
    implies: Vec<String>,
}

#[derive(Debug, Serialize)]
struct PresetView {
    id: String,
    label: String,
    description: String,
    scopes: Vec<String>,
}

impl CatalogView {
    /// The view of `catalog`.
    pub fn new(catalog: &Catalog) -> Self {
        Self {
            categories: catalog
                .categories()
                .iter()
                .map(|c| CategoryView {
                    name: c.name.clone(),
                    description: c.description.clone(),
                    scopes: c
                        .scopes
                        .iter()
                        .map(|s| ScopeView {
                            name: s.name.clone(),
                            description: s.description.clone(),
                            implies: s.implies.clone(),
                        })
                        .collect(),
                })
                .collect(),
            presets: catalog
                .presets()
                .iter()
                .map(|p| PresetView {
                    id: p.id.clone(),
                    label: p.label.clone(),
                    description: p.description.clone(),
                    scopes: p.scopes.clone(),
                })
                .collect(),
        }
    }

    /// Two tables: the scopes, then the presets.
    pub fn render_tables(&self) -> String {
        let mut scopes = Table::new(&["SCOPE", "CATEGORY", "IMPLIES", "DESCRIPTION"]);
        for c in &self.categories {
            for s in &c.scopes {
                scopes.row(vec![
                    s.name.clone(),
                    c.name.clone(),
                    s.implies.join(","),
                    s.description.clone(),
                ]);
            }
        }
        let mut presets = Table::new(&["PRESET", "SCOPES", "LABEL"]);
        for p in &self.presets {
            presets.row(vec![p.id.clone(), p.scopes.join(","), p.label.clone()]);
        }
        format!("{}\n{}", scopes.render(), presets.render())
    }
}

/// Pretty JSON and a final newline.
pub fn json<T: Serialize>(value: &T) -> String {
    let mut text = serde_json::to_string_pretty(value).expect("views serialise: plain data");
    text.push('\n');
    text
}

/// Writes `text` to stdout in one go. A `BrokenPipe` error means the reader has gone
/// (`| head`); the caller ends quietly on it (see `Failure` in the CLI).
pub fn emit(text: impl AsRef<[u8]>) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_ref())?;
    out.flush()
}

/// A line for the operator on stderr. A closed stderr must not abort the command, so a
/// write error is ignored here (the result still reaches stdout and the exit code).
pub fn note(text: &str) {
    let _ = writeln!(io::stderr().lock(), "{text}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns_under_a_header_and_shows_empty_cells() {
        let mut t = Table::new(&["ID", "NAME", "SCOPES"]);
        t.row(vec!["1".into(), "laptop".into(), "user:read".into()]);
        t.row(vec!["22".into(), String::new(), "a,b".into()]);
        assert_eq!(
            t.render(),
            "ID  NAME    SCOPES\n\
             1   laptop  user:read\n\
             22  -       a,b\n"
        );
    }

    #[test]
    fn line_breaks_and_tabs_in_a_cell_stay_on_its_row() {
        let mut t = Table::new(&["FIELD", "VALUE"]);
        t.row(vec!["description".into(), "two\nlines\tand a tab".into()]);
        assert_eq!(
            t.render(),
            "FIELD        VALUE\ndescription  two\\nlines\\tand a tab\n"
        );
    }

    #[test]
    fn table_with_no_rows_is_its_header() {
        assert_eq!(Table::new(&["A", "B"]).render(), "A  B\n");
    }

    #[test]
    fn wide_characters_count_once_per_char() {
        let mut t = Table::new(&["N", "X"]);
        t.row(vec!["ünï".into(), "1".into()]);
        assert_eq!(t.render(), "N    X\nünï  1\n");
    }

    #[test]
    fn table_times_are_shortened_to_the_second() {
        assert_eq!(
            short_time("2026-12-01T14:00:00.123456Z"),
            "2026-12-01T14:00:00Z"
        );
    }

    #[test]
    fn json_keys_are_stable_and_timestamps_are_rfc3339() {
        let t = TokenView {
            id: "0e6c7d1e-0000-4000-8000-000000000000".into(),
            name: "ci".into(),
            description: String::new(),
            prefix: "csl_abcdef".into(),
            scopes: vec!["user:read".into()],
            org_id: "acme".into(),
            user_id: "alice".into(),
            created_at: rfc3339(DateTime::from_timestamp(1_800_000_000, 5_000).unwrap()),
            expires_at: None,
            last_used_at: None,
            revoked_at: None,
            revocation_reason: None,
            replaced_by: None,
            status: "active".into(),
            expires_soon: false,
            allowed_networks: Vec::new(),
            allowed_models: vec!["llama-4-*".into()],
        };
        let v: serde_json::Value = serde_json::from_str(&json(&t)).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut want = vec![
            "id",
            "name",
            "description",
            "prefix",
            "scopes",
            "org_id",
            "user_id",
            "created_at",
            "expires_at",
            "last_used_at",
            "revoked_at",
            "revocation_reason",
            "replaced_by",
            "status",
            "expires_soon",
            "allowed_networks",
            "allowed_models",
        ];
        want.sort_unstable();
        let mut keys_sorted = keys.clone();
        keys_sorted.sort_unstable();
        assert_eq!(keys_sorted, want, "absent times are null, never missing");
        assert_eq!(v["created_at"], "2027-01-15T08:00:00.000005Z");
        assert!(v["expires_at"].is_null());
    }
}
