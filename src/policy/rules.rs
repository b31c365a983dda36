//! The rules of a policy file and how one decision is reached: the first rule that applies
//! to the user and the operation decides; when none applies, the file's `default` does
//! (`deny` unless the file says `default = "allow"`).
//!
//! ```toml
//! default = "deny"
//!
//! [[rule]]
//! name = "no deletes for anyone"
//! users = ["*"]
//! tools = ["delete_*"]
//! effect = "deny"
//!
//! [[rule]]
//! users = ["group:admins"]
//! tools = ["*"]
//! annotations = { destructiveHint = true }
//! effect = "allow"
//! scope = "mcp:write"          # step-up: the call needs a token with this scope
//!
//! [[rule]]
//! users = ["*"]                # tools, prompts and resources of every kind
//! effect = "allow"
//! ```
//!
//! A user is named as the proxy names subjects (`password:admin`, `github:<login>`,
//! `google:<email>`, `oidc:<id>`), or by `email:<glob>`, `group:<name>` (OIDC `groups`
//! claim, GitHub `org` and `org:team`), `provider:<name>`, or `*`. Tools and prompts are
//! matched by name, resources by URI, with `*` and `?` globs. A rule naming none of `tools`,
//! `prompts` and `resources` applies to all three; one naming some applies only to those.

use std::collections::BTreeMap;

use serde::Deserialize;
use wildmatch::WildMatch;

pub use crate::cli::AuditArguments as Arguments;

/// What a rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    Allow,
    Deny,
}

/// What an operation is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Tool,
    Prompt,
    Resource,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Tool => "tool",
            Kind::Prompt => "prompt",
            Kind::Resource => "resource",
        }
    }
}

/// Who asks, as the policy sees them.
#[derive(Debug, Clone, Default)]
pub struct Who {
    /// `password`, `google`, `github` or `oidc`.
    pub provider: String,
    /// The provider's user id (user name, email, login, or the configured claim).
    pub user_id: String,
    /// The proxy's subject (`github:#<id>` for GitHub).
    pub subject: String,
    pub email: Option<String>,
    pub groups: Vec<String>,
    /// The scopes of the caller's token.
    pub scopes: Vec<String>,
}

/// The decision for one operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Refused, naming the rule (or the default) that refused.
    Deny(String),
    /// Allowed only with a token carrying this scope, which the caller's lacks.
    NeedsScope(String),
}

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    #[serde(default)]
    default: Option<Effect>,
    #[serde(default, rename = "rule")]
    rules: Vec<RuleSpec>,
    #[serde(default)]
    audit: Vec<AuditSpec>,
    /// Words for the consent page, per scope.
    #[serde(default)]
    scopes: BTreeMap<String, ScopeSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScopeSpec {
    description: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    name: Option<String>,
    users: Vec<String>,
    tools: Option<Vec<String>>,
    prompts: Option<Vec<String>>,
    resources: Option<Vec<String>>,
    #[serde(default)]
    annotations: BTreeMap<String, bool>,
    effect: Effect,
    scope: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditSpec {
    tools: Vec<String>,
    arguments: Arguments,
}

/// One user matcher.
#[derive(Debug)]
enum User {
    Anyone,
    Group(String),
    Email(WildMatch),
    Provider(String),
    /// `provider:user id` or the subject.
    Named(String),
}

impl User {
    fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s == "*" {
            return Ok(User::Anyone);
        }
        let Some((kind, rest)) = s.split_once(':').filter(|(_, r)| !r.is_empty()) else {
            return Err(format!(
                "user {s:?}: write `*`, `group:<name>`, `email:<glob>`, `provider:<name>` or a subject such as `github:<login>`"
            ));
        };
        Ok(match kind {
            "group" => User::Group(rest.to_string()),
            "email" => User::Email(WildMatch::new(&rest.to_ascii_lowercase())),
            "provider" => User::Provider(rest.to_string()),
            _ => User::Named(s.to_string()),
        })
    }

    fn matches(&self, who: &Who) -> bool {
        match self {
            User::Anyone => true,
            User::Group(g) => who.groups.iter().any(|m| m.eq_ignore_ascii_case(g)),
            User::Email(glob) => who
                .email
                .as_deref()
                .is_some_and(|e| glob.matches(&e.to_ascii_lowercase())),
            User::Provider(p) => who.provider == *p,
            User::Named(n) => who.is_named(n),
        }
    }
}

/// One rule, ready to match.
#[derive(Debug)]
struct Rule {
    name: String,
    users: Vec<User>,
    tools: Option<Vec<WildMatch>>,
    prompts: Option<Vec<WildMatch>>,
    resources: Option<Vec<WildMatch>>,
    annotations: BTreeMap<String, bool>,
    effect: Effect,
    scope: Option<String>,
}

/// Annotation names a rule may match (the MCP tool annotations that are booleans).
const ANNOTATIONS: [&str; 4] = [
    "readOnlyHint",
    "destructiveHint",
    "idempotentHint",
    "openWorldHint",
];

/// An annotation's value when a listed tool leaves it out (the MCP schema's defaults: a
/// tool is assumed to write, destructively, to an open world, unless it says otherwise).
fn annotation_default(name: &str) -> bool {
    matches!(name, "destructiveHint" | "openWorldHint")
}

/// Longest policy file read.
pub const MAX_FILE: u64 = 1024 * 1024;

/// Most rules in one file.
const MAX_RULES: usize = 10_000;

impl Rule {
    fn applies(&self, who: &Who, kind: Kind, name: &str) -> bool {
        let targets = match kind {
            Kind::Tool => &self.tools,
            Kind::Prompt => &self.prompts,
            Kind::Resource => &self.resources,
        };
        let everything = self.tools.is_none() && self.prompts.is_none() && self.resources.is_none();
        let named = match targets {
            Some(globs) => globs.iter().any(|g| g.matches(name)),
            None => everything,
        };
        named
            && (self.annotations.is_empty() || kind == Kind::Tool)
            && self.users.iter().any(|u| u.matches(who))
    }
}

/// A policy: its rules in order, its default, the audit overrides.
#[derive(Debug)]
pub struct Policy {
    rules: Vec<Rule>,
    default: Effect,
    audit: Vec<(Vec<WildMatch>, Arguments)>,
    descriptions: BTreeMap<String, String>,
}

impl Who {
    /// Whether `name` names this person as the proxy names people: their subject, or
    /// `provider:user id` (a GitHub user by login as well as by `#id`). The one rule for
    /// the policy's users and the operators of `--admin-users`.
    pub fn is_named(&self, name: &str) -> bool {
        name == self.subject
            || name
                .split_once(':')
                .is_some_and(|(p, id)| p == self.provider && id == self.user_id)
    }

    /// A signed-in person as the policy sees them, with the scopes of their token.
    pub fn from_identity(id: &crate::store::Identity, scopes: &[String]) -> Self {
        Who {
            provider: id.provider.clone(),
            user_id: id.user_id.clone(),
            subject: id.subject(),
            email: id.email.clone(),
            groups: id.groups.clone(),
            scopes: scopes.to_vec(),
        }
    }
}

impl Policy {
    /// Reads a policy file's text; the error says what is wrong, as a person reads it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: File = toml::from_str(text).map_err(|e| e.to_string())?;
        if file.rules.len() > MAX_RULES {
            return Err(format!("more than {MAX_RULES} rules"));
        }
        let mut rules = Vec::with_capacity(file.rules.len());
        for (i, spec) in file.rules.into_iter().enumerate() {
            let name = spec.name.unwrap_or_else(|| format!("rule {}", i + 1));
            if spec.users.is_empty() {
                return Err(format!(
                    "{name}: `users` names no one (write \"*\" for everyone)"
                ));
            }
            let users = spec
                .users
                .iter()
                .map(|u| User::parse(u))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("{name}: {e}"))?;
            if let Some(unknown) = spec
                .annotations
                .keys()
                .find(|k| !ANNOTATIONS.contains(&k.as_str()))
            {
                return Err(format!(
                    "{name}: unknown annotation {unknown:?} (one of {})",
                    ANNOTATIONS.join(", ")
                ));
            }
            if !spec.annotations.is_empty() && spec.tools.is_none() {
                return Err(format!(
                    "{name}: `annotations` are of tools: name the `tools` too"
                ));
            }
            if let Some(scope) = &spec.scope {
                if spec.effect == Effect::Deny {
                    return Err(format!("{name}: a `scope` belongs to an allow rule"));
                }
                if !valid_scope(scope) {
                    return Err(format!("{name}: {scope:?} is not a scope token"));
                }
            }
            let globs = |list: Option<Vec<String>>| {
                list.map(|l| l.iter().map(|g| WildMatch::new(g)).collect::<Vec<_>>())
            };
            rules.push(Rule {
                name,
                users,
                tools: globs(spec.tools),
                prompts: globs(spec.prompts),
                resources: globs(spec.resources),
                annotations: spec.annotations,
                effect: spec.effect,
                scope: spec.scope,
            });
        }
        let audit = file
            .audit
            .into_iter()
            .map(|a| {
                (
                    a.tools.iter().map(|g| WildMatch::new(g)).collect(),
                    a.arguments,
                )
            })
            .collect();
        let descriptions: BTreeMap<String, String> = file
            .scopes
            .into_iter()
            .map(|(scope, spec)| (scope, spec.description))
            .collect();
        if let Some(unused) = descriptions
            .keys()
            .find(|s| !rules.iter().any(|r| r.scope.as_ref() == Some(*s)))
        {
            return Err(format!(
                "[scopes.{unused:?}] describes a scope no rule requires"
            ));
        }
        Ok(Policy {
            rules,
            default: file.default.unwrap_or(Effect::Deny),
            audit,
            descriptions,
        })
    }

    /// The decision for `who` on `kind` `name`. `annotations` are the tool's (from the
    /// latest list seen), `None` when never seen: a rule that needs them then refuses.
    pub fn decide(
        &self,
        who: &Who,
        kind: Kind,
        name: &str,
        annotations: Option<&serde_json::Value>,
    ) -> Decision {
        for rule in self.rules.iter().filter(|r| r.applies(who, kind, name)) {
            if !rule.annotations.is_empty() {
                let Some(seen) = annotations else {
                    return Decision::Deny(format!(
                        "{} (it matches tools by annotation, and this tool's were never listed)",
                        rule.name
                    ));
                };
                let matches = rule.annotations.iter().all(|(k, want)| {
                    let given = seen.get(k).and_then(serde_json::Value::as_bool);
                    given.unwrap_or_else(|| annotation_default(k)) == *want
                });
                if !matches {
                    continue;
                }
            }
            return match (rule.effect, &rule.scope) {
                (Effect::Deny, _) => Decision::Deny(rule.name.clone()),
                (Effect::Allow, Some(scope)) if !who.scopes.iter().any(|s| s == scope) => {
                    Decision::NeedsScope(scope.clone())
                }
                (Effect::Allow, _) => Decision::Allow,
            };
        }
        match self.default {
            Effect::Allow => Decision::Allow,
            Effect::Deny => Decision::Deny("the policy's default".into()),
        }
    }

    /// Every scope the policy names (they become known scopes of the authorization server).
    pub fn scopes(&self) -> Vec<String> {
        let mut out: Vec<String> = self.rules.iter().filter_map(|r| r.scope.clone()).collect();
        out.sort();
        out.dedup();
        out
    }

    /// Whether `who` may hold `scope`: some rule requiring it names them.
    pub fn may_hold(&self, who: &Who, scope: &str) -> bool {
        self.rules
            .iter()
            .any(|r| r.scope.as_deref() == Some(scope) && r.users.iter().any(|u| u.matches(who)))
    }

    /// The words the file gives a scope, for the consent page.
    pub fn describe(&self, scope: &str) -> Option<String> {
        self.descriptions.get(scope).cloned()
    }

    /// How a tool's arguments are logged when the file overrides `fallback` for it.
    pub fn audit_arguments(&self, tool: &str, fallback: Arguments) -> Arguments {
        self.audit
            .iter()
            .find(|(globs, _)| globs.iter().any(|g| g.matches(tool)))
            .map_or(fallback, |(_, a)| *a)
    }
}

/// RFC 6749 §3.3 scope-token characters; `mcp` and `offline_access` are ours already.
fn valid_scope(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
        && s != crate::tokens::MCP_SCOPE
        && s != crate::tokens::OFFLINE_ACCESS
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn who(subject: &str, email: &str, groups: &[&str], scopes: &[&str]) -> Who {
        let (provider, user_id) = subject.split_once(':').unwrap();
        Who {
            provider: provider.into(),
            user_id: user_id.into(),
            subject: subject.into(),
            email: Some(email.into()),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
        }
    }

    const FILE: &str = r#"
        [[rule]]
        name = "no deletes"
        users = ["*"]
        tools = ["delete_*"]
        effect = "deny"

        [[rule]]
        name = "admins write"
        users = ["group:admins"]
        tools = ["*"]
        annotations = { destructiveHint = true }
        effect = "allow"
        scope = "mcp:write"

        [[rule]]
        name = "readers read"
        users = ["*"]
        tools = ["*"]
        annotations = { readOnlyHint = true }
        effect = "allow"

        [[rule]]
        name = "bob's prompt"
        users = ["oidc:bob", "email:*@example.org"]
        prompts = ["secret_*"]
        effect = "allow"

        [[rule]]
        name = "files"
        users = ["provider:oidc"]
        resources = ["file:///public/*"]
        effect = "allow"
    "#;

    #[test]
    fn the_first_rule_that_applies_decides() {
        let p = Policy::parse(FILE).unwrap();
        let alice = who("oidc:alice", "alice@example.com", &["admins"], &["mcp"]);
        let alice_up = who(
            "oidc:alice",
            "alice@example.com",
            &["admins"],
            &["mcp", "mcp:write"],
        );
        let bob = who(
            "oidc:bob",
            "bob@example.com",
            &["users"],
            &["mcp", "mcp:write"],
        );
        let carol = who("password:carol", "carol@example.org", &[], &["mcp"]);
        let destructive = json!({"destructiveHint": true});
        let read_only = json!({"readOnlyHint": true});
        let neither = json!({});
        use Decision::*;
        use Kind::*;
        let deny = |r: &str| Deny(r.to_string());
        #[rustfmt::skip]
        let table: Vec<(&Who, Kind, &str, Option<&serde_json::Value>, Decision)> = vec![
            // Order: the deny for delete_* comes first, whatever the annotations.
            (&alice_up, Tool, "delete_file", Some(&destructive), deny("no deletes")),
            // Step-up: allowed by a rule with a scope the token lacks.
            (&alice, Tool, "wipe", Some(&destructive), NeedsScope("mcp:write".into())),
            (&alice_up, Tool, "wipe", Some(&destructive), Allow),
            // Groups: bob is no admin; his destructive tool falls through to the default.
            (&bob, Tool, "wipe", Some(&destructive), deny("the policy's default")),
            (&bob, Tool, "echo", Some(&read_only), Allow),
            (&bob, Tool, "echo", Some(&neither), deny("the policy's default")),
            // Left out, an annotation has the schema's default: destructive unless said.
            (&alice, Tool, "plain", Some(&neither), NeedsScope("mcp:write".into())),
            // Annotations never seen: the first rule needing them refuses.
            (&bob, Tool, "echo", None, deny("readers read (it matches tools by annotation, and this tool's were never listed)")),
            // A rule of tools says nothing of prompts; globs; subjects and email globs.
            (&bob, Prompt, "secret_plan", None, Allow),
            (&carol, Prompt, "secret_plan", None, Allow),
            (&alice, Prompt, "secret_plan", None, deny("the policy's default")),
            (&bob, Prompt, "other", None, deny("the policy's default")),
            // Resources by URI, users by provider.
            (&alice, Resource, "file:///public/a.txt", None, Allow),
            (&carol, Resource, "file:///public/a.txt", None, deny("the policy's default")),
            (&alice, Resource, "file:///private/a.txt", None, deny("the policy's default")),
        ];
        for (who, kind, name, ann, want) in table {
            assert_eq!(
                p.decide(who, kind, name, ann),
                want,
                "{} {kind:?} {name}",
                who.subject
            );
        }
        assert_eq!(p.scopes(), vec!["mcp:write".to_string()]);
        assert!(p.may_hold(&alice, "mcp:write"));
        assert!(!p.may_hold(&bob, "mcp:write"));
        assert!(!p.may_hold(&alice, "mcp:other"));
    }

    #[test]
    fn a_default_allow_and_rules_for_everything() {
        let p = Policy::parse(
            "default = \"allow\"\n[[rule]]\nusers = [\"github:mallory\"]\neffect = \"deny\"",
        )
        .unwrap();
        let mallory = who("github:mallory", "m@example.com", &[], &[]);
        let ok = who("github:alice", "a@example.com", &[], &[]);
        for kind in [Kind::Tool, Kind::Prompt, Kind::Resource] {
            assert_eq!(
                p.decide(&mallory, kind, "x", None),
                Decision::Deny("rule 1".into())
            );
            assert_eq!(p.decide(&ok, kind, "x", None), Decision::Allow);
        }
        // A GitHub user's subject (`github:#<id>`) names them as well as their login.
        let mut by_id = who("github:mallory", "m@example.com", &[], &[]);
        by_id.subject = "github:#42".into();
        let p = Policy::parse("[[rule]]\nusers = [\"github:#42\"]\neffect = \"allow\"").unwrap();
        assert_eq!(p.decide(&by_id, Kind::Tool, "x", None), Decision::Allow);
        assert_eq!(
            p.decide(&ok, Kind::Tool, "x", None),
            Decision::Deny("the policy's default".into())
        );
    }

    #[test]
    fn mistakes_in_a_file_are_named() {
        for (text, says) in [
            ("[[rule]]\nusers = []\neffect = \"allow\"", "names no one"),
            (
                "[[rule]]\nusers = [\"alice\"]\neffect = \"allow\"",
                "write `*`",
            ),
            (
                "[[rule]]\nusers = [\"*\"]\neffect = \"maybe\"",
                "unknown variant",
            ),
            (
                "[[rule]]\nusers = [\"*\"]\ntools = [\"*\"]\nannotations = { fastHint = true }\neffect = \"allow\"",
                "unknown annotation",
            ),
            (
                "[[rule]]\nusers = [\"*\"]\nannotations = { readOnlyHint = true }\neffect = \"allow\"",
                "name the `tools`",
            ),
            (
                "[[rule]]\nusers = [\"*\"]\neffect = \"deny\"\nscope = \"x\"",
                "allow rule",
            ),
            (
                "[[rule]]\nusers = [\"*\"]\neffect = \"allow\"\nscope = \"a b\"",
                "not a scope",
            ),
            (
                "[[rule]]\nusers = [\"*\"]\neffect = \"allow\"\nscope = \"mcp\"",
                "not a scope",
            ),
            (
                "[[rule]]\nusers = [\"*\"]\neffect = \"allow\"\ncolour = 1",
                "unknown field",
            ),
            ("rule = 3", "invalid type"),
        ] {
            let e = Policy::parse(text).unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
        }
    }

    #[test]
    fn audit_overrides_by_tool() {
        let p = Policy::parse(
            "[[audit]]\ntools = [\"login_*\"]\narguments = \"redact\"\n[[audit]]\ntools = [\"echo\"]\narguments = \"full\"",
        )
        .unwrap();
        assert_eq!(
            p.audit_arguments("login_with", Arguments::Digest),
            Arguments::Redact
        );
        assert_eq!(
            p.audit_arguments("echo", Arguments::Digest),
            Arguments::Full
        );
        assert_eq!(
            p.audit_arguments("other", Arguments::Digest),
            Arguments::Digest
        );
    }
}
