//! The harness's own promises, where a broken one would go unnoticed by the other tests.

use crate::support::pg::{self, TestDb};

#[tokio::test]
async fn a_test_database_is_dropped_together_with_its_handle() {
    let witness = TestDb::new().await;
    let db = TestDb::new().await;
    assert_ne!(
        db.name, witness.name,
        "every test has a database of its own"
    );
    let exists = format!(
        "select count(*) from pg_database where datname = '{}'",
        db.name
    );
    assert_eq!(pg::query_i64(&witness.url, &exists).await, 1);
    // A connection still open to it does not keep it alive.
    let (client, connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .expect("connect to the test database");
    let connection = tokio::spawn(connection);
    drop(db);
    assert_eq!(pg::query_i64(&witness.url, &exists).await, 0);
    assert!(client.simple_query("select 1").await.is_err());
    let _ = connection.await;
}
