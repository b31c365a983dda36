//! The policy and the audit log, applied to every exchange with the MCP server whatever
//! the backend (HTTP or stdio) and the era (a 2025 session or a stateless 2026-07-28
//! request): the router hands the request here, and this hands it on to the backend only if
//! the policy lets every call in it through.
//!
//! - A `tools/call`, `prompts/get` or `resources/read` the policy refuses never reaches the
//!   server: the client gets a JSON-RPC error naming the rule. One allowed only with a scope
//!   the token lacks gets `403 insufficient_scope` naming every scope the request needs (the
//!   MCP authorization spec's step-up).
//! - `tools/list`, `prompts/list` and `resources/list` answers lose what the caller may not
//!   use, page by page, in JSON and in SSE answers ([`answers`]); so do list results replayed
//!   on a GET stream, recognised by their shape.
//! - Every call, read and get (and every refused attempt) is one audit record, with the
//!   outcome the server's answer gives.
//!
//! Nothing here runs without `--policy-file` or `--audit-log`; the HTTP/1 fast lane, which
//! serves POSTs without the router, steps aside when either is on.

mod answers;

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Value, json};

use crate::audit::{AuditLog, Record};
use crate::clock::Clock;
use crate::config::Site;
use crate::error::jsonrpc_error_coded;
use crate::gate::{Caller, GateError};
use crate::metrics::{EventLabels, count};
use crate::policy::{Decision, Kind, PolicyFile, Who};
use crate::store::{ClientRecord, Repo};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

/// The JSON-RPC error code of a call the policy refuses (in the implementation-defined
/// server-error range of JSON-RPC 2.0).
pub const DENIED: i64 = -32001;
/// JSON-RPC 2.0's "Invalid Request" and "Parse error".
const INVALID_REQUEST: i64 = -32600;
const PARSE_ERROR: i64 = -32700;
/// The code of a call refused because the audit log cannot record it.
pub const UNRECORDED: i64 = -32002;

/// Tools whose annotations are remembered per session (or user): the last lists seen.
const REMEMBERED: usize = 10_000;

/// What the relay was set up with.
pub struct Relay {
    policy: Option<Arc<PolicyFile>>,
    audit: Option<Arc<AuditLog>>,
    clock: Clock,
    /// Per session (or per user without one): tool name → annotations, from the lists seen.
    annotations: quick_cache::sync::Cache<String, Arc<HashMap<String, Value>>>,
    decisions: Family<EventLabels, Counter>,
    /// Client id → its registered name, for audit records.
    client_names: quick_cache::sync::Cache<String, Option<String>>,
}

/// One operation of a request that the policy judges and the audit log records.
#[derive(Debug)]
struct Op {
    id: Value,
    method: &'static str,
    kind: Kind,
    name: String,
    arguments: Option<Value>,
}

/// The request, as the relay reads it.
#[derive(Debug, Default)]
struct Read {
    ops: Vec<Op>,
    /// Ids of list requests, and what they list.
    lists: Vec<(Value, Kind)>,
    /// Ids of every request, in order (for a batch's refusal).
    requests: Vec<Value>,
    batch: bool,
}

/// What the audit record of an exchange says besides the operation.
struct Context {
    who: String,
    client_id: String,
    client_name: Option<String>,
    session: Option<String>,
    era: &'static str,
    /// The server of `--config` the request is for.
    server: Option<String>,
    /// Where the tools' annotations are remembered.
    key: String,
}

impl Relay {
    /// The relay, or `None` when neither a policy nor an audit log is configured.
    pub fn new(
        policy: Option<Arc<PolicyFile>>,
        audit: Option<Arc<AuditLog>>,
        clock: Clock,
        decisions: Family<EventLabels, Counter>,
    ) -> Option<Arc<Self>> {
        (policy.is_some() || audit.is_some()).then(|| {
            Arc::new(Relay {
                policy,
                audit,
                clock,
                annotations: quick_cache::sync::Cache::new(REMEMBERED),
                decisions,
                client_names: quick_cache::sync::Cache::new(1000),
            })
        })
    }

    /// The policy file, for the authorization server's scopes.
    pub fn policy(&self) -> Option<&Arc<PolicyFile>> {
        self.policy.as_ref()
    }

    /// The audit log, for the operator console's actions.
    pub fn audit(&self) -> Option<&Arc<AuditLog>> {
        self.audit.as_ref()
    }

    /// Serves one request: judged, recorded, and handed to `next` (the backend) if allowed.
    pub async fn serve<F, Fut>(
        self: &Arc<Self>,
        caller: &Caller,
        site: &Site,
        repo: &Repo,
        req: Request,
        next: F,
    ) -> Response
    where
        F: FnOnce(Request) -> Fut,
        Fut: std::future::Future<Output = Response>,
    {
        let who = who(caller);
        let session = header_value(req.headers(), "mcp-session-id");
        let modern =
            header_value(req.headers(), "mcp-protocol-version").as_deref() == Some("2026-07-28");
        let mut context = Context {
            who: caller.subject().to_string(),
            client_id: caller.client_id().to_string(),
            client_name: None,
            era: if modern { "2026-07-28" } else { "2025" },
            server: site.server.name.clone(),
            key: session
                .clone()
                .unwrap_or_else(|| format!("user {}", caller.subject())),
            session,
        };
        let started = std::time::Instant::now();
        if req.method() != Method::POST {
            let resp = next(req).await;
            // A GET stream may replay a list answer (Last-Event-ID): known by its shape.
            return match &self.policy {
                Some(_) => {
                    answers::watch(
                        self.clone(),
                        who,
                        context,
                        Read::default(),
                        true,
                        started,
                        resp,
                    )
                    .await
                }
                None => resp,
            };
        }
        let (parts, body) = req.into_parts();
        let body = match crate::request_body::read_whole(body).await {
            Ok(b) => b,
            Err(refused) => return refused,
        };
        let (read, named_twice) = match read_request(&body) {
            Ok(read) => (read, false),
            Err(Unread::NamedTwice(read)) => (read, true),
            // What the policy cannot read, it cannot judge, and a server's reader may take
            // it (`JSON.parse` takes a lone surrogate or `1e999`, serde_json does not): the
            // call would pass unjudged. Refused: fail closed.
            Err(Unread::NotJson) => {
                return jsonrpc_error_coded(
                    StatusCode::BAD_REQUEST,
                    PARSE_ERROR,
                    "Parse error: the body is not JSON the policy can read",
                );
            }
        };
        if self.audit.is_some() && !read.ops.is_empty() {
            context.client_name = self.client_name(repo, caller.client_id()).await;
        }
        if named_twice {
            return self.ambiguous(&context, &read);
        }
        if let Some(refused) = self.judge(&who, &context, &read, site) {
            return refused;
        }
        let started = std::time::Instant::now();
        let resp = next(Request::from_parts(parts, Body::from(body))).await;
        if read.ops.is_empty() && (read.lists.is_empty() || self.policy.is_none()) {
            return resp;
        }
        answers::watch(self.clone(), who, context, read, false, started, resp).await
    }

    /// The answer to a body with an object that names a member twice: the policy and the
    /// audit log would read one of the two values and the server perhaps the other (a tool
    /// allowed here, another run there), so it is refused, not guessed (src/json_names.rs),
    /// and each call in it is recorded as denied.
    fn ambiguous(&self, context: &Context, read: &Read) -> Response {
        const WHY: &str = "an object in the body names a member twice";
        for op in &read.ops {
            count(&self.decisions, "deny");
            self.record(context, op, 0, "denied", Some(WHY));
        }
        jsonrpc_error_coded(
            StatusCode::BAD_REQUEST,
            INVALID_REQUEST,
            &format!("Invalid Request: {WHY}"),
        )
    }

    /// The answer to a request the policy or the audit log refuses, or `None` to send it.
    fn judge(&self, who: &Who, context: &Context, read: &Read, site: &Site) -> Option<Response> {
        let mut denied: Vec<(&Op, String)> = Vec::new();
        let mut needs: Vec<(&Op, String)> = Vec::new();
        if let Some(file) = &self.policy {
            let policy = file.current();
            let remembered = self.annotations.get(&context.key);
            for op in &read.ops {
                let annotations = remembered.as_ref().and_then(|m| m.get(&op.name));
                match policy.decide(who, op.kind, &op.name, annotations) {
                    Decision::Allow => count(&self.decisions, "allow"),
                    Decision::Deny(rule) => {
                        count(&self.decisions, "deny");
                        denied.push((op, rule));
                    }
                    Decision::NeedsScope(scope) => {
                        count(&self.decisions, "step_up");
                        needs.push((op, scope));
                    }
                }
            }
        }
        if !denied.is_empty() {
            for (op, rule) in &denied {
                self.record(context, op, 0, "denied", Some(rule));
            }
            return Some(refusal(read, &denied, DENIED));
        }
        if !needs.is_empty() {
            let mut scopes: Vec<String> = who.scopes.clone();
            for (op, scope) in &needs {
                self.record(context, op, 0, "step_up", Some(scope));
                if !scopes.contains(scope) {
                    scopes.push(scope.clone());
                }
            }
            return Some(
                GateError::InsufficientScope(scopes)
                    .at(site)
                    .into_response(),
            );
        }
        if let Some(audit) = &self.audit
            && !read.ops.is_empty()
            && !audit.admits_calls()
        {
            let why = "the audit log cannot be written".to_string();
            let unrecorded: Vec<(&Op, String)> =
                read.ops.iter().map(|op| (op, why.clone())).collect();
            for op in &read.ops {
                self.record(context, op, 0, "refused", Some(&why));
            }
            return Some(refusal(read, &unrecorded, UNRECORDED));
        }
        None
    }

    /// Writes an operation's audit record (when the log is on).
    fn record(
        &self,
        context: &Context,
        op: &Op,
        duration_ms: u64,
        outcome: &str,
        rule: Option<&str>,
    ) {
        let Some(audit) = &self.audit else { return };
        let mode = match (&self.policy, op.kind) {
            (Some(file), Kind::Tool) => file.current().audit_arguments(&op.name, audit.arguments),
            _ => audit.arguments,
        };
        audit.write(&Record {
            time: self.clock.now(),
            user: &context.who,
            client_id: &context.client_id,
            client_name: context.client_name.as_deref(),
            session: context.session.as_deref(),
            era: context.era,
            server: context.server.as_deref(),
            method: op.method,
            name: &op.name,
            duration_ms,
            outcome,
            rule,
            arguments: crate::audit::arguments(op.arguments.as_ref(), mode),
        });
    }

    /// A client's registered name (remembered; a client renamed keeps its first name here
    /// until it drops out of the cache).
    async fn client_name(&self, repo: &Repo, client_id: &str) -> Option<String> {
        if let Some(name) = self.client_names.get(client_id) {
            return name;
        }
        let name = match repo.get::<ClientRecord>(client_id.as_bytes()).await {
            Ok(found) => found.and_then(|c| c.client_name),
            Err(_) => return None,
        };
        self.client_names
            .insert(client_id.to_string(), name.clone());
        name
    }

    /// Remembers the annotations of the tools a list named, under `key`.
    fn remember(&self, key: &str, tools: &[Value]) {
        let mut map: HashMap<String, Value> = self
            .annotations
            .get(key)
            .map(|m| (*m).clone())
            .unwrap_or_default();
        for tool in tools {
            if let Some(name) = tool.get("name").and_then(Value::as_str) {
                let annotations = tool
                    .get("annotations")
                    .cloned()
                    .unwrap_or_else(|| json!({}));
                map.insert(name.to_string(), annotations);
            }
        }
        self.annotations.insert(key.to_string(), Arc::new(map));
    }
}

/// The caller as the policy sees them.
fn who(caller: &Caller) -> Who {
    if let Some(id) = caller.identity() {
        return Who::from_identity(id, caller.scopes());
    }
    // A token minted without the identity record: the subject names provider and user.
    let subject = caller.subject().to_string();
    let (provider, user_id) = subject.split_once(':').unwrap_or(("", &subject));
    Who {
        provider: provider.to_string(),
        user_id: user_id.to_string(),
        scopes: caller.scopes().to_vec(),
        subject: subject.clone(),
        ..Who::default()
    }
}

fn header_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Why a request body is not judged.
enum Unread {
    /// Not JSON that serde_json reads.
    NotJson,
    /// An object in it names a member twice (src/json_names.rs): what was read, for the
    /// audit records of its calls.
    NamedTwice(Read),
}

/// The calls, reads, gets and lists of a request body (one message or a batch). JSON that
/// is not JSON-RPC has none: the backend answers it as it would.
fn read_request(body: &[u8]) -> Result<Read, Unread> {
    let mut read = Read::default();
    let crate::json_names::Read { value, names_twice } =
        crate::json_names::read(body).ok_or(Unread::NotJson)?;
    let messages = match value {
        Value::Array(items) => {
            read.batch = true;
            items
        }
        one => vec![one],
    };
    for m in messages {
        let (Some(id), Some(method)) = (m.get("id"), m.get("method").and_then(Value::as_str))
        else {
            continue;
        };
        read.requests.push(id.clone());
        let params = m.get("params");
        let field = |f: &str| {
            params
                .and_then(|p| p.get(f))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let (method, kind, name) = match method {
            "tools/call" => ("tools/call", Kind::Tool, field("name")),
            "prompts/get" => ("prompts/get", Kind::Prompt, field("name")),
            "resources/read" => ("resources/read", Kind::Resource, field("uri")),
            "tools/list" => {
                read.lists.push((id.clone(), Kind::Tool));
                continue;
            }
            "prompts/list" => {
                read.lists.push((id.clone(), Kind::Prompt));
                continue;
            }
            "resources/list" => {
                read.lists.push((id.clone(), Kind::Resource));
                continue;
            }
            _ => continue,
        };
        read.ops.push(Op {
            id: id.clone(),
            method,
            kind,
            name,
            arguments: params.and_then(|p| p.get("arguments")).cloned(),
        });
    }
    if names_twice {
        return Err(Unread::NamedTwice(read));
    }
    Ok(read)
}

/// The JSON-RPC answer refusing `refused` operations: one error, or for a batch an error per
/// request (those not refused themselves were not sent either).
fn refusal(read: &Read, refused: &[(&Op, String)], code: i64) -> Response {
    let error = |id: &Value| {
        let why = refused.iter().find(|(op, _)| op.id == *id).map(|(op, why)| {
            let message = if code == DENIED {
                format!("{} {:?} is not allowed for you by the proxy's policy ({why})", op.kind.as_str(), op.name)
            } else {
                format!("not served: {why}")
            };
            (message, json!({ "decision": if code == DENIED { "denied" } else { "unrecorded" }, "rule": why }))
        });
        let (message, data) = why.unwrap_or_else(|| {
            (
                "not sent: another request of this batch was refused".to_string(),
                Value::Null,
            )
        });
        let mut error = json!({ "code": code, "message": message });
        if !data.is_null() {
            error["data"] = data;
        }
        json!({ "jsonrpc": "2.0", "id": id, "error": error })
    };
    let body = if read.batch {
        Value::Array(read.requests.iter().map(error).collect())
    } else {
        error(&refused[0].0.id)
    };
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        Bytes::from(body.to_string()),
    )
        .into_response()
}
