//! The scope catalog (design.md section 4): categories of scopes with descriptions and
//! implications, the presets, expansion and matching. Operators extend the default catalog
//! from a file; unknown scope names are an error wherever they appear.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    str::FromStr,
};

use serde::{Deserialize, Serialize};

use crate::error::FieldViolation;

/// The default catalog, as TOML in the operator's file format.
const DEFAULT_CATALOG: &str = include_str!("default-catalog.toml");

/// The reserved service scope: create and manage tokens for any user of any organisation.
/// No preset grants it, and it is never granted through the API (only by the CLI).
pub const TOKENS_ISSUE: &str = "tokens:issue";
/// Read own tokens, jobs, models and profile.
pub const USER_READ: &str = "user:read";
/// Manage own tokens, submit jobs; implies user:read.
pub const USER_WRITE: &str = "user:write";
/// Read the organisation's settings and tokens.
pub const ADMIN_READ: &str = "admin:read";
/// Manage the organisation, revoke its tokens; implies admin:read.
pub const ADMIN_WRITE: &str = "admin:write";

/// How required scopes are matched against held ones: `all` or `any`, the same words in
/// the configuration (serde) and in Envoy context extensions ([`FromStr`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScopeMatch {
    /// Every required scope must be held.
    #[default]
    All,
    /// At least one required scope must be held.
    Any,
}

impl FromStr for ScopeMatch {
    type Err = String;

    /// `all` or `any` (surrounding blanks ignored); empty is the default, `all`.
    fn from_str(raw: &str) -> Result<Self, String> {
        match raw.trim() {
            "" | "all" => Ok(Self::All),
            "any" => Ok(Self::Any),
            other => Err(format!("{other:?} is not all or any")),
        }
    }
}

/// Scope names the catalog does not know, with their positions in the list given: the one
/// place an unknown scope becomes an error, as field violations or as a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownScopes(Vec<(usize, String)>);

impl UnknownScopes {
    /// The unknown names with their positions, in order.
    pub fn names(&self) -> &[(usize, String)] {
        &self.0
    }

    /// One violation per unknown name, on `field[i]`; `offset` is subtracted from each
    /// position (for lists resolved behind a preset's scopes).
    pub fn violations(&self, field: &str, offset: usize) -> Vec<FieldViolation> {
        self.0
            .iter()
            .map(|(i, name)| {
                FieldViolation::new(
                    format!("{field}[{}]", i - offset),
                    format!("unknown scope {name:?}"),
                )
            })
            .collect()
    }
}

impl fmt::Display for UnknownScopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.0.iter().map(|(_, n)| n.as_str()).collect();
        write!(f, "unknown scopes: {}", names.join(", "))
    }
}

/// A sorted set of scope names known to the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScopeSet(BTreeSet<String>);

impl ScopeSet {
    /// Whether `scope` is in the set.
    pub fn contains(&self, scope: &str) -> bool {
        self.0.contains(scope)
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Number of scopes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The scopes, sorted.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }

    /// Whether every scope of `self` is in `other`.
    pub fn is_subset(&self, other: &ScopeSet) -> bool {
        self.0.is_subset(&other.0)
    }

    /// The scopes of `self` not in `other`, sorted.
    pub fn difference(&self, other: &ScopeSet) -> Vec<String> {
        self.0.difference(&other.0).cloned().collect()
    }

    /// The scopes as owned strings, sorted.
    pub fn to_vec(&self) -> Vec<String> {
        self.0.iter().cloned().collect()
    }

    /// Joins the scopes with `sep`.
    pub fn join(&self, sep: &str) -> String {
        self.to_vec().join(sep)
    }

    fn insert(&mut self, scope: String) {
        self.0.insert(scope);
    }
}

/// One scope of the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopeDef {
    /// Name, e.g. `user:write`.
    pub name: String,
    /// What it permits.
    #[serde(default)]
    pub description: String,
    /// Scopes it implies.
    #[serde(default)]
    pub implies: Vec<String>,
}

/// A group of scopes shown together.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Category {
    /// Name, e.g. `user`.
    pub name: String,
    /// What the category covers.
    #[serde(default)]
    pub description: String,
    /// Its scopes.
    #[serde(default)]
    pub scopes: Vec<ScopeDef>,
}

/// A named set of scopes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preset {
    /// Id, e.g. `user-full`.
    pub id: String,
    /// Human label.
    pub label: String,
    /// Use case.
    #[serde(default)]
    pub description: String,
    /// Scopes granted.
    pub scopes: Vec<String>,
}

/// An operator's catalog file: categories and presets added to the defaults.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogSpec {
    /// Categories; one with a default category's name adds scopes to it.
    #[serde(default)]
    pub categories: Vec<Category>,
    /// Extra presets.
    #[serde(default)]
    pub presets: Vec<Preset>,
}

impl CatalogSpec {
    /// A spec from the TOML of a catalog file (`[[categories]]`, `[[presets]]`).
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }
}

/// A catalog that does not hold together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    /// A scope name with characters outside `[a-z0-9:._-]` or too long.
    #[error("invalid scope name {0:?}: use 1-64 characters of a-z, 0-9, ':', '.', '_', '-'")]
    InvalidName(String),
    /// A scope defined twice.
    #[error("scope {0:?} is defined twice")]
    DuplicateScope(String),
    /// A preset id defined twice.
    #[error("preset {0:?} is defined twice")]
    DuplicatePreset(String),
    /// A scope implies one that does not exist.
    #[error("scope {scope:?} implies unknown scope {implied:?}")]
    UnknownImplied {
        /// The implying scope.
        scope: String,
        /// The unknown one.
        implied: String,
    },
    /// A preset names a scope that does not exist.
    #[error("preset {preset:?} names unknown scope {scope:?}")]
    UnknownPresetScope {
        /// The preset.
        preset: String,
        /// The unknown scope.
        scope: String,
    },
    /// A preset grants no scope.
    #[error("preset {0:?} grants no scope")]
    EmptyPreset(String),
    /// A preset grants the reserved service scope.
    #[error("preset {0:?} may not grant the reserved scope {TOKENS_ISSUE}")]
    ReservedInPreset(String),
}

/// The scope catalog with implications resolved.
#[derive(Debug, Clone)]
pub struct Catalog {
    categories: Vec<Category>,
    presets: Vec<Preset>,
    /// Each scope's transitive closure, itself included.
    closure: BTreeMap<String, BTreeSet<String>>,
}

fn valid_scope_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b":._-".contains(&b))
}

impl Default for Catalog {
    fn default() -> Self {
        Self::build(CatalogSpec::default()).expect("the default catalog is valid")
    }
}

impl Catalog {
    fn defaults() -> CatalogSpec {
        CatalogSpec::from_toml(DEFAULT_CATALOG).expect("the embedded default catalog parses")
    }

    /// The default catalog extended by an operator's spec.
    // Longer than most: every check of a catalog in turn (names, duplicates, implications,
    // presets), each with its own error, then the closure; split, it would read worse.
    pub fn build(extra: CatalogSpec) -> Result<Self, CatalogError> {
        let mut spec = Self::defaults();
        for category in extra.categories {
            match spec.categories.iter_mut().find(|c| c.name == category.name) {
                Some(existing) => existing.scopes.extend(category.scopes),
                None => spec.categories.push(category),
            }
        }
        spec.presets.extend(extra.presets);

        let mut direct: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for def in spec.categories.iter().flat_map(|c| &c.scopes) {
            if !valid_scope_name(&def.name) {
                return Err(CatalogError::InvalidName(def.name.clone()));
            }
            if direct
                .insert(def.name.clone(), def.implies.clone())
                .is_some()
            {
                return Err(CatalogError::DuplicateScope(def.name.clone()));
            }
        }
        for (scope, implies) in &direct {
            if let Some(implied) = implies.iter().find(|i| !direct.contains_key(*i)) {
                return Err(CatalogError::UnknownImplied {
                    scope: scope.clone(),
                    implied: implied.clone(),
                });
            }
        }
        let mut seen = BTreeSet::new();
        for preset in &spec.presets {
            if !seen.insert(preset.id.clone()) {
                return Err(CatalogError::DuplicatePreset(preset.id.clone()));
            }
            if preset.scopes.is_empty() {
                return Err(CatalogError::EmptyPreset(preset.id.clone()));
            }
            if let Some(scope) = preset.scopes.iter().find(|s| !direct.contains_key(*s)) {
                return Err(CatalogError::UnknownPresetScope {
                    preset: preset.id.clone(),
                    scope: scope.clone(),
                });
            }
            if preset.scopes.iter().any(|s| s == TOKENS_ISSUE) {
                return Err(CatalogError::ReservedInPreset(preset.id.clone()));
            }
        }

        let closure = direct
            .keys()
            .map(|start| {
                let mut reached = BTreeSet::new();
                let mut todo = vec![start.clone()];
                while let Some(scope) = todo.pop() {
                    if reached.insert(scope.clone()) {
                        todo.extend(direct[&scope].iter().cloned());
                    }
                }
                (start.clone(), reached)
            })
            .collect();
        Ok(Self {
            categories: spec.categories,
            presets: spec.presets,
            closure,
        })
    }

    /// The categories, in catalog order.
    pub fn categories(&self) -> &[Category] {
        &self.categories
    }

    /// The presets, in catalog order.
    pub fn presets(&self) -> &[Preset] {
        &self.presets
    }

    /// The preset with this id.
    pub fn preset(&self, id: &str) -> Option<&Preset> {
        self.presets.iter().find(|p| p.id == id)
    }

    /// Whether the catalog knows this scope.
    pub fn knows(&self, scope: &str) -> bool {
        self.closure.contains_key(scope)
    }

    /// Resolves names to a set; the error lists the position and name of each unknown one.
    pub fn resolve<S: AsRef<str>>(&self, names: &[S]) -> Result<ScopeSet, UnknownScopes> {
        let mut set = ScopeSet::default();
        let mut unknown = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let name = name.as_ref();
            if self.knows(name) {
                set.insert(name.to_owned());
            } else {
                unknown.push((i, name.to_owned()));
            }
        }
        if unknown.is_empty() {
            Ok(set)
        } else {
            Err(UnknownScopes(unknown))
        }
    }

    /// Scopes read back from the store; names the catalog no longer has are dropped (a
    /// removed scope grants nothing), with a warning.
    pub fn from_stored<S: AsRef<str>>(&self, names: &[S]) -> ScopeSet {
        let mut set = ScopeSet::default();
        for name in names {
            let name = name.as_ref();
            if self.knows(name) {
                set.insert(name.to_owned());
            } else {
                tracing::warn!(
                    scope = name,
                    "stored token names a scope the catalog no longer has"
                );
            }
        }
        set
    }

    /// The scopes of `held` other than `scope` that imply it (directly or through others).
    pub fn implied_by(&self, scope: &str, held: &ScopeSet) -> Vec<String> {
        held.iter()
            .filter(|&other| {
                other != scope && self.closure.get(other).is_some_and(|c| c.contains(scope))
            })
            .map(str::to_owned)
            .collect()
    }

    /// The set with every implication added.
    pub fn expand(&self, set: &ScopeSet) -> ScopeSet {
        let mut out = ScopeSet::default();
        for scope in set.iter() {
            for implied in &self.closure[scope] {
                out.insert(implied.clone());
            }
        }
        out
    }

    /// Matches required scopes against held, already expanded ones. `Err` carries the
    /// missing scopes (for ANY: all of the required ones). No requirement always matches.
    pub fn check(
        held: &ScopeSet,
        required: &ScopeSet,
        mode: ScopeMatch,
    ) -> Result<(), Vec<String>> {
        if required.is_empty() {
            return Ok(());
        }
        let missing = required.difference(held);
        let ok = match mode {
            ScopeMatch::All => missing.is_empty(),
            ScopeMatch::Any => missing.len() < required.len(),
        };
        if ok { Ok(()) } else { Err(missing) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn implied_by_names_the_held_scopes_that_grant_a_scope() {
        let c = Catalog::default();
        let held = c.expand(&set(&c, &["user:write", "admin:write"]));
        assert_eq!(c.implied_by("user:read", &held), ["user:write"]);
        assert_eq!(c.implied_by("admin:read", &held), ["admin:write"]);
        assert!(c.implied_by("user:write", &held).is_empty());
    }

    fn set(catalog: &Catalog, names: &[&str]) -> ScopeSet {
        catalog.resolve(names).unwrap()
    }

    #[test]
    fn write_scopes_imply_read_scopes() {
        let c = Catalog::default();
        assert_eq!(
            c.expand(&set(&c, &[USER_WRITE])).to_vec(),
            vec![USER_READ, USER_WRITE]
        );
        assert_eq!(
            c.expand(&set(&c, &[ADMIN_WRITE])).to_vec(),
            vec![ADMIN_READ, ADMIN_WRITE]
        );
        assert_eq!(c.expand(&set(&c, &[USER_READ])).to_vec(), vec![USER_READ]);
        // admin scopes do not imply user scopes, nor the service scope.
        assert!(!c.expand(&set(&c, &[ADMIN_WRITE])).contains(USER_READ));
    }

    #[test]
    fn presets_are_the_four_of_the_tokens_page() {
        let c = Catalog::default();
        let ids: Vec<_> = c.presets().iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, ["user-read", "user-full", "admin-read", "admin-full"]);
        assert_eq!(
            c.preset("user-full").unwrap().scopes,
            [USER_READ, USER_WRITE]
        );
        assert_eq!(c.preset("admin-full").unwrap().scopes, [ADMIN_WRITE]);
        assert!(
            c.presets()
                .iter()
                .all(|p| !p.scopes.iter().any(|s| s == TOKENS_ISSUE))
        );
    }

    #[test]
    fn unknown_names_are_reported_by_position() {
        let c = Catalog::default();
        let err = c
            .resolve(&["user:read", "jobs:write", "admin"])
            .unwrap_err();
        assert_eq!(
            err,
            UnknownScopes(vec![(1, "jobs:write".into()), (2, "admin".into())])
        );
        assert_eq!(err.to_string(), "unknown scopes: jobs:write, admin");
        assert_eq!(err.violations("scopes", 1)[0].field, "scopes[0]");
    }

    #[test]
    fn match_modes_parse_from_the_words_of_the_config() {
        assert_eq!("all".parse(), Ok(ScopeMatch::All));
        assert_eq!(" any ".parse(), Ok(ScopeMatch::Any));
        assert_eq!("".parse(), Ok(ScopeMatch::All));
        assert!("most".parse::<ScopeMatch>().unwrap_err().contains("most"));
    }

    #[test]
    fn all_and_any_matching() {
        let c = Catalog::default();
        let held = c.expand(&set(&c, &[USER_WRITE]));
        let need = set(&c, &[USER_READ, ADMIN_READ]);
        assert_eq!(
            Catalog::check(&held, &need, ScopeMatch::All),
            Err(vec![ADMIN_READ.to_string()])
        );
        assert_eq!(Catalog::check(&held, &need, ScopeMatch::Any), Ok(()));
        let none = set(&c, &[ADMIN_READ, ADMIN_WRITE]);
        assert_eq!(
            Catalog::check(&held, &none, ScopeMatch::Any),
            Err(vec![ADMIN_READ.to_string(), ADMIN_WRITE.to_string()])
        );
        assert_eq!(
            Catalog::check(&held, &ScopeSet::default(), ScopeMatch::All),
            Ok(())
        );
    }

    #[test]
    fn operators_extend_the_catalog_with_transitive_implications() {
        let spec: CatalogSpec = toml_spec(
            r#"
            [[categories]]
            name = "jobs"
            description = "Inference jobs"
            scopes = [
              { name = "jobs:admin", implies = ["jobs:write"] },
              { name = "jobs:write", implies = ["jobs:read"] },
              { name = "jobs:read" },
            ]
            [[categories]]
            name = "user"
            scopes = [{ name = "models:read" }]
            [[presets]]
            id = "jobs-runner"
            label = "Jobs runner"
            scopes = ["jobs:write", "models:read"]
            "#,
        );
        let c = Catalog::build(spec).unwrap();
        assert_eq!(
            c.expand(&set(&c, &["jobs:admin"])).to_vec(),
            vec!["jobs:admin", "jobs:read", "jobs:write"]
        );
        assert!(c.knows("models:read"));
        assert_eq!(
            c.categories()[0].scopes.len(),
            3,
            "added to the user category"
        );
        assert!(c.preset("jobs-runner").is_some());
    }

    #[test]
    fn broken_operator_catalogs_are_refused_with_the_reason() {
        let cases = [
            (
                r#"[[categories]]
                name = "x"
                scopes = [{ name = "user:read" }]"#,
                CatalogError::DuplicateScope("user:read".into()),
            ),
            (
                r#"[[categories]]
                name = "x"
                scopes = [{ name = "x:a", implies = ["x:b"] }]"#,
                CatalogError::UnknownImplied {
                    scope: "x:a".into(),
                    implied: "x:b".into(),
                },
            ),
            (
                r#"[[categories]]
                name = "x"
                scopes = [{ name = "Bad Name" }]"#,
                CatalogError::InvalidName("Bad Name".into()),
            ),
            (
                r#"[[presets]]
                id = "user-read"
                label = "again"
                scopes = ["user:read"]"#,
                CatalogError::DuplicatePreset("user-read".into()),
            ),
            (
                r#"[[presets]]
                id = "p"
                label = "p"
                scopes = ["nope:read"]"#,
                CatalogError::UnknownPresetScope {
                    preset: "p".into(),
                    scope: "nope:read".into(),
                },
            ),
            (
                r#"[[presets]]
                id = "p"
                label = "p"
                scopes = ["tokens:issue"]"#,
                CatalogError::ReservedInPreset("p".into()),
            ),
            (
                r#"[[presets]]
                id = "p"
                label = "p"
                scopes = []"#,
                CatalogError::EmptyPreset("p".into()),
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(Catalog::build(toml_spec(text)).unwrap_err(), expected);
        }
    }

    /// Names: the catalog's, near misses, and anything.
    fn names() -> impl Strategy<Value = Vec<String>> {
        proptest::collection::vec(
            prop_oneof![
                prop::sample::select(vec![
                    USER_READ,
                    USER_WRITE,
                    ADMIN_READ,
                    ADMIN_WRITE,
                    TOKENS_ISSUE,
                    "User:Read",
                    "user:read ",
                    "",
                    "jobs:write",
                ])
                .prop_map(String::from),
                "[a-z:._-]{0,12}",
                any::<String>(),
            ],
            0..8,
        )
    }

    proptest! {
        /// resolve gives exactly the known names as a set, or every unknown one with its
        /// position and nothing else.
        #[test]
        fn resolve_keeps_known_names_and_reports_each_unknown_one_by_position(names in names()) {
            let c = Catalog::default();
            match c.resolve(&names) {
                Ok(set) => {
                    prop_assert!(names.iter().all(|n| c.knows(n)));
                    let want: BTreeSet<&str> = names.iter().map(String::as_str).collect();
                    prop_assert_eq!(set.iter().collect::<BTreeSet<_>>(), want);
                }
                Err(unknown) => {
                    let want: Vec<(usize, String)> = names
                        .iter()
                        .enumerate()
                        .filter(|(_, n)| !c.knows(n))
                        .map(|(i, n)| (i, n.clone()))
                        .collect();
                    prop_assert_eq!(unknown, UnknownScopes(want));
                }
            }
        }

        /// Expansion keeps what it was given, is idempotent, and ALL/ANY agree with set
        /// inclusion.
        #[test]
        fn matching_agrees_with_set_inclusion(held in names(), required in names()) {
            let c = Catalog::default();
            let known = |names: &[String]| {
                let names: Vec<&String> = names.iter().filter(|n| c.knows(n)).collect();
                c.resolve(&names).unwrap()
            };
            let given = known(&held);
            let held = c.expand(&given);
            prop_assert!(given.is_subset(&held));
            prop_assert_eq!(c.expand(&held), held.clone());
            let required = known(&required);
            prop_assert_eq!(
                Catalog::check(&held, &required, ScopeMatch::All).is_ok(),
                required.is_subset(&held)
            );
            prop_assert_eq!(
                Catalog::check(&held, &required, ScopeMatch::Any).is_ok(),
                required.is_empty() || required.iter().any(|s| held.contains(s))
            );
        }
    }

    fn toml_spec(text: &str) -> CatalogSpec {
        use figment::providers::{Format, Toml};
        figment::Figment::from(Toml::string(text))
            .extract()
            .unwrap()
    }
}
