//! `waf`: a web application firewall. Rules (built-in classes for SQL injection, XSS,
//! path traversal and command injection, plus the config's own) match decoded values
//! of the path, query, headers, cookies and body; each match adds its score, and a
//! request whose score reaches the threshold is blocked with a `403` (or, in `log`
//! mode, logged). Which rules matched goes to the log, never to the client. See
//! README.md for the config.

mod decode;
mod rules;

use sluice_sdk::prelude::*;

use rules::{Exclusion, Input, Rule, Target};

#[config]
#[derive(Debug)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    mode: Mode,
    /// The anomaly score that blocks.
    #[serde(default = "default_threshold")]
    threshold: u32,
    /// Built-in classes in use.
    #[serde(default = "default_builtin")]
    builtin: Vec<String>,
    #[serde(default)]
    rules: Vec<RuleConfig>,
    #[serde(default)]
    exclusions: Vec<ExclusionConfig>,
    /// Read and check request bodies (up to `body_max_bytes`; larger ones get `413`).
    #[serde(default = "default_true")]
    inspect_body: bool,
    /// Largest body read; 0 for the proxy's `[plugins] body_max_bytes`.
    #[serde(default)]
    body_max_bytes: u64,
}

#[config]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Block,
    Log,
}

#[config]
#[derive(Debug)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    id: String,
    targets: Vec<String>,
    #[serde(default)]
    regex: Option<String>,
    #[serde(default)]
    phrases: Vec<String>,
    #[serde(default = "default_score")]
    score: u32,
}

#[config]
#[derive(Debug)]
#[serde(deny_unknown_fields)]
pub struct ExclusionConfig {
    rules: Vec<String>,
    #[serde(default)]
    path_prefix: Option<String>,
    #[serde(default)]
    targets: Vec<String>,
}

fn default_threshold() -> u32 {
    5
}

fn default_builtin() -> Vec<String> {
    rules::CLASSES.iter().map(|c| c.to_string()).collect()
}

fn default_true() -> bool {
    true
}

fn default_score() -> u32 {
    5
}

pub struct Waf {
    mode: Mode,
    threshold: u32,
    rules: Vec<Rule>,
    exclusions: Vec<Exclusion>,
    inspect_body: bool,
    body_max_bytes: u64,
}

/// What a request has scored so far (the head, then the body).
#[derive(Default)]
pub struct Verdict {
    score: u32,
    /// Indexes of the rules that matched: each counts once per request.
    hit: Vec<usize>,
    /// `rule id [where]` of each match, for the log.
    matched: Vec<String>,
    path: String,
    client: String,
    /// A log-mode request already logged.
    logged: bool,
}

fn targets(key: &str, list: &[String]) -> Result<Vec<Target>, String> {
    list.iter()
        .map(|t| Target::parse(t).map_err(|e| format!("{key}: {e}")))
        .collect()
}

#[plugin]
impl Plugin for Waf {
    type Config = Config;
    type Context = Verdict;

    fn new(cfg: Config) -> Result<Self, String> {
        if cfg.threshold == 0 {
            return Err("threshold: must be at least 1".into());
        }
        let mut rules = rules::builtin_rules(&cfg.builtin).map_err(|e| format!("builtin: {e}"))?;
        for (i, r) in cfg.rules.into_iter().enumerate() {
            let key = format!("rules[{i}]");
            if r.id.is_empty() || rules.iter().any(|known| known.id == r.id) {
                return Err(format!("{key}.id: {:?} is empty or taken", r.id));
            }
            if r.targets.is_empty() {
                return Err(format!("{key}.targets: name at least one target"));
            }
            let targets = targets(&format!("{key}.targets"), &r.targets)?;
            let rule = match (r.regex, r.phrases.is_empty()) {
                (Some(re), true) => {
                    Rule::new(&r.id, r.score, targets, &re).map_err(|e| format!("{key}.{e}"))?
                }
                (None, false) => {
                    if r.phrases.iter().any(String::is_empty) {
                        return Err(format!("{key}.phrases: no phrase may be empty"));
                    }
                    Rule::with_phrases(&r.id, r.score, targets, r.phrases)
                }
                _ => return Err(format!("{key}: give exactly one of regex and phrases")),
            };
            rules.push(rule);
        }
        let mut exclusions = Vec::new();
        for (i, e) in cfg.exclusions.into_iter().enumerate() {
            let key = format!("exclusions[{i}]");
            if e.rules.is_empty() {
                return Err(format!("{key}.rules: name the rule ids it switches off"));
            }
            if let Some(unknown) = e
                .rules
                .iter()
                .find(|id| !rules.iter().any(|r| &r.id == *id))
            {
                return Err(format!("{key}.rules: no rule {unknown:?}"));
            }
            exclusions.push(Exclusion {
                rules: e.rules,
                path_prefix: e.path_prefix,
                targets: targets(&format!("{key}.targets"), &e.targets)?,
            });
        }
        Ok(Self {
            mode: cfg.mode,
            threshold: cfg.threshold,
            rules,
            exclusions,
            inspect_body: cfg.inspect_body,
            body_max_bytes: cfg.body_max_bytes,
        })
    }

    fn hooks(&self) -> Hooks {
        Hooks {
            on_request: true,
            on_request_body: self.inspect_body && self.rules.iter().any(Rule::reads_body),
            ..Hooks::default()
        }
    }

    fn body_limits(&self) -> BodyLimits {
        BodyLimits {
            request_max: self.body_max_bytes,
            ..BodyLimits::default()
        }
    }

    fn on_request(&self, verdict: &mut Verdict, client: &Client, req: &mut Request) -> Action {
        verdict.path = req.path().to_string();
        verdict.client = client.ip().to_string();
        self.score(verdict, &rules::head_inputs(req));
        self.decide(verdict, req)
    }

    fn on_request_body(&self, verdict: &mut Verdict, req: &Request, body: &mut Body) -> Action {
        let content_type = req.header("content-type").unwrap_or("");
        self.score(verdict, &rules::body_inputs(content_type, body.bytes()));
        self.decide(verdict, req)
    }
}

impl Waf {
    /// Adds the scores of the rules `inputs` match (each rule once per request).
    pub fn score(&self, verdict: &mut Verdict, inputs: &[Input]) {
        for (index, rule) in self.rules.iter().enumerate() {
            if verdict.hit.contains(&index) {
                continue;
            }
            let hit = inputs.iter().find(|input| {
                rule.matches(input)
                    && !self
                        .exclusions
                        .iter()
                        .any(|e| e.excludes(&rule.id, &verdict.path, input))
            });
            if let Some(input) = hit {
                verdict.hit.push(index);
                verdict.score += rule.score;
                verdict
                    .matched
                    .push(format!("{} [{:?}:{}]", rule.id, input.kind, input.name));
            }
        }
    }

    fn decide(&self, verdict: &mut Verdict, req: &Request) -> Action {
        if verdict.score < self.threshold {
            return Action::Continue;
        }
        let what = format!(
            "score {} >= {}: rules {} from {} {} {}",
            verdict.score,
            self.threshold,
            verdict.matched.join(", "),
            verdict.client,
            req.method(),
            verdict.path
        );
        match self.mode {
            Mode::Block => {
                log::warn!("waf: blocked, {what}");
                Action::Respond(forbidden())
            }
            Mode::Log => {
                if !verdict.logged {
                    log::warn!("waf: would block (log mode), {what}");
                    verdict.logged = true;
                }
                Action::Continue
            }
        }
    }
}

/// The answer to a blocked request: no rule id, no matched text.
pub fn forbidden() -> Reply {
    Reply::json(403, &json!({"error": "forbidden"})).header("cache-control", "no-store")
}

sluice_sdk::export_plugin!(Waf);

#[cfg(test)]
mod tests;
