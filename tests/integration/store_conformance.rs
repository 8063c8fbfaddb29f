//! One conformance suite, run against both stores: what the rest of the service relies on.

use std::sync::Arc;

use casola_auth::{
    event::{Actor, EventContext, EventFilter, EventKind, EventQuery, RequestId},
    restriction::Restrictions,
    store::{
        Cursor, ExpiringQuery, ListQuery, NewToken, OwnedTokens, RevocationReason, RotateOutcome,
        Rotation, RotationRequest, StoreError, TokenPatch, TokenStore,
        memory::MemoryStore,
        now_micros,
        postgres::{PgStore, PoolOptions},
    },
    token::{
        PlainToken,
        fields::{Description, Owner, OwnerId, TokenName},
        hash::SecretHash,
    },
};
use chrono::Duration;
use uuid::Uuid;

use crate::support::{free_port, pg::TestDb};

/// A store under test, and the database behind it (dropped after the store).
struct Subject {
    store: Arc<dyn TokenStore>,
    _db: Option<TestDb>,
}

async fn memory_store() -> Subject {
    Subject {
        store: Arc::new(MemoryStore::new()),
        _db: None,
    }
}

async fn postgres_store() -> Subject {
    let db = TestDb::new().await;
    Subject {
        store: Arc::new(PgStore::new(&db.url, PoolOptions::default()).unwrap()),
        _db: Some(db),
    }
}

/// The context of the writes of these cases: an operator at the CLI.
fn ctx() -> EventContext {
    EventContext::cli()
}

fn owner(org: &str, user: &str) -> Owner {
    Owner {
        org_id: OwnerId::parse(org).unwrap(),
        user_id: OwnerId::parse(user).unwrap(),
    }
}

fn new_token(owner: &Owner, minutes_ago: i64) -> NewToken {
    let token = PlainToken::generate();
    NewToken {
        id: Uuid::new_v4(),
        lookup_id: token.lookup_id().clone(),
        secret_hash: SecretHash::from_stored(format!(
            "$argon2id$v=19$m=1024,t=1,p=1$fake${}",
            Uuid::new_v4().simple()
        )),
        name: TokenName::parse("CI pipeline").unwrap(),
        description: Description::parse("builds").unwrap(),
        scopes: vec!["user:read".into(), "user:write".into()],
        owner: owner.clone(),
        created_at: now_micros() - Duration::minutes(minutes_ago),
        created_by: "cli".into(),
        expires_at: Some(now_micros() + Duration::days(30)),
        restrictions: Restrictions::none(),
    }
}

mod cases {
    use super::*;

    pub async fn inserted_tokens_are_found_by_id_and_lookup_id(store: &dyn TokenStore) {
        let new = new_token(&owner("acme", "alice"), 0);
        let inserted = store.insert(new.clone(), &ctx()).await.unwrap();
        assert_eq!(inserted.id, new.id);
        assert_eq!(inserted.name, "CI pipeline");
        assert_eq!(inserted.scopes, ["user:read", "user:write"]);
        assert_eq!(inserted.created_at, new.created_at);
        assert_eq!(inserted.expires_at, new.expires_at);
        assert_eq!(inserted.last_used_at, None);
        assert_eq!(inserted.revoked_at, None);
        assert_eq!(store.get(new.id).await.unwrap(), Some(inserted.clone()));
        assert_eq!(
            store.find_by_lookup_id(&new.lookup_id).await.unwrap(),
            Some(inserted)
        );
        assert_eq!(store.get(Uuid::new_v4()).await.unwrap(), None);
        let other = PlainToken::generate();
        assert_eq!(
            store.find_by_lookup_id(other.lookup_id()).await.unwrap(),
            None
        );
    }

    pub async fn restrictions_are_stored_and_read_back_as_given(store: &dyn TokenStore) {
        let mut bad = Vec::new();
        let restrictions = Restrictions::parse(
            &["10.0.0.0/8", "2001:db8::/32"],
            &["llama-4-*", "gpt-4o"],
            &mut bad,
        );
        assert!(bad.is_empty());
        let new = NewToken {
            restrictions: restrictions.clone(),
            ..new_token(&owner("acme", "alice"), 0)
        };
        let inserted = store.insert(new.clone(), &ctx()).await.unwrap();
        assert_eq!(inserted.restrictions, restrictions);
        let read = store
            .find_by_lookup_id(&new.lookup_id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(read.restrictions, restrictions);
        let plain = store
            .insert(new_token(&owner("acme", "alice"), 0), &ctx())
            .await
            .unwrap();
        assert!(plain.restrictions.is_empty(), "no list: unrestricted");
    }

    pub async fn a_duplicate_lookup_id_or_id_is_a_conflict_and_writes_nothing(
        store: &dyn TokenStore,
    ) {
        let first = new_token(&owner("acme", "alice"), 0);
        store.insert(first.clone(), &ctx()).await.unwrap();
        let same_lookup = NewToken {
            id: Uuid::new_v4(),
            ..new_token(&owner("acme", "bob"), 0)
        };
        let same_lookup = NewToken {
            lookup_id: first.lookup_id.clone(),
            ..same_lookup
        };
        let id = same_lookup.id;
        assert!(matches!(
            store.insert(same_lookup, &ctx()).await,
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(store.get(id).await.unwrap(), None, "nothing half-written");
        let same_id = NewToken {
            id: first.id,
            ..new_token(&owner("acme", "bob"), 0)
        };
        assert!(matches!(
            store.insert(same_id, &ctx()).await,
            Err(StoreError::Conflict(_))
        ));
    }

    pub async fn listing_is_newest_first_filtered_and_paged(store: &dyn TokenStore) {
        let alice = owner("acme", "alice");
        let bob = owner("acme", "bob");
        let mut alice_ids = Vec::new();
        for minutes in [50, 40, 30, 20, 10] {
            alice_ids.push(
                store
                    .insert(new_token(&alice, minutes), &ctx())
                    .await
                    .unwrap()
                    .id,
            );
        }
        store.insert(new_token(&bob, 5), &ctx()).await.unwrap();
        store
            .insert(new_token(&owner("globex", "alice"), 1), &ctx())
            .await
            .unwrap();
        alice_ids.reverse(); // newest first
        let query = |after, limit| ListQuery {
            org_id: alice.org_id.clone(),
            user_id: Some(alice.user_id.clone()),
            include_revoked: false,
            after,
            limit,
        };
        let first = store.list(&query(None, 2)).await.unwrap();
        assert_eq!(
            first.iter().map(|t| t.id).collect::<Vec<_>>(),
            alice_ids[..2]
        );
        let last = first.last().unwrap();
        let rest = store
            .list(&query(
                Some(Cursor {
                    created_at: last.created_at,
                    id: last.id,
                }),
                10,
            ))
            .await
            .unwrap();
        assert_eq!(
            rest.iter().map(|t| t.id).collect::<Vec<_>>(),
            alice_ids[2..]
        );

        let whole_org = store
            .list(&ListQuery {
                user_id: None,
                ..query(None, 100)
            })
            .await
            .unwrap();
        assert_eq!(
            whole_org.len(),
            6,
            "alice's five and bob's one, not globex's"
        );

        store
            .revoke(alice_ids[0], now_micros(), &ctx())
            .await
            .unwrap();
        let active = store.list(&query(None, 100)).await.unwrap();
        assert_eq!(active.len(), 4);
        assert!(active.iter().all(|t| t.id != alice_ids[0]));
        let all = store
            .list(&ListQuery {
                include_revoked: true,
                ..query(None, 100)
            })
            .await
            .unwrap();
        assert_eq!(all.len(), 5);
    }

    pub async fn ties_on_created_at_are_paged_by_id_without_loss(store: &dyn TokenStore) {
        let alice = owner("acme", "alice");
        let at = now_micros();
        let mut ids = Vec::new();
        for _ in 0..5 {
            let t = NewToken {
                created_at: at,
                ..new_token(&alice, 0)
            };
            ids.push(store.insert(t, &ctx()).await.unwrap().id);
        }
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = store
                .list(&ListQuery {
                    org_id: alice.org_id.clone(),
                    user_id: Some(alice.user_id.clone()),
                    include_revoked: false,
                    after,
                    limit: 2,
                })
                .await
                .unwrap();
            let Some(last) = page.last() else { break };
            after = Some(Cursor {
                created_at: last.created_at,
                id: last.id,
            });
            seen.extend(page.iter().map(|t| t.id));
        }
        ids.sort();
        ids.reverse();
        assert_eq!(seen, ids);
    }

    pub async fn update_changes_only_name_and_description(store: &dyn TokenStore) {
        let t = store
            .insert(new_token(&owner("acme", "alice"), 0), &ctx())
            .await
            .unwrap();
        let renamed = store
            .update(
                t.id,
                &TokenPatch {
                    name: Some(TokenName::parse("laptop").unwrap()),
                    description: None,
                },
                &ctx(),
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(renamed.name, "laptop");
        assert_eq!(renamed.description, t.description);
        assert_eq!(renamed.scopes, t.scopes);
        let described = store
            .update(
                t.id,
                &TokenPatch {
                    name: None,
                    description: Some(Description::parse("").unwrap()),
                },
                &ctx(),
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(described.name, "laptop");
        assert_eq!(described.description, "");
        assert_eq!(
            store
                .update(Uuid::new_v4(), &TokenPatch::default(), &ctx())
                .await
                .unwrap(),
            None
        );
    }

    pub async fn revocation_is_idempotent_and_keeps_the_first_time(store: &dyn TokenStore) {
        let t = store
            .insert(new_token(&owner("acme", "alice"), 0), &ctx())
            .await
            .unwrap();
        let at = now_micros();
        let revoked = store.revoke(t.id, at, &ctx()).await.unwrap().unwrap();
        assert_eq!(revoked.revoked_at, Some(at));
        let again = store
            .revoke(t.id, at + Duration::minutes(5), &ctx())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(again.revoked_at, Some(at), "revoking again changes nothing");
        assert_eq!(store.get(t.id).await.unwrap().unwrap().revoked_at, Some(at));
        assert_eq!(
            store.revoke(Uuid::new_v4(), at, &ctx()).await.unwrap(),
            None
        );
    }

    pub async fn last_used_is_batched_and_never_moves_backwards(store: &dyn TokenStore) {
        let a = store
            .insert(new_token(&owner("acme", "alice"), 0), &ctx())
            .await
            .unwrap();
        let b = store
            .insert(new_token(&owner("acme", "bob"), 0), &ctx())
            .await
            .unwrap();
        let t1 = now_micros();
        let t0 = t1 - Duration::minutes(1);
        let written = store
            .record_last_used(&[(a.id, t1), (b.id, t0), (Uuid::new_v4(), t1)])
            .await
            .unwrap();
        assert_eq!(written, 2, "unknown ids are skipped");
        store.record_last_used(&[(a.id, t0)]).await.unwrap();
        assert_eq!(
            store.get(a.id).await.unwrap().unwrap().last_used_at,
            Some(t1)
        );
        assert_eq!(
            store.get(b.id).await.unwrap().unwrap().last_used_at,
            Some(t0)
        );
        assert_eq!(store.record_last_used(&[]).await.unwrap(), 0);
    }

    pub async fn the_hash_can_be_replaced(store: &dyn TokenStore) {
        let t = store
            .insert(new_token(&owner("acme", "alice"), 0), &ctx())
            .await
            .unwrap();
        let new_hash = SecretHash::from_stored("$argon2id$v=19$m=2048,t=1,p=1$new$hash".into());
        store.replace_hash(t.id, &new_hash).await.unwrap();
        assert_eq!(
            store.get(t.id).await.unwrap().unwrap().secret_hash,
            new_hash
        );
    }

    pub async fn every_revocation_update_and_rehash_is_logged_in_order(store: &dyn TokenStore) {
        let a = store
            .insert(new_token(&owner("acme", "alice"), 0), &ctx())
            .await
            .unwrap();
        let b = store
            .insert(new_token(&owner("acme", "bob"), 0), &ctx())
            .await
            .unwrap();
        let start = store.latest_change().await.unwrap();
        assert!(
            store.changes_after(start, 100).await.unwrap().is_empty(),
            "inserting is not a change: nothing can have cached a new token"
        );
        store.revoke(a.id, now_micros(), &ctx()).await.unwrap();
        let patch = TokenPatch {
            name: Some(TokenName::parse("renamed").unwrap()),
            description: None,
        };
        store.update(b.id, &patch, &ctx()).await.unwrap();
        // Already revoked: unchanged, so not logged again.
        store.revoke(a.id, now_micros(), &ctx()).await.unwrap();
        let new_hash = SecretHash::from_stored("$argon2id$v=19$m=2048,t=1,p=1$new$hash".into());
        store.replace_hash(b.id, &new_hash).await.unwrap();

        let changes = store.changes_after(start, 100).await.unwrap();
        let seen: Vec<_> = changes
            .iter()
            .map(|c| (c.token_id, c.lookup_id.clone()))
            .collect();
        assert_eq!(
            seen,
            [
                (a.id, a.lookup_id.clone()),
                (b.id, b.lookup_id.clone()),
                (b.id, b.lookup_id.clone()),
            ]
        );
        assert!(changes.iter().all(|c| c.position > start));
        assert!(
            changes.windows(2).all(|w| w[0].position < w[1].position),
            "positions only grow"
        );
        let last = changes.last().unwrap().position;
        assert_eq!(store.latest_change().await.unwrap(), last);
        assert!(store.changes_after(last, 100).await.unwrap().is_empty());
        // A limit returns the oldest first, and the rest follows from its position.
        let first = store.changes_after(start, 1).await.unwrap();
        assert_eq!(first, changes[..1]);
        assert_eq!(
            store.changes_after(first[0].position, 100).await.unwrap(),
            changes[1..]
        );
    }

    pub async fn changes_of_unknown_tokens_are_not_logged(store: &dyn TokenStore) {
        let start = store.latest_change().await.unwrap();
        assert_eq!(
            store
                .revoke(Uuid::new_v4(), now_micros(), &ctx())
                .await
                .unwrap(),
            None
        );
        let patch = TokenPatch {
            name: Some(TokenName::parse("x").unwrap()),
            description: None,
        };
        assert_eq!(
            store.update(Uuid::new_v4(), &patch, &ctx()).await.unwrap(),
            None
        );
        assert!(store.changes_after(start, 100).await.unwrap().is_empty());
        assert_eq!(store.latest_change().await.unwrap(), start);
    }

    pub fn events_of(id: Uuid) -> EventQuery {
        EventQuery {
            filter: EventFilter::Token(id),
            before: None,
            limit: 100,
        }
    }

    async fn kinds(store: &dyn TokenStore, query: &EventQuery) -> Vec<(Uuid, EventKind)> {
        store
            .list_events(query)
            .await
            .unwrap()
            .into_iter()
            .map(|e| (e.event.token_id, e.event.kind))
            .collect()
    }

    pub async fn every_change_records_one_event_with_its_context(store: &dyn TokenStore) {
        let admin = Uuid::new_v4();
        let ctx = EventContext {
            actor: Actor::OrgAdmin(admin),
            request_id: RequestId::parse("req-42"),
            source_addr: Some("192.0.2.7".parse().unwrap()),
        };
        let t = store
            .insert(new_token(&owner("acme", "alice"), 0), &ctx)
            .await
            .unwrap();
        let patch = TokenPatch {
            name: Some(TokenName::parse("renamed").unwrap()),
            description: None,
        };
        store.update(t.id, &patch, &ctx).await.unwrap();
        let at = now_micros();
        store.revoke(t.id, at, &ctx).await.unwrap();
        // Unchanged: no second revocation event; nothing for tokens that do not exist.
        store.revoke(t.id, now_micros(), &ctx).await.unwrap();
        store.revoke(Uuid::new_v4(), at, &ctx).await.unwrap();
        store.update(Uuid::new_v4(), &patch, &ctx).await.unwrap();
        store
            .update(t.id, &TokenPatch::default(), &ctx)
            .await
            .unwrap();

        let events = store.list_events(&events_of(t.id)).await.unwrap();
        let kinds: Vec<_> = events.iter().map(|e| e.event.kind).collect();
        assert_eq!(
            kinds,
            [EventKind::Revoked, EventKind::Updated, EventKind::Created],
            "newest first"
        );
        assert!(events.windows(2).all(|w| w[0].id > w[1].id));
        for e in &events {
            assert_eq!(e.event.actor, Actor::OrgAdmin(admin));
            assert_eq!(e.event.request_id.as_ref().unwrap().as_str(), "req-42");
            assert_eq!(e.event.source_addr, ctx.source_addr);
            assert_eq!(e.event.owner, t.owner);
        }
        assert_eq!(events[0].event.at, at);
        assert_eq!(events[2].event.at, t.created_at);
        assert_eq!(
            events[1].event.detail["fields"],
            serde_json::json!(["name"])
        );
        assert_eq!(
            events[2].event.detail["scopes"],
            serde_json::json!(["user:read", "user:write"])
        );
    }

    pub async fn events_are_listed_by_token_or_organisation_and_paged(store: &dyn TokenStore) {
        let a = store
            .insert(new_token(&owner("acme", "alice"), 0), &ctx())
            .await
            .unwrap();
        let b = store
            .insert(new_token(&owner("acme", "bob"), 0), &ctx())
            .await
            .unwrap();
        let c = store
            .insert(new_token(&owner("globex", "alice"), 0), &ctx())
            .await
            .unwrap();
        store.revoke(a.id, now_micros(), &ctx()).await.unwrap();
        let org = EventQuery {
            filter: EventFilter::Org(OwnerId::parse("acme").unwrap()),
            before: None,
            limit: 100,
        };
        assert_eq!(
            kinds(store, &org).await,
            [
                (a.id, EventKind::Revoked),
                (b.id, EventKind::Created),
                (a.id, EventKind::Created),
            ]
        );
        assert_eq!(
            kinds(store, &events_of(c.id)).await,
            [(c.id, EventKind::Created)]
        );
        assert!(kinds(store, &events_of(Uuid::new_v4())).await.is_empty());
        // Two pages of two and one, nothing lost or repeated.
        let first = store
            .list_events(&EventQuery {
                limit: 2,
                ..org.clone()
            })
            .await
            .unwrap();
        assert_eq!(first.len(), 2);
        let rest = store
            .list_events(&EventQuery {
                before: Some(first[1].id),
                ..org.clone()
            })
            .await
            .unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].event.token_id, a.id);
        assert_eq!(rest[0].event.kind, EventKind::Created);
    }

    pub async fn a_refused_insert_records_no_event(store: &dyn TokenStore) {
        let first = new_token(&owner("acme", "alice"), 0);
        store.insert(first.clone(), &ctx()).await.unwrap();
        let dup = NewToken {
            lookup_id: first.lookup_id.clone(),
            ..new_token(&owner("acme", "bob"), 0)
        };
        let id = dup.id;
        assert!(store.insert(dup, &ctx()).await.is_err());
        assert!(kinds(store, &events_of(id)).await.is_empty());
        assert_eq!(kinds(store, &events_of(first.id)).await.len(), 1);
    }

    pub async fn first_use_is_recorded_once_at_the_first_flushed_time(store: &dyn TokenStore) {
        let a = store
            .insert(new_token(&owner("acme", "alice"), 0), &ctx())
            .await
            .unwrap();
        let b = store
            .insert(new_token(&owner("acme", "bob"), 0), &ctx())
            .await
            .unwrap();
        let t0 = now_micros() - Duration::minutes(2);
        let t1 = t0 + Duration::minutes(1);
        store.record_last_used(&[(a.id, t0)]).await.unwrap();
        store
            .record_last_used(&[(a.id, t1), (b.id, t1)])
            .await
            .unwrap();
        store.record_last_used(&[(b.id, t0)]).await.unwrap();
        for (token, first) in [(a.id, t0), (b.id, t1)] {
            let events = store.list_events(&events_of(token)).await.unwrap();
            let firsts: Vec<_> = events
                .iter()
                .filter(|e| e.event.kind == EventKind::FirstUsed)
                .collect();
            assert_eq!(firsts.len(), 1, "{events:?}");
            assert_eq!(firsts[0].event.at, first);
            assert_eq!(firsts[0].event.actor, Actor::System);
        }
    }

    pub async fn expiry_is_recorded_once_at_the_expiry_instant(store: &dyn TokenStore) {
        let alice = owner("acme", "alice");
        let expired_at = now_micros() - Duration::minutes(10);
        let expired = store
            .insert(
                NewToken {
                    expires_at: Some(expired_at),
                    ..new_token(&alice, 60)
                },
                &ctx(),
            )
            .await
            .unwrap();
        // Revoked before it expired: its end is the revocation, not an expiry.
        let revoked_first = store
            .insert(
                NewToken {
                    expires_at: Some(expired_at),
                    ..new_token(&alice, 60)
                },
                &ctx(),
            )
            .await
            .unwrap();
        store
            .revoke(revoked_first.id, expired_at - Duration::minutes(1), &ctx())
            .await
            .unwrap();
        let active = store.insert(new_token(&alice, 0), &ctx()).await.unwrap();
        assert_eq!(store.record_expiries(now_micros()).await.unwrap(), 1);
        assert_eq!(
            store.record_expiries(now_micros()).await.unwrap(),
            0,
            "exactly once"
        );
        let events = store.list_events(&events_of(expired.id)).await.unwrap();
        assert_eq!(events[0].event.kind, EventKind::Expired);
        assert_eq!(events[0].event.at, expired_at);
        assert_eq!(events[0].event.actor, Actor::System);
        assert!(
            !kinds(store, &events_of(revoked_first.id))
                .await
                .iter()
                .any(|(_, k)| *k == EventKind::Expired)
        );
        assert_eq!(kinds(store, &events_of(active.id)).await.len(), 1);
        // A later sweep sees the active one once its time has come.
        let later = active.expires_at.unwrap() + Duration::seconds(1);
        assert_eq!(store.record_expiries(later).await.unwrap(), 1);
    }

    pub async fn expiring_tokens_are_listed_soonest_first_active_only_and_paged(
        store: &dyn TokenStore,
    ) {
        let now = now_micros();
        let alice = owner("acme", "alice");
        let mut expected = Vec::new();
        for days in [5, 2, 6, 1] {
            let t = store
                .insert(
                    NewToken {
                        expires_at: Some(now + Duration::days(days)),
                        ..new_token(&alice, 0)
                    },
                    &ctx(),
                )
                .await
                .unwrap();
            expected.push((days, t.id));
        }
        expected.sort();
        let expected: Vec<_> = expected.into_iter().map(|(_, id)| id).collect();
        // Not listed: later than the window, no expiry, revoked, already expired, another org.
        let later = NewToken {
            expires_at: Some(now + Duration::days(30)),
            ..new_token(&alice, 0)
        };
        store.insert(later, &ctx()).await.unwrap();
        let never = NewToken {
            expires_at: None,
            ..new_token(&alice, 0)
        };
        store.insert(never, &ctx()).await.unwrap();
        let revoked = store.insert(new_token(&alice, 0), &ctx()).await.unwrap();
        store.revoke(revoked.id, now, &ctx()).await.unwrap();
        let gone = NewToken {
            expires_at: Some(now - Duration::days(1)),
            ..new_token(&alice, 0)
        };
        store.insert(gone, &ctx()).await.unwrap();
        let elsewhere = NewToken {
            expires_at: Some(now + Duration::days(3)),
            ..new_token(&owner("globex", "carol"), 0)
        };
        let elsewhere = store.insert(elsewhere, &ctx()).await.unwrap();

        let query = |org: Option<&str>, after, limit| ExpiringQuery {
            org_id: org.map(|o| OwnerId::parse(o).unwrap()),
            after_time: now,
            until: now + Duration::days(7),
            after,
            limit,
        };
        let ids = |rows: Vec<casola_auth::store::TokenRecord>| -> Vec<Uuid> {
            rows.into_iter().map(|r| r.id).collect()
        };
        let all = ids(store
            .list_expiring(&query(Some("acme"), None, 100))
            .await
            .unwrap());
        assert_eq!(all, expected);
        let first = store
            .list_expiring(&query(Some("acme"), None, 3))
            .await
            .unwrap();
        let last = first.last().unwrap();
        let cursor = Cursor {
            created_at: last.expires_at.unwrap(),
            id: last.id,
        };
        let mut paged = ids(first);
        paged.extend(ids(store
            .list_expiring(&query(Some("acme"), Some(cursor), 3))
            .await
            .unwrap()));
        assert_eq!(paged, expected);
        let everywhere = ids(store.list_expiring(&query(None, None, 100)).await.unwrap());
        assert_eq!(everywhere.len(), 5);
        assert_eq!(
            everywhere[2], elsewhere.id,
            "day 3 sits between day 2 and day 5"
        );
    }
}

mod lifecycle {
    use super::{cases::events_of, *};

    fn rotation(old: Uuid, now: chrono::DateTime<chrono::Utc>, overlap: i64) -> Rotation {
        Rotation {
            old_id: old,
            new: new_token(&owner("acme", "alice"), 0),
            now,
            old_ends_at: now + Duration::seconds(overlap),
            request: Some(RotationRequest {
                requested_by: "cli".into(),
                request_id: format!("req-{old}"),
            }),
        }
    }

    pub async fn a_rotation_sets_the_old_tokens_end_and_replacement_in_one_logged_change(
        store: &dyn TokenStore,
    ) {
        let old = store
            .insert(new_token(&owner("acme", "alice"), 1), &ctx())
            .await
            .unwrap();
        let start = store.latest_change().await.unwrap();
        let now = now_micros();
        let r = rotation(old.id, now, 60);
        let RotateOutcome::Rotated { old: o, new: n } =
            store.rotate(r.clone(), &ctx()).await.unwrap()
        else {
            panic!("not rotated");
        };
        assert_eq!(n.id, r.new.id);
        assert_eq!(o.replaced_by, Some(n.id));
        assert_eq!(o.revoked_at, Some(now + Duration::seconds(60)));
        assert_eq!(o.revocation_reason, Some(RevocationReason::Rotated));
        // Still working during the overlap, revoked from its end on.
        assert_eq!(o.status_at(now).as_str(), "active");
        assert_eq!(o.status_at(now + Duration::seconds(60)).as_str(), "revoked");
        // Listed among the working tokens while the overlap runs.
        let listed = store
            .list(&ListQuery {
                org_id: OwnerId::parse("acme").unwrap(),
                user_id: None,
                include_revoked: false,
                after: None,
                limit: 10,
            })
            .await
            .unwrap();
        assert_eq!(listed.len(), 2);
        let changes = store.changes_after(start, 100).await.unwrap();
        assert_eq!(
            changes.iter().map(|c| c.token_id).collect::<Vec<_>>(),
            [old.id],
            "the rotation is one change of the old token"
        );
        let kinds = |events: Vec<casola_auth::event::TokenEvent>| {
            events.into_iter().map(|e| e.event.kind).collect::<Vec<_>>()
        };
        let old_events = store.list_events(&events_of(old.id)).await.unwrap();
        assert_eq!(old_events[0].event.detail["replaced_by"], n.id.to_string());
        assert_eq!(kinds(old_events), [EventKind::Rotated, EventKind::Created]);
        assert_eq!(
            kinds(store.list_events(&events_of(n.id)).await.unwrap()),
            [EventKind::Created]
        );
        // The same request again: the same tokens, nothing new.
        let again = store
            .rotate(rotation(old.id, now, 60), &ctx())
            .await
            .unwrap();
        assert_eq!(
            again,
            RotateOutcome::Replayed {
                old: store.get(old.id).await.unwrap().unwrap(),
                new: store.get(n.id).await.unwrap().unwrap(),
            }
        );
        assert_eq!(
            store
                .find_rotation(r.request.as_ref().unwrap())
                .await
                .unwrap(),
            Some((old.id, n.id))
        );
        // Another request for a token inside its overlap: refused, naming nothing new.
        let mut other = rotation(old.id, now, 60);
        other.request = None;
        let RotateOutcome::NotActive(record) = store.rotate(other, &ctx()).await.unwrap() else {
            panic!("rotated twice");
        };
        assert_eq!(record.replaced_by, Some(n.id));
        // The request id used for another token.
        let mut reused = rotation(n.id, now, 0);
        reused.request = r.request.clone();
        assert_eq!(
            store.rotate(reused, &ctx()).await.unwrap(),
            RotateOutcome::RequestIdReused { old_id: old.id }
        );
        assert_eq!(
            store
                .rotate(rotation(Uuid::new_v4(), now, 0), &ctx())
                .await
                .unwrap(),
            RotateOutcome::NotFound
        );
    }

    pub async fn revoking_inside_an_overlap_moves_its_end_earlier_and_never_later(
        store: &dyn TokenStore,
    ) {
        let old = store
            .insert(new_token(&owner("acme", "alice"), 1), &ctx())
            .await
            .unwrap();
        let now = now_micros();
        store
            .rotate(rotation(old.id, now, 3600), &ctx())
            .await
            .unwrap();
        let revoked = store
            .revoke_for(old.id, now, RevocationReason::Exposed, &ctx())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(revoked.revoked_at, Some(now));
        assert_eq!(revoked.revocation_reason, Some(RevocationReason::Rotated));
        let later = store
            .revoke(old.id, now + Duration::minutes(5), &ctx())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(later.revoked_at, Some(now), "never later");
        let revoked_token = store
            .insert(new_token(&owner("acme", "alice"), 1), &ctx())
            .await
            .unwrap();
        store.revoke(revoked_token.id, now, &ctx()).await.unwrap();
        let RotateOutcome::NotActive(_) = store
            .rotate(rotation(revoked_token.id, now_micros(), 0), &ctx())
            .await
            .unwrap()
        else {
            panic!("a revoked token was rotated");
        };
        let exposed = store
            .insert(new_token(&owner("acme", "alice"), 1), &ctx())
            .await
            .unwrap();
        let r = store
            .revoke_for(exposed.id, now, RevocationReason::Exposed, &ctx())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.revocation_reason, Some(RevocationReason::Exposed));
        let events = store.list_events(&events_of(exposed.id)).await.unwrap();
        assert_eq!(events[0].event.kind, EventKind::Exposed);
    }

    pub async fn offboarding_revokes_every_working_token_of_the_owner_and_nothing_else(
        store: &dyn TokenStore,
    ) {
        let alice = owner("acme", "alice");
        let mut ids = Vec::new();
        for _ in 0..5 {
            ids.push(store.insert(new_token(&alice, 1), &ctx()).await.unwrap().id);
        }
        let mut service = new_token(&alice, 1);
        service.scopes = vec!["tokens:issue".into()];
        let service = store.insert(service, &ctx()).await.unwrap();
        let mut expired = new_token(&alice, 10);
        expired.expires_at = Some(now_micros() - Duration::minutes(1));
        store.insert(expired, &ctx()).await.unwrap();
        store.revoke(ids[0], now_micros(), &ctx()).await.unwrap();
        let bob = store
            .insert(new_token(&owner("acme", "bob"), 1), &ctx())
            .await
            .unwrap();
        let other_org = store
            .insert(new_token(&owner("globex", "alice"), 1), &ctx())
            .await
            .unwrap();
        let start = store.latest_change().await.unwrap();
        let at = now_micros();
        let which = OwnedTokens {
            org_id: OwnerId::parse("acme").unwrap(),
            user_id: Some(OwnerId::parse("alice").unwrap()),
            except_scopes: vec!["tokens:issue".into()],
        };
        let revoked = store
            .revoke_owned(&which, at, RevocationReason::Offboarded, &ctx())
            .await
            .unwrap();
        let mut got: Vec<Uuid> = revoked.iter().map(|r| r.id).collect();
        got.sort();
        let mut want = ids[1..].to_vec();
        want.sort();
        assert_eq!(got, want, "the four working ordinary tokens of alice");
        assert!(revoked.iter().all(|r| r.revoked_at == Some(at)
            && r.revocation_reason == Some(RevocationReason::Offboarded)));
        let changes = store.changes_after(start, 100).await.unwrap();
        assert_eq!(
            changes.len(),
            4,
            "each revocation is logged for the replicas"
        );
        for untouched in [service.id, bob.id, other_org.id] {
            assert_eq!(
                store.get(untouched).await.unwrap().unwrap().revoked_at,
                None
            );
        }
        // The whole organisation, service tokens included (an operator or tokens:issue).
        let all = OwnedTokens {
            org_id: OwnerId::parse("acme").unwrap(),
            user_id: None,
            except_scopes: Vec::new(),
        };
        let revoked = store
            .revoke_owned(&all, now_micros(), RevocationReason::Offboarded, &ctx())
            .await
            .unwrap();
        assert_eq!(revoked.len(), 2, "bob's token and the service token");
        assert_eq!(
            store.get(other_org.id).await.unwrap().unwrap().revoked_at,
            None
        );
    }
}

macro_rules! conformance {
    ($store:ident, $make:expr) => {
        mod $store {
            use super::*;

            conformance!(@cases $make;
                inserted_tokens_are_found_by_id_and_lookup_id,
                restrictions_are_stored_and_read_back_as_given,
                a_duplicate_lookup_id_or_id_is_a_conflict_and_writes_nothing,
                listing_is_newest_first_filtered_and_paged,
                ties_on_created_at_are_paged_by_id_without_loss,
                update_changes_only_name_and_description,
                revocation_is_idempotent_and_keeps_the_first_time,
                last_used_is_batched_and_never_moves_backwards,
                the_hash_can_be_replaced,
                every_revocation_update_and_rehash_is_logged_in_order,
                changes_of_unknown_tokens_are_not_logged,
                every_change_records_one_event_with_its_context,
                events_are_listed_by_token_or_organisation_and_paged,
                a_refused_insert_records_no_event,
                first_use_is_recorded_once_at_the_first_flushed_time,
                expiry_is_recorded_once_at_the_expiry_instant,
                expiring_tokens_are_listed_soonest_first_active_only_and_paged,
            );
            conformance!(@lifecycle $make;
                a_rotation_sets_the_old_tokens_end_and_replacement_in_one_logged_change,
                revoking_inside_an_overlap_moves_its_end_earlier_and_never_later,
                offboarding_revokes_every_working_token_of_the_owner_and_nothing_else,
            );
        }
    };
    (@lifecycle $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                let subject = $make().await;
                lifecycle::$case(subject.store.as_ref()).await;
            }
        )*
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                let subject = $make().await;
                cases::$case(subject.store.as_ref()).await;
            }
        )*
    };
}

conformance!(memory, memory_store);
conformance!(postgres, postgres_store);

#[tokio::test]
async fn an_unreachable_postgres_is_unavailable_not_empty() {
    // A port nothing listens on.
    let port = free_port();
    let store = PgStore::new(
        &format!("postgres://postgres@127.0.0.1:{port}/none"),
        PoolOptions {
            max_size: 2,
            acquire_timeout: std::time::Duration::from_millis(500),
            ..PoolOptions::default()
        },
    )
    .unwrap();
    assert!(matches!(
        store.ping().await,
        Err(StoreError::Unavailable(_))
    ));
    let token = PlainToken::generate();
    assert!(matches!(
        store.find_by_lookup_id(token.lookup_id()).await,
        Err(StoreError::Unavailable(_))
    ));
}

#[tokio::test]
async fn postgres_refuses_to_unrevoke_even_by_hand() {
    let db = TestDb::new().await;
    let store = PgStore::new(&db.url, PoolOptions::default()).unwrap();
    let t = store
        .insert(new_token(&owner("acme", "alice"), 0), &ctx())
        .await
        .unwrap();
    store.revoke(t.id, now_micros(), &ctx()).await.unwrap();
    let (client, conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let err = client
        .batch_execute(&format!(
            "update api_tokens set revoked_at = null where id = '{}'",
            t.id
        ))
        .await
        .unwrap_err();
    assert!(format!("{err:?}").contains("irreversible"), "{err:?}");
    assert!(store.get(t.id).await.unwrap().unwrap().revoked_at.is_some());
}

#[tokio::test]
async fn postgres_refuses_to_move_a_reached_revocation_or_an_overlap_end_later() {
    let db = TestDb::new().await;
    let store = PgStore::new(&db.url, PoolOptions::default()).unwrap();
    let t = store
        .insert(new_token(&owner("acme", "alice"), 0), &ctx())
        .await
        .unwrap();
    let now = now_micros();
    let RotateOutcome::Rotated { .. } = store
        .rotate(
            Rotation {
                old_id: t.id,
                new: new_token(&owner("acme", "alice"), 0),
                now,
                old_ends_at: now + Duration::hours(1),
                request: None,
            },
            &ctx(),
        )
        .await
        .unwrap()
    else {
        panic!("not rotated");
    };
    let (client, conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    for sql in [
        "update api_tokens set revoked_at = revoked_at + interval '1 day' where id = '{}'",
        "update api_tokens set revoked_at = null where id = '{}'",
    ] {
        let err = client
            .batch_execute(&sql.replace("{}", &t.id.to_string()))
            .await
            .unwrap_err();
        assert!(format!("{err:?}").contains("irreversible"), "{err:?}");
    }
    // Earlier is allowed while the end is in the future; a revocation by hand gets a reason.
    client
        .batch_execute(&format!(
            "update api_tokens set revoked_at = now() where id = '{}'",
            t.id
        ))
        .await
        .unwrap();
    let other = store
        .insert(new_token(&owner("acme", "alice"), 0), &ctx())
        .await
        .unwrap();
    client
        .batch_execute(&format!(
            "update api_tokens set revoked_at = now() where id = '{}'",
            other.id
        ))
        .await
        .unwrap();
    assert_eq!(
        store
            .get(other.id)
            .await
            .unwrap()
            .unwrap()
            .revocation_reason,
        Some(RevocationReason::Revoked)
    );
}

#[tokio::test]
async fn postgres_logs_changes_made_by_hand_and_not_last_used_writes() {
    let db = crate::support::pg::TestDb::new().await;
    let store = PgStore::new(&db.url, PoolOptions::default()).unwrap();
    let t = store
        .insert(new_token(&owner("acme", "alice"), 0), &ctx())
        .await
        .unwrap();
    let start = store.latest_change().await.unwrap();
    store
        .record_last_used(&[(t.id, now_micros())])
        .await
        .unwrap();
    assert!(
        store.changes_after(start, 10).await.unwrap().is_empty(),
        "last-used writes are nothing a cache holds"
    );
    crate::support::pg::exec(
        &db.url,
        &format!(
            "update api_tokens set scopes = '{{user:read}}' where id = '{}'",
            t.id
        ),
    )
    .await;
    crate::support::pg::exec(
        &db.url,
        &format!(
            "update api_tokens set revoked_at = now() where id = '{}'",
            t.id
        ),
    )
    .await;
    crate::support::pg::exec(
        &db.url,
        &format!("delete from api_tokens where id = '{}'", t.id),
    )
    .await;
    let changes = store.changes_after(start, 10).await.unwrap();
    assert_eq!(changes.len(), 3, "{changes:?}");
    assert!(
        changes
            .iter()
            .all(|c| c.token_id == t.id && c.lookup_id == t.lookup_id)
    );
}

#[tokio::test]
async fn concurrent_postgres_changes_become_visible_in_position_order() {
    // Two transactions change tokens; the first stays open while the second tries to
    // commit. Without ordering, the second's larger position would be visible first and a
    // poller at that position would never see the first. With it, the second waits.
    let db = crate::support::pg::TestDb::new().await;
    let store = PgStore::new(&db.url, PoolOptions::default()).unwrap();
    let a = store
        .insert(new_token(&owner("acme", "alice"), 0), &ctx())
        .await
        .unwrap();
    let b = store
        .insert(new_token(&owner("acme", "bob"), 0), &ctx())
        .await
        .unwrap();
    let start = store.latest_change().await.unwrap();
    let connect = || async {
        let (client, conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
    };
    let first = connect().await;
    first
        .batch_execute(&format!(
            "begin; update api_tokens set revoked_at = now() where id = '{}'",
            a.id
        ))
        .await
        .unwrap();
    let second = tokio::spawn({
        let client = connect().await;
        let id = b.id;
        async move {
            client
                .batch_execute(&format!(
                    "update api_tokens set revoked_at = now() where id = '{id}'"
                ))
                .await
                .unwrap();
        }
    });
    // Whatever a poller sees while the first is open never skips it: nothing at all.
    for _ in 0..20 {
        assert!(store.changes_after(start, 10).await.unwrap().is_empty());
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(
        !second.is_finished(),
        "the second change waits for the first"
    );
    first.batch_execute("commit").await.unwrap();
    second.await.unwrap();
    let order: Vec<_> = store
        .changes_after(start, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.token_id)
        .collect();
    assert_eq!(order, [a.id, b.id]);
}

#[tokio::test]
async fn postgres_refuses_to_change_or_delete_an_event_even_by_hand() {
    let db = TestDb::new().await;
    let store = PgStore::new(&db.url, PoolOptions::default()).unwrap();
    let t = store
        .insert(new_token(&owner("acme", "alice"), 0), &ctx())
        .await
        .unwrap();
    let (client, conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    for sql in [
        format!(
            "update token_events set actor = 'someone' where token_id = '{}'",
            t.id
        ),
        format!("delete from token_events where token_id = '{}'", t.id),
        "truncate token_events".to_owned(),
    ] {
        let err = client.batch_execute(&sql).await.unwrap_err();
        assert!(format!("{err:?}").contains("append-only"), "{sql}: {err:?}");
    }
    let events = store
        .list_events(&EventQuery {
            filter: EventFilter::Token(t.id),
            before: None,
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event.actor, Actor::Cli);
}

#[tokio::test]
async fn two_replicas_flushing_a_first_use_at_once_record_one_event() {
    let db = TestDb::new().await;
    let one = PgStore::new(&db.url, PoolOptions::default()).unwrap();
    let two = PgStore::new(&db.url, PoolOptions::default()).unwrap();
    let t = one
        .insert(new_token(&owner("acme", "alice"), 0), &ctx())
        .await
        .unwrap();
    let at = now_micros();
    let uses = [(t.id, at)];
    let (a, b) = tokio::join!(one.record_last_used(&uses), two.record_last_used(&uses));
    assert_eq!((a.unwrap(), b.unwrap()), (1, 1));
    let firsts = one
        .list_events(&EventQuery {
            filter: EventFilter::Token(t.id),
            before: None,
            limit: 10,
        })
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.event.kind == EventKind::FirstUsed)
        .count();
    assert_eq!(firsts, 1);
}
