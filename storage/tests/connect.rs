//! Opening databases by URL: what `database.url` in config.toml may say.

use skychimp_storage::{Storage, StorageError, Store};

#[tokio::test]
async fn relative_sqlite_path_creates_its_folders() {
    // Tests run in the package folder; make a scratch folder there and name it relatively.
    let scratch = tempfile::tempdir_in(".").expect("scratch dir");
    let name = scratch
        .path()
        .file_name()
        .and_then(|n| n.to_str())
        .expect("utf-8 name");
    let url = format!("sqlite://{name}/var/skychimp.db");
    let store = Store::connect(&url).await.expect("connect");
    store.migrate().await.expect("migrate");
    assert_eq!(store.backend(), "sqlite");
    assert!(scratch.path().join("var/skychimp.db").is_file());
    assert_eq!(store.pending_count().await.expect("query"), 0);
    // WAL lets the manager API read while the sender writes.
    let Store::Sqlite(sqlite) = &store else {
        panic!("expected the SQLite back end")
    };
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(sqlite.pool())
        .await
        .expect("pragma");
    assert_eq!(mode, "wal");
    store.close().await;
}

#[tokio::test]
async fn in_memory_sqlite_keeps_its_data_across_calls() {
    let store = Store::connect("sqlite::memory:").await.expect("connect");
    store.migrate().await.expect("migrate");
    store
        .set_blocked("bob", true, Some("test"), chrono::Utc::now())
        .await
        .expect("write");
    let bob = store.user_state("bob").await.expect("read");
    assert!(bob.is_some_and(|s| s.blocked));
}

#[tokio::test]
async fn unsupported_url_is_refused_without_its_password() {
    let err = Store::connect("mysql://user:hunter2@db.example/skychimp")
        .await
        .expect_err("mysql is not a back end");
    assert!(matches!(err, StorageError::UnsupportedUrl(_)));
    let message = err.to_string();
    assert!(
        message.contains("mysql://user:***@db.example/skychimp"),
        "{message}"
    );
    assert!(!message.contains("hunter2"));
}

/// A database a newer binary migrated (a rolling upgrade): refused with what to do, not
/// sqlx's "previously applied but is missing".
#[tokio::test]
async fn a_database_from_a_newer_binary_is_named_as_such() {
    let dir = tempfile::tempdir().expect("scratch dir");
    let url = format!("sqlite://{}", dir.path().join("s.db").display());
    let store = Store::connect(&url).await.expect("connect");
    store.migrate().await.expect("migrate");
    let Store::Sqlite(sqlite) = &store else {
        panic!("expected the SQLite back end")
    };
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (9999, 'from the future', TRUE, x'00', 0)",
    )
    .execute(sqlite.pool())
    .await
    .expect("a newer migration's row");
    let e = store.migrate().await.expect_err("refused");
    assert!(matches!(e, StorageError::NewerDatabase(9999)), "{e:?}");
    assert_eq!(
        e.to_string(),
        "this database was migrated by a newer skychimpd (migration 9999, which this binary \
         does not have): run the newer version, or upgrade this one"
    );
    store.close().await;
}

/// Several processes starting together on a new file (`skychimpd send` twice, or `send`
/// beside `run`): each opens it and applies the migrations. sqlx takes no lock on SQLite,
/// so without one of our own the second to create the tables failed ("table runs already
/// exists", or "database is locked" while the first switched the file to WAL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_opened_together_on_a_new_file_all_migrate() {
    for round in 0..5 {
        let scratch = tempfile::tempdir().expect("scratch dir");
        let url = format!("sqlite://{}/var/skychimp.db", scratch.path().display());
        let mut tasks = Vec::new();
        for _ in 0..6 {
            let url = url.clone();
            tasks.push(tokio::spawn(async move {
                let store = Store::connect(&url).await?;
                store.migrate().await?;
                let pending = store.pending_count().await?;
                store.close().await;
                Ok::<_, StorageError>(pending)
            }));
        }
        for task in tasks {
            let opened = task.await.expect("task");
            assert!(
                matches!(opened, Ok(0)),
                "round {round}: every store opens and migrates: {opened:?}"
            );
        }
    }
}
