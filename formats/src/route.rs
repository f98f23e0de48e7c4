//! Route templates for raw paths: `/items/123` and `/items/456` are one
//! endpoint, `/items/{id}`. A segment becomes `{id}` when it is a number, a
//! UUID, or a long run of hex digits (16 or more: hashes, object ids); the
//! query string and fragment are dropped. [`RouteRules`] put an operator's
//! own rules (regular expressions) before that.

/// An operator's rules, tried in order on a path without its query string:
/// the first whose pattern matches gives the template (`$1`, `${name}`
/// expand to its groups); a path no rule matches gets [`template`].
#[derive(Debug, Clone, Default)]
pub struct RouteRules {
    rules: Vec<(regex::Regex, String)>,
}

/// A rule whose pattern is not a regular expression.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("route rule {index}: `{pattern}` is not a regular expression: {reason}")]
pub struct RuleError {
    pub index: usize,
    pub pattern: String,
    pub reason: String,
}

impl RouteRules {
    /// Rules from (pattern, template) pairs, in the order given.
    pub fn new<'a>(rules: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self, RuleError> {
        let rules = rules
            .into_iter()
            .enumerate()
            .map(|(index, (pattern, to))| {
                regex::Regex::new(pattern)
                    .map(|re| (re, to.to_owned()))
                    .map_err(|e| RuleError {
                        index,
                        pattern: pattern.to_owned(),
                        reason: e.to_string(),
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { rules })
    }

    /// The route template of `path` (a path, or a whole URL).
    pub fn template(&self, path: &str) -> String {
        let bare = path_of(path).split(['?', '#']).next().unwrap_or("");
        for (re, to) in &self.rules {
            if re.is_match(bare) {
                return re.replace(bare, to.as_str()).into_owned();
            }
        }
        template(path)
    }
}

/// The route template of `path` (a path, or a whole URL whose path is taken).
pub fn template(path: &str) -> String {
    let path = path_of(path);
    let path = path.split(['?', '#']).next().unwrap_or("");
    let mut out = String::with_capacity(path.len());
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(if is_id(segment) { "{id}" } else { segment });
    }
    if !out.starts_with('/') {
        out.insert(0, '/');
    }
    out
}

/// The path of a URL (`https://host:8080/a/b?c` -> `/a/b?c`), or `s` if it is one.
fn path_of(s: &str) -> &str {
    match s.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => s,
    }
}

fn is_id(segment: &str) -> bool {
    let hex = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit());
    let uuid = segment.len() == 36
        && segment.split('-').map(str::len).eq([8, 4, 4, 4, 12])
        && segment.split('-').all(hex);
    (!segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()))
        || uuid
        || (segment.len() >= 16 && hex(segment))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_first_matching_rule_wins_and_the_rest_are_templated() {
        let rules = RouteRules::new([
            (r"^/users/[^/]+/avatar$", "/users/{name}/avatar"),
            (r"^/static/.*", "/static/*"),
            (r"^/v(\d+)/.*$", "/v$1/*"),
        ])
        .unwrap();
        for (path, want) in [
            ("/users/alice/avatar?s=64", "/users/{name}/avatar"),
            ("/static/css/site.css", "/static/*"),
            ("/v2/anything/9", "/v2/*"),
            ("/items/123", "/items/{id}"),
        ] {
            assert_eq!(rules.template(path), want, "{path}");
        }
        let e = RouteRules::new([("ok", "x"), ("(unclosed", "y")]).unwrap_err();
        assert_eq!((e.index, e.pattern.as_str()), (1, "(unclosed"));
    }

    #[test]
    fn ids_become_placeholders_and_words_stay() {
        for (path, want) in [
            ("/items/123", "/items/{id}"),
            ("/items/123/reviews/9?page=2", "/items/{id}/reviews/{id}"),
            (
                "/u/5f0c8e1a-9b2d-4c3e-8f7a-1b2c3d4e5f60/avatar",
                "/u/{id}/avatar",
            ),
            ("/blobs/0123456789abcdef0123", "/blobs/{id}"),
            ("/v1/cafe", "/v1/cafe"),
            ("/health", "/health"),
            ("/", "/"),
            ("", "/"),
            ("https://shop.example:8443/orders/77#top", "/orders/{id}"),
            ("http://host", "/"),
            ("items/4", "/items/{id}"),
            ("/a//b/", "/a//b/"),
        ] {
            assert_eq!(template(path), want, "{path}");
        }
    }
}
