//! The `outbox:DIR` transport: one `.eml` file per message, the zero-setup default.
//!
//! A file appears whole or not at all: it is written to a hidden temporary file in the same
//! folder, flushed to disk, then renamed into place (rename is atomic within a file
//! system). Anything that watches the folder never sees half a message. The name comes
//! from the Message-ID, so it is unique and tells which message a file holds.

use std::path::{Path, PathBuf};
use std::time::Instant;

use tokio::io::AsyncWriteExt;

use crate::compose::OutgoingMessage;
use crate::outcome::{SendOutcome, SendReport};

/// Writes messages into a folder instead of sending them.
#[derive(Debug, Clone)]
pub struct OutboxSender {
    dir: PathBuf,
}

impl OutboxSender {
    /// A sender writing into `dir` (created on first write if missing).
    pub fn new(dir: impl Into<PathBuf>) -> OutboxSender {
        OutboxSender { dir: dir.into() }
    }

    /// The folder written to.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The final path a message is written to: `DIR/<Message-ID without <>, made
    /// file-name safe>.eml`.
    pub fn path_for(&self, message: &OutgoingMessage) -> PathBuf {
        let id: String = message
            .message_id
            .trim_matches(|c| c == '<' || c == '>')
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '@' | '+') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let id = id.trim_start_matches('.');
        self.dir.join(format!("{id}.eml"))
    }

    /// Writes the message; `Sent` with code 250 and the path, or `Transient` naming the path
    /// and the I/O error (a full disk is worth retrying).
    pub async fn send(&mut self, message: &OutgoingMessage) -> SendReport {
        let started = Instant::now();
        let path = self.path_for(message);
        let outcome = match self.write(&path, &message.bytes).await {
            Ok(()) => SendOutcome::Sent {
                code: 250,
                reply: format!("written to {}", path.display()),
            },
            Err((what, err)) => SendOutcome::Transient {
                code: None,
                reply: format!("{what}: {err}"),
            },
        };
        SendReport {
            outcome,
            duration: started.elapsed(),
        }
    }

    async fn write(&self, path: &Path, bytes: &[u8]) -> Result<(), (String, std::io::Error)> {
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(|e| (format!("creating {}", self.dir.display()), e))?;
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = self
            .dir
            .join(format!(".{file_name}.{:016x}.tmp", fastrand::u64(..)));
        let result = async {
            let mut file = tokio::fs::File::create(&tmp)
                .await
                .map_err(|e| (format!("creating {}", tmp.display()), e))?;
            file.write_all(bytes)
                .await
                .map_err(|e| (format!("writing {}", tmp.display()), e))?;
            file.sync_all()
                .await
                .map_err(|e| (format!("syncing {}", tmp.display()), e))?;
            drop(file);
            tokio::fs::rename(&tmp, path).await.map_err(|e| {
                (
                    format!("renaming {} to {}", tmp.display(), path.display()),
                    e,
                )
            })
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }
}
