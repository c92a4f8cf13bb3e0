//! Message templates: what a subject or body may say and how it is checked.
//!
//! Subjects and bodies are Tera templates rendered once per recipient. `skychimpd check`
//! compiles each one, refuses a variable no message has wherever it is read, and renders
//! it against a sample recipient (and then, in `cli::check`, for every recipient), so a
//! typo such as `{{ client.nmae }}` or `{% if client.coment %}` is caught in review rather
//! than at 9 a.m. on the day of sending.

use std::collections::HashMap;

use serde::Serialize;

mod size;

/// The variables a template may use, as one value per recipient.
#[derive(Debug, Clone, Serialize)]
pub struct TemplateContext<'a> {
    /// The recipient.
    pub client: ClientVars<'a>,
    /// The mailing being sent.
    pub mailing: MailingVars<'a>,
    /// The mailing's owner.
    pub owner: OwnerVars<'a>,
    /// The recipient's one-click unsubscribe link.
    pub unsubscribe_url: &'a str,
}

/// `client.*`
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ClientVars<'a> {
    /// `client.email`
    pub email: &'a str,
    /// `client.name`
    pub name: &'a str,
    /// `client.comment` (empty when absent)
    pub comment: &'a str,
}

impl<'a> From<&'a crate::catalog::Client> for ClientVars<'a> {
    fn from(c: &'a crate::catalog::Client) -> Self {
        ClientVars {
            email: &c.email,
            name: &c.name,
            comment: c.comment.as_deref().unwrap_or(""),
        }
    }
}

/// `mailing.*`
#[derive(Debug, Clone, Serialize)]
pub struct MailingVars<'a> {
    /// `mailing.id`, e.g. `alice/weekly`
    pub id: &'a str,
    /// `mailing.title`
    pub title: &'a str,
}

/// `owner.*`
#[derive(Debug, Clone, Serialize)]
pub struct OwnerVars<'a> {
    /// `owner.name`
    pub name: &'a str,
    /// `owner.email`
    pub email: &'a str,
}

/// A template problem at a position inside the template text (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    /// Line within the template.
    pub line: usize,
    /// Column within that line.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

fn sample() -> TemplateContext<'static> {
    TemplateContext {
        client: ClientVars {
            email: "client@example.com",
            name: "Sample Client",
            comment: "",
        },
        mailing: MailingVars {
            id: "owner/mailing",
            title: "Sample",
        },
        owner: OwnerVars {
            name: "Sample Owner",
            email: "owner@example.com",
        },
        unsubscribe_url: "http://127.0.0.1:8025/unsubscribe/sample",
    }
}

/// Compile `source`, look for variables no message has, and render it for a sample
/// recipient.
pub fn check(source: &str) -> Result<(), TemplateError> {
    if let Some((at, why)) = too_deep(source) {
        let (line, column) = line_and_column(source, at);
        return Err(TemplateError {
            line,
            column,
            message: format!("template: {why}"),
        });
    }
    let mut tera = tera();
    tera.add_raw_template("template", source)
        .map_err(|e| located(&e, source))?;
    let refused = tera.get_template("template").ok().and_then(|template| {
        let names = skychimp_site::tera_names::names(&template.ast);
        let unsafe_shape =
            unsafe_shape(&template.ast).map(|(name, why)| (name, format!("template: {why}")));
        let function = || {
            refused_function(&names).map(|name| {
                let message = format!(
                    "template: a message cannot call `{name}()`; it may call {}",
                    FUNCTIONS.join(", ")
                );
                (name.to_string(), message)
            })
        };
        let variable = || {
            unknown_variable(&names).map(|name| {
                let message = format!(
                    "template: no variable `{name}`; a message has {}",
                    VARIABLES.join(", ")
                );
                (name, message)
            })
        };
        unsafe_shape.or_else(function).or_else(variable)
    });
    if let Some((name, message)) = refused {
        let (line, column) = first_use(source, &name).unwrap_or((1, 1));
        return Err(TemplateError {
            line,
            column,
            message,
        });
    }
    let context = tera::Context::from_serialize(sample()).map_err(|e| to_error(&e))?;
    render(&tera, "template", &context).map_err(|e| located(&e, source))?;
    Ok(())
}

std::thread_local! {
    /// Set while this thread renders a message: its panics are that message's error.
    static RENDERING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// `tera.render(name, context)`, with a panic in Tera's own code turned into an error.
/// Some of its filters panic on an owner's input (`int(base=1)`, `date` of a number too
/// large or with `%z` and no zone, `i64::MIN % -1`); a panic would take `check` or a
/// sending worker down instead of failing one message. The panic is not printed.
pub fn render(tera: &tera::Tera, name: &str, context: &tera::Context) -> tera::Result<String> {
    static QUIET_HOOK: std::sync::Once = std::sync::Once::new();
    QUIET_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !RENDERING.with(std::cell::Cell::get) {
                previous(info);
            }
        }));
    });
    let was = RENDERING.with(|r| r.replace(true));
    let result =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| tera.render(name, context)));
    RENDERING.with(|r| r.set(was));
    result.unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no reason given".into());
        Err(tera::Error::msg(format!(
            "Tera failed on this template ({what}); change the tag that fails"
        )))
    })
}

/// Every variable a message has (see [`TemplateContext`]). The renderer's plain templates
/// number their values in this order.
pub const VARIABLES: [&str; 8] = [
    "client.email",
    "client.name",
    "client.comment",
    "unsubscribe_url",
    "mailing.id",
    "mailing.title",
    "owner.name",
    "owner.email",
];

/// The functions a message may call: Tera's `range` (at most [`RANGE_MAX`] numbers) and
/// `throw`. Tera's others are refused:
/// `get_env` would read the daemon's environment (the manager keys, the SMTP password) into
/// mail an owner can send themselves, and `now` and `get_random` would make a preview, the
/// message sent and its retry differ.
pub const FUNCTIONS: [&str; 2] = ["range", "throw"];

/// The most numbers one `range` gives a message: enough for any list a person reads, few
/// enough that a loop cannot hold up `check` or a run.
pub const RANGE_MAX: i64 = 1000;

/// The Tera that message templates are compiled with: Tera's own, with every function not
/// in [`FUNCTIONS`] replaced by one that fails, and `range` bounded by [`RANGE_MAX`].
/// `check` refuses such calls first; this is the last line of defence.
pub fn tera() -> tera::Tera {
    let mut tera = tera::Tera::default();
    let refused: Vec<String> = tera
        .functions
        .keys()
        .filter(|name| !FUNCTIONS.contains(&name.as_str()))
        .cloned()
        .collect();
    for name in refused {
        tera.register_function(&name.clone(), move |_: &HashMap<String, tera::Value>| {
            Err(tera::Error::msg(format!(
                "a message cannot call `{name}()`"
            )))
        });
    }
    tera.register_function("range", bounded_range);
    tera
}

/// Why `ast` cannot be a message's template whatever it is rendered with: another template
/// reached for, a macro that recurses, loops past [`WORK_MAX`], a value that can grow past
/// [`size::TEXT_MAX`] bytes or [`size::INPUT_TIMES_MAX`] times a recipient's values. Each
/// would take `check` or the daemon down. The name to place the error at, and why. `check`
/// says it; the renderer refuses it again for runs created before `check` did.
pub fn unsafe_shape(ast: &[tera::ast::Node]) -> Option<(String, String)> {
    if let Some(tag) = refused_tag(ast) {
        let why = format!("a message is one template and cannot use `{{% {tag} %}}`");
        return Some((tag.to_string(), why));
    }
    if let Some((name, through)) = recursive_macro(ast) {
        let why = format!("macro `{name}` calls itself{through}: a message cannot recurse");
        return Some((name.to_string(), why));
    }
    let names = skychimp_site::tera_names::names(ast);
    if names
        .iter()
        .any(|n| matches!(n, skychimp_site::tera_names::Name::Test("matching")))
    {
        let why = "a message cannot use the test `matching`: Tera compiles its regular \
                   expression each time it runs (thirty passes of `\\w{100}` took seconds \
                   for one recipient)";
        return Some(("matching".to_string(), why.to_string()));
    }
    // Only once no macro recurses: both estimates follow macro calls.
    let pieces = work(ast);
    if pieces > WORK_MAX {
        let why = format!(
            "its loops repeat up to {pieces} times for each recipient; a message may repeat \
             at most {WORK_MAX} (nest fewer or shorter loops)"
        );
        return Some(("for".to_string(), why));
    }
    let size::Over {
        name,
        size: grown,
        kind,
    } = size::too_large(ast)?;
    if kind == size::Kind::Made {
        let why = format!(
            "its filters and joins can make up to {} bytes and {} times a recipient's values \
             for each recipient, counting every loop pass; a message may make at most {} \
             bytes and {} times (fewer passes, or smaller values in loops)",
            grown.bytes,
            grown.times,
            size::PROCESSED_MAX,
            size::PROCESSED_TIMES_MAX
        );
        return Some((name, why));
    }
    if kind == size::Kind::PrettyJson {
        let why = "a message cannot use `json_encode(pretty=true)`: its indentation grows with \
                   the square of how deeply a value nests";
        return Some((name, why.to_string()));
    }
    if kind == size::Kind::Steps {
        let why = format!(
            "it is too intricate to bound: measuring it took over {} steps (nest fewer loops, \
             or put fewer tags inside them)",
            size::STEPS_MAX
        );
        return Some((name, why));
    }
    if let size::Kind::Items(items) = kind {
        let why = format!(
            "a loop goes over up to {items} items; a message may loop over at most {RANGE_MAX} \
             (a value the template makes has up to as many items as bytes)"
        );
        return Some((name, why));
    }
    let at = match kind {
        size::Kind::Written => "what it writes".to_string(),
        size::Kind::Held => format!("the values set up to `{name}`, held together,"),
        _ => format!("`{name}`"),
    };
    let why = if grown.times > size::INPUT_TIMES_MAX {
        let times = if grown.times == u64::MAX {
            "without bound".to_string()
        } else {
            format!("{} times", grown.times)
        };
        format!(
            "{at} can repeat a recipient's values {times} over; a message may use them at \
             most {} times over",
            size::INPUT_TIMES_MAX
        )
    } else {
        // What is written becomes HTML too, at far more memory than its bytes.
        let most = if kind == size::Kind::Written {
            size::OUTPUT_MAX
        } else {
            size::TEXT_MAX
        };
        format!(
            "{at} can grow to {} bytes for each recipient, besides the recipient's values; a \
             message may make at most {most}",
            grown.bytes
        )
    };
    Some((name, why))
}

/// The deepest a message may nest parentheses and brackets (calls in calls' arguments,
/// arrays in arrays) inside its tags.
pub const NESTING_MAX: usize = 4;
/// What parsing a message's tags may cost in all: each tag costs 8 to the power of its
/// deepest nesting (Tera's parser backtracks on each level of a call or an array, taking 2
/// to 7.5 times as long per level: one `range(end=range(end=…))` eight deep took 0.5 s, and
/// twenty of them 9 s). About a quarter of a second at worst.
pub const PARSE_COST_MAX: u64 = 32_768;
/// The deepest a message may nest blocks (`{% if %}`, `{% for %}`, `{% filter %}`,
/// `{% macro %}`, `{% block %}`).
pub const BLOCKS_MAX: usize = 16;
/// The most operators (`+`, `~`, `and`, `==`, …) one tag may hold.
pub const OPERATORS_MAX: usize = 200;
/// The most macros a message may define.
pub const MACROS_MAX: usize = 32;
/// The most tags (`{{ }}` and `{% %}`) a message may have.
pub const TAGS_MAX: usize = 10_000;
/// The most `{% set %}`s a message may have: the size bound carries the values set so far
/// through every branch, so 20,000 sets before 20,000 `{% if %}`s took it minutes.
pub const SETS_MAX: usize = 1_000;

/// Where `source` is shaped so that Tera's parser or renderer would take too long or run
/// out of stack, and why that is refused; checked before Tera sees the template, in `check`
/// and again by the renderer:
/// - parentheses and brackets inside a tag nested deeper than [`NESTING_MAX`], or costing
///   more than [`PARSE_COST_MAX`] in all: Tera's parser backtracks on each level, taking
///   twice as long per level or more (twenty nested macro calls parse for minutes, even
///   under `{% if false %}`, and `1 in [1 in [… ]]` 24 deep did too);
/// - blocks nested deeper than [`BLOCKS_MAX`], a tag with more than [`OPERATORS_MAX`]
///   operators, more than [`MACROS_MAX`] macros: Tera parses and renders each of these by
///   recursion (465 nested `{% if %}`, 4,000 terms of `1+1+…`, a chain of 1,000 macros each
///   calling the next overflowed the stack and aborted the process), and the size bound
///   walks nested loops once per way through them;
/// - more than [`TAGS_MAX`] tags or [`SETS_MAX`] `{% set %}`s.
///
/// Comments (`{# … #}`) and `{% raw %}` blocks are skipped as Tera skips them: a quote in
/// one does not hide the tags after it.
pub fn too_deep(source: &str) -> Option<(usize, String)> {
    let bytes = source.as_bytes();
    let (mut blocks, mut macros, mut tags, mut sets) = (0usize, 0usize, 0usize, 0usize);
    let mut parse_cost = 0u64;
    let mut i = 0;
    while let Some(open) = find(bytes, i, b"{") {
        let kind = bytes.get(open + 1).copied();
        i = open + 1;
        match kind {
            // A comment with no end is Tera's error; the scan goes on past its start.
            Some(b'#') => {
                if let Some(close) = find(bytes, open + 2, b"#}") {
                    i = close + 2;
                }
            }
            Some(b'{' | b'%') => {
                let Tag {
                    end,
                    deepest,
                    too_deep_at,
                    operators,
                } = scan_tag(bytes, open + 2);
                if let Some(at) = too_deep_at {
                    return Some((
                        at,
                        format!(
                            "calls, parentheses or brackets nested {} deep; a message may nest \
                             at most {NESTING_MAX}",
                            NESTING_MAX + 1
                        ),
                    ));
                }
                parse_cost = parse_cost.saturating_add(8u64.pow(deepest as u32));
                if parse_cost > PARSE_COST_MAX {
                    return Some((
                        open,
                        format!(
                            "its calls, parentheses and brackets cost Tera's parser more than \
                             {PARSE_COST_MAX} in all (each tag 8 to the power of its deepest \
                             nesting); nest fewer of them"
                        ),
                    ));
                }
                if operators > OPERATORS_MAX {
                    return Some((
                        open,
                        format!(
                            "a tag with {operators} operators; a message may have at most \
                             {OPERATORS_MAX} in one tag"
                        ),
                    ));
                }
                i = end;
                tags += 1;
                if tags > TAGS_MAX {
                    return Some((
                        open,
                        format!("more than {TAGS_MAX} tags; a message may have at most {TAGS_MAX}"),
                    ));
                }
                if kind == Some(b'{') {
                    continue;
                }
                let word = keyword(&bytes[open + 2..end.min(bytes.len())]);
                if word == b"set" {
                    sets += 1;
                    if sets > SETS_MAX {
                        return Some((
                            open,
                            format!(
                                "more than {SETS_MAX} `{{% set %}}`s; a message may have at most \
                                 {SETS_MAX}"
                            ),
                        ));
                    }
                }
                match word {
                    b"raw" => {
                        // Past the next `{% endraw %}`, read as Tera reads it: plain text,
                        // where a quote is only a quote. Without one, Tera refuses the
                        // template; the scan goes on past `{% raw %}` all the same.
                        let mut at = end;
                        while let Some(next) = find(bytes, at, b"{%") {
                            at = next + 2;
                            if let Some(close) = endraw(bytes, at) {
                                i = close;
                                break;
                            }
                        }
                    }
                    b"if" | b"for" | b"filter" | b"macro" | b"block" => {
                        blocks += 1;
                        if blocks > BLOCKS_MAX {
                            return Some((
                                open,
                                format!(
                                    "blocks ({{% if %}}, {{% for %}}, …) nested {blocks} deep; a \
                                     message may nest at most {BLOCKS_MAX}"
                                ),
                            ));
                        }
                        if word == b"macro" {
                            macros += 1;
                            if macros > MACROS_MAX {
                                return Some((
                                    open,
                                    format!(
                                        "{macros} macros; a message may define at most \
                                         {MACROS_MAX}"
                                    ),
                                ));
                            }
                        }
                    }
                    w if w.starts_with(b"end") => blocks = blocks.saturating_sub(1),
                    _ => {}
                }
            }
            _ => {}
        }
    }
    None
}

/// The first position of `needle` in `bytes` at or after `from`.
fn find(bytes: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    bytes
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|at| from + at)
}

/// What [`scan_tag`] reads of one tag, outside its strings.
struct Tag {
    /// Just past its `}}` or `%}`, or the end of the source.
    end: usize,
    /// Its deepest parentheses and brackets.
    deepest: usize,
    /// Where they first nest deeper than [`NESTING_MAX`].
    too_deep_at: Option<usize>,
    /// Its operators.
    operators: usize,
}

/// A tag's body from `from` (just past `{{` or `{%`).
fn scan_tag(bytes: &[u8], from: usize) -> Tag {
    let (mut depth, mut deepest, mut operators) = (0usize, 0usize, 0usize);
    let mut too_deep_at = None;
    let mut quote: Option<u8> = None;
    let mut i = from;
    while i < bytes.len() {
        let b = bytes[i];
        let next = bytes.get(i + 1).copied();
        match (quote, b) {
            (Some(q), _) if b == q => quote = None,
            (Some(_), _) => {}
            (None, b'"' | b'\'' | b'`') => quote = Some(b),
            (None, b'}' | b'%') if next == Some(b'}') => {
                return Tag {
                    end: i + 2,
                    deepest,
                    too_deep_at,
                    operators,
                };
            }
            (None, b'(' | b'[') => {
                depth += 1;
                deepest = deepest.max(depth);
                if depth > NESTING_MAX {
                    too_deep_at.get_or_insert(i);
                }
            }
            (None, b')' | b']') => depth = depth.saturating_sub(1),
            // `==`, `<=`, `**`, `//` count once.
            (None, b'+' | b'-' | b'*' | b'/' | b'%' | b'~' | b'<' | b'>' | b'!' | b'=')
                if !matches!(next, Some(b'=' | b'*' | b'/')) =>
            {
                operators += 1;
            }
            (None, b'a'..=b'z') if i == 0 || !is_word(bytes[i - 1]) => {
                let word_end = (i..bytes.len())
                    .find(|&j| !is_word(bytes[j]))
                    .unwrap_or(bytes.len());
                if matches!(&bytes[i..word_end], b"and" | b"or" | b"not" | b"in") {
                    operators += 1;
                }
                i = word_end;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    Tag {
        end: bytes.len(),
        deepest,
        too_deep_at,
        operators,
    }
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Where `{% endraw %}` ends when its body (`-`, spaces, `endraw`, spaces, `-`, `%}`, as
/// Tera's grammar has it) starts at `at`; `None` when something else stands there.
fn endraw(bytes: &[u8], at: usize) -> Option<usize> {
    let space = |i: usize| bytes.get(i).is_some_and(|b| b" \t\r\n".contains(b));
    let mut i = at;
    if bytes.get(i) == Some(&b'-') {
        i += 1;
    }
    while space(i) {
        i += 1;
    }
    i += 6;
    if bytes.get(i - 6..i) != Some(b"endraw") {
        return None;
    }
    while space(i) {
        i += 1;
    }
    if bytes.get(i) == Some(&b'-') {
        i += 1;
    }
    (bytes.get(i..i + 2) == Some(b"%}")).then_some(i + 2)
}

/// A block tag's first word (`if`, `endfor`, `raw`, …), past `-` and spaces.
fn keyword(tag: &[u8]) -> &[u8] {
    let start = tag
        .iter()
        .position(|&b| b != b'-' && !b.is_ascii_whitespace())
        .unwrap_or(tag.len());
    let rest = &tag[start..];
    let end = rest.iter().position(|&b| !is_word(b)).unwrap_or(rest.len());
    &rest[..end]
}

/// Tera's `range(end, start=0, step_by=1)`, refusing more than [`RANGE_MAX`] numbers.
fn bounded_range(args: &HashMap<String, tera::Value>) -> tera::Result<tera::Value> {
    let number = |name: &str, default: Option<i64>| match args.get(name) {
        Some(v) => v.as_i64().ok_or_else(|| {
            tera::Error::msg(format!("range: `{name}` must be a whole number, not {v}"))
        }),
        None => default.ok_or_else(|| tera::Error::msg(format!("range: `{name}` is required"))),
    };
    let (start, end, step) = (
        number("start", Some(0))?,
        number("end", None)?,
        number("step_by", Some(1))?,
    );
    if step <= 0 {
        return Err(tera::Error::msg("range: `step_by` must be 1 or more"));
    }
    let count = (end.saturating_sub(start).max(0) + step - 1) / step;
    if count > RANGE_MAX {
        return Err(tera::Error::msg(format!(
            "range: {count} numbers, more than the {RANGE_MAX} a message may loop over"
        )));
    }
    let numbers: Vec<i64> = (0..count).map(|i| start + i * step).collect();
    Ok(tera::Value::from(numbers))
}

/// The most a message's loops may repeat for one recipient, by [`work`]'s estimate.
pub const WORK_MAX: u64 = 100_000;

/// An upper estimate of the pieces (text, values, tags) rendering `ast` once evaluates.
/// Each loop counts its body as many times as it can repeat (a literal array's length, a
/// literal `range`'s count, else [`RANGE_MAX`]), and each macro call counts that macro.
/// Loops nested over whole ranges would otherwise hold up `check` and the daemon for
/// hours. Call it only on a template without recursive macros.
fn work(ast: &[tera::ast::Node]) -> u64 {
    use tera::ast::Node;
    let macros: HashMap<&str, &[Node]> = ast
        .iter()
        .filter_map(|node| match node {
            Node::MacroDefinition(_, def, _) => Some((def.name.as_str(), def.body.as_slice())),
            _ => None,
        })
        .collect();
    Work {
        macros: &macros,
        known: std::cell::RefCell::new(HashMap::new()),
        lengths: literal_lengths(ast),
    }
    .nodes(ast)
}

struct Work<'a> {
    macros: &'a HashMap<&'a str, &'a [tera::ast::Node]>,
    lengths: Lengths,
    /// Each macro's cost, once known: macros calling macros twice over would otherwise
    /// be counted an exponential number of times.
    known: std::cell::RefCell<HashMap<&'a str, u64>>,
}

impl Work<'_> {
    fn nodes(&self, nodes: &[tera::ast::Node]) -> u64 {
        use tera::ast::Node;
        nodes
            .iter()
            .map(|node| match node {
                Node::VariableBlock(_, e) => 1u64.saturating_add(self.calls(e)),
                Node::Set(_, set) => 1u64.saturating_add(self.calls(&set.value)),
                Node::FilterSection(_, section, _) => self.nodes(&section.body),
                Node::Block(_, block, _) => self.nodes(&block.body),
                Node::Forloop(_, each, _) => {
                    let body = self.nodes(&each.body).max(1);
                    let empty = each.empty_body.as_deref().map_or(0, |b| self.nodes(b));
                    body.saturating_mul(repeats(&each.container, &self.lengths))
                        .max(empty)
                        .saturating_add(self.calls(&each.container))
                }
                Node::If(branches, _) => branches
                    .conditions
                    .iter()
                    .map(|(_, condition, body)| {
                        self.calls(condition).saturating_add(self.nodes(body))
                    })
                    .chain(branches.otherwise.iter().map(|(_, body)| self.nodes(body)))
                    .max()
                    .unwrap_or(0),
                // Counted where it is called.
                Node::MacroDefinition(..) => 0,
                _ => 1,
            })
            .fold(0, u64::saturating_add)
    }

    /// The cost of the macros an expression calls.
    fn calls(&self, e: &tera::ast::Expr) -> u64 {
        use skychimp_site::tera_names::{Name, names};
        let node = tera::ast::Node::VariableBlock(tera::ast::WS::default(), e.clone());
        names(std::slice::from_ref(&node))
            .into_iter()
            .filter_map(|n| match n {
                Name::Macro(m) => self.macro_cost(m),
                _ => None,
            })
            .fold(0, u64::saturating_add)
    }

    fn macro_cost(&self, name: &str) -> Option<u64> {
        let (&name, body) = self.macros.get_key_value(name)?;
        if let Some(&cost) = self.known.borrow().get(name) {
            return Some(cost);
        }
        let cost = self.nodes(body);
        self.known.borrow_mut().insert(name, cost);
        Some(cost)
    }
}

/// The number of items of each variable `set` to a literal array, a literal `range`, or a
/// literal string `split` by a literal pattern, wherever it is set (the most, when set
/// more than once); `None` for a name also set to anything else.
pub(crate) type Lengths = HashMap<String, Option<u64>>;

/// [`Lengths`] of a template: a loop over such a variable repeats as often as over the
/// literal itself.
pub(crate) fn literal_lengths(ast: &[tera::ast::Node]) -> Lengths {
    use tera::ast::{ExprVal, Node};
    fn count(value: &tera::ast::Expr) -> Option<u64> {
        match (&value.val, value.filters.as_slice()) {
            (ExprVal::Array(items), []) => Some(items.len() as u64),
            (ExprVal::FunctionCall(call), []) if call.name == "range" => {
                Some(repeats(value, &Lengths::new())).filter(|&n| n < RANGE_MAX as u64)
            }
            (ExprVal::String(s), [split]) if split.name == "split" => {
                match split
                    .args
                    .get("pat")
                    .map(|p| (&p.val, p.filters.is_empty()))
                {
                    Some((ExprVal::String(pat), true)) => {
                        Some(s.split(pat.as_str()).count() as u64)
                    }
                    _ => None,
                }
            }
            _ => None,
        }
    }
    // A name also bound by a loop or as a macro's argument may hold anything there: it has
    // no known length (a `{% set a = [1] %}` elsewhere made `{% for a in big %}` and a
    // macro's `a` count as one item, and nested loops over them went unbounded).
    fn unknown(name: &str, lengths: &mut Lengths) {
        lengths.insert(name.to_string(), None);
    }
    fn walk(nodes: &[Node], lengths: &mut Lengths) {
        for node in nodes {
            match node {
                Node::Set(_, set) => {
                    let n = count(&set.value);
                    let entry = lengths.entry(set.key.clone()).or_insert(n);
                    *entry = match (*entry, n) {
                        (Some(a), Some(b)) => Some(a.max(b)),
                        _ => None,
                    };
                }
                Node::MacroDefinition(_, def, _) => {
                    def.args.keys().for_each(|arg| unknown(arg, lengths));
                    walk(&def.body, lengths);
                }
                Node::FilterSection(_, section, _) => walk(&section.body, lengths),
                Node::Block(_, block, _) => walk(&block.body, lengths),
                Node::Forloop(_, each, _) => {
                    unknown(&each.value, lengths);
                    each.key.iter().for_each(|key| unknown(key, lengths));
                    walk(&each.body, lengths);
                    walk(each.empty_body.as_deref().unwrap_or_default(), lengths);
                }
                Node::If(branches, _) => {
                    for (_, _, body) in &branches.conditions {
                        walk(body, lengths);
                    }
                    if let Some((_, body)) = &branches.otherwise {
                        walk(body, lengths);
                    }
                }
                _ => {}
            }
        }
    }
    let mut lengths = Lengths::new();
    walk(ast, &mut lengths);
    lengths
}

/// How many times a loop over `container` can repeat.
fn repeats(container: &tera::ast::Expr, lengths: &Lengths) -> u64 {
    use tera::ast::ExprVal;
    let bound = RANGE_MAX as u64;
    match &container.val {
        ExprVal::Ident(name) if container.filters.is_empty() => lengths
            .get(name.as_str())
            .copied()
            .flatten()
            .unwrap_or(bound),
        ExprVal::Array(items) if container.filters.is_empty() => items.len() as u64,
        ExprVal::FunctionCall(call) if call.name == "range" && container.filters.is_empty() => {
            let int = |name: &str, default: i64| match call.args.get(name).map(|e| &e.val) {
                None => Some(default),
                Some(ExprVal::Int(n)) => Some(*n),
                Some(_) => None,
            };
            match (int("start", 0), int("end", i64::MAX), int("step_by", 1)) {
                (Some(start), Some(end), Some(step)) if step > 0 && end != i64::MAX => {
                    let count = (end.saturating_sub(start).max(0) + step - 1) / step;
                    (count as u64).min(bound)
                }
                _ => bound,
            }
        }
        _ => bound,
    }
}

/// The first tag of `ast` that a message may not use: `include`, `extends` or `import` (a
/// message has no other template to reach, and the renderer's two, `subject` and `body`,
/// could include each other, or themselves, until the stack overflows), and `set_global`.
fn refused_tag(ast: &[tera::ast::Node]) -> Option<&'static str> {
    use tera::ast::Node;
    ast.iter().find_map(|node| match node {
        Node::Include(..) => Some("include"),
        Node::Extends(..) => Some("extends"),
        Node::ImportMacro(..) => Some("import"),
        // A value carried from one loop pass to the next, doubled on each, fills memory.
        Node::Set(_, set) if set.global => Some("set_global"),
        Node::MacroDefinition(_, def, _) => refused_tag(&def.body),
        Node::FilterSection(_, section, _) => refused_tag(&section.body),
        Node::Block(_, block, _) => refused_tag(&block.body),
        Node::Forloop(_, each, _) => {
            refused_tag(&each.body).or_else(|| each.empty_body.as_deref().and_then(refused_tag))
        }
        Node::If(branches, _) => branches
            .conditions
            .iter()
            .find_map(|(_, _, body)| refused_tag(body))
            .or_else(|| {
                branches
                    .otherwise
                    .as_ref()
                    .and_then(|(_, b)| refused_tag(b))
            }),
        _ => None,
    })
}

/// A macro of `ast` that calls itself, directly or through others (`" (through `b`)"`):
/// Tera would recurse until the process's stack overflows, taking `check` or the daemon
/// down with it.
fn recursive_macro(ast: &[tera::ast::Node]) -> Option<(&str, String)> {
    use skychimp_site::tera_names::{Name, names};
    let calls: HashMap<&str, Vec<&str>> = ast
        .iter()
        .filter_map(|node| match node {
            tera::ast::Node::MacroDefinition(_, def, _) => {
                let called = names(&def.body)
                    .into_iter()
                    .filter_map(|n| match n {
                        Name::Macro(m) => Some(m),
                        _ => None,
                    })
                    .collect();
                Some((def.name.as_str(), called))
            }
            _ => None,
        })
        .collect();
    let mut names: Vec<&str> = calls.keys().copied().collect();
    names.sort_unstable();
    // From each macro, the macros it reaches; a path back to itself is a recursion.
    names.into_iter().find_map(|first| {
        let mut path = vec![first];
        let mut seen = std::collections::HashSet::new();
        reaches(&calls, first, first, &mut path, &mut seen).then(|| {
            let through: Vec<String> = path[1..].iter().map(|m| format!("`{m}`")).collect();
            let through = if through.is_empty() {
                String::new()
            } else {
                format!(" (through {})", through.join(", "))
            };
            (first, through)
        })
    })
}

/// Whether `target` is called from `from`, depth first; `path` ends with the macros in
/// between when it is.
fn reaches<'a>(
    calls: &HashMap<&'a str, Vec<&'a str>>,
    from: &'a str,
    target: &str,
    path: &mut Vec<&'a str>,
    seen: &mut std::collections::HashSet<&'a str>,
) -> bool {
    for &next in calls.get(from).map(Vec::as_slice).unwrap_or_default() {
        if next == target {
            return true;
        }
        if seen.insert(next) {
            path.push(next);
            if reaches(calls, next, target, path, seen) {
                return true;
            }
            path.pop();
        }
    }
    false
}

/// The first function of `names` that a message may not call.
fn refused_function<'t>(names: &[skychimp_site::tera_names::Name<'t>]) -> Option<&'t str> {
    use skychimp_site::tera_names::Name;
    names.iter().find_map(|n| match n {
        Name::Function(f) if !FUNCTIONS.contains(f) => Some(*f),
        _ => None,
    })
}

/// The first variable of `names` (a template's) that no message has, in the order of the
/// source. Rendering finds such a variable only in `{{ … }}`; in `{% if client.coment %}`
/// Tera reads it as false, and the branch silently never shows. Names the template binds
/// itself (`for`, `set`, macro arguments, `loop`) are its own.
fn unknown_variable(names: &[skychimp_site::tera_names::Name<'_>]) -> Option<String> {
    use skychimp_site::tera_names::Name;
    let bound = |root: &str| {
        matches!(root, "loop" | "__tera_context") || names.contains(&Name::Bound(root))
    };
    let known = |name: &str| {
        let root = name.split(['.', '[']).next().unwrap_or(name);
        VARIABLES.contains(&name)
            || bound(root)
            || (matches!(root, "client" | "mailing" | "owner")
                && (name == root || name[root.len()..].starts_with('[')))
    };
    names.iter().find_map(|n| match n {
        Name::Variable(name) if !known(name) => Some(name.to_string()),
        _ => None,
    })
}

/// A Tera error in `source` with the best position known: a syntax error's own; for a
/// variable that is not found, or a filter that failed (Tera gives no position then), its
/// first use in the source; else the template's start.
pub fn located(error: &tera::Error, source: &str) -> TemplateError {
    let mut e = to_error(error);
    let named = |prefix: &str| {
        e.message
            .split_once(prefix)
            .and_then(|(_, rest)| rest.split_once('`'))
            .map(|(name, _)| name.to_string())
    };
    let at = if e.line == 1 && e.column == 1 {
        named("Variable `")
            .and_then(|name| first_use(source, &name))
            .or_else(|| named("Filter `").and_then(|name| first_filter_use(source, &name)))
    } else {
        None
    };
    if let Some((line, column)) = at {
        e.line = line;
        e.column = column;
    }
    e
}

/// Where the filter `name` is first applied in `source` (`| name`).
fn first_filter_use(source: &str, name: &str) -> Option<(usize, usize)> {
    let word = |c: char| c.is_alphanumeric() || c == '_';
    let at = source.match_indices(name).map(|(i, _)| i).find(|&i| {
        source[..i].trim_end().ends_with('|')
            && !source[i + name.len()..].chars().next().is_some_and(word)
    })?;
    Some(line_and_column(source, at))
}

/// The 1-based line and column (in characters) of byte `at` of `source`.
fn line_and_column(source: &str, at: usize) -> (usize, usize) {
    let before = &source[..at];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |n| n + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// Where `name` (a variable path such as `client.nmae`) first appears in `source` as a
/// whole word: 1-based line and column in characters.
fn first_use(source: &str, name: &str) -> Option<(usize, usize)> {
    let word = |c: char| c.is_alphanumeric() || c == '_' || c == '.';
    let at = source.match_indices(name).map(|(i, _)| i).find(|&i| {
        !source[..i].chars().next_back().is_some_and(word)
            && !source[i + name.len()..].chars().next().is_some_and(word)
    })?;
    Some(line_and_column(source, at))
}

/// A Tera error (with its chain of causes) as one line for a log or an attempt row.
pub fn describe(error: &tera::Error) -> String {
    to_error(error).message
}

/// Turn Tera's error chain into one message and, for syntax errors, a position.
fn to_error(error: &tera::Error) -> TemplateError {
    let mut innermost = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        innermost = e.to_string();
        source = e.source();
    }
    // Syntax errors come from pest: " --> L:C" followed by a drawing and "= expected …".
    if let Some(at) = innermost.find("--> ") {
        let rest = &innermost[at + 4..];
        let coords: String = rest
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == ':')
            .collect();
        if let Some((l, c)) = coords.split_once(':')
            && let (Ok(line), Ok(column)) = (l.parse(), c.parse())
        {
            let message = innermost
                .lines()
                .find_map(|l| l.trim().strip_prefix("= "))
                .unwrap_or("syntax error")
                .to_string();
            return TemplateError {
                line,
                column,
                message: format!("template syntax: {message}"),
            };
        }
    }
    // "… while rendering 'body'": the caller says which template.
    let message = match innermost.split_once(" while rendering '") {
        Some((head, tail)) => {
            let rest = tail.split_once('\'').map_or("", |(_, rest)| rest);
            format!("{head}{rest}")
        }
        None => innermost,
    };
    TemplateError {
        line: 1,
        column: 1,
        message: format!("template: {message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_variables() {
        check("Hi {{ client.name }} <{{ client.email }}> {{ client.comment }} {{ mailing.id }} {{ mailing.title }} {{ owner.name }} {{ unsubscribe_url }}").unwrap();
        check("{% if client.comment %}x{% endif %}{{ client.name | upper }}").unwrap();
    }

    /// What could take `check` or the daemon down is refused: recursion, another
    /// template, a value grown loop by loop, loops repeating past the budget.
    #[test]
    fn a_message_cannot_recurse_or_loop_without_bound() {
        for (source, expected, at) in [
            (
                "{% macro f(n) %}{{ self::f(n=n) }}{% endmacro f %}{{ self::f(n=1) }}",
                "template: macro `f` calls itself: a message cannot recurse",
                (1, 10),
            ),
            (
                "{% macro a() %}{{ self::b() }}{% endmacro a %}\n\
                 {% macro b() %}{{ self::c() }}{% endmacro b %}\n\
                 {% macro c() %}{{ self::a() }}{% endmacro c %}{{ self::a() }}",
                "template: macro `a` calls itself (through `b`, `c`): a message cannot recurse",
                (1, 10),
            ),
        ] {
            let e = check(source).unwrap_err();
            assert_eq!(e.message, expected, "{source}");
            assert_eq!((e.line, e.column), at, "{source}");
        }
        for (source, tag) in [
            ("Hello {% include \"body\" ignore missing %}", "include"),
            (
                "{% set_global g = \"y\" %}{% for i in range(end=40) %}\
                 {% set_global g = g ~ g %}{% endfor %}",
                "set_global",
            ),
            (
                "{% if client.name == \"x\" %}{% include \"subject\" ignore missing %}{% endif %}",
                "include",
            ),
        ] {
            let e = check(source).unwrap_err();
            assert_eq!(
                e.message,
                format!("template: a message is one template and cannot use `{{% {tag} %}}`"),
                "{source}"
            );
        }
        // Tera itself refuses to compile an `extends` of a template it does not have.
        assert!(check("{% extends \"body\" %}").is_err());
        assert!(check("{% import \"body\" as m %}x").is_err());
        // The renderer refuses them too (a run created before `check` did).
        let refused = crate::delivery::render::Renderer::new(
            "s",
            "{% include \"body\" ignore missing %}",
            MailingVars {
                id: "a/b",
                title: "t",
            },
            OwnerVars {
                name: "n",
                email: "e@example.com",
            },
        );
        assert!(refused.is_err());
        for source in [
            "{% for a in range(end=1000) %}{% for b in range(end=1000) %}x{% endfor %}{% endfor %}",
            "{% macro m() %}{% for b in range(end=500) %}x{% endfor %}{% endmacro m %}\
             {% for a in range(end=1000) %}{{ self::m() }}{% endfor %}",
            // Twenty macros each calling the next twice: counted once each, not 2^20 times.
            &(0..20)
                .map(|i| format!("{{% macro m{i}() %}}{{{{ self::m{n}() }}}}{{{{ self::m{n}() }}}}{{% endmacro m{i} %}}", n = i + 1))
                .chain(["{% macro m20() %}{% for i in range(end=1000) %}x{% endfor %}{% endmacro m20 %}{{ self::m0() }}".to_string()])
                .collect::<String>(),
        ] {
            let e = check(source).unwrap_err();
            assert!(
                e.message.starts_with("template: its loops repeat up to ")
                    && e.message.ends_with("a message may repeat at most 100000 (nest fewer or shorter loops)"),
                "{source}: {}",
                e.message
            );
        }
        let text = "y".repeat(20_000);
        let e = check(&format!(
            "{{% for a in range(end=1000) %}}{text}{{% endfor %}}"
        ))
        .unwrap_err();
        assert_eq!(
            e.message,
            "template: what it writes can grow to 20000000 bytes for each recipient, besides \
             the recipient's values; a message may make at most 1000000"
        );
        assert_eq!(
            check("{% for a in [1, 2, 3] %}{% for b in range(end=1000) %}{% endfor %}{% endfor %}"),
            Ok(())
        );
        let e = check("{% for i in range(end=100000000) %}{{ i }}{% endfor %}").unwrap_err();
        assert!(
            e.message
                .contains("range: 100000000 numbers, more than the 1000 a message may loop over"),
            "{}",
            e.message
        );
        for fine in [
            "{% for i in range(end=1000) %}{% endfor %}",
            "{% for i in range(start=5, end=2005, step_by=2) %}{{ i }}{% endfor %}",
            "{% macro a() %}A{% endmacro a %}{% macro b() %}{{ self::a() }}{{ self::a() }}\
             {% endmacro b %}{{ self::b() }}",
        ] {
            assert_eq!(check(fine), Ok(()), "{fine}");
        }
        let mut tera = tera();
        tera.add_raw_template("t", "{{ range(end=5, start=1) | join(sep=\",\") }}")
            .unwrap();
        assert_eq!(tera.render("t", &tera::Context::new()).unwrap(), "1,2,3,4");
    }

    /// Values that double without a loop: a chain of `set`s, of macros, of `replace`s.
    #[test]
    fn a_message_cannot_grow_a_value_without_bound() {
        let doubled = |seed: &str, steps: usize, step: &dyn Fn(&str) -> String| {
            let mut source = format!("{{% set v0 = {seed} %}}");
            for i in 1..=steps {
                source += &format!("{{% set v{i} = {} %}}", step(&format!("v{}", i - 1)));
            }
            source + &format!("{{{{ v{steps} }}}}")
        };
        for (source, expected, at) in [
            (
                doubled("\"0123456789\"", 30, &|v| format!("{v} ~ {v}")),
                "template: the values set up to `v19`, held together, can grow to 10485750 \
                 bytes for each recipient, besides the recipient's values; a message may make \
                 at most 10000000",
                (1, 456),
            ),
            (
                doubled("client.name", 30, &|v| format!("{v} ~ {v}")),
                "template: the values set up to `v9`, held together, can repeat a recipient's \
                 values 1023 times over; a message may use them at most 1000 times over",
                (1, 210),
            ),
            (
                doubled("\"x\"", 30, &|v| {
                    format!("{v} | replace(from=\"x\", to=\"xxxxxxxxxx\")")
                }),
                "template: the values set up to `v7`, held together, can grow to 11111111 \
                 bytes for each recipient, besides the recipient's values; a message may make \
                 at most 10000000",
                (1, 350),
            ),
            (
                "{{ client.name | replace(from=\"a\", to=client.name) }}".to_string(),
                "template: `replace` can repeat a recipient's values without bound over; a \
                 message may use them at most 1000 times over",
                (1, 18),
            ),
            (
                "{% macro twice(s) %}{{ s }}{{ s }}{% endmacro twice %}\
                 {% for i in [1, 2] %}{% set a = self::twice(s=client.name) %}\
                 {% set a = self::twice(s=self::twice(s=self::twice(s=a))) %}\
                 {% set a = self::twice(s=self::twice(s=self::twice(s=a))) %}\
                 {% set a = self::twice(s=self::twice(s=self::twice(s=a))) %}{% endfor %}"
                    .to_string(),
                "template: `a` can repeat a recipient's values 1024 times over; a message may \
                 use them at most 1000 times over",
                (1, 83),
            ),
            (
                "{% for i in range(end=1000) %}{{ client.name }}{{ client.name }}{% endfor %}"
                    .to_string(),
                "template: what it writes can repeat a recipient's values 2000 times over; a \
                 message may use them at most 1000 times over",
                (1, 4),
            ),
        ] {
            let e = check(&source).unwrap_err();
            assert_eq!(e.message, expected, "{source}");
            assert_eq!((e.line, e.column), at, "{source}");
        }
        // Growth hidden in a condition, under `not`, in a filter's argument that becomes its
        // result, in Tera's context dump, or in many copies of one value (each within bounds).
        let tenfold = (0..9)
            .map(|_| " | replace(from=\"0\", to=\"0000000000\")")
            .collect::<String>();
        let chain = |step: &dyn Fn(&str) -> String| {
            (1..=31)
                .map(|i| format!("{{% set a{i} = {} %}}", step(&format!("a{}", i - 1))))
                .collect::<String>()
        };
        for source in [
            format!("{{% if \"0123456789\"{tenfold} | length > 5 %}}x{{% endif %}}"),
            format!("{{% set b = not \"0123456789\"{tenfold} %}}"),
            format!("{{% if client.name is containing(\"0123456789\"{tenfold}) %}}x{{% endif %}}"),
            "{% set a0 = __tera_context %}{% set a1 = __tera_context %}{{ a1 }}".to_string(),
            format!(
                "{{% set a0 = \"0123456789\" %}}{}",
                chain(&|a| format!("2 | pluralize(plural={a} ~ {a})"))
            ),
            format!(
                "{{% set a0 = \"0123456789\" %}}{}",
                chain(&|a| format!("client | get(key=\"zz\", default={a} ~ {a})"))
            ),
            format!(
                "{{% set a0 = \"%c\" %}}{}",
                chain(&|a| format!("0 | date(format={a} ~ {a})"))
            ),
            format!(
                "{}{}",
                (1..=19)
                    .map(|i| format!("{{% set v{i} = \"{}\" %}}", "x".repeat(1 << 19)))
                    .take(1)
                    .collect::<String>(),
                (0..40)
                    .map(|i| format!("{{% set w{i} = v1 %}}"))
                    .collect::<String>()
            ),
        ] {
            let e = check(&source).unwrap_err();
            assert!(
                e.message
                    .contains("a message may use them at most 1000 times over")
                    || e.message.contains("bytes for each recipient"),
                "{}: {}",
                &source[..source.len().min(120)],
                e.message
            );
        }
        // Each value within bounds, but made again at each of many passes: 99,000 `replace`s
        // of a 1 MB value are 99 GB of work for each recipient. Counted through a macro too.
        let mb = "x".repeat(1 << 20);
        for source in [
            format!(
                "{{% set v = \"{mb}\" %}}{{% for i in range(end=1000) %}}{{% for j in range(end=99) %}}\
                 {{% set x = v | replace(from=\"0\", to=\"1\") %}}{{% endfor %}}{{% endfor %}}"
            ),
            format!(
                "{{% macro m(s) %}}{{% set y = s | upper %}}{{% endmacro m %}}{{% set v = \"{mb}\" %}}\
                 {{% for i in range(end=200) %}}{{{{ self::m(s=v) }}}}{{% endfor %}}"
            ),
        ] {
            let e = check(&source).unwrap_err();
            assert!(
                e.message
                    .contains("a message may make at most 10000000 bytes and 100000 times"),
                "{}",
                e.message
            );
        }
        // A loop over a value the template makes has as many items as it has bytes.
        for (source, at) in [
            (
                format!(
                    "{{% set s = \"{}\" %}}{{% for c in s %}}{{% if c == \"y\" %}}!{{% endif %}}{{% endfor %}}",
                    "x".repeat(10_000)
                ),
                (1, 10_020),
            ),
            (
                format!(
                    "{{% set s = \"{}\" %}}{{% for p in s | split(pat=\"0\") %}}{{% endfor %}}",
                    "0123456789".repeat(500)
                ),
                (1, 5_020),
            ),
        ] {
            let e = check(&source).unwrap_err();
            assert!(
                e.message
                    .contains("items; a message may loop over at most 1000 (a value"),
                "{}",
                e.message
            );
            assert_eq!((e.line, e.column), at, "{}", e.message);
        }
        // The template's own part of a value counts even beside a recipient's.
        let e = check(&format!(
            "{{% set s = client.name ~ \"{}\" %}}{{% for ch in s %}}{{% endfor %}}",
            "q".repeat(4096)
        ))
        .unwrap_err();
        assert!(
            e.message.contains("a loop goes over up to 4097 items"),
            "{}",
            e.message
        );
        // Counted as the literal: a loop over an array or a literal list `set` earlier.
        for fine in [
            format!(
                "{{% set a = [{}] %}}{{% for i in a %}}{{{{ i }}}}{{% endfor %}}",
                vec!["1"; 1001].join(", ")
            ),
            "{% set links = [\"Blog\", \"Shop\"] %}{% for i in range(end=101) %}\
             {% for l in links %}{{ l }} for {{ client.name }}{% endfor %}{% endfor %}"
                .to_string(),
            "{% set p = \"Oak table, Pine chair, Walnut shelf, Birch stool, Maple desk, Cherry \
             cabinet, Ash bench, Beech wardrobe, Elm bed, Teak chest, Yew lamp\" | split(pat=\", \") %}\
             {% for x in p %}- {{ x }}{% endfor %}"
                .to_string(),
        ] {
            assert_eq!(check(&fine), Ok(()), "{fine}");
        }
        // What is read counts too: `wordcount` of a 4 MB value walks it at each pass.
        let big = "ab ".repeat(1_400_000);
        let e = check(&format!(
            "{{% set m = \"{big}\" %}}{{% for i in range(end=1000) %}}{{% for j in range(end=40) %}}\
             {{% set n = m | wordcount %}}{{% if \"zz\" in m %}}{{% endif %}}{{% endfor %}}{{% endfor %}}"
        ))
        .unwrap_err();
        assert!(
            e.message
                .contains("a message may make at most 10000000 bytes"),
            "{}",
            e.message
        );
        for fine in [
            "{% for i in range(end=50) %}{{ client.name | title | escape }}{% endfor %}",
            "{% set a = [1, 2, 3] %}{% for i in a %}{{ i }}{% endfor %}",
            "{% set s = \"a,b,c\" %}{% for p in s | split(pat=\",\") %}{{ p }}{% endfor %}",
            "{% for tag in client.comment | split(pat=\",\") %}{{ tag | trim }}, {% endfor %}",
            "{{ client.name | escape | upper | urlencode }}",
            "{{ \"Dear NAME,\" | replace(from=\"NAME\", to=client.name | title) }}",
            "{% for i in range(end=1000) %}{{ client.name }}{% endfor %}",
            "{% set a = client.name ~ \" \" ~ client.email %}{% set b = a ~ a %}{{ b ~ b }}",
            "{% macro twice(s) %}{{ s }}{{ s }}{% endmacro twice %}\
             {{ self::twice(s=self::twice(s=client.name)) }}",
            "{% if client.comment %}{% set c = client.comment %}{% else %}{% set c = \"-\" %}\
             {% endif %}{{ c }} {{ [1, 2, 3] | join(sep=\", \") }}",
        ] {
            assert_eq!(check(fine), Ok(()), "{fine}");
        }
    }

    /// Twenty macro calls nested in each other's arguments parse for minutes in Tera, even
    /// in a branch never taken: refused before Tera sees them, at the fifth parenthesis.
    /// Brackets count as parentheses (`1 in [1 in [… ]]` 24 deep parsed for minutes), and
    /// many tags each within the limit add up.
    #[test]
    fn calls_nested_too_deep_are_refused_before_parsing() {
        let nested = |n: usize| {
            format!(
                "{{% macro d(s=\"0\") %}}{{{{ s }}}}{{% endmacro d %}}{{% if false %}}{{{{ {}{} }}}}{{% endif %}}",
                "self::d(s=".repeat(n),
                ")".repeat(n)
            )
        };
        let e = check(&nested(20)).unwrap_err();
        assert_eq!(
            e.message,
            "template: calls, parentheses or brackets nested 5 deep; a message may nest at most 4"
        );
        assert_eq!((e.line, e.column), (1, 108));
        assert_eq!(check("{{ ((((1 + 2)))) }}"), Ok(()));
        assert!(check("{{ (((((1 + 2))))) }}").is_err());
        let brackets = |n: usize| {
            let mut s = "1".to_string();
            for _ in 0..n {
                s = format!("1 in [{s}]");
            }
            format!("{{% if false %}}{{{{ {s} }}}}{{% endif %}}")
        };
        assert_eq!(check(&brackets(4)), Ok(()));
        assert!(
            check(&brackets(24))
                .unwrap_err()
                .message
                .contains("nested 5 deep")
        );
        // Parentheses in text, and in a tag's strings, are not nesting.
        assert_eq!(
            check("((((((((((x)))))))))) {{ \"((((((((((\" ~ client.name }}"),
            Ok(())
        );
        // Each tag costs 8 to the power of its nesting: seven tags four deep, not nine.
        let ranges = |n: usize| {
            format!(
                "{{% if false %}}{}{{% endif %}}",
                "{{ range(end=range(end=range(end=range(end=1)))) }}".repeat(n)
            )
        };
        assert_eq!(check(&ranges(7)), Ok(()));
        assert_eq!(
            check(&ranges(9)).unwrap_err().message,
            "template: its calls, parentheses and brackets cost Tera's parser more than 32768 \
             in all (each tag 8 to the power of its deepest nesting); nest fewer of them"
        );
    }

    /// Shapes Tera parses and renders by recursion, deep enough to overflow the stack and
    /// abort the process (465 nested ifs, 4,000 terms, a chain of 1,000 macros, found by a
    /// review), or to make the size bound walk nested loops for minutes: refused before
    /// Tera sees them, comments and raw blocks skipped as Tera skips them.
    #[test]
    fn deep_blocks_long_tags_and_many_macros_are_refused() {
        let ifs = |n: usize| {
            format!(
                "{}{{{{ client.name }}}}{}",
                "{% if true %}".repeat(n),
                "{% endif %}".repeat(n)
            )
        };
        assert_eq!(check(&ifs(16)), Ok(()));
        let e = check(&ifs(500)).unwrap_err();
        assert_eq!(
            e.message,
            "template: blocks ({% if %}, {% for %}, …) nested 17 deep; a message may nest at \
             most 16"
        );
        assert_eq!((e.line, e.column), (1, 16 * 13 + 1));
        // Siblings are not nesting; whitespace control and `{%- endif -%}` are blocks too.
        let siblings = "{% if true %}a{% endif %}".repeat(100);
        assert_eq!(check(&siblings), Ok(()));
        let loops = format!(
            "{}x{}",
            "{%- for i in [1] -%}".repeat(17),
            "{%- endfor -%}".repeat(17)
        );
        assert!(
            check(&loops)
                .unwrap_err()
                .message
                .contains("nested 17 deep")
        );

        let sum = |n: usize| format!("{{{{ 1{} }}}}", "+1".repeat(n));
        assert_eq!(check(&sum(200)), Ok(()));
        assert_eq!(
            check(&sum(4000)).unwrap_err().message,
            "template: a tag with 4000 operators; a message may have at most 200 in one tag"
        );
        let and = format!("{{% if true{} %}}x{{% endif %}}", " and true".repeat(300));
        assert!(check(&and).unwrap_err().message.contains("300 operators"));

        let macros = |n: usize| {
            (0..n)
                .map(|i| format!("{{% macro m{i}() %}}{i}{{% endmacro m{i} %}}"))
                .collect::<String>()
        };
        assert_eq!(check(&macros(32)), Ok(()));
        let sets = |n: usize| "{% set a = \"\" %}".repeat(n);
        assert_eq!(check(&sets(1000)), Ok(()));
        assert_eq!(
            check(&sets(1001)).unwrap_err().message,
            "template: more than 1000 `{% set %}`s; a message may have at most 1000"
        );
        let tags = |n: usize| "{{ 1 }}".repeat(n);
        assert_eq!(check(&tags(10_000)), Ok(()));
        assert_eq!(
            check(&tags(10_001)).unwrap_err().message,
            "template: more than 10000 tags; a message may have at most 10000"
        );
        assert_eq!(
            check(&macros(33)).unwrap_err().message,
            "template: 33 macros; a message may define at most 32"
        );

        // A quote in a comment or a raw block does not hide the tag after it.
        let deep = format!("{{{{ {}1{} }}}}", "(".repeat(5), ")".repeat(5));
        for hidden in [
            format!("{{# {{{{ \" #}}{deep}{{# \" #}}"),
            format!("{{% raw %}}{{{{ \"{{% endraw %}}{deep}{{% raw %}}\"{{% endraw %}}"),
            // A quote in a raw block's tag-like text does not swallow its end, and only
            // `{% endraw %}` itself ends it.
            format!("{{% raw %}}{{% \"{{% endraw %}}{deep}"),
            format!("{{% raw %}}{{% endraw x %}}{{{{ \" {{%- endraw -%}}{deep}"),
            format!("{{% raw %}}{deep}"),
            format!("{{# {deep}"),
        ] {
            assert!(
                check(&hidden)
                    .unwrap_err()
                    .message
                    .contains("nested 5 deep"),
                "{hidden}"
            );
        }
        // Inside them, nothing counts.
        assert_eq!(
            check(&format!(
                "{{# {deep} #}}{{% raw %}}{deep}{}{{% endraw %}}",
                ifs(20)
            )),
            Ok(())
        );
    }

    /// A name `set` to a short literal somewhere, and also bound by a loop or as a macro's
    /// argument, has no known length where those bind it: nested loops over it are counted
    /// as loops over anything (a review's bypass ran 10^9 passes).
    #[test]
    fn a_short_set_does_not_vouch_for_a_loop_variable_of_the_same_name() {
        let loops = "{% if false %}{% set a = [1] %}{% endif %}{% set r = range(end=1000) %}\
                     {% set big = [r] %}{% for a in big %}{% for b in a %}{% for c in a %}\
                     {% for d in a %}{% endfor %}{% endfor %}{% endfor %}{% endfor %}";
        let e = check(loops).unwrap_err();
        assert!(e.message.contains("its loops repeat up to"), "{e:?}");
        let arg = "{% set a = [1] %}{% macro m(a) %}{% for b in a %}{% for c in a %}\
                   {% endfor %}{% endfor %}{% endmacro m %}{{ self::m(a=range(end=1000)) }}";
        let e = check(arg).unwrap_err();
        assert!(e.message.contains("its loops repeat up to"), "{e:?}");
        // A name only ever set to short literals keeps its length.
        let fine = "{% set a = [1, 2] %}{% for b in a %}{% for c in a %}{{ b }}{{ c }}\
                    {% endfor %}{% endfor %}";
        assert_eq!(check(fine), Ok(()));
    }

    /// Each loop's body is measured twice, so nested loops multiply the work of measuring:
    /// a second review's 15 loops around 20 `if`s after 1,000 `set`s ran `check` for minutes.
    /// The measuring counts its steps and refuses past its budget.
    #[test]
    fn measuring_a_template_is_bounded() {
        let sets: String = (0..1000)
            .map(|i| format!("{{% set s{i} = \"\" %}}"))
            .collect();
        let intricate = format!(
            "{sets}Hi {{{{ client.name }}}}{}{}{}",
            "{% for i in [1] %}".repeat(15),
            "{% if 1 %}{% endif %}".repeat(20),
            "{% endfor %}".repeat(15)
        );
        let e = check(&intricate).unwrap_err();
        assert_eq!(
            e.message,
            "template: it is too intricate to bound: measuring it took over 2000000 steps (nest \
             fewer loops, or put fewer tags inside them)"
        );
        // Many sets, then many tags, are not intricate: only copies of the scope cost it.
        let long = format!("{sets}{}", "{{ 1 }} ".repeat(8_000));
        assert_eq!(check(&long), Ok(()));
        // Loops as deep, around a little, are measured.
        let simple = format!(
            "{}{{{{ client.name }}}}{}",
            "{% for i in [1] %}".repeat(15),
            "{% endfor %}".repeat(15)
        );
        assert_eq!(check(&simple), Ok(()));
    }

    /// A separator or prefix that holds a recipient's value, put between the characters of
    /// another: a second review's three rounds of it asked for 800 MB from a 256-character
    /// name, and aborted `check`.
    #[test]
    fn a_recipients_value_put_between_characters_is_counted() {
        let rounds = |n: usize| {
            format!(
                "{{{{ client.name{} | length }}}}",
                " | split(pat=\"\") | join(sep=client.name)".repeat(n)
            )
        };
        for n in [1, 3] {
            let e = check(&rounds(n)).unwrap_err();
            assert!(
                e.message.contains("can repeat a recipient's values"),
                "{n}: {e:?}"
            );
        }
        let indent =
            "{{ client.name | split(pat=\"\") | join(sep=\"\\n\") | indent(prefix=client.name) }}";
        let e = check(indent).unwrap_err();
        assert!(
            e.message.contains("can repeat a recipient's values"),
            "{e:?}"
        );
        // A recipient's value between a few literal items is fine.
        assert_eq!(
            check("{{ [\"a\", \"b\", \"c\"] | join(sep=client.name) }}"),
            Ok(())
        );
        assert_eq!(check("{{ client.name | indent(prefix=\"> \") }}"), Ok(()));
    }

    /// A `set`, a macro's argument and an array's item copy their value each time they run:
    /// a second review copied a 4 MB value 99,000 times in loops (minutes of `check`).
    #[test]
    fn copies_in_loops_are_counted_as_made() {
        let big = "x".repeat(100_000);
        for copy in [
            "{% set e = big %}",
            "{{ self::m(s=big) }}",
            "{% for e in [big] %}{% endfor %}",
        ] {
            let source = format!(
                "{{% macro m(s) %}}{{% endmacro m %}}{{% set big = \"{big}\" %}}\
                 {{% for i in range(end=1000) %}}{copy}{{% endfor %}}"
            );
            let e = check(&source).expect_err(copy);
            assert!(
                e.message.contains("its filters and joins can make up to"),
                "{copy}: {e:?}"
            );
            // Once is fine.
            let once =
                format!("{{% macro m(s) %}}{{% endmacro m %}}{{% set big = \"{big}\" %}}{copy}");
            assert_eq!(check(&once), Ok(()), "{copy}");
        }
    }

    /// `is matching` compiles its regular expression at each use, and pretty JSON indents
    /// each level of a value again (a third review: seconds per recipient, and an 83 MB
    /// message from 40 encodes of a deeply nested array): neither has a place in a message.
    #[test]
    fn regex_tests_and_pretty_json_are_refused() {
        let e = check("{% if client.name is matching(\"\\w{100}\") %}y{% endif %}").unwrap_err();
        assert!(
            e.message.contains("cannot use the test `matching`"),
            "{e:?}"
        );
        assert_eq!((e.line, e.column), (1, 22));
        let e = check("{{ [1, 2] | json_encode(pretty=true) }}").unwrap_err();
        assert!(
            e.message.contains("cannot use `json_encode(pretty=true)`"),
            "{e:?}"
        );
        assert_eq!(check("{{ [1, 2] | json_encode }}"), Ok(()));
        assert_eq!(
            check("{% if client.name is starting_with(\"A\") %}y{% endif %}"),
            Ok(())
        );
    }

    /// Tera's own filters panic on some inputs; a panic is the template's error, and the
    /// process goes on.
    #[test]
    fn panics_in_tera_are_the_templates_errors() {
        for source in [
            "{{ \"10\" | int(base=1) }}",
            "{{ (-9223372036854775807 - 1) % -1 }}",
            "{{ 99999999999999999 | date }}",
            "{{ 0 | date(format=\"%z\") }}",
        ] {
            let e = check(source).unwrap_err();
            assert!(
                e.message.contains("Tera failed on this template"),
                "{source}: {e:?}"
            );
        }
    }

    /// Tera's functions that read the environment or differ between renders.
    #[test]
    fn functions_that_leak_or_vary_are_refused() {
        for (source, name, at) in [
            (
                "{{ get_env(name=\"SKYCHIMP_MANAGER_KEY_OPS\", default=\"\") }}",
                "get_env",
                (1, 4),
            ),
            (
                "Hi\n{% set k = get_env(name=\"HOME\") %}{{ k }}",
                "get_env",
                (2, 12),
            ),
            ("{{ now() | date(format=\"%Y\") }}", "now", (1, 4)),
            (
                "{% if get_random(end=2) == 1 %}a{% endif %}",
                "get_random",
                (1, 7),
            ),
        ] {
            let e = check(source).unwrap_err();
            assert_eq!(
                e.message,
                format!("template: a message cannot call `{name}()`; it may call range, throw"),
                "{source}"
            );
            assert_eq!((e.line, e.column), at, "{source}");
        }
        let fine = "{% for i in range(end=2) %}{{ i }}{% endfor %}{% if not client %}\
                    {{ throw(message=\"no client\") }}{% endif %}";
        assert_eq!(check(fine), Ok(()));
        // Past `check` (a run created before this rule), the renderer still refuses.
        let mut tera = tera();
        tera.add_raw_template("t", "{{ get_env(name=\"HOME\") }}")
            .unwrap();
        let e = tera.render("t", &tera::Context::new()).unwrap_err();
        assert!(
            format!("{e:?}").contains("a message cannot call `get_env()`"),
            "{e:?}"
        );
    }

    /// A variable no message has is refused wherever it is read, also where Tera would
    /// take it as false; names the template binds itself are its own.
    #[test]
    fn unknown_variables_are_refused_in_every_place() {
        for (source, name, at) in [
            (
                "{% if client.coment %}x{% endif %}",
                "client.coment",
                (1, 7),
            ),
            (
                "a\n{% if not clent.name %}x{% endif %}",
                "clent.name",
                (2, 11),
            ),
            (
                "{% if client.name and owner.nmae %}x{% endif %}",
                "owner.nmae",
                (1, 23),
            ),
            (
                "{% if client.nickname is defined %}x{% endif %}",
                "client.nickname",
                (1, 7),
            ),
            (
                "{{ client.name | default(value=client.alias) }}",
                "client.alias",
                (1, 32),
            ),
            (
                "{% for x in [mailing.titel] %}{{ x }}{% endfor %}",
                "mailing.titel",
                (1, 14),
            ),
            ("{% set y = unsubscribe %}{{ y }}", "unsubscribe", (1, 12)),
            ("{{ \"a\" ~ client.mail }}", "client.mail", (1, 10)),
            (
                "{% if \"vip\" in client.comments %}x{% endif %}",
                "client.comments",
                (1, 16),
            ),
        ] {
            let e = check(source).unwrap_err();
            assert!(
                e.message.starts_with(&format!(
                    "template: no variable `{name}`; a message has client.email"
                )),
                "{source}: {}",
                e.message
            );
            assert_eq!((e.line, e.column), at, "{source}");
        }
        for fine in [
            "{% for c in [client.name, owner.name] %}{{ c }}{{ loop.index }}{% endfor %}",
            "{% set greeting = \"Hi \" ~ client.name %}{{ greeting }}",
            "{% macro hi(who) %}Hi {{ who }}{% endmacro hi %}{{ self::hi(who=client.name) }}",
            "{% if client.comment is defined and client.comment %}x{% endif %}",
            "{% if client %}{{ owner.email }} {{ mailing.id }}{% endif %}",
        ] {
            assert_eq!(check(fine), Ok(()), "{fine}");
        }
    }

    #[test]
    fn syntax_errors_have_a_position() {
        let e = check("line one\nHello {{ client.name ").unwrap_err();
        assert_eq!(e.line, 2, "{e:?}");
        assert!(e.message.starts_with("template syntax"), "{e:?}");
    }

    #[test]
    fn an_unknown_variable_is_placed_at_its_first_use() {
        let source = "Dear {{ client.name }},\n\n{% if client.comment %}\n  Re: {{ client.coment }}\n{% endif %}";
        let mut tera = tera::Tera::default();
        tera.add_raw_template("body", source).unwrap();
        let context = tera::Context::from_serialize(TemplateContext {
            client: ClientVars {
                comment: "VIP",
                ..sample().client
            },
            ..sample()
        })
        .unwrap();
        let e = located(&tera.render("body", &context).unwrap_err(), source);
        assert_eq!((e.line, e.column), (4, 10), "{e:?}");
        assert!(e.message.contains("client.coment"), "{e:?}");
        // `client.name` is a prefix of nothing here, but a longer name must not match it.
        assert_eq!(
            first_use("{{ client.names }} {{ client.name }}", "client.name"),
            Some((1, 23))
        );
    }

    #[test]
    fn unknown_variables_are_caught() {
        let e = check("Hello {{ client.nmae }}").unwrap_err();
        assert!(e.message.contains("client.nmae"), "{e:?}");
        let e = check("{{ client.name | shout }}").unwrap_err();
        assert!(e.message.contains("shout"), "{e:?}");
    }
}
