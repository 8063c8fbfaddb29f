//! Scope lists: `Catalog::resolve` on any names, the Check context extensions
//! (`casola.scopes`, `casola.match`) through `requirement_of`, and `Catalog::build` on an
//! operator spec shaped by the input.
//! Invariants: no panic; resolve returns exactly the known names, or each unknown one with
//! its position; a context-extension requirement holds exactly the words of the list; a
//! built catalog's expansion contains its input and is idempotent; ALL/ANY matching agrees
//! with set inclusion.
#![no_main]

use std::collections::{BTreeSet, HashMap};

use arbitrary::Arbitrary;
use casola_auth::{
    scope::{Catalog, CatalogSpec, Category, Preset, ScopeDef, ScopeMatch, ScopeSet},
    transport::envoy::{MATCH_KEY, RouteTable, SCOPES_KEY, requirement_of},
};
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use libfuzzer_sys::fuzz_target;

/// A name: one of a small pool (so known names and collisions are common) or any string.
#[derive(Debug, Arbitrary)]
enum Name {
    Pool(u8),
    Any(String),
}

const POOL: [&str; 12] = [
    "user:read",
    "user:write",
    "admin:read",
    "admin:write",
    "tokens:issue",
    "jobs:read",
    "jobs:write",
    "jobs:admin",
    "models:read",
    "User:Read",
    "",
    "a",
];

impl Name {
    fn get(&self) -> String {
        match self {
            Name::Pool(i) => POOL[usize::from(*i) % POOL.len()].to_owned(),
            Name::Any(s) => s.clone(),
        }
    }
}

#[derive(Debug, Arbitrary)]
struct Def {
    name: Name,
    implies: Vec<Name>,
}

#[derive(Debug, Arbitrary)]
struct Spec {
    categories: Vec<(Name, Vec<Def>)>,
    presets: Vec<(Name, Vec<Name>)>,
}

#[derive(Debug, Arbitrary)]
struct Input {
    names: Vec<Name>,
    /// The `casola.scopes` words and the separators between them.
    list: Vec<(Name, u8)>,
    match_mode: Option<String>,
    spec: Spec,
    held: Vec<Name>,
    required: Vec<Name>,
}

const SEPARATORS: [&str; 6] = [" ", ",", ", ", "\t", "\u{3000}", ",,"];

fn resolve_checked(catalog: &Catalog, names: &[String]) {
    match catalog.resolve(names) {
        Ok(set) => {
            assert!(names.iter().all(|n| catalog.knows(n)));
            let want: BTreeSet<&str> = names.iter().map(String::as_str).collect();
            assert_eq!(set.iter().collect::<BTreeSet<_>>(), want);
        }
        Err(unknown) => {
            let unknown = unknown.names();
            assert!(!unknown.is_empty());
            assert!(
                unknown.windows(2).all(|w| w[0].0 < w[1].0),
                "positions ascend"
            );
            for (i, name) in unknown {
                assert_eq!(&names[*i], name);
                assert!(!catalog.knows(name));
            }
            let flagged: BTreeSet<usize> = unknown.iter().map(|(i, _)| *i).collect();
            for (i, name) in names.iter().enumerate() {
                assert_eq!(flagged.contains(&i), !catalog.knows(name));
            }
        }
    }
}

fn build(spec: &Spec) -> CatalogSpec {
    CatalogSpec {
        categories: spec
            .categories
            .iter()
            .map(|(name, defs)| Category {
                name: name.get(),
                description: String::new(),
                scopes: defs
                    .iter()
                    .map(|d| ScopeDef {
                        name: d.name.get(),
                        description: String::new(),
                        implies: d.implies.iter().map(Name::get).collect(),
                    })
                    .collect(),
            })
            .collect(),
        presets: spec
            .presets
            .iter()
            .map(|(id, scopes)| Preset {
                id: id.get(),
                label: "p".into(),
                description: String::new(),
                scopes: scopes.iter().map(Name::get).collect(),
            })
            .collect(),
    }
}

fn known(catalog: &Catalog, names: &[Name]) -> ScopeSet {
    let names: Vec<String> = names
        .iter()
        .map(Name::get)
        .filter(|n| catalog.knows(n))
        .collect();
    catalog.resolve(&names).expect("known names resolve")
}

fuzz_target!(|input: Input| {
    let default = Catalog::default();
    let names: Vec<String> = input.names.iter().map(Name::get).collect();
    resolve_checked(&default, &names);

    // The context extensions of a Check request.
    let mut list = String::new();
    let mut words = Vec::new();
    for (name, sep) in &input.list {
        let word = name.get();
        list.push_str(&word);
        list.push_str(SEPARATORS[usize::from(*sep) % SEPARATORS.len()]);
        words.push(word);
    }
    let mut extensions = HashMap::from([(SCOPES_KEY.to_owned(), list.clone())]);
    if let Some(m) = &input.match_mode {
        extensions.insert(MATCH_KEY.to_owned(), m.clone());
    }
    let req = CheckRequest {
        attributes: Some(AttributeContext {
            context_extensions: extensions,
            ..Default::default()
        }),
    };
    let simple_words = words
        .iter()
        .all(|w| !w.is_empty() && !w.contains(|c: char| c == ',' || c.is_whitespace()));
    // A lone `*` is the explicit "any valid token": no scope required, no scope unknown.
    let any_token = matches!(words.as_slice(), [only] if only == "*");
    match requirement_of(&req, &default, &RouteTable::default()) {
        Ok(Some(r)) => {
            let mode = input.match_mode.as_deref().map(str::trim);
            assert!(matches!(
                (mode, r.mode),
                (None | Some("" | "all"), ScopeMatch::All) | (Some("any"), ScopeMatch::Any)
            ));
            for scope in r.scopes.iter() {
                assert!(default.knows(scope) && list.contains(scope));
            }
            if simple_words && !any_token {
                let want: BTreeSet<&str> = words.iter().map(String::as_str).collect();
                assert_eq!(r.scopes.iter().collect::<BTreeSet<_>>(), want);
            }
            if any_token {
                assert!(r.scopes.is_empty());
            }
        }
        Ok(None) => panic!("a casola.scopes extension always gives a requirement"),
        Err(message) => {
            assert!(
                message.starts_with("context extension casola."),
                "{message}"
            );
            if simple_words && !any_token && words.iter().any(|w| !default.knows(w)) {
                assert!(message.contains(SCOPES_KEY), "{message}");
            }
        }
    }

    // An operator's catalog.
    let Ok(catalog) = Catalog::build(build(&input.spec)) else {
        return;
    };
    resolve_checked(&catalog, &names);
    let held = catalog.expand(&known(&catalog, &input.held));
    assert!(known(&catalog, &input.held).is_subset(&held));
    assert_eq!(catalog.expand(&held), held, "expansion is idempotent");
    let required = known(&catalog, &input.required);
    let all = Catalog::check(&held, &required, ScopeMatch::All);
    let any = Catalog::check(&held, &required, ScopeMatch::Any);
    assert_eq!(all.is_ok(), required.is_subset(&held));
    assert_eq!(
        any.is_ok(),
        required.is_empty() || required.iter().any(|s| held.contains(s))
    );
    if let Err(missing) = all {
        assert_eq!(missing, required.difference(&held));
    }
});
