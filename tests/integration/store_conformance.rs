//! One conformance suite, run against both stores: what the rest of the service relies on.

use std::sync::Arc;

use casola_auth::{
    restriction::Restrictions,
    store::{
        Cursor, ListQuery, NewToken, StoreError, TokenPatch, TokenStore,
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
        let inserted = store.insert(new.clone()).await.unwrap();
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
        let inserted = store.insert(new.clone()).await.unwrap();
        assert_eq!(inserted.restrictions, restrictions);
        let read = store
            .find_by_lookup_id(&new.lookup_id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(read.restrictions, restrictions);
        let plain = store
            .insert(new_token(&owner("acme", "alice"), 0))
            .await
            .unwrap();
        assert!(plain.restrictions.is_empty(), "no list: unrestricted");
    }

    pub async fn a_duplicate_lookup_id_or_id_is_a_conflict_and_writes_nothing(
        store: &dyn TokenStore,
    ) {
        let first = new_token(&owner("acme", "alice"), 0);
        store.insert(first.clone()).await.unwrap();
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
            store.insert(same_lookup).await,
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(store.get(id).await.unwrap(), None, "nothing half-written");
        let same_id = NewToken {
            id: first.id,
            ..new_token(&owner("acme", "bob"), 0)
        };
        assert!(matches!(
            store.insert(same_id).await,
            Err(StoreError::Conflict(_))
        ));
    }

    pub async fn listing_is_newest_first_filtered_and_paged(store: &dyn TokenStore) {
        let alice = owner("acme", "alice");
        let bob = owner("acme", "bob");
        let mut alice_ids = Vec::new();
        for minutes in [50, 40, 30, 20, 10] {
            alice_ids.push(store.insert(new_token(&alice, minutes)).await.unwrap().id);
        }
        store.insert(new_token(&bob, 5)).await.unwrap();
        store
            .insert(new_token(&owner("globex", "alice"), 1))
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

        store.revoke(alice_ids[0], now_micros()).await.unwrap();
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
            ids.push(store.insert(t).await.unwrap().id);
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
            .insert(new_token(&owner("acme", "alice"), 0))
            .await
            .unwrap();
        let renamed = store
            .update(
                t.id,
                &TokenPatch {
                    name: Some(TokenName::parse("laptop").unwrap()),
                    description: None,
                },
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
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(described.name, "laptop");
        assert_eq!(described.description, "");
        assert_eq!(
            store
                .update(Uuid::new_v4(), &TokenPatch::default())
                .await
                .unwrap(),
            None
        );
    }

    pub async fn revocation_is_idempotent_and_keeps_the_first_time(store: &dyn TokenStore) {
        let t = store
            .insert(new_token(&owner("acme", "alice"), 0))
            .await
            .unwrap();
        let at = now_micros();
        let revoked = store.revoke(t.id, at).await.unwrap().unwrap();
        assert_eq!(revoked.revoked_at, Some(at));
        let again = store
            .revoke(t.id, at + Duration::minutes(5))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(again.revoked_at, Some(at), "revoking again changes nothing");
        assert_eq!(store.get(t.id).await.unwrap().unwrap().revoked_at, Some(at));
        assert_eq!(store.revoke(Uuid::new_v4(), at).await.unwrap(), None);
    }

    pub async fn last_used_is_batched_and_never_moves_backwards(store: &dyn TokenStore) {
        let a = store
            .insert(new_token(&owner("acme", "alice"), 0))
            .await
            .unwrap();
        let b = store
            .insert(new_token(&owner("acme", "bob"), 0))
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
            .insert(new_token(&owner("acme", "alice"), 0))
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
            .insert(new_token(&owner("acme", "alice"), 0))
            .await
            .unwrap();
        let b = store
            .insert(new_token(&owner("acme", "bob"), 0))
            .await
            .unwrap();
        let start = store.latest_change().await.unwrap();
        assert!(
            store.changes_after(start, 100).await.unwrap().is_empty(),
            "inserting is not a change: nothing can have cached a new token"
        );
        store.revoke(a.id, now_micros()).await.unwrap();
        let patch = TokenPatch {
            name: Some(TokenName::parse("renamed").unwrap()),
            description: None,
        };
        store.update(b.id, &patch).await.unwrap();
        // Already revoked: unchanged, so not logged again.
        store.revoke(a.id, now_micros()).await.unwrap();
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
            store.revoke(Uuid::new_v4(), now_micros()).await.unwrap(),
            None
        );
        let patch = TokenPatch {
            name: Some(TokenName::parse("x").unwrap()),
            description: None,
        };
        assert_eq!(store.update(Uuid::new_v4(), &patch).await.unwrap(), None);
        assert!(store.changes_after(start, 100).await.unwrap().is_empty());
        assert_eq!(store.latest_change().await.unwrap(), start);
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
            );
        }
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
        .insert(new_token(&owner("acme", "alice"), 0))
        .await
        .unwrap();
    store.revoke(t.id, now_micros()).await.unwrap();
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
async fn postgres_logs_changes_made_by_hand_and_not_last_used_writes() {
    let db = crate::support::pg::TestDb::new().await;
    let store = PgStore::new(&db.url, PoolOptions::default()).unwrap();
    let t = store
        .insert(new_token(&owner("acme", "alice"), 0))
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
        .insert(new_token(&owner("acme", "alice"), 0))
        .await
        .unwrap();
    let b = store
        .insert(new_token(&owner("acme", "bob"), 0))
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
