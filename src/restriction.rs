//! Restrictions a token carries and the gate checks (issue 13): the networks it may be used
//! from (CIDR blocks, IPv4 and IPv6) and the models it may name (exact names or
//! trailing-wildcard patterns such as `llama-4-*`). Both are optional; a token without them
//! is unrestricted and pays nothing for them on the hot path.
//!
//! A list that is present is an allowlist that fails closed: a request without a client
//! address (or without a model) is outside every list.

use std::{fmt, net::IpAddr, str::FromStr};

use ipnet::IpNet;

use crate::error::FieldViolation;

/// Most networks on one token.
pub const MAX_NETWORKS: usize = 32;
/// Most model patterns on one token.
pub const MAX_MODELS: usize = 32;
/// Longest model name or pattern, in bytes.
pub const MAX_MODEL_CHARS: usize = 128;

/// A model name, or a prefix followed by `*` (matches every name starting with it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelPattern(Box<str>);

impl ModelPattern {
    /// A pattern: 1-128 visible ASCII characters (no spaces), `*` only at the end and never
    /// alone (an empty list already means any model).
    pub fn parse(raw: &str) -> Result<Self, String> {
        let text = raw.trim();
        if text.is_empty() {
            return Err("must not be empty".into());
        }
        if text.len() > MAX_MODEL_CHARS {
            return Err(format!("must be at most {MAX_MODEL_CHARS} characters"));
        }
        if !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("must be visible ASCII characters without spaces".into());
        }
        if text == "*" {
            return Err("a lone \"*\" allows every model: leave the list empty instead".into());
        }
        if text[..text.len() - 1].contains('*') {
            return Err("\"*\" is allowed only at the end (a trailing wildcard)".into());
        }
        Ok(Self(text.into()))
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `model` matches: equal (case-sensitive, so an allowlist can only refuse more),
    /// or starting with the prefix of a trailing-wildcard pattern.
    pub fn matches(&self, model: &str) -> bool {
        match self.0.strip_suffix('*') {
            Some(prefix) => model.starts_with(prefix),
            None => *self.0 == *model,
        }
    }
}

impl ModelPattern {
    /// Whether every name `other` matches, this matches too.
    pub fn covers(&self, other: &ModelPattern) -> bool {
        match (self.0.strip_suffix('*'), other.0.strip_suffix('*')) {
            (Some(outer), Some(inner)) => inner.starts_with(outer),
            (_, None) => self.matches(&other.0),
            (None, Some(_)) => false,
        }
    }
}

impl fmt::Display for ModelPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A network: CIDR notation (`10.0.0.0/8`, `2001:db8::/32`) or a single address (a /32 or
/// /128). Host bits must be zero, so that what is stored is what was meant.
pub fn parse_network(raw: &str) -> Result<IpNet, String> {
    let text = raw.trim();
    let net = match IpNet::from_str(text) {
        Ok(net) => net,
        Err(_) => match IpAddr::from_str(text) {
            Ok(ip) => IpNet::from(ip.to_canonical()),
            Err(_) => {
                return Err(
                    "must be a CIDR block (e.g. 203.0.113.0/24, 2001:db8::/32) or an IP address"
                        .into(),
                );
            }
        },
    };
    if net.trunc() != net {
        return Err(format!("has host bits set: did you mean {}?", net.trunc()));
    }
    Ok(net)
}

/// What a token may be used for. `None` in a field: unrestricted on that axis.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Restrictions {
    networks: Option<Vec<IpNet>>,
    models: Option<Vec<ModelPattern>>,
    /// The networks as text, made once: every allowed Authorize of a restricted token shows
    /// them in its principal, and formatting addresses per answer cost more than the check.
    network_text: Vec<String>,
}

/// Which restriction refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restriction {
    /// Allowed networks.
    Network,
    /// Allowed models.
    Model,
}

impl Restriction {
    /// A short stable name, for logs, metrics and explanations.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Network => "network",
            Self::Model => "model",
        }
    }
}

impl Restrictions {
    /// No restriction.
    pub fn none() -> Self {
        Self::default()
    }

    /// Validates requested lists (empty: unrestricted); every bad entry becomes a violation
    /// of `allowed_networks[i]` / `allowed_models[i]`. Duplicates are dropped.
    pub fn parse<N: AsRef<str>, M: AsRef<str>>(
        networks: &[N],
        models: &[M],
        bad: &mut Vec<FieldViolation>,
    ) -> Self {
        let mut out = Self::default();
        if networks.len() > MAX_NETWORKS {
            bad.push(FieldViolation::new(
                "allowed_networks",
                format!("at most {MAX_NETWORKS} networks, got {}", networks.len()),
            ));
        } else if !networks.is_empty() {
            let mut list: Vec<IpNet> = Vec::with_capacity(networks.len());
            for (i, raw) in networks.iter().enumerate() {
                match parse_network(raw.as_ref()) {
                    Ok(net) if !list.contains(&net) => list.push(net),
                    Ok(_) => {}
                    Err(e) => bad.push(FieldViolation::new(format!("allowed_networks[{i}]"), e)),
                }
            }
            out.networks = Some(list);
        }
        if models.len() > MAX_MODELS {
            bad.push(FieldViolation::new(
                "allowed_models",
                format!("at most {MAX_MODELS} models, got {}", models.len()),
            ));
        } else if !models.is_empty() {
            let mut list: Vec<ModelPattern> = Vec::with_capacity(models.len());
            for (i, raw) in models.iter().enumerate() {
                match ModelPattern::parse(raw.as_ref()) {
                    Ok(p) if !list.contains(&p) => list.push(p),
                    Ok(_) => {}
                    Err(e) => bad.push(FieldViolation::new(format!("allowed_models[{i}]"), e)),
                }
            }
            out.models = Some(list);
        }
        out.with_text()
    }

    fn with_text(mut self) -> Self {
        self.network_text = self
            .networks
            .iter()
            .flatten()
            .map(ToString::to_string)
            .collect();
        self
    }

    /// Lists read back from the store (validated when written). An entry that no longer
    /// parses is dropped with an error, and the list stays present even if it ends up
    /// empty: a restriction never silently turns into none.
    pub fn from_stored(networks: &[String], models: &[String]) -> Self {
        let networks = (!networks.is_empty()).then(|| {
            networks
                .iter()
                .filter_map(|raw| {
                    parse_network(raw)
                        .map_err(|e| tracing::error!(network = %raw, error = %e, "stored network unreadable; it allows nothing"))
                        .ok()
                })
                .collect()
        });
        let models = (!models.is_empty()).then(|| {
            models
                .iter()
                .filter_map(|raw| {
                    ModelPattern::parse(raw)
                        .map_err(|e| tracing::error!(model = %raw, error = %e, "stored model pattern unreadable; it allows nothing"))
                        .ok()
                })
                .collect()
        });
        Self {
            networks,
            models,
            network_text: Vec::new(),
        }
        .with_text()
    }

    /// Whether neither list is present.
    pub fn is_empty(&self) -> bool {
        self.networks.is_none() && self.models.is_none()
    }

    /// The allowed networks, if restricted.
    pub fn networks(&self) -> Option<&[IpNet]> {
        self.networks.as_deref()
    }

    /// The allowed models, if restricted.
    pub fn models(&self) -> Option<&[ModelPattern]> {
        self.models.as_deref()
    }

    /// The networks as stored and shown (canonical CIDR text); empty when unrestricted.
    pub fn networks_as_text(&self) -> Vec<String> {
        self.network_text.clone()
    }

    /// The model patterns as stored and shown; empty when unrestricted.
    pub fn models_as_text(&self) -> Vec<String> {
        self.models
            .iter()
            .flatten()
            .map(|p| p.as_str().to_owned())
            .collect()
    }

    /// These restrictions for a token minted by a caller holding `caller`'s: no escaping a
    /// restriction by minting a token. A list the caller has and the request leaves out is
    /// inherited; a list the request gives must lie inside the caller's (every network
    /// inside one of the caller's, every model pattern covered by one of the caller's).
    pub fn within(mut self, caller: &Restrictions) -> Result<Self, Vec<FieldViolation>> {
        let mut bad = Vec::new();
        if let Some(outer) = &caller.networks {
            match &self.networks {
                None => self.networks = Some(outer.clone()),
                Some(inner) => {
                    for (i, net) in inner.iter().enumerate() {
                        if !outer.iter().any(|o| o.contains(net)) {
                            bad.push(FieldViolation::new(
                                format!("allowed_networks[{i}]"),
                                format!("{net} is outside the calling token's allowed networks"),
                            ));
                        }
                    }
                }
            }
        }
        if let Some(outer) = &caller.models {
            match &self.models {
                None => self.models = Some(outer.clone()),
                Some(inner) => {
                    for (i, pattern) in inner.iter().enumerate() {
                        if !outer.iter().any(|o| o.covers(pattern)) {
                            bad.push(FieldViolation::new(
                                format!("allowed_models[{i}]"),
                                format!("{pattern} is outside the calling token's allowed models"),
                            ));
                        }
                    }
                }
            }
        }
        if bad.is_empty() {
            Ok(self.with_text())
        } else {
            Err(bad)
        }
    }

    /// Whether a request from `client` passes the network list (no list: always; a list and
    /// no address: never). IPv4-mapped IPv6 addresses count as their IPv4 address.
    pub fn allows_client(&self, client: Option<IpAddr>) -> bool {
        match (&self.networks, client) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(list), Some(ip)) => {
                let ip = ip.to_canonical();
                list.iter().any(|net| net.contains(&ip))
            }
        }
    }

    /// Whether a request naming `model` passes the model list (no list: always). Whether a
    /// request that names no model may pass is the gate's business (see [`ModelOf`]).
    pub fn allows_model(&self, model: &str) -> bool {
        match &self.models {
            None => true,
            Some(list) => list.iter().any(|p| p.matches(model)),
        }
    }
}

/// Why the model of a request could not be read (through the gateway: from its body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyProblem {
    /// A method that carries a body (POST, PUT, PATCH) came without one.
    Missing,
    /// Larger than the gateway forwards (Envoy's `max_request_bytes`).
    TooLarge,
    /// Not a JSON object.
    NotJson,
    /// A JSON object without a string `model` field.
    NoModel,
}

impl BodyProblem {
    /// A short stable name, for logs and explanations.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "body_missing",
            Self::TooLarge => "body_too_large",
            Self::NotJson => "body_not_json",
            Self::NoModel => "body_names_no_model",
        }
    }
}

/// The model a request names, as the gate reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelOf<'a> {
    /// The request names no model (Authorize without `model`; a GET through the gateway):
    /// the model list does not apply to it.
    NotNamed,
    /// The request names this model.
    Named(std::borrow::Cow<'a, str>),
    /// The request should name one, but its body could not be read: refused, never let
    /// through.
    Unreadable(BodyProblem),
}

/// The client address in an `x-forwarded-for` value behind `trusted_hops` proxies of our
/// own (the last of which connected to Envoy, which appended that peer's address as the
/// last entry, `use_remote_address: true`): the entry `trusted_hops` places left of the
/// last one. Entries may carry a port (`1.2.3.4:5`, `[2001:db8::1]:5`). `None` for
/// `trusted_hops == 0` (off), too few entries (the request did not come through the
/// proxies), or an entry that is not an address: never a guess.
pub fn client_from_forwarded_for(xff: &str, trusted_hops: u32) -> Option<IpAddr> {
    if trusted_hops == 0 {
        return None;
    }
    let hops = usize::try_from(trusted_hops).ok()?;
    let entry = xff.rsplit(',').nth(hops)?.trim();
    parse_forwarded_address(entry)
}

fn parse_forwarded_address(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = IpAddr::from_str(entry) {
        return Some(ip.to_canonical());
    }
    std::net::SocketAddr::from_str(entry)
        .ok()
        .map(|sa| sa.ip().to_canonical())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn restricted(networks: &[&str], models: &[&str]) -> Restrictions {
        let mut bad = Vec::new();
        let r = Restrictions::parse(networks, models, &mut bad);
        assert!(bad.is_empty(), "{bad:?}");
        r
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn networks_allow_addresses_inside_and_refuse_outside_or_missing_ones() {
        let r = restricted(&["10.0.0.0/8", "2001:db8::/32", "198.51.100.7"], &[]);
        assert!(r.allows_client(ip("10.1.2.3")));
        assert!(r.allows_client(ip("198.51.100.7")));
        assert!(r.allows_client(ip("2001:db8:ffff::1")));
        assert!(
            r.allows_client(ip("::ffff:10.9.9.9")),
            "IPv4-mapped counts as IPv4"
        );
        assert!(!r.allows_client(ip("198.51.100.8")));
        assert!(!r.allows_client(ip("127.0.0.1")));
        assert!(!r.allows_client(ip("2001:db9::1")));
        assert!(!r.allows_client(None), "a list and no address: denied");
        assert!(Restrictions::none().allows_client(None));
        assert_eq!(
            r.networks_as_text(),
            ["10.0.0.0/8", "2001:db8::/32", "198.51.100.7/32"]
        );
    }

    #[test]
    fn models_match_exactly_or_by_trailing_wildcard() {
        let r = restricted(&[], &["llama-4-*", "gpt-4o"]);
        assert!(r.allows_model("llama-4-scout"));
        assert!(r.allows_model("llama-4-"));
        assert!(r.allows_model("gpt-4o"));
        assert!(
            !r.allows_model("gpt-4o-mini"),
            "no wildcard, no prefix match"
        );
        assert!(!r.allows_model("Llama-4-scout"), "case-sensitive");
        assert!(!r.allows_model("llama-3"));
        assert!(Restrictions::none().allows_model("anything"));
    }

    #[test]
    fn bad_entries_are_field_violations_naming_their_index() {
        let mut bad = Vec::new();
        let too_long = "m".repeat(MAX_MODEL_CHARS + 1);
        Restrictions::parse(
            &["10.0.0.0/8", "10.1.2.3/8", "nope", "300.1.1.1"],
            &["ok", "*", "a*b*", "", "has space", too_long.as_str()],
            &mut bad,
        );
        let fields: Vec<&str> = bad.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "allowed_networks[1]",
                "allowed_networks[2]",
                "allowed_networks[3]",
                "allowed_models[1]",
                "allowed_models[2]",
                "allowed_models[3]",
                "allowed_models[4]",
                "allowed_models[5]",
            ]
        );
        assert!(bad[0].description.contains("10.0.0.0/8"), "{:?}", bad[0]);
        let mut bad = Vec::new();
        let many: Vec<String> = (0..=MAX_NETWORKS)
            .map(|i| format!("10.0.{i}.0/24"))
            .collect();
        Restrictions::parse(&many, &[] as &[&str], &mut bad);
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].field, "allowed_networks");
    }

    #[test]
    fn a_minted_token_stays_inside_its_creators_restrictions() {
        let caller = restricted(&["10.0.0.0/8"], &["llama-4-*"]);
        let inherited = Restrictions::none().within(&caller).unwrap();
        assert_eq!(inherited, caller);
        let narrower = restricted(&["10.1.0.0/16"], &["llama-4-scout*", "llama-4-x"]);
        assert_eq!(narrower.clone().within(&caller).unwrap(), narrower);
        let wider = restricted(&["10.1.0.0/16", "0.0.0.0/0"], &["llama-*", "gpt-4o"]);
        let bad = wider.within(&caller).unwrap_err();
        let fields: Vec<&str> = bad.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "allowed_networks[1]",
                "allowed_models[0]",
                "allowed_models[1]"
            ]
        );
        let free = restricted(&["10.0.0.0/8"], &[]);
        assert_eq!(free.clone().within(&Restrictions::none()).unwrap(), free);
    }

    #[test]
    fn a_stored_list_that_no_longer_parses_allows_nothing() {
        let r = Restrictions::from_stored(&["garbage".into()], &["a b".into()]);
        assert!(!r.is_empty());
        assert!(!r.allows_client(ip("10.0.0.1")));
        assert!(!r.allows_model("a b"));
    }

    #[test]
    fn forwarded_for_picks_the_entry_behind_the_trusted_hops() {
        let xff = "203.0.113.9, 10.0.0.2, 10.0.0.3";
        assert_eq!(client_from_forwarded_for(xff, 0), None, "off");
        assert_eq!(client_from_forwarded_for(xff, 1), ip("10.0.0.2"));
        assert_eq!(client_from_forwarded_for(xff, 2), ip("203.0.113.9"));
        assert_eq!(client_from_forwarded_for(xff, 3), None, "too few entries");
        assert_eq!(
            client_from_forwarded_for("[2001:db8::1]:443,10.0.0.3", 1),
            ip("2001:db8::1")
        );
        assert_eq!(
            client_from_forwarded_for("1.2.3.4:80, 10.0.0.3", 1),
            ip("1.2.3.4")
        );
        assert_eq!(client_from_forwarded_for("unknown, 10.0.0.3", 1), None);
    }

    proptest! {
        /// Whatever a client prepends to x-forwarded-for, the entry chosen with N trusted
        /// hops is the one the first trusted proxy appended: spoofed entries never win.
        #[test]
        fn spoofed_forwarded_for_entries_never_become_the_client(
            spoofed in proptest::collection::vec(any::<std::net::Ipv4Addr>(), 0..5),
            client in any::<std::net::Ipv4Addr>(),
            proxies in proptest::collection::vec(any::<std::net::Ipv4Addr>(), 1..4),
        ) {
            let mut entries: Vec<String> = spoofed.iter().map(ToString::to_string).collect();
            entries.push(client.to_string());
            // Each trusted proxy but the last appends the peer it saw; Envoy appends the
            // last proxy's address.
            entries.extend(proxies.iter().map(ToString::to_string));
            let hops = u32::try_from(proxies.len()).unwrap();
            prop_assert_eq!(
                client_from_forwarded_for(&entries.join(", "), hops),
                Some(IpAddr::V4(client))
            );
        }

        /// An address is allowed exactly when one of the listed blocks contains it.
        #[test]
        fn network_matching_agrees_with_prefix_arithmetic(
            base in any::<u32>(), len in 0u8..=32, probe in any::<u32>(),
        ) {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len)) };
            let net = format!("{}/{len}", std::net::Ipv4Addr::from(base & mask));
            let r = restricted(&[net.as_str()], &[]);
            let inside = probe & mask == base & mask;
            prop_assert_eq!(r.allows_client(Some(IpAddr::V4(probe.into()))), inside);
        }

        /// A trailing-wildcard pattern matches exactly the names that start with its
        /// prefix; a plain name only itself.
        #[test]
        fn model_patterns_match_prefixes_or_themselves(
            prefix in "[a-z0-9.-]{1,12}", rest in "[a-z0-9.-]{0,8}", other in "[a-z0-9.-]{1,20}",
        ) {
            let wild = ModelPattern::parse(&format!("{prefix}*")).unwrap();
            let exact = ModelPattern::parse(&prefix).unwrap();
            let name = format!("{prefix}{rest}");
            prop_assert!(wild.matches(&name));
            prop_assert_eq!(exact.matches(&name), rest.is_empty());
            prop_assert_eq!(wild.matches(&other), other.starts_with(&prefix));
        }
    }
}
