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
