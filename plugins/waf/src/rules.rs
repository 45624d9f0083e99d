//! Rules: where to look (targets), what to match (a regex or phrases), how much a match
//! adds to the request's anomaly score; exclusions that switch rules off for a path or
//! a target; and the built-in set. The rules see normalized text (`decode`), so they
//! are written in lowercase.

use regex::bytes::{Regex, RegexBuilder};

use sluice_sdk::prelude::*;

/// Where a value came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Path,
    Query,
    Header,
    Cookie,
    Body,
}

/// A value to check: its kind, its name (parameter, header, cookie or JSON key) and
/// its normalized text.
#[derive(Debug)]
pub struct Input {
    pub kind: Kind,
    pub name: String,
    pub text: String,
}

/// A target: every value of a kind, or one named value (`query:id`, `header:referer`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    kind: Kind,
    name: Option<String>,
}

impl Target {
    pub fn parse(text: &str) -> Result<Self, String> {
        let (kind, name) = match text.split_once(':') {
            Some((k, n)) if !n.is_empty() => (k, Some(n.to_ascii_lowercase())),
            Some(_) => return Err(format!("target {text:?} names nothing after ':'")),
            None => (text, None),
        };
        let kind = match kind {
            "path" if name.is_none() => Kind::Path,
            "query" => Kind::Query,
            "header" if name.is_some() => Kind::Header,
            "headers" if name.is_none() => Kind::Header,
            "cookie" if name.is_some() => Kind::Cookie,
            "cookies" if name.is_none() => Kind::Cookie,
            "body" => Kind::Body,
            _ => {
                return Err(format!(
                    "target {text:?} is not path, query, query:NAME, headers, header:NAME, cookies, cookie:NAME, body or body:NAME"
                ))
            }
        };
        Ok(Self { kind, name })
    }

    fn covers(&self, input: &Input) -> bool {
        self.kind == input.kind && self.name.as_ref().is_none_or(|n| *n == input.name)
    }

    pub fn reads_body(&self) -> bool {
        self.kind == Kind::Body
    }
}

enum Matcher {
    Regex(Regex),
    Phrases(Vec<String>),
}

pub struct Rule {
    pub id: String,
    pub score: u32,
    targets: Vec<Target>,
    matcher: Matcher,
}

impl Rule {
    pub fn new(id: &str, score: u32, targets: Vec<Target>, pattern: &str) -> Result<Self, String> {
        let regex = RegexBuilder::new(pattern)
            .unicode(false)
            .size_limit(1 << 20)
            .build()
            .map_err(|e| format!("regex: {e}"))?;
        Ok(Self {
            id: id.to_string(),
            score,
            targets,
            matcher: Matcher::Regex(regex),
        })
    }

    pub fn with_phrases(id: &str, score: u32, targets: Vec<Target>, phrases: Vec<String>) -> Self {
        Self {
            id: id.to_string(),
            score,
            targets,
            matcher: Matcher::Phrases(phrases.into_iter().map(|p| p.to_lowercase()).collect()),
        }
    }

    pub fn reads_body(&self) -> bool {
        self.targets.iter().any(Target::reads_body)
    }

    /// Whether this rule looks at `input` and matches it.
    pub fn matches(&self, input: &Input) -> bool {
        if !self.targets.iter().any(|t| t.covers(input)) {
            return false;
        }
        match &self.matcher {
            Matcher::Regex(re) => re.is_match(input.text.as_bytes()),
            Matcher::Phrases(phrases) => phrases.iter().any(|p| input.text.contains(p.as_str())),
        }
    }
}

/// Rules switched off for requests under a path prefix, for some targets.
pub struct Exclusion {
    pub rules: Vec<String>,
    pub path_prefix: Option<String>,
    pub targets: Vec<Target>,
}

impl Exclusion {
    pub fn excludes(&self, rule: &str, path: &str, input: &Input) -> bool {
        self.rules.iter().any(|r| r == rule)
            && self
                .path_prefix
                .as_ref()
                .is_none_or(|p| path.starts_with(p.as_str()))
            && (self.targets.is_empty() || self.targets.iter().any(|t| t.covers(input)))
    }
}

/// The built-in classes.
pub const CLASSES: [&str; 4] = ["sqli", "xss", "traversal", "cmdi"];

/// Where the built-in rules look: everything a client sends that an application reads.
fn everywhere() -> Vec<Target> {
    [
        "path",
        "query",
        "cookies",
        "header:user-agent",
        "header:referer",
        "body",
    ]
    .iter()
    .filter_map(|t| Target::parse(t).ok())
    .collect()
}

/// The built-in rules of `class`: (id, score, pattern). Written for this plugin in the
/// spirit of the OWASP Core Rule Set's paranoia level 1: a score of 5 blocks alone at
/// the default threshold, lower scores need company.
pub fn builtin(class: &str) -> &'static [(&'static str, u32, &'static str)] {
    match class {
        "sqli" => &[
            ("1001", 5, r"\bunion\b.{0,60}\bselect\b"),
            (
                "1002",
                5,
                r#"['"`)]\s*(or|and|xor|\|\||&&)\s*(not\s+)?(['"(]?\s*\w*\s*['"]?\s*(=|<>|!=|<=|>=|\blike\b|\bis\b)|true\b|false\b|\d)"#,
            ),
            ("1003", 5, r"\b(or|and)\s+\d+\s*(=|<>|!=|<|>)\s*\d+"),
            (
                "1004",
                5,
                r"(;|\)|'|`)\s*(drop|truncate|alter|create|insert|update|delete|exec|execute|declare|shutdown|grant|revoke)\b|\b(drop|truncate)\s+(table|database|schema)\b",
            ),
            (
                "1005",
                5,
                r"\b(sleep|benchmark|pg_sleep)\s*\(|\bwaitfor\s+(delay|time)\b|\bdbms_(pipe|lock)\.",
            ),
            (
                "1006",
                5,
                r"\b(information_schema|pg_catalog|pg_shadow|sysobjects|syscolumns|mysql\.user|sqlite_master|all_tables)\b|@@version\b",
            ),
            (
                "1007",
                5,
                r"\bselect\b.{0,80}\bfrom\b.{0,80}\bwhere\b|\b(load_file|char|concat|group_concat|extractvalue|updatexml)\s*\(.{0,40}(select|0x[0-9a-f]{2,}|\d+\s*,)|\binto\s+(out|dump)file\b",
            ),
            ("1008", 3, r#"['"]\s*(--|#|/\*)"#),
            // A quote then a comment that ends the value cuts off the rest of a query.
            ("1009", 5, r#"['"]\s*(--[\s\-+]*|#.*|/\*.*)$"#),
        ],
        "xss" => &[
            ("2001", 5, r"<\s*/?\s*script\b"),
            (
                "2002",
                5,
                r"\bon(error|load|click|dblclick|mouse\w+|focus\w*|blur|submit|change|input|key\w+|toggle|begin|end|animation\w+|transition\w+|pointer\w+|wheel|scroll|resize|unload|beforeunload|hashchange|message|copy|paste|cut|drag\w*|drop|play|pause|show|select|abort|auxclick|contextmenu|search|invalid)\s*=",
            ),
            (
                "2003",
                5,
                r"\b(javascript|vbscript|livescript)\s*:|\bdata\s*:\s*text/html",
            ),
            (
                "2004",
                4,
                r"<\s*(iframe|frame|frameset|object|embed|applet|svg|math|base|link|meta|form|img|image|video|audio|source|body|style|marquee|details|isindex|template|xss)\b",
            ),
            (
                "2005",
                4,
                r"\bdocument\s*\.\s*(cookie|domain|write)|\bwindow\s*\.\s*location|\.\s*innerhtml\b|\bfromcharcode\b|\beval\s*\(|\b(alert|prompt|confirm)\s*(\(|`)",
            ),
            ("2006", 4, r"\bexpression\s*\(|-moz-binding|\bsrcdoc\s*="),
        ],
        "traversal" => &[
            ("3001", 5, r"(^|[/\\])\.\.([/\\]|$)"),
            (
                "3002",
                5,
                r"/etc/(passwd|shadow|group|hosts|issue)\b|/proc/self/|c:\\windows\\|\\windows\\system32|\bboot\.ini\b|\bwin\.ini\b|\.htaccess\b|\.htpasswd\b|/\.git(/|$)|/\.env\b|/\.aws/|/\.ssh/",
            ),
            (
                "3003",
                5,
                r"^(file|php|phar|zip|expect|glob|data|gopher|dict)://",
            ),
        ],
        "cmdi" => &[
            (
                "4001",
                5,
                r"(^\s*\||;|&&|\|\||`|\$\(|\n)\s*(cat|ls|id|whoami|uname|wget|curl|nc|ncat|netcat|bash|sh|zsh|ksh|python[23]?|perl|ruby|php|ping|nslookup|dig|rm|chmod|chown|echo|printf|sleep|kill|ps|netstat|ifconfig|powershell|cmd|certutil|telnet|tftp)\b",
            ),
            (
                "4002",
                3,
                r"\|\s*(cat|ls|id|whoami|uname|wget|curl|nc|bash|sh|python[23]?|perl|ping|rm|powershell|cmd)\b",
            ),
            (
                "4003",
                5,
                r"\$\{\s*(jndi|env|sys|lower|upper|date|java|::-)|\$\{ifs\}|\$ifs\b",
            ),
            (
                "4004",
                5,
                r"/bin/(ba|z|k|da)?sh\b|/usr/bin/(env|perl|python\d?|wget|curl)\b|\bcmd(\.exe)?\s+/c\b|\bpowershell(\.exe)?\s+-",
            ),
        ],
        _ => &[],
    }
}

/// The built-in rules of the listed classes.
pub fn builtin_rules(classes: &[String]) -> Result<Vec<Rule>, String> {
    let mut rules = Vec::new();
    for class in classes {
        if !CLASSES.contains(&class.as_str()) {
            return Err(format!(
                "{class:?} is not a built-in class (sqli, xss, traversal, cmdi)"
            ));
        }
        for (id, score, pattern) in builtin(class) {
            rules.push(Rule::new(id, *score, everywhere(), pattern)?);
        }
    }
    Ok(rules)
}

/// The values of a request head: path, query parameters (names and values), the
/// headers, and cookies; each normalized.
pub fn head_inputs(req: &Request) -> Vec<Input> {
    use crate::decode::normalize;
    let mut inputs = vec![Input {
        kind: Kind::Path,
        name: String::new(),
        text: normalize(req.path().as_bytes(), false),
    }];
    for pair in req.query().split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = normalize(name.as_bytes(), true);
        inputs.push(Input {
            kind: Kind::Query,
            name: name.clone(),
            text: normalize(value.as_bytes(), true),
        });
        inputs.push(Input {
            kind: Kind::Query,
            name: name.clone(),
            text: name,
        });
    }
    for (name, value) in req.headers().iter() {
        if name == "cookie" {
            for part in value.split(|b| *b == b';') {
                let part = String::from_utf8_lossy(part);
                let (n, v) = part.trim().split_once('=').unwrap_or((part.trim(), ""));
                // `+` as a space: PHP and others decode cookies like form values.
                inputs.push(Input {
                    kind: Kind::Cookie,
                    name: n.to_string(),
                    text: normalize(v.as_bytes(), true),
                });
            }
        } else {
            inputs.push(Input {
                kind: Kind::Header,
                name: name.to_string(),
                text: normalize(value, false),
            });
        }
    }
    inputs
}

/// The values of a request body: form fields or JSON strings (keys and values) by
/// name, anything else as one text.
pub fn body_inputs(content_type: &str, body: &[u8]) -> Vec<Input> {
    use crate::decode::normalize;
    let content_type = content_type.to_ascii_lowercase();
    let one = |name: &str, raw: &[u8], plus: bool| Input {
        kind: Kind::Body,
        name: name.to_string(),
        text: normalize(raw, plus),
    };
    if content_type.starts_with("application/x-www-form-urlencoded") {
        let mut inputs = Vec::new();
        for pair in body.split(|b| *b == b'&').filter(|p| !p.is_empty()) {
            let at = pair.iter().position(|b| *b == b'=').unwrap_or(pair.len());
            let name = normalize(&pair[..at], true);
            inputs.push(one(&name, pair.get(at + 1..).unwrap_or_default(), true));
            inputs.push(one(&name, &pair[..at], true));
        }
        return inputs;
    }
    if content_type.contains("json") {
        if let Ok(value) = sluice_sdk::serde_json::from_slice::<sluice_sdk::serde_json::Value>(body)
        {
            let mut inputs = Vec::new();
            json_strings(&value, "", &mut inputs, 0);
            return inputs;
        }
    }
    vec![one("", body, false)]
}

/// Every string of a JSON document (object keys too), named by the nearest key.
fn json_strings(
    value: &sluice_sdk::serde_json::Value,
    key: &str,
    out: &mut Vec<Input>,
    depth: usize,
) {
    use crate::decode::normalize;
    use sluice_sdk::serde_json::Value;
    if depth > 64 {
        return;
    }
    match value {
        Value::String(s) => out.push(Input {
            kind: Kind::Body,
            name: key.to_string(),
            text: normalize(s.as_bytes(), false),
        }),
        Value::Array(items) => items
            .iter()
            .for_each(|v| json_strings(v, key, out, depth + 1)),
        Value::Object(map) => {
            for (k, v) in map {
                out.push(Input {
                    kind: Kind::Body,
                    name: k.to_ascii_lowercase(),
                    text: normalize(k.as_bytes(), false),
                });
                json_strings(v, &k.to_ascii_lowercase(), out, depth + 1);
            }
        }
        _ => {}
    }
}
