//! Generate a large content repository for benchmarks: `cargo run --release --example
//! gen_repo -- DIR [USERS] [LISTS_PER_USER] [CLIENTS_PER_LIST] [MAILINGS_PER_USER]`.
//!
//! Defaults: 100 users × 10 lists × 1,000 clients (1,000,000 clients) and 10 mailings per
//! user (1,000 mailings), each mailing sending to two of its owner's lists, with overlap
//! between lists so deduplication has work to do. Addresses use example.com only.

use std::fmt::Write as _;
use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = PathBuf::from(
        args.first()
            .map(String::as_str)
            .unwrap_or("target/bench-repo"),
    );
    let num =
        |i: usize, default: usize| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let (users, lists, clients, mailings) = (num(1, 100), num(2, 10), num(3, 1000), num(4, 10));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let mut users_toml = String::new();
    for u in 0..users {
        let owner = format!("user{u:03}");
        writeln!(
            users_toml,
            "[{owner}]\nemail = \"{owner}@example.com\"\nname = \"User {u}\"\n"
        )
        .ok();
        let cdir = dir.join("clients").join(&owner);
        std::fs::create_dir_all(&cdir)?;
        for l in 0..lists {
            let mut text = format!("description = \"List {l} of {owner}\"\n");
            for c in 0..clients {
                // Half of each list overlaps the next list, so mailings deduplicate.
                let n = l * clients / 2 + c;
                writeln!(
                    text,
                    "\n[[client]]\nemail = \"client{n:07}.{owner}@example.com\"\nname = \"Client {n}\"\ncomment = \"added by the generator\""
                )
                .ok();
            }
            std::fs::write(cdir.join(format!("list{l:02}.toml")), text)?;
        }
        let mdir = dir.join("mailings").join(&owner);
        std::fs::create_dir_all(mdir.join("messages"))?;
        std::fs::write(
            mdir.join("messages/news.toml"),
            "subject = \"News for {{ client.name }}\"\nbody = \"\"\"\nHello {{ client.name }},\n\n**News.**\n\n[Unsubscribe]({{ unsubscribe_url }})\n\"\"\"\n",
        )?;
        for m in 0..mailings {
            let (a, b) = (m % lists, (m + 1) % lists);
            let schedule = match m % 4 {
                0 => "every = \"weekly\"",
                1 => "every = \"monthly\"",
                2 => "cron = \"0 9 * * MON-FRI\"",
                _ => "every = \"daily\"",
            };
            std::fs::write(
                mdir.join(format!("mailing{m:02}.toml")),
                format!(
                    "title = \"Mailing {m}\"\nlists = [\"list{a:02}\", \"list{b:02}\"]\nstart = 2027-01-01T09:00:00\n{schedule}\ntimezone = \"Europe/Berlin\"\nmessage = \"news\"\n"
                ),
            )?;
        }
    }
    std::fs::write(dir.join("users.toml"), users_toml)?;
    println!(
        "{}: {users} users, {} lists, {} clients, {} mailings",
        dir.display(),
        users * lists,
        users * lists * clients,
        users * mailings
    );
    Ok(())
}
