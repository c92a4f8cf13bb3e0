//! Email addresses: a practical validity check and case-insensitive comparison.
//!
//! Addresses are compared case-insensitively everywhere (deduplication across lists,
//! unsubscribes), as DESIGN.md promises, without allocating a lowered copy of each one.

use std::hash::{Hash, Hasher};

/// Why an address was refused, in words for the content author.
pub fn check(address: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("`{address}` is not a valid email address: {why}"));
    if address.is_empty() {
        return bad("it is empty");
    }
    if address.len() > 254 {
        return bad("longer than 254 characters");
    }
    if address.contains(['<', '>', '(', ')', ',', ';', '"', '\\', '[', ']']) {
        return bad("write the bare address, without a name, quotes or brackets");
    }
    if address.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad("it contains a space or a control character");
    }
    let Some((local, domain)) = address.rsplit_once('@') else {
        return bad("no `@`");
    };
    if local.is_empty() || local.contains('@') {
        return bad("exactly one `@` with something before it is needed");
    }
    if local.len() > 64 {
        return bad("the part before `@` is longer than 64 characters");
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return bad("misplaced `.` before the `@`");
    }
    if !domain.contains('.') {
        return bad("the domain needs a dot");
    }
    for label in domain.split('.') {
        if label.is_empty() {
            return bad("an empty part in the domain");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return bad("a domain part starts or ends with `-`");
        }
        if !label.chars().all(|c| c.is_alphanumeric() || c == '-') {
            return bad("the domain may hold only letters, digits, `-` and `.`");
        }
    }
    Ok(())
}

/// An address that hashes and compares ignoring case.
#[derive(Debug, Clone, Copy)]
pub struct Caseless<'a>(pub &'a str);

impl PartialEq for Caseless<'_> {
    fn eq(&self, other: &Self) -> bool {
        if self.0.is_ascii() && other.0.is_ascii() {
            return self.0.eq_ignore_ascii_case(other.0);
        }
        self.0
            .chars()
            .flat_map(char::to_lowercase)
            .eq(other.0.chars().flat_map(char::to_lowercase))
    }
}

impl Eq for Caseless<'_> {}

impl Hash for Caseless<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        if self.0.is_ascii() {
            // Lower-case through a small buffer: one `write` per chunk, not per byte.
            let mut buf = [0u8; 64];
            for chunk in self.0.as_bytes().chunks(buf.len()) {
                let lowered = &mut buf[..chunk.len()];
                lowered.copy_from_slice(chunk);
                lowered.make_ascii_lowercase();
                state.write(lowered);
            }
        } else {
            for c in self.0.chars().flat_map(char::to_lowercase) {
                state.write_u32(c as u32);
            }
        }
        state.write_u8(0xff);
    }
}

/// The lower-cased form used as a key in the database.
pub fn key(address: &str) -> String {
    address.to_lowercase()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn accepts_ordinary_addresses() {
        for a in [
            "ivan@example.com",
            "a.b+tag@mail.example.org",
            "ИВАН@пример.example.com",
            "x@a-b.example",
        ] {
            assert_eq!(check(a), Ok(()), "{a}");
        }
    }

    #[test]
    fn refuses_what_cannot_be_delivered() {
        for a in [
            "",
            "ivan",
            "ivan@",
            "@example.com",
            "ivan@example",
            "ivan@@example.com",
            "iv an@example.com",
            "Ivan <ivan@example.com>",
            "ivan@example..com",
            "ivan@-example.com",
            ".ivan@example.com",
            "ivan@exa_mple.com",
            "ivan@example.com\n",
        ] {
            assert!(check(a).is_err(), "{a:?}");
        }
    }

    #[test]
    fn caseless_equality_and_hash() {
        let set: HashSet<Caseless> = [
            "Ivan@Example.com",
            "ivan@example.COM",
            "ИВАН@x.example",
            "иван@x.example",
        ]
        .into_iter()
        .map(Caseless)
        .collect();
        assert_eq!(set.len(), 2);
    }
}
