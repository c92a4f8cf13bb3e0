//! The few HTML pages a recipient or a new user sees.

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn layout(title: &str, inner: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{t}</title><style>body{{font-family:system-ui,sans-serif;max-width:32em;margin:4em auto;padding:0 1em;line-height:1.5}}\
         button{{font-size:1em;padding:.5em 1.2em;cursor:pointer}}</style></head>\n<body><h1>{t}</h1>\n{inner}\n</body></html>\n",
        t = escape(title)
    )
}

/// A page with a title and one paragraph of text.
pub fn page(title: &str, text: &str) -> String {
    layout(title, &format!("<p>{}</p>", escape(text)))
}

/// The page that confirms an unsubscribe, with a button that takes it back (a recipient
/// who clicked by mistake). `token` is the link's and `undo` the button's own key, in the
/// form's relative action (the daemon may sit under a path prefix).
pub fn unsubscribed(text: &str, token: &str, undo: &str) -> String {
    layout(
        "Unsubscribed",
        &format!(
            "<p>{}</p><p>Unsubscribed by mistake? This page can take it back for {} days.</p>\
             <form method=\"post\" action=\"{}/undo/{}\"><button type=\"submit\">Subscribe again</button></form>",
            escape(text),
            UNDO_DAYS,
            escape(token),
            escape(undo)
        ),
    )
}

/// How long the page that confirms an unsubscribe can take it back.
pub const UNDO_DAYS: i64 = 7;

/// The confirmation page behind a GET of an unsubscribe link: a GET must not unsubscribe,
/// since mail scanners follow links; the button POSTs.
pub fn unsubscribe_form(sender: &str, address: &str) -> String {
    layout(
        "Unsubscribe",
        &format!(
            "<p>Stop sending mailings from {} to <strong>{}</strong>?</p>\
             <form method=\"post\"><input type=\"hidden\" name=\"List-Unsubscribe\" value=\"One-Click\"><button type=\"submit\">Unsubscribe</button></form>",
            escape(sender),
            escape(address)
        ),
    )
}
