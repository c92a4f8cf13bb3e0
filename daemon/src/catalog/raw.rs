//! The files' shapes as serde reads them, with the spans that problems point at.
//!
//! These types mirror the TOML one to one and reject unknown keys; turning them into the
//! catalog's types (and every check that needs more than one file) happens in `load`.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use toml::Spanned;
use toml::value::Datetime;

/// `users.toml`: one table per user id.
pub type RawUsers = BTreeMap<Spanned<String>, Spanned<RawUser>>;

/// One `[user]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUser {
    pub email: Spanned<String>,
    pub name: Spanned<String>,
}

/// `clients/<owner>/<list>.toml`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawList {
    pub description: Option<String>,
    #[serde(default, rename = "client")]
    pub clients: Vec<RawClient>,
}

/// One `[[client]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClient {
    pub email: Spanned<String>,
    pub name: Spanned<String>,
    pub comment: Option<Spanned<String>>,
}

/// `mailings/<owner>/<name>.toml`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMailing {
    pub title: Spanned<String>,
    pub lists: Spanned<Vec<Spanned<String>>>,
    pub start: Spanned<Datetime>,
    pub end: Option<Spanned<Datetime>>,
    pub every: Option<Spanned<String>>,
    pub cron: Option<Spanned<String>>,
    pub timezone: Option<Spanned<String>>,
    pub enabled: Option<bool>,
    pub catch_up: Option<Spanned<String>>,
    pub message: Spanned<RawMessageRef>,
}

/// `mailings/<owner>/messages/<name>.toml`, or an inline `[message]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMessage {
    pub subject: Spanned<String>,
    pub body: Spanned<String>,
}

/// `message = "name"` names a message file; `[message]` holds one inline.
#[derive(Debug, Clone)]
pub enum RawMessageRef {
    File(String),
    Inline(RawMessage),
}

impl<'de> Deserialize<'de> for RawMessageRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct RefVisitor;
        impl<'de> Visitor<'de> for RefVisitor {
            type Value = RawMessageRef;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "the name of a message file, or a [message] table with subject and body",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(RawMessageRef::File(v.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                RawMessage::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawMessageRef::Inline)
            }
        }
        d.deserialize_any(RefVisitor)
    }
}
