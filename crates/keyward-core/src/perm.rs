//! Permission names, wildcards and expressions (`orders.read AND (orders.write OR admin)`),
//! and the root-key permission vocabulary of the admin API.
//!
//! Grammar (keywords are case-sensitive upper-case; `AND` binds tighter than `OR`):
//!
//! ```text
//! or   := and ("OR" and)*
//! and  := atom ("AND" atom)*
//! atom := NAME | "(" or ")"
//! ```

use std::fmt;

/// Longest expression accepted, in characters.
pub const MAX_EXPR_CHARS: usize = 4096;
/// Deepest parenthesis nesting accepted.
pub const MAX_DEPTH: usize = 64;
/// Longest permission name, in characters.
pub const MAX_NAME_CHARS: usize = 128;

/// A parsed permission expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    Perm(String),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
}

/// Where and why an expression failed to parse. `position` is a 0-based character index.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} at position {position}")]
pub struct ParseError {
    pub position: usize,
    pub message: String,
}

impl ParseError {
    fn new(position: usize, message: impl Into<String>) -> Self {
        Self {
            position,
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok<'a> {
    Open,
    Close,
    And,
    Or,
    Name(&'a str),
}

/// A token and the character index where it starts.
type Spanned<'a> = (Tok<'a>, usize);

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-' | '*')
}

fn tokenize(input: &str) -> Result<Vec<Spanned<'_>>, ParseError> {
    let mut toks = Vec::new();
    let mut chars = input.char_indices().enumerate().peekable();
    while let Some((pos, (byte, c))) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            '(' => toks.push((Tok::Open, pos)),
            ')' => toks.push((Tok::Close, pos)),
            c if is_name_char(c) => {
                let mut end = byte + c.len_utf8();
                while let Some(&(_, (b, c))) = chars.peek() {
                    if !is_name_char(c) {
                        break;
                    }
                    end = b + c.len_utf8();
                    chars.next();
                }
                let word = input.get(byte..end).unwrap_or_default();
                toks.push((
                    match word {
                        "AND" => Tok::And,
                        "OR" => Tok::Or,
                        w => Tok::Name(w),
                    },
                    pos,
                ));
            }
            c => return Err(ParseError::new(pos, format!("unexpected character {c:?}"))),
        }
    }
    Ok(toks)
}

struct Parser<'a> {
    toks: Vec<Spanned<'a>>,
    next: usize,
    /// Character length of the input: the position of "unexpected end".
    end: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<Spanned<'a>> {
        self.toks.get(self.next).copied()
    }

    fn bump(&mut self) {
        self.next += 1;
    }

    fn or(&mut self, depth: usize) -> Result<Expr, ParseError> {
        let mut left = self.and(depth)?;
        while let Some((Tok::Or, _)) = self.peek() {
            self.bump();
            let right = self.and(depth)?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self, depth: usize) -> Result<Expr, ParseError> {
        let mut left = self.atom(depth)?;
        while let Some((Tok::And, _)) = self.peek() {
            self.bump();
            let right = self.atom(depth)?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn atom(&mut self, depth: usize) -> Result<Expr, ParseError> {
        match self.peek() {
            None => Err(ParseError::new(
                self.end,
                "unexpected end of expression, expected a permission name or '('",
            )),
            Some((Tok::Name(name), pos)) => {
                validate_name(name).map_err(|m| ParseError::new(pos, m))?;
                self.bump();
                Ok(Expr::Perm(name.to_owned()))
            }
            Some((Tok::Open, pos)) => {
                if depth >= MAX_DEPTH {
                    return Err(ParseError::new(
                        pos,
                        format!("parentheses nested deeper than {MAX_DEPTH}"),
                    ));
                }
                self.bump();
                let inner = self.or(depth + 1)?;
                match self.peek() {
                    Some((Tok::Close, _)) => {
                        self.bump();
                        Ok(inner)
                    }
                    Some((_, pos)) => Err(ParseError::new(pos, "expected AND, OR or ')'")),
                    None => Err(ParseError::new(
                        self.end,
                        "unexpected end of expression, expected ')'",
                    )),
                }
            }
            Some((Tok::Close, pos)) => Err(ParseError::new(
                pos,
                "unexpected ')', expected a permission name or '('",
            )),
            Some((Tok::And | Tok::Or, pos)) => Err(ParseError::new(
                pos,
                "unexpected operator, expected a permission name or '('",
            )),
        }
    }
}

/// Parses a permission expression.
pub fn parse(input: &str) -> Result<Expr, ParseError> {
    // Security: bound the work and the recursion before looking at the content.
    if input.chars().nth(MAX_EXPR_CHARS).is_some() {
        return Err(ParseError::new(
            MAX_EXPR_CHARS,
            format!("expression is longer than {MAX_EXPR_CHARS} characters"),
        ));
    }
    let end = input.chars().count();
    let toks = tokenize(input)?;
    let mut p = Parser { toks, next: 0, end };
    let expr = p.or(0)?;
    match p.peek() {
        None => Ok(expr),
        Some((Tok::Close, pos)) => Err(ParseError::new(pos, "unmatched ')'")),
        Some((_, pos)) => Err(ParseError::new(pos, "expected AND or OR")),
    }
}

/// Checks a permission name: 1–128 characters of `[A-Za-z0-9._:-*]`, dot-separated segments
/// none of them empty, where `*` may only be the whole last segment (`orders.*`) or the whole
/// name (`*`).
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("permission name must not be empty".to_owned());
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(format!(
            "permission name must be at most {MAX_NAME_CHARS} characters"
        ));
    }
    if let Some(c) = name.chars().find(|&c| !is_name_char(c)) {
        return Err(format!(
            "permission name may contain only A-Z, a-z, 0-9 and . _ : - *, not {c:?}"
        ));
    }
    let mut segments = name.split('.').peekable();
    while let Some(seg) = segments.next() {
        if seg.is_empty() {
            return Err("permission name must not have an empty segment ('..', or a leading or trailing '.')".to_owned());
        }
        let last = segments.peek().is_none();
        if seg.contains('*') && !(last && seg == "*") {
            return Err(
                "'*' may only be the whole permission name or its whole last segment (orders.*)"
                    .to_owned(),
            );
        }
    }
    Ok(())
}

/// Whether holding `held` satisfies `required`.
///
/// `*` grants everything; `orders.*` grants `orders.read` and `orders.x.y` but not `orders`;
/// a required `orders.*` is satisfied by any held name under `orders.` (or a wildcard covering
/// it); otherwise names must be equal.
pub fn grants(held: &str, required: &str) -> bool {
    if held == "*" || held == required {
        return true;
    }
    if let Some(scope) = required.strip_suffix('*') {
        // `scope` is "orders." (or "" for a bare "*", which only "*" satisfies).
        if !scope.is_empty() && held.len() > scope.len() && held.starts_with(scope) {
            return true;
        }
    }
    if let Some(held_scope) = held.strip_suffix('*') {
        // "orders." covers anything strictly below it, including "orders.x.*".
        if !held_scope.is_empty()
            && required.len() > held_scope.len()
            && required.starts_with(held_scope)
        {
            return true;
        }
    }
    false
}

fn held_grants(held: &[String], required: &str) -> bool {
    held.iter().any(|h| grants(h, required))
}

impl Expr {
    /// Whether `held` satisfies the expression.
    pub fn eval(&self, held: &[String]) -> bool {
        match self {
            Expr::Perm(p) => held_grants(held, p),
            Expr::And(a, b) => a.eval(held) && b.eval(held),
            Expr::Or(a, b) => a.eval(held) || b.eval(held),
        }
    }

    /// For explain: the names that were not satisfied in the branches that failed, in order
    /// of appearance, without duplicates. Empty when the expression is satisfied.
    pub fn missing(&self, held: &[String]) -> Vec<String> {
        let mut out = Vec::new();
        self.collect_missing(held, &mut out);
        out
    }

    fn collect_missing(&self, held: &[String], out: &mut Vec<String>) {
        if self.eval(held) {
            return;
        }
        match self {
            Expr::Perm(p) => {
                if !out.iter().any(|m| m == p) {
                    out.push(p.clone());
                }
            }
            Expr::And(a, b) | Expr::Or(a, b) => {
                a.collect_missing(held, out);
                b.collect_missing(held, out);
            }
        }
    }

    /// Every permission name in the expression, in order of appearance.
    pub fn names(&self) -> Vec<&str> {
        let mut out = Vec::new();
        let mut stack = vec![self];
        while let Some(e) = stack.pop() {
            match e {
                Expr::Perm(p) => out.push(p.as_str()),
                Expr::And(a, b) | Expr::Or(a, b) => {
                    stack.push(b);
                    stack.push(a);
                }
            }
        }
        out
    }
}

/// The canonical form: operators left-associative, parentheses only where needed, so
/// `parse(&e.to_string()) == Ok(e)`.
impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn child(f: &mut fmt::Formatter<'_>, e: &Expr, parens: bool) -> fmt::Result {
            if parens {
                write!(f, "({e})")
            } else {
                write!(f, "{e}")
            }
        }
        match self {
            Expr::Perm(p) => f.write_str(p),
            Expr::And(a, b) => {
                child(f, a, matches!(**a, Expr::Or(..)))?;
                f.write_str(" AND ")?;
                child(f, b, !matches!(**b, Expr::Perm(_)))
            }
            Expr::Or(a, b) => {
                child(f, a, false)?;
                f.write_str(" OR ")?;
                child(f, b, matches!(**b, Expr::Or(..)))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Root keys

/// The permissions a root key may hold (besides `*`), each optionally narrowed to one api
/// with a `:api_…` suffix.
pub const ROOT_PERMISSIONS: &[&str] = &[
    "apis.read",
    "apis.write",
    "projects.read",
    "projects.write",
    "keys.read",
    "keys.write",
    "keys.verify",
    "root_keys.read",
    "root_keys.write",
    "usage.read",
    "audit.read",
    "webhooks.read",
    "webhooks.write",
];

/// Whether a root key holding `held` may do `permission` for the workspace (`api_id` `None`)
/// or for `api_id`.
///
/// `*` allows everything. `keys.verify` allows it for the workspace and every api;
/// `keys.verify:api_X` allows it only when `api_id == Some("api_X")`. `X.write` implies
/// `X.read`, with the same scope. Held entries that are not valid root permissions, and
/// requested permissions outside [`ROOT_PERMISSIONS`], never allow anything (except via `*`).
///
/// Speed: the `*` check is inlined into callers (most root keys hold `*`, and verify asks
/// twice per call); the rest matches a held entry by name before validating it.
#[inline]
pub fn root_allows(held: &[String], permission: &str, api_id: Option<&str>) -> bool {
    held.iter().any(|h| h == "*") || held_allows(held, permission, api_id)
}

/// [`root_allows`] without `*`.
fn held_allows(held: &[String], permission: &str, api_id: Option<&str>) -> bool {
    is_root_permission(permission)
        && held.iter().any(|h| {
            let (base, scope) = match h.split_once(':') {
                Some((base, scope)) => (base, Some(scope)),
                None => (h.as_str(), None),
            };
            (base == permission || implied_read(base, permission))
                && is_root_permission(base)
                && scope.is_none_or(|scope| is_api_scope(scope) && api_id == Some(scope))
        })
}

/// Whether `p` is in [`ROOT_PERMISSIONS`] (a `match`, which compiles to a length switch).
fn is_root_permission(p: &str) -> bool {
    matches!(
        p,
        "apis.read"
            | "apis.write"
            | "projects.read"
            | "projects.write"
            | "keys.read"
            | "keys.write"
            | "keys.verify"
            | "root_keys.read"
            | "root_keys.write"
            | "usage.read"
            | "audit.read"
            | "webhooks.read"
            | "webhooks.write"
    )
}

/// `X.write` implies `X.read`.
fn implied_read(held: &str, wanted: &str) -> bool {
    match (held.strip_suffix(".write"), wanted.strip_suffix(".read")) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

fn is_api_scope(scope: &str) -> bool {
    scope.strip_prefix("api_").is_some_and(|id| {
        !id.is_empty()
            && id.len() <= 64
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    })
}

/// Checks one root-key permission: `*`, or one of [`ROOT_PERMISSIONS`] optionally followed
/// by `:api_<id>`.
pub fn validate_root_permission(p: &str) -> Result<(), String> {
    if p == "*" {
        return Ok(());
    }
    let (base, scope) = match p.split_once(':') {
        Some((base, scope)) => (base, Some(scope)),
        None => (p, None),
    };
    if !is_root_permission(base) {
        return Err(format!(
            "unknown root key permission {base:?}; expected '*' or one of {}",
            ROOT_PERMISSIONS.join(", ")
        ));
    }
    if let Some(scope) = scope {
        if !is_api_scope(scope) {
            return Err(format!(
                "{base}: the part after ':' must be an api id (api_…)"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::strategy::Strategy as _;

    fn held(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    fn p(s: &str) -> Expr {
        parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn perm(s: &str) -> Box<Expr> {
        Box::new(Expr::Perm(s.to_owned()))
    }

    #[test]
    fn and_binds_tighter_than_or() {
        assert_eq!(
            p("a OR b AND c"),
            Expr::Or(perm("a"), Box::new(Expr::And(perm("b"), perm("c"))))
        );
        assert_eq!(
            p("(a OR b) AND c"),
            Expr::And(Box::new(Expr::Or(perm("a"), perm("b"))), perm("c"))
        );
        assert_eq!(p("  orders.read  "), Expr::Perm("orders.read".to_owned()));
    }

    #[test]
    fn display_is_canonical_and_round_trips() {
        for s in [
            "a",
            "a AND b AND c",
            "a OR b OR c",
            "a AND (b OR c)",
            "(a OR b) AND c",
            "a OR b AND c",
            "a AND (b AND c)",
            "a OR (b OR c)",
            "orders.read AND (orders.write OR admin)",
        ] {
            let e = p(s);
            assert_eq!(e.to_string(), s);
            assert_eq!(p(&e.to_string()), e);
        }
        assert_eq!(p("((a)) AND ((b))").to_string(), "a AND b");
        assert_eq!(p("(a AND b) OR c").to_string(), "a AND b OR c");
    }

    #[test]
    fn parse_errors_point_at_the_offending_token() {
        let cases = [
            ("", 0),
            ("   ", 3),
            ("a AND", 5),
            ("a b", 2),
            ("AND a", 0),
            (")", 0),
            ("(a", 2),
            ("(a b)", 3),
            ("a)", 1),
            ("a AND or*ders", 6),
            ("a & b", 2),
            ("é AND a", 0),
            ("a AND é", 6),
            ("a and b", 2),
        ];
        for (input, position) in cases {
            let err = parse(input).expect_err(input);
            assert_eq!(err.position, position, "{input:?}: {err}");
            assert!(err
                .to_string()
                .ends_with(&format!("at position {position}")));
        }
    }

    #[test]
    fn overly_long_or_deep_expressions_are_errors_not_crashes() {
        let long = "a".repeat(MAX_EXPR_CHARS + 1);
        assert_eq!(parse(&long).expect_err("too long").position, MAX_EXPR_CHARS);
        let ok_long = vec!["a"; 800].join(" OR ");
        assert!(ok_long.len() <= MAX_EXPR_CHARS);
        assert!(parse(&ok_long).is_ok());

        let deep_ok = format!("{}a{}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
        assert!(parse(&deep_ok).is_ok());
        let too_deep = format!(
            "{}a{}",
            "(".repeat(MAX_DEPTH + 1),
            ")".repeat(MAX_DEPTH + 1)
        );
        assert_eq!(parse(&too_deep).expect_err("deep").position, MAX_DEPTH);
        let very_deep = "(".repeat(4000);
        assert!(parse(&very_deep).is_err());
    }

    #[test]
    fn permission_names_follow_the_documented_rules() {
        for ok in [
            "*",
            "orders.*",
            "orders.read",
            "a:b-c_d",
            "orders.x.*",
            "A.B9",
        ] {
            assert_eq!(validate_name(ok), Ok(()), "{ok}");
        }
        let long = "a".repeat(MAX_NAME_CHARS + 1);
        for bad in [
            "",
            "*.read",
            "orders.*.read",
            "or*ders",
            "orders*",
            "orders.**",
            "orders..read",
            ".orders",
            "orders.",
            "orders read",
            "orders/read",
            long.as_str(),
        ] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
        assert!(validate_name(&"a".repeat(MAX_NAME_CHARS)).is_ok());
    }

    #[test]
    fn wildcards_grant_names_below_them_but_not_the_parent() {
        assert!(grants("*", "anything.at.all"));
        assert!(grants("*", "*"));
        assert!(grants("orders.*", "orders.read"));
        assert!(grants("orders.*", "orders.x.y"));
        assert!(grants("orders.*", "orders.x.*"));
        assert!(!grants("orders.*", "orders"));
        assert!(!grants("orders.*", "ordersx.read"));
        assert!(!grants("orders.*", "*"));
        assert!(grants("orders.read", "orders.*"));
        assert!(grants("orders.*", "orders.*"));
        assert!(!grants("orders", "orders.*"));
        assert!(!grants("billing.read", "orders.*"));
        assert!(!grants("orders.read", "*"));
        assert!(grants("orders.read", "orders.read"));
        assert!(!grants("orders.read", "orders.write"));
    }

    #[test]
    fn missing_names_only_the_failing_leaves() {
        let e = p("orders.read AND (orders.write OR admin) AND orders.read");
        assert_eq!(
            e.missing(&held(&["orders.read"])),
            vec!["orders.write".to_owned(), "admin".to_owned()]
        );
        assert!(e.missing(&held(&["orders.read", "admin"])).is_empty());
        assert_eq!(
            e.missing(&held(&[])),
            vec!["orders.read", "orders.write", "admin"]
        );
        assert!(e.eval(&held(&["orders.*", "admin"])));
        assert_eq!(
            e.names(),
            vec!["orders.read", "orders.write", "admin", "orders.read"]
        );
    }

    #[test]
    fn root_permissions_respect_scope_and_write_implies_read() {
        let api = Some("api_1");
        assert!(root_allows(&held(&["*"]), "keys.verify", api));
        assert!(root_allows(&held(&["*"]), "apis.write", None));
        assert!(root_allows(&held(&["keys.verify"]), "keys.verify", api));
        assert!(root_allows(&held(&["keys.verify"]), "keys.verify", None));
        assert!(root_allows(
            &held(&["keys.verify:api_1"]),
            "keys.verify",
            api
        ));
        assert!(!root_allows(
            &held(&["keys.verify:api_1"]),
            "keys.verify",
            Some("api_2")
        ));
        assert!(!root_allows(
            &held(&["keys.verify:api_1"]),
            "keys.verify",
            None
        ));
        assert!(root_allows(&held(&["keys.write"]), "keys.read", None));
        assert!(root_allows(&held(&["keys.write:api_1"]), "keys.read", api));
        assert!(!root_allows(
            &held(&["keys.write:api_1"]),
            "keys.read",
            Some("api_2")
        ));
        assert!(!root_allows(&held(&["keys.read"]), "keys.write", None));
        assert!(!root_allows(&held(&["keys.write"]), "apis.read", None));
        assert!(!root_allows(&held(&["keys.*"]), "keys.read", None));
        assert!(!root_allows(&held(&["bogus"]), "bogus", None));
        assert!(!root_allows(&held(&["keys.read"]), "keys.read:api_1", api));
        assert!(!root_allows(&held(&[]), "keys.read", None));
    }

    #[test]
    fn root_permission_validation_accepts_only_the_vocabulary() {
        for ok in [
            "*",
            "keys.verify",
            "keys.verify:api_0Hkq2nT4f3Zr8Yb1xQ9w7a",
            "audit.read",
        ] {
            assert_eq!(validate_root_permission(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "keys",
            "keys.verify:",
            "keys.verify:prj_1",
            "keys.verify:api_",
            "*:api_1",
            "Keys.read",
        ] {
            assert!(validate_root_permission(bad).is_err(), "{bad}");
        }
    }

    /// `root_allows` as first written: `*`, then the requested permission's validity, then
    /// each held entry validated before it is compared.
    fn root_allows_reference(held: &[String], permission: &str, api_id: Option<&str>) -> bool {
        if held.iter().any(|h| h == "*") {
            return true;
        }
        if !ROOT_PERMISSIONS.contains(&permission) {
            return false;
        }
        held.iter().any(|h| {
            let (base, scope) = match h.split_once(':') {
                Some((base, scope)) => (base, Some(scope)),
                None => (h.as_str(), None),
            };
            if !ROOT_PERMISSIONS.contains(&base) {
                return false;
            }
            if let Some(scope) = scope {
                if !is_api_scope(scope) || api_id != Some(scope) {
                    return false;
                }
            }
            base == permission || implied_read(base, permission)
        })
    }

    #[test]
    fn the_permission_match_is_the_vocabulary() {
        for p in ROOT_PERMISSIONS {
            assert!(is_root_permission(p), "{p}");
        }
        for p in [
            "",
            "*",
            "keys",
            "keys.verify:api_1",
            "usage.write",
            "Keys.read",
        ] {
            assert!(!is_root_permission(p), "{p}");
        }
    }

    proptest::proptest! {
        #[test]
        fn root_allows_agrees_with_the_reference(
            held in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::sample::select(ROOT_PERMISSIONS.to_vec()).prop_map(str::to_owned),
                    proptest::sample::select(vec![
                        "*", "usage.write", "audit.write", "keys.*", "bogus", "",
                        "keys.verify:api_1", "keys.write:api_2", "usage.write:api_1",
                        "keys.read:", "keys.read:api_", "keys.read:prj_1", "*:api_1",
                    ]).prop_map(str::to_owned),
                    "[a-z_.*:0-9]{0,20}",
                ],
                0..4,
            ),
            permission in proptest::prop_oneof![
                proptest::sample::select(ROOT_PERMISSIONS.to_vec()).prop_map(str::to_owned),
                proptest::sample::select(vec!["usage.write", "audit.write", "*", "", "keys"])
                    .prop_map(str::to_owned),
            ],
            api_id in proptest::option::of(proptest::sample::select(vec!["api_1", "api_2", ""])),
        ) {
            proptest::prop_assert_eq!(
                root_allows(&held, &permission, api_id),
                root_allows_reference(&held, &permission, api_id),
                "{:?} {} {:?}", held, permission, api_id
            );
        }
    }
}
