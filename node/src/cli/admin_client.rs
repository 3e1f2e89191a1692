//! The admin API client of the CLI: one blocking HTTP request (ureq) with a deadline, the bearer
//! token for everything but the open probes, and the answer as JSON, an error naming the
//! node's `error` and `details` when the status is not a success.

use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

use super::AdminArgs;

/// Largest file `apply` sends (the API refuses bigger bodies anyway).
pub(super) const MAX_APPLY_BYTES: u64 = 8 * 1024 * 1024;

/// Bound on a command without `--timeout` (`drain` has its own, [`DRAIN_TIMEOUT`]).
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Bound on `drain` without `--timeout`: the drain itself (announce delay and grace) included.
pub(super) const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// The admin API's base URL from `--admin`: `http://host:port` as given (no trailing `/`), or
/// `host:port` (as `run --admin` takes it) with `http://` added.
///
/// # Errors
/// Another scheme (the admin API speaks plain HTTP), or nothing to connect to.
pub(super) fn base_url(admin: &str) -> anyhow::Result<String> {
    let given = admin.trim();
    let what = "--admin (or ZONE_EGRESS_ADMIN)";
    if given.contains('@') {
        // Never echoed: the part before `@` may be a password.
        bail!("{what}: give http://host:port or host:port, without user information (user@)");
    }
    let (scheme, rest) = given.split_once("://").unwrap_or(("http", given));
    if !scheme.eq_ignore_ascii_case("http") {
        bail!(
            "{what} {given:?}: the admin API speaks plain HTTP; give http://host:port or \
             host:port, not {scheme}://"
        );
    }
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() {
        bail!("{what} is empty: give http://host:port or host:port");
    }
    if authority.contains(char::is_whitespace) {
        bail!("{what} {given:?}: give http://host:port or host:port, without spaces");
    }
    if authority.contains(['/', '?', '#']) {
        bail!("{what} {given:?}: give only host:port, without a path or query");
    }
    let Some((host, port)) = authority.rsplit_once(':') else {
        bail!("{what} {given:?}: give host:port (the admin API has no default port)");
    };
    let bracketed = host.starts_with('[') && host.ends_with(']');
    if host.is_empty() || (host.contains(':') && !bracketed) {
        bail!("{what} {given:?}: give host:port, an IPv6 address in brackets ([::1]:9901)");
    }
    match port.parse::<u16>() {
        Ok(port) if port != 0 => Ok(format!("http://{host}:{port}")),
        _ => bail!("{what} {given:?}: {port:?} is not a port (1 to 65535)"),
    }
}

/// Checks `--admin` when the command line is parsed ([`base_url`]'s rules), so a bad address is
/// a usage error (exit 2) before any request.
///
/// # Errors
/// The address is not `http://host:port` or `host:port`.
pub fn parse_admin(text: &str) -> Result<String, String> {
    base_url(text)
        .map(|_| text.to_string())
        .map_err(|e| e.to_string())
}

/// Parses `--timeout`: a duration (`5s`, `1m`) of at least a millisecond.
///
/// # Errors
/// Not a duration, or shorter than a millisecond (nothing could answer).
pub fn parse_timeout(text: &str) -> Result<Duration, String> {
    let timeout = humantime::parse_duration(text).map_err(|_| {
        format!(
            "{:?} is not a duration: give a number and a unit, e.g. 500ms, 5s, 1m",
            text.chars().take(32).collect::<String>()
        )
    })?;
    if timeout < Duration::from_millis(1) {
        return Err(format!(
            "{text:?} is too short: give at least 1ms (e.g. 5s)"
        ));
    }
    Ok(timeout)
}

/// How often `drain --wait` asks `/ready` whether the node has drained.
pub const DRAIN_POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Bound on one `/ready` request of `drain --wait` (the whole wait is bounded by `--timeout`).
pub(super) const DRAIN_POLL_TIMEOUT: Duration = Duration::from_secs(2);

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .into()
}

/// The bearer token: `--token` (or `ZONE_EGRESS_TOKEN`), else the trimmed content of
/// `--token-file` (or `ZONE_EGRESS_TOKEN_FILE`), else none.
pub(super) fn bearer_token(admin: &AdminArgs) -> anyhow::Result<Option<String>> {
    if let Some(token) = &admin.token {
        if token.trim().is_empty() || token.chars().any(char::is_control) {
            anyhow::bail!(
                "--token (or ZONE_EGRESS_TOKEN) is empty or holds a line break or control \
                 character: give the token on one line"
            );
        }
        return Ok(Some(token.clone()));
    }
    let Some(path) = &admin.token_file else {
        return Ok(None);
    };
    crate::config::read_token_file(path)
        .map(Some)
        .map_err(anyhow::Error::msg)
}

/// Sends one request (with the token when it is a write) and returns the status and the JSON
/// answer, whatever the status.
pub(super) fn exchange(
    admin: &AdminArgs,
    method: &str,
    path: &str,
    body: Option<(&str, Vec<u8>)>,
    timeout: Duration,
) -> anyhow::Result<(ureq::http::StatusCode, Value)> {
    let url = format!("{}{}", base_url(&admin.admin)?, path);
    let agent = agent(timeout);
    // Probes and metrics are open: `health` never reads a token file.
    let open = ["/live", "/ready", "/metrics"].contains(&path);
    let auth = if open {
        None
    } else {
        bearer_token(admin)?.map(|t| format!("Bearer {t}"))
    };
    let result = match (method, body) {
        ("GET", _) => {
            let mut req = agent.get(&url);
            if let Some(a) = &auth {
                req = req.header("Authorization", a);
            }
            req.call()
        }
        ("DELETE", _) => {
            let mut req = agent.delete(&url);
            if let Some(a) = &auth {
                req = req.header("Authorization", a);
            }
            req.call()
        }
        (_, body) => {
            let mut req = agent.post(&url);
            if let Some(a) = &auth {
                req = req.header("Authorization", a);
            }
            match body {
                Some((content_type, bytes)) => {
                    req.header("Content-Type", content_type).send(&bytes[..])
                }
                None => req.send_empty(),
            }
        }
    };
    let mut response = match result {
        Ok(r) => r,
        Err(ureq::Error::Timeout(_)) => bail!(
            "no answer from the admin API at {url} within {} (--timeout)",
            humantime::format_duration(timeout)
        ),
        Err(e) => return Err(e).with_context(|| format!("cannot reach the admin API at {url}")),
    };
    let status = response.status();
    let text = response
        .body_mut()
        .with_config()
        .limit(64 * 1024 * 1024)
        .read_to_string()
        .with_context(|| format!("cannot read the answer of {url}"))?;
    let value: Value = serde_json::from_str(&text).with_context(|| {
        let start: String = text.chars().take(200).collect();
        format!("{url} answered {status} with something that is not JSON (is --admin a zone-egress admin API?): {start:?}")
    })?;
    Ok((status, value))
}

/// Sends one request and returns the JSON answer, or an error carrying the API's message.
pub(super) fn call(
    admin: &AdminArgs,
    method: &str,
    path: &str,
    body: Option<(&str, Vec<u8>)>,
) -> anyhow::Result<Value> {
    call_within(
        admin,
        method,
        path,
        body,
        admin.timeout.unwrap_or(REQUEST_TIMEOUT),
    )
}

/// [`call`] bounded by `timeout`.
pub(super) fn call_within(
    admin: &AdminArgs,
    method: &str,
    path: &str,
    body: Option<(&str, Vec<u8>)>,
    timeout: Duration,
) -> anyhow::Result<Value> {
    let (status, value) = exchange(admin, method, path, body, timeout)?;
    if !status.is_success() {
        let mut message = format!(
            "{status}: {}",
            value["error"].as_str().unwrap_or("request failed")
        );
        for detail in value["details"].as_array().into_iter().flatten() {
            message.push_str("\n  - ");
            message.push_str(detail.as_str().unwrap_or(&detail.to_string()));
        }
        if status == ureq::http::StatusCode::UNAUTHORIZED {
            let hint = if matches!(bearer_token(admin), Ok(Some(_))) {
                "\n  the node refused the token given (--token, --token-file or their \
                 environment variables): check it is this node's admin token (writes, \
                 secrets) or read token (reads)"
            } else {
                "\n  the node needs a token for this: pass it with --token or --token-file \
                 (or ZONE_EGRESS_TOKEN / ZONE_EGRESS_TOKEN_FILE)"
            };
            message.push_str(hint);
        }
        bail!("{message}");
    }
    Ok(value)
}

/// GETs `path` from the admin API at `admin` and parses the JSON answer.
pub fn fetch_json(admin: &str, path: &str) -> anyhow::Result<Value> {
    call(
        &AdminArgs {
            admin: admin.to_string(),
            timeout: None,
            token: None,
            token_file: None,
        },
        "GET",
        path,
        None,
    )
}
