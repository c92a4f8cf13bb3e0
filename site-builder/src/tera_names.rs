//! Every name a Tera template uses or binds, for the checks Tera's own compile does not
//! make: the site refuses functions, filters and tests Zola lacks, and `skychimpd check`
//! refuses variables no message has (where Tera would read one as false, in `{% if %}`).

use tera::ast::{Expr, ExprVal, Node};

/// One name a template uses or binds, as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Name<'t> {
    /// A variable read: `client.name`, `page.extra.tags`, `loop.index`.
    Variable(&'t str),
    /// A name the template binds itself: a `for` key or value, a `set`, a macro argument.
    Bound(&'t str),
    /// A filter applied, also as a `{% filter %}` section.
    Filter(&'t str),
    /// A test: `is defined`, `is starting_with(…)`.
    Test(&'t str),
    /// A function called: `get_url(…)`.
    Function(&'t str),
    /// A macro called: `self::card(…)` is `card`.
    Macro(&'t str),
}

/// Every name `nodes` use or bind, in the order of the source. A `{% filter %}` section's
/// filter and a test count as used by the expression they belong to.
pub fn names(nodes: &[Node]) -> Vec<Name<'_>> {
    let mut out = Vec::new();
    walk(nodes, &mut out);
    out
}

fn walk<'t>(nodes: &'t [Node], out: &mut Vec<Name<'t>>) {
    for node in nodes {
        match node {
            Node::VariableBlock(_, e) => expr(e, out),
            Node::MacroDefinition(_, def, _) => {
                for (arg, default) in &def.args {
                    out.push(Name::Bound(arg));
                    if let Some(e) = default {
                        expr(e, out);
                    }
                }
                walk(&def.body, out);
            }
            Node::Set(_, set) => {
                expr(&set.value, out);
                out.push(Name::Bound(&set.key));
            }
            Node::FilterSection(_, section, _) => {
                out.push(Name::Filter(&section.filter.name));
                section.filter.args.values().for_each(|e| expr(e, out));
                walk(&section.body, out);
            }
            Node::Block(_, block, _) => walk(&block.body, out),
            Node::Forloop(_, each, _) => {
                expr(&each.container, out);
                out.extend(each.key.as_deref().map(Name::Bound));
                out.push(Name::Bound(&each.value));
                walk(&each.body, out);
                if let Some(body) = &each.empty_body {
                    walk(body, out);
                }
            }
            Node::If(branches, _) => {
                for (_, condition, body) in &branches.conditions {
                    expr(condition, out);
                    walk(body, out);
                }
                if let Some((_, body)) = &branches.otherwise {
                    walk(body, out);
                }
            }
            Node::Super
            | Node::Text(_)
            | Node::Extends(..)
            | Node::Include(..)
            | Node::ImportMacro(..)
            | Node::Raw(..)
            | Node::Break(_)
            | Node::Continue(_)
            | Node::Comment(..) => {}
        }
    }
}

fn expr<'t>(e: &'t Expr, out: &mut Vec<Name<'t>>) {
    value(&e.val, out);
    for filter in &e.filters {
        out.push(Name::Filter(&filter.name));
        filter.args.values().for_each(|a| expr(a, out));
    }
}

fn value<'t>(v: &'t ExprVal, out: &mut Vec<Name<'t>>) {
    match v {
        ExprVal::Ident(name) => out.push(Name::Variable(name)),
        ExprVal::Math(m) => {
            expr(&m.lhs, out);
            expr(&m.rhs, out);
        }
        ExprVal::Logic(l) => {
            expr(&l.lhs, out);
            expr(&l.rhs, out);
        }
        ExprVal::Test(t) => {
            out.push(Name::Variable(&t.ident));
            out.push(Name::Test(&t.name));
            t.args.iter().for_each(|a| expr(a, out));
        }
        ExprVal::MacroCall(call) => {
            out.push(Name::Macro(&call.name));
            call.args.values().for_each(|a| expr(a, out));
        }
        ExprVal::FunctionCall(call) => {
            out.push(Name::Function(&call.name));
            call.args.values().for_each(|a| expr(a, out));
        }
        ExprVal::Array(items) => items.iter().for_each(|a| expr(a, out)),
        ExprVal::StringConcat(concat) => concat.values.iter().for_each(|v| value(v, out)),
        ExprVal::In(i) => {
            expr(&i.lhs, out);
            expr(&i.rhs, out);
        }
        ExprVal::String(_) | ExprVal::Int(_) | ExprVal::Float(_) | ExprVal::Bool(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_in_source_order_with_what_they_are() {
        let mut tera = tera::Tera::default();
        tera.add_raw_template(
            "t",
            "{% for k, v in items | sort %}{{ v.x | upper }}{% endfor %}\
             {% set y = get_url(path=page.path) %}\
             {% if y is starting_with(\"/\") %}{% filter lower %}{{ y }}{% endfilter %}{% endif %}",
        )
        .unwrap();
        let t = tera.get_template("t").unwrap();
        assert_eq!(
            names(&t.ast),
            [
                Name::Variable("items"),
                Name::Filter("sort"),
                Name::Bound("k"),
                Name::Bound("v"),
                Name::Variable("v.x"),
                Name::Filter("upper"),
                Name::Function("get_url"),
                Name::Variable("page.path"),
                Name::Bound("y"),
                Name::Variable("y"),
                Name::Test("starting_with"),
                Name::Filter("lower"),
                Name::Variable("y"),
            ]
        );
    }
}
