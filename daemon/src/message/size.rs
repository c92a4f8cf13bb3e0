//! How large a message's values can grow: an upper bound on the bytes of every value a
//! template builds and of what it writes, read from the template alone.
//!
//! Loops are bounded elsewhere ([`super::WORK_MAX`]), but a value can double without one:
//! `{% set b = a ~ a %}{% set c = b ~ b %}…`, a chain of macros each returning its argument
//! twice, or `replace` filters each making every character ten. Thirty such steps ask for
//! gigabytes, and a failed allocation aborts the process: `check`, or the daemon at every
//! start. Tera has no budget of its own, so each value is bounded here as a [`Size`]: so
//! many times the longest value a recipient brings (a client's field, the owner's, the
//! mailing's, the unsubscribe link), plus so many bytes.
//!
//! `set` inside a loop does not carry over to the next pass (Tera clears the loop's frame),
//! and `set_global` is refused, so no value grows pass by pass: a loop multiplies what its
//! body writes, not what it sets.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use tera::ast::{Expr, ExprVal, FunctionCall, Node};

use super::{RANGE_MAX, VARIABLES};

/// The most bytes a message may build or write for one recipient beyond its recipient's
/// values: a message is mail, and relays refuse far less than this.
pub const TEXT_MAX: u64 = 10_000_000;

/// The most bytes a message may write for one recipient beyond its recipient's values: its
/// Markdown is turned into HTML, which takes about a hundred times the text in memory at
/// worst (each `*a*` an element).
pub const OUTPUT_MAX: u64 = 1_000_000;

/// The most times over a message may use a recipient's values, in any one value or in what
/// it writes: `{{ client.name }}` in a loop of 1,000 is 1,000 times.
pub const INPUT_TIMES_MAX: u64 = 1_000;

/// The most bytes a message's filters, joins and comparisons may make and read for one
/// recipient, beyond the recipient's values, counting each loop pass: as much as one value
/// may hold, so that a loop cannot make or walk one many times (a message is mail; real
/// ones make a few kilobytes).
pub const PROCESSED_MAX: u64 = 10_000_000;

/// The most times over a message's filters and joins may make a recipient's values.
pub const PROCESSED_TIMES_MAX: u64 = 100_000;

/// An upper bound on a value's length in bytes: `times` the longest of a recipient's values
/// plus `bytes`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Size {
    pub times: u64,
    pub bytes: u64,
}

impl Size {
    const fn bytes(bytes: u64) -> Size {
        Size { times: 0, bytes }
    }

    /// A recipient's value.
    const INPUT: Size = Size { times: 1, bytes: 0 };
    /// A number, a boolean, a date: short.
    const SCALAR: Size = Size::bytes(32);

    fn plus(self, other: Size) -> Size {
        Size {
            times: self.times.saturating_add(other.times),
            bytes: self.bytes.saturating_add(other.bytes),
        }
    }

    fn times(self, n: u64) -> Size {
        Size {
            times: self.times.saturating_mul(n),
            bytes: self.bytes.saturating_mul(n),
        }
    }

    /// What `self` has beyond `other` (nothing where it has less).
    fn minus(self, other: Size) -> Size {
        Size {
            times: self.times.saturating_sub(other.times),
            bytes: self.bytes.saturating_sub(other.bytes),
        }
    }

    fn max(self, other: Size) -> Size {
        Size {
            times: self.times.max(other.times),
            bytes: self.bytes.max(other.bytes),
        }
    }

    fn within(self, bytes: u64) -> bool {
        self.times <= INPUT_TIMES_MAX && self.bytes <= bytes
    }
}

/// The first value of `ast` (or what it writes) that can grow past the bounds, with the
/// name to place the error at. Call it only on a template whose macros do not recurse.
pub fn too_large(ast: &[Node]) -> Option<Over> {
    let macros: HashMap<&str, &tera::ast::MacroDefinition> = ast
        .iter()
        .filter_map(|node| match node {
            Node::MacroDefinition(_, def, _) => Some((def.name.as_str(), def)),
            _ => None,
        })
        .collect();
    let sizes = Sizes {
        macros: &macros,
        known: RefCell::new(HashMap::new()),
        over: RefCell::new(None),
        lengths: super::literal_lengths(ast),
        made: Cell::new(Size::default()),
        passes: Cell::new(1),
        steps: Cell::new(0),
    };
    let written = sizes.nodes(ast, &mut HashMap::new());
    sizes.note_as("for", written, Kind::Written);
    let made = sizes.made.get();
    if made.times > PROCESSED_TIMES_MAX || made.bytes > PROCESSED_MAX {
        sizes.over("for", made, Kind::Made);
    }
    sizes.over.into_inner()
}

struct Sizes<'a> {
    macros: &'a HashMap<&'a str, &'a tera::ast::MacroDefinition>,
    /// What a macro writes, and what one call makes, by its arguments' sizes: a macro
    /// called twice with the same sizes is measured once (twenty macros each calling the
    /// next twice would otherwise take 2^20 steps).
    known: RefCell<HashMap<MacroCall<'a>, (Size, Size)>>,
    /// The first value past the bounds.
    over: RefCell<Option<Over>>,
    /// Variables `set` to a literal array or a `range`: a loop over them is counted as one
    /// over the literal.
    lengths: super::Lengths,
    /// What the filters and joins make in all, each counted once per loop pass.
    made: Cell<Size>,
    /// How many times the expression being measured runs: the product of the passes of the
    /// loops around it (0 while a loop's body is measured a second time).
    passes: Cell<u64>,
    /// The work of measuring so far: nodes visited and the variables copied with them.
    steps: Cell<u64>,
}

/// The most steps measuring one template may take (a node, or a variable in scope copied
/// for a branch, a pass or a `set`). Each loop's body is measured twice, so nested loops
/// multiply the work: 15 loops around 20 `if`s after 1,000 `set`s took minutes.
pub const STEPS_MAX: u64 = 2_000_000;

/// The first bound a template can pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Over {
    /// Where to place the error: a `set`'s name, a filter's, or `for`.
    pub name: String,
    pub size: Size,
    pub kind: Kind,
}

/// Which bound [`Over::size`] passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// One value ([`TEXT_MAX`]).
    Value,
    /// All that the values set so far hold together when `name` is set ([`TEXT_MAX`]).
    Held,
    /// What is written ([`OUTPUT_MAX`]).
    Written,
    /// What the filters, joins and comparisons make and read in all, each loop pass
    /// counted ([`PROCESSED_MAX`]).
    Made,
    /// The items of a loop over a value the template makes (not a literal array or a
    /// `range`), past [`RANGE_MAX`].
    Items(u64),
    /// Measuring the template took more than [`STEPS_MAX`] steps.
    Steps,
    /// `json_encode(pretty=true)`, which indents each level of a value again.
    PrettyJson,
}

/// The longest a recipient's value can be, in bytes: a comment of 1,000 characters of up to
/// four bytes each (names have at most 256 characters, addresses 254 bytes).
const VALUE_BYTES_MAX: u64 = 4_000;

/// What putting `piece` after each byte of `input` adds (an item of `join`, a line of
/// `indent`, is at least a byte). When `piece` holds a recipient's values, so many copies
/// of them are no longer a number of times the longest one: `input` has up to `times × L +
/// bytes` bytes for the longest value's length `L`, bounded here by [`VALUE_BYTES_MAX`]
/// (`client.name | split(pat="") | join(sep=client.name)`, three times over, asked for
/// 800 MB from a 256-character name).
fn each_gets(input: Size, piece: Size) -> Size {
    let copies_of_values = input
        .times
        .saturating_mul(VALUE_BYTES_MAX)
        .saturating_add(input.bytes)
        .saturating_mul(piece.times);
    input.times(piece.bytes).plus(Size {
        times: copies_of_values,
        bytes: 0,
    })
}

/// Variables `set` so far, and loop variables, by name.
type Scope = HashMap<String, Size>;

/// A macro and the sizes of the arguments it is called with, by name.
type MacroCall<'a> = (&'a str, Vec<(String, Size)>);

impl<'a> Sizes<'a> {
    /// Count `n` steps of measuring; past [`STEPS_MAX`], the template is refused and the
    /// measuring stops.
    fn step(&self, n: usize) {
        let steps = self.steps.get().saturating_add(n as u64);
        self.steps.set(steps);
        if steps > STEPS_MAX {
            self.over("for", Size::default(), Kind::Steps);
        }
    }

    /// Count `size` as made once for each time the expression runs.
    fn made(&self, size: Size) -> Size {
        self.made
            .set(self.made.get().plus(size.times(self.passes.get())));
        size
    }

    /// Remember `size` as the first value past the bounds, placed at `name`.
    fn note(&self, name: &str, size: Size) -> Size {
        self.note_as(name, size, Kind::Value)
    }

    /// [`Sizes::note`] for what is held together or written.
    fn note_as(&self, name: &str, size: Size, kind: Kind) -> Size {
        let bytes = if kind == Kind::Written {
            OUTPUT_MAX
        } else {
            TEXT_MAX
        };
        if !size.within(bytes) {
            self.over(name, size, kind);
        }
        size
    }

    /// Keep the first bound passed.
    fn over(&self, name: &str, size: Size, kind: Kind) {
        self.over.borrow_mut().get_or_insert_with(|| Over {
            name: name.to_string(),
            size,
            kind,
        });
    }

    /// What `nodes` write; the `set`s among them go into `scope`.
    fn nodes(&self, nodes: &'a [Node], scope: &mut Scope) -> Size {
        let mut written = Size::default();
        if self.over.borrow().is_some() {
            // Found already: the rest need not be measured.
            return written;
        }
        for node in nodes {
            self.step(1);
            if self.over.borrow().is_some() {
                return written;
            }
            let size = match node {
                Node::Text(text) | Node::Raw(_, text, _) => Size::bytes(text.len() as u64),
                Node::VariableBlock(_, e) => self.expr(e, scope),
                Node::Set(_, set) => {
                    // Adding up what the scope holds walks it.
                    self.step(scope.len());
                    // The value is copied into the scope each time the `set` runs: made.
                    let value = self.made(self.expr(&set.value, scope));
                    scope.insert(set.key.clone(), self.note(&set.key, value));
                    // Each `set` holds its own copy: all of them at once, and what is
                    // written so far, must fit too.
                    let held = scope.values().copied().fold(written, Size::plus);
                    self.note_as(&set.key, held, Kind::Held);
                    Size::default()
                }
                Node::FilterSection(_, section, _) => {
                    let body = self.nodes(&section.body, scope);
                    self.filter(&section.filter, body, scope)
                }
                Node::Block(_, block, _) => self.nodes(&block.body, scope),
                Node::Forloop(_, each, _) => {
                    self.count_items(&each.container, scope);
                    let item = self.item(&each.container, scope);
                    // Each pass starts from the scope before the loop. What a pass writes
                    // grows with its item at most as fast as with the largest item, and
                    // the items together are no larger than the container: the passes
                    // write at most `repeats` times what an empty item makes, plus what
                    // the largest item adds to that once.
                    let pass = |item: Size, passes: u64| {
                        self.step(scope.len());
                        let mut inner = scope.clone();
                        for name in each.key.iter().chain([&each.value]) {
                            inner.insert(name.clone(), item);
                        }
                        let outer = self.passes.replace(passes);
                        let written = self.nodes(&each.body, &mut inner);
                        self.passes.set(outer);
                        written
                    };
                    // What the body makes is counted in the pass with the largest item, as
                    // if every pass had it; the other is only measured.
                    let repeats = super::repeats(&each.container, &self.lengths);
                    let outer = self.passes.get();
                    let (empty_item, largest) = (
                        pass(Size::default(), 0),
                        pass(item, outer.saturating_mul(repeats)),
                    );
                    let body = empty_item.times(repeats).plus(largest.minus(empty_item));
                    let otherwise = match &each.empty_body {
                        Some(b) => self.nodes(b, &mut scope.clone()),
                        None => Size::default(),
                    };
                    self.note_as("for", body, Kind::Written).max(otherwise)
                }
                Node::If(branches, _) => {
                    // A `set` in a branch stays after the `if`: the largest of the branches'.
                    let mut after = scope.clone();
                    let mut most = Size::default();
                    let bodies = branches
                        .conditions
                        .iter()
                        .map(|(_, _, body)| body)
                        .chain(branches.otherwise.iter().map(|(_, body)| body));
                    for (_, condition, _) in &branches.conditions {
                        self.expr(condition, scope);
                    }
                    for body in bodies {
                        // Each branch starts from a copy of the scope.
                        self.step(scope.len());
                        let mut branch = scope.clone();
                        most = most.max(self.nodes(body, &mut branch));
                        for (name, size) in branch {
                            let kept = after.entry(name).or_default();
                            *kept = kept.max(size);
                        }
                    }
                    *scope = after;
                    most
                }
                _ => Size::default(),
            };
            written = written.plus(size);
        }
        written
    }

    /// How large `e` can be, its filters applied.
    fn expr(&self, e: &'a Expr, scope: &Scope) -> Size {
        let value = self.value(&e.val, scope);
        let filtered = e
            .filters
            .iter()
            .fold(value, |size, f| self.filter(f, size, scope));
        // `not …` is a boolean, but what it negates is made first.
        if e.negated { Size::SCALAR } else { filtered }
    }

    fn value(&self, val: &'a ExprVal, scope: &Scope) -> Size {
        match val {
            ExprVal::String(s) => Size::bytes(s.len() as u64),
            ExprVal::Ident(name) => ident(name, scope),
            ExprVal::StringConcat(concat) => self.made(
                concat
                    .values
                    .iter()
                    .map(|v| self.value(v, scope))
                    .fold(Size::default(), Size::plus),
            ),
            // Printed as `[a, b]`: the items, and a comma and a space between. Each item
            // is copied into the array: made.
            ExprVal::Array(items) => self.made(
                items
                    .iter()
                    .map(|item| self.expr(item, scope).plus(Size::bytes(2)))
                    .fold(Size::bytes(2), Size::plus),
            ),
            ExprVal::FunctionCall(call) => {
                for arg in call.args.values() {
                    self.expr(arg, scope);
                }
                if call.name == "range" {
                    Size::SCALAR.times(RANGE_MAX as u64)
                } else {
                    Size::SCALAR
                }
            }
            // Numbers and booleans, but their operands are made, and read, first (`in` and
            // `==` walk a whole string).
            ExprVal::Math(tera::ast::MathExpr { lhs, rhs, .. })
            | ExprVal::Logic(tera::ast::LogicExpr { lhs, rhs, .. })
            | ExprVal::In(tera::ast::In { lhs, rhs, .. }) => {
                let read = self.expr(lhs, scope).plus(self.expr(rhs, scope));
                self.made(read);
                Size::SCALAR
            }
            ExprVal::Test(test) => {
                let read = test
                    .args
                    .iter()
                    .map(|arg| self.expr(arg, scope))
                    .fold(ident(&test.ident, scope), Size::plus);
                self.made(read);
                Size::SCALAR
            }
            ExprVal::MacroCall(call) => {
                // Each argument is copied into the call's scope: made.
                let args = call
                    .args
                    .iter()
                    .map(|(name, arg)| (name.clone(), self.made(self.expr(arg, scope))))
                    .collect();
                self.macro_writes(&call.name, args)
            }
            ExprVal::Int(_) | ExprVal::Float(_) | ExprVal::Bool(_) => Size::SCALAR,
        }
    }

    /// A loop over a value the template makes itself (a `set` string, a `split` of one)
    /// repeats once for each of its items, as many as it has bytes: past [`RANGE_MAX`] it is
    /// refused, as a `range` is (and Tera walks a string's characters from its start at each
    /// pass). Literal arrays and `range`s, and variables set to them or to a literal string
    /// split by a literal pattern ([`super::literal_lengths`]), are counted exactly by the
    /// loop estimates; what depends on a recipient's values is as long as they are.
    fn count_items(&self, container: &'a Expr, scope: &Scope) {
        let counted = container.filters.is_empty()
            && match &container.val {
                ExprVal::Array(_) => true,
                ExprVal::FunctionCall(call) => call.name == "range",
                ExprVal::Ident(name) => {
                    self.lengths.get(name.as_str()).is_some_and(Option::is_some)
                }
                _ => false,
            };
        if counted {
            return;
        }
        // The pieces of a split are no more than the bytes of what was split, plus one; a
        // string's characters, its bytes.
        let whole = self.item(container, scope);
        let items = whole.bytes.saturating_add(1);
        // What a recipient's values add is as long as they are; the template's own part
        // counts (`client.name ~ big` is as long as `big`).
        if items > RANGE_MAX as u64 {
            self.over("for", whole, Kind::Items(items));
        }
    }

    /// How large one item of `container` can be: a number of a `range`, the largest of a
    /// literal array's items, else as large as the whole.
    fn item(&self, container: &'a Expr, scope: &Scope) -> Size {
        match &container.val {
            // The pieces of a `split` are no larger than what was split.
            _ if container.filters.last().is_some_and(|f| f.name == "split") => {
                let before = &container.filters[..container.filters.len() - 1];
                let value = self.value(&container.val, scope);
                before
                    .iter()
                    .fold(value, |size, f| self.filter(f, size, scope))
            }
            _ if !container.filters.is_empty() => self.expr(container, scope),
            ExprVal::FunctionCall(call) if call.name == "range" => Size::SCALAR,
            ExprVal::Array(items) => {
                let sizes: Vec<Size> = items.iter().map(|item| self.expr(item, scope)).collect();
                // The array is made, its items copied in, as where it is printed.
                self.made(sizes.iter().copied().fold(Size::default(), Size::plus));
                sizes.into_iter().fold(Size::default(), Size::max)
            }
            _ => self.expr(container, scope),
        }
    }

    /// What macro `name` writes when called with arguments of these sizes (its defaults for
    /// the others).
    fn macro_writes(&self, name: &str, mut args: Vec<(String, Size)>) -> Size {
        let Some((&name, def)) = self.macros.get_key_value(name) else {
            // Tera refuses the call when it compiles or renders.
            return Size::default();
        };
        args.sort_by(|a, b| a.0.cmp(&b.0));
        let key = (name, args);
        if let Some(&(size, made)) = self.known.borrow().get(&key) {
            self.made
                .set(self.made.get().plus(made.times(self.passes.get())));
            return size;
        }
        let mut scope: Scope = def
            .args
            .iter()
            .map(|(arg, default)| {
                let size = default
                    .as_ref()
                    .map_or(Size::default(), |d| self.expr(d, &Scope::new()));
                (arg.clone(), size)
            })
            .collect();
        scope.extend(key.1.iter().cloned());
        // What one call makes, measured once and counted at each call.
        let (before, passes) = (self.made.replace(Size::default()), self.passes.replace(1));
        let size = self.nodes(&def.body, &mut scope);
        let made = self.made.replace(before);
        self.passes.set(passes);
        self.made.set(self.made.get().plus(made.times(passes)));
        self.known.borrow_mut().insert(key, (size, made));
        size
    }

    /// How large `input` can be after filter `f`. Filters that only shorten, select or
    /// reorder keep the input's bound; those that escape or change case grow it by the most
    /// bytes one input byte can become.
    fn filter(&self, f: &'a FunctionCall, input: Size, scope: &Scope) -> Size {
        // Every argument is made (and measured) first, whatever the filter does with it.
        let sizes: HashMap<&str, Size> = f
            .args
            .iter()
            .map(|(name, e)| (name.as_str(), self.expr(e, scope)))
            .collect();
        let args = sizes.values().copied().fold(Size::default(), Size::plus);
        let arg = |name: &str| sizes.get(name).copied();
        let literal = |name: &str| match f.args.get(name).map(|e| (&e.val, e.filters.len())) {
            Some((ExprVal::String(s), 0)) => Some(s.len() as u64),
            _ => None,
        };
        if f.name == "json_encode" && f.args.contains_key("pretty") {
            self.over(&f.name, input, Kind::PrettyJson);
        }
        let size = match f.name.as_str() {
            // `&` becomes `&amp;`, `"` `&quot;`, `/` `&#x2F;`, a control character `\u0001`.
            "escape" | "escape_xml" | "json_encode" | "as_str" => input.times(6),
            // A byte becomes `%XX`; a quote `\"`; a newline `<br>`.
            "urlencode" | "urlencode_strict" => input.times(3),
            "addslashes" => input.times(2),
            "linebreaksbr" => input.times(4),
            // A character's other case can be longer (`ß` → `SS`, `ŉ` → `ʼN`).
            "upper" | "lower" | "capitalize" | "title" | "slugify" => input.times(3),
            // Every byte can be a line that gets the prefix (four spaces by default).
            "indent" => input.plus(each_gets(
                input,
                arg("prefix").unwrap_or(Size::bytes(4)).max(Size::bytes(1)),
            )),
            "truncate" => input.plus(arg("end").unwrap_or(Size::bytes(3))),
            // Every item but the last gets the separator; an item is at least a byte.
            "join" => input.plus(each_gets(input, arg("sep").unwrap_or_default())),
            "concat" => input.plus(arg("with").unwrap_or_default()),
            "default" => input.max(arg("value").unwrap_or_default()),
            // Filters whose result can be an argument.
            "get" => input.max(arg("default").unwrap_or_default()),
            "pluralize" => args.max(Size::bytes(1)),
            // A two-byte directive (`%c`) can print some thirty bytes.
            "date" => arg("format")
                .unwrap_or_default()
                .times(16)
                .plus(Size::SCALAR),
            // Each piece is a value of its own, dearer in memory than its bytes.
            "split" => input.times(8),
            "group_by" => input.times(2),
            "replace" => replaced(input, literal("from"), arg("to").unwrap_or_default()),
            "length" | "wordcount" | "int" | "float" | "round" | "abs" | "filesizeformat" => {
                Size::SCALAR
            }
            // trim…, striptags, spaceless, first, last, nth, slice, sort, unique, reverse,
            // filter, map, safe: no larger than their input; others (names Tera refuses
            // itself) as large as their input and arguments together.
            "trim" | "trim_start" | "trim_end" | "trim_start_matches" | "trim_end_matches"
            | "striptags" | "spaceless" | "first" | "last" | "nth" | "slice" | "sort"
            | "unique" | "reverse" | "filter" | "map" | "safe" => input,
            _ => input.plus(args),
        };
        // A filter reads its input as well as making its result (`wordcount` of a 4 MB
        // value makes a number but walks 4 MB).
        self.made(input);
        self.note(&f.name, self.made(size))
    }
}

/// The bound of a variable: one `set` or looped over, else a recipient's value (or
/// several, for a name that is none of them: Tera refuses it, or `check` does).
fn ident(name: &str, scope: &Scope) -> Size {
    let root = name.split(['.', '[']).next().unwrap_or(name);
    if let Some(&size) = scope.get(name).or_else(|| scope.get(root)) {
        return size;
    }
    if root == "loop" {
        return Size::SCALAR;
    }
    if root == "__tera_context" {
        // Every value set so far, escaped: each use more than doubles the next one.
        return Size {
            times: u64::MAX,
            bytes: u64::MAX,
        };
    }
    if VARIABLES.contains(&name) || ["client", "mailing", "owner"].contains(&root) {
        return Size::INPUT;
    }
    // None of these: Tera or `check` refuses it; bounded as all of a recipient's values.
    Size::INPUT
        .times(VARIABLES.len() as u64)
        .plus(Size::bytes(1024))
}

/// `replace(from, to)` on `input`: each occurrence of `from` becomes `to`. An empty (or
/// not literal) `from` may match at every character boundary. When both the input and `to`
/// depend on a recipient, the result grows with the square of their values: no bound of
/// this shape holds.
fn replaced(input: Size, from: Option<u64>, to: Size) -> Size {
    let occurrences = |n: u64| match from {
        Some(from @ 1..) => n / from,
        _ => n.saturating_add(1),
    };
    if to.times == 0 {
        // Each byte matched (or boundary) becomes at most `to.bytes` more.
        let grown = match from {
            Some(from @ 1..) => input.times(to.bytes.div_ceil(from).max(1)),
            _ => input.times(1 + to.bytes).plus(Size::bytes(to.bytes)),
        };
        return grown;
    }
    if input.times == 0 {
        return input.plus(to.times(occurrences(input.bytes)));
    }
    Size {
        times: u64::MAX,
        bytes: u64::MAX,
    }
}
