//! Validated leaf values shared by the resource kinds: names, ports, hosts, `host:port`
//! addresses and service tags. Each is a newtype that can only be built by its `parse`, so a
//! value of it is valid by construction.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU16;

use serde::{Serialize, Serializer};

use super::error::{Problem, echo};

/// The tag that names the service of an inbound or an external service.
pub const SERVICE_TAG: &str = "kuma.io/service";

/// Characters the SNI tag form (`backend{mesh=default,version=v1}`) and the hash input
/// (`name;mesh;k=v,...`) reserve; no name or tag may contain them.
pub const SNI_RESERVED: [char; 5] = ['{', '}', ',', '=', ';'];

/// Longest resource name, as in Kuma (a DNS subdomain).
pub const MAX_NAME_LEN: usize = 253;

/// A resource, mesh, zone or backend name: 1 to 253 characters of lowercase letters, digits,
/// `-` and `.`, every `.`-separated part starting and ending with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Name(String);

impl Name {
    /// Checks the naming rules.
    pub fn parse(raw: &str) -> Result<Name, Problem> {
        let invalid = |reason| Problem::InvalidName {
            name: echo(raw),
            reason,
        };
        if raw.is_empty() || raw.len() > MAX_NAME_LEN {
            return Err(invalid("must be 1 to 253 characters long"));
        }
        if let Some(ch) = raw.chars().find(|c| SNI_RESERVED.contains(c)) {
            return Err(Problem::ReservedCharacter {
                value: echo(raw),
                ch,
            });
        }
        let allowed =
            |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.';
        if !raw.bytes().all(allowed) {
            return Err(invalid(
                "only lowercase letters, digits, '-' and '.' are allowed",
            ));
        }
        let alnum = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_alphanumeric());
        if raw
            .split('.')
            .any(|part| !alnum(part.as_bytes().first()) || !alnum(part.as_bytes().last()))
        {
            return Err(invalid(
                "every '.'-separated part must start and end with a letter or digit",
            ));
        }
        Ok(Name(raw.to_string()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for Name {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for Name {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// A TCP/UDP port in 1..65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Port(NonZeroU16);

impl Port {
    /// A port, unless it is 0.
    pub fn new(port: u16) -> Option<Port> {
        NonZeroU16::new(port).map(Port)
    }

    /// The port number.
    pub fn get(self) -> u16 {
        self.0.get()
    }

    /// A port given as a YAML/JSON integer.
    pub(crate) fn from_int(raw: i64) -> Result<Port, Problem> {
        u16::try_from(raw)
            .ok()
            .and_then(Port::new)
            .ok_or_else(|| Problem::InvalidPort(raw.to_string()))
    }

    /// A port given as the text after `:` in an address.
    pub(crate) fn from_text(raw: &str) -> Result<Port, Problem> {
        let digits = !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit());
        digits
            .then(|| raw.parse::<u16>().ok())
            .flatten()
            .and_then(Port::new)
            .ok_or_else(|| Problem::InvalidPort(echo(raw)))
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A host: an IP address or a DNS name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Host {
    /// An IPv4 or IPv6 address.
    Ip(IpAddr),
    /// A DNS name (letters, digits, `-`, `_`; labels of 1 to 63; at most 253 in all).
    Dns(String),
}

impl Host {
    /// An IP address or a DNS name; IPv6 without brackets.
    pub fn parse(raw: &str) -> Result<Host, Problem> {
        if let Ok(ip) = raw.parse::<IpAddr>() {
            return Ok(Host::Ip(ip));
        }
        if is_dns_name(raw) {
            return Ok(Host::Dns(raw.to_string()));
        }
        Err(Problem::InvalidHost(echo(raw)))
    }

    /// The IP address, when the host is one.
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Host::Ip(ip) => Some(*ip),
            Host::Dns(_) => None,
        }
    }
}

/// A DNS name: labels of 1..63 letters, digits, `-` or `_`, not starting or ending with `-`,
/// 253 characters at most, the last label not all digits (so `10.0.0.256` is not a name).
fn is_dns_name(raw: &str) -> bool {
    let label_ok = |label: &str| {
        let bytes = label.as_bytes();
        !bytes.is_empty()
            && bytes.len() <= 63
            && bytes
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && bytes.first() != Some(&b'-')
            && bytes.last() != Some(&b'-')
    };
    let last_numeric = raw
        .rsplit('.')
        .next()
        .is_some_and(|last| last.bytes().all(|b| b.is_ascii_digit()));
    !raw.is_empty() && raw.len() <= MAX_NAME_LEN && raw.split('.').all(label_ok) && !last_numeric
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(ip) => write!(f, "{ip}"),
            Host::Dns(name) => f.write_str(name),
        }
    }
}

impl Serialize for Host {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// A `host:port` address; IPv6 hosts in brackets (`[2001:db8::1]:443`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostPort {
    /// The host.
    pub host: Host,
    /// The port.
    pub port: Port,
}

impl HostPort {
    /// Parses `host:port` or `[ipv6]:port`.
    pub fn parse(raw: &str) -> Result<HostPort, Problem> {
        let not_host_port = || Problem::NotHostPort(echo(raw));
        let (host, port) = raw.rsplit_once(':').ok_or_else(not_host_port)?;
        let host = if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            let ip = inner
                .parse::<Ipv6Addr>()
                .map_err(|_| Problem::InvalidHost(echo(inner)))?;
            Host::Ip(IpAddr::V6(ip))
        } else if host.is_empty() || host.contains(':') || host.contains('[') {
            return Err(not_host_port());
        } else {
            Host::parse(host)?
        };
        Ok(HostPort {
            host,
            port: Port::from_text(port)?,
        })
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            _ => write!(f, "{}:{}", self.host, self.port),
        }
    }
}

impl Serialize for HostPort {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Tags of an inbound or an external service; `kuma.io/service` is always present and valid.
///
/// Keys and values are non-empty, free of whitespace and control characters, and free of the
/// characters the SNI formats reserve ([`SNI_RESERVED`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct ServiceTags(BTreeMap<String, String>);

impl ServiceTags {
    /// Checks the tag rules.
    pub fn parse(tags: BTreeMap<String, String>) -> Result<ServiceTags, Problem> {
        match tags.get(SERVICE_TAG) {
            None => return Err(Problem::MissingServiceTag),
            Some(service) if service.is_empty() => return Err(Problem::EmptyServiceTag),
            Some(_) => {}
        }
        for (key, value) in &tags {
            let invalid = |reason| Problem::InvalidTag {
                key: echo(key),
                reason,
            };
            if key.is_empty() {
                return Err(invalid("the key must not be empty"));
            }
            if value.is_empty() {
                return Err(invalid("the value must not be empty"));
            }
            for text in [key, value] {
                if let Some(ch) = text.chars().find(|c| SNI_RESERVED.contains(c)) {
                    return Err(Problem::ReservedCharacter {
                        value: echo(text),
                        ch,
                    });
                }
                if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(invalid("must not contain whitespace or control characters"));
                }
            }
        }
        Ok(ServiceTags(tags))
    }

    /// The value of `kuma.io/service`.
    pub fn service(&self) -> &str {
        // invariant: `parse` refuses tags without `kuma.io/service`.
        self.0
            .get(SERVICE_TAG)
            .map(String::as_str)
            .unwrap_or_default()
    }

    /// The value of one tag.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// All tags, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The tags as a map.
    pub fn as_map(&self) -> &BTreeMap<String, String> {
        &self.0
    }
}

/// `labels` of any resource (Kuma: `map<string,string>` on every resource's meta): keys of 1 to
/// 317 characters (an optional DNS-subdomain prefix and `/`, then a name, as Kubernetes label
/// keys) and values of at most 253 characters, neither with whitespace or control characters.
/// Stored and returned; `kuma.io/…` labels have no effect on the egress.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Labels(BTreeMap<String, String>);

impl Labels {
    /// Checks the label rules.
    pub fn parse(labels: BTreeMap<String, String>) -> Result<Labels, Problem> {
        for (key, value) in &labels {
            let invalid = |reason| Problem::InvalidLabel {
                key: echo(key),
                reason,
            };
            if key.is_empty() || key.len() > 317 {
                return Err(invalid("the key must be 1 to 317 characters long"));
            }
            if value.len() > MAX_NAME_LEN {
                return Err(invalid("the value must be at most 253 characters long"));
            }
            if [key, value]
                .iter()
                .any(|t| t.chars().any(|c| c.is_whitespace() || c.is_control()))
            {
                return Err(invalid("must not contain whitespace or control characters"));
            }
        }
        Ok(Labels(labels))
    }

    /// Whether there is no label.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The value of one label.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
}

/// A duration as Kuma writes it in `dpCert.rotation.expiration` and `caCert.expiration`:
/// digits and one unit of `y` (365 days), `w`, `d`, `h`, `m`, `s`, `ms`, or `0`
/// (`pkg/core/resources/apis/mesh/mesh_helpers.go` `ParseDuration`). Keeps the text it was
/// written as, so it round-trips.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KumaDuration {
    text: String,
    millis: u64,
}

impl KumaDuration {
    /// Parses Kuma's form.
    pub fn parse(raw: &str) -> Result<KumaDuration, Problem> {
        let bad = || Problem::InvalidDuration(echo(raw));
        if raw == "0" {
            return Ok(KumaDuration {
                text: raw.to_string(),
                millis: 0,
            });
        }
        let digits = raw.bytes().take_while(u8::is_ascii_digit).count();
        let (number, unit) = raw.split_at(digits);
        let n: u64 = number.parse().map_err(|_| bad())?;
        let unit_ms: u64 = match unit {
            "y" => 365 * 86_400_000,
            "w" => 7 * 86_400_000,
            "d" => 86_400_000,
            "h" => 3_600_000,
            "m" => 60_000,
            "s" => 1_000,
            "ms" => 1,
            _ => return Err(bad()),
        };
        Ok(KumaDuration {
            text: raw.to_string(),
            millis: n.checked_mul(unit_ms).ok_or_else(bad)?,
        })
    }

    /// The duration.
    pub fn get(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.millis)
    }

    /// The text as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl Serialize for KumaDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_rules() {
        for good in ["default", "a", "zone-b-ingress", "httpbin.example", "0abc9"] {
            assert!(Name::parse(good).is_ok(), "{good}");
        }
        let long = "a".repeat(254);
        for (bad, fragment) in [
            ("", "must be 1 to 253 characters long"),
            (long.as_str(), "must be 1 to 253 characters long"),
            (
                "Default",
                "only lowercase letters, digits, '-' and '.' are allowed",
            ),
            (
                "a_b",
                "only lowercase letters, digits, '-' and '.' are allowed",
            ),
            ("-a", "must start and end with a letter or digit"),
            ("a.", "must start and end with a letter or digit"),
            ("a..b", "must start and end with a letter or digit"),
            ("a{b", "must not contain `{`"),
            ("a=b", "must not contain `=`"),
            ("a;b", "must not contain `;`"),
        ] {
            let message = Name::parse(bad).unwrap_err().to_string();
            assert!(message.contains(fragment), "{bad}: {message}");
        }
        assert!(Name::parse(&"a".repeat(253)).is_ok());
    }

    #[test]
    fn long_values_are_shortened_in_messages() {
        let message = Name::parse(&"A".repeat(10_000)).unwrap_err().to_string();
        assert!(message.len() < 200, "{message}");
    }

    #[test]
    fn hosts_are_ips_or_dns_names() {
        assert_eq!(
            Host::parse("10.0.0.12").unwrap().ip(),
            Some("10.0.0.12".parse().unwrap())
        );
        assert!(Host::parse("2001:db8::1").unwrap().ip().is_some());
        assert_eq!(
            Host::parse("httpbin.example.org").unwrap(),
            Host::Dns("httpbin.example.org".into())
        );
        assert!(Host::parse("my_svc.ns").is_ok());
        for bad in [
            "",
            "a b",
            "-a.org",
            "a..org",
            "10.0.0.256",
            "bad!host",
            "[::1]",
        ] {
            let message = Host::parse(bad).unwrap_err().to_string();
            assert!(
                message.contains("is neither an IP address nor a DNS name"),
                "{bad}: {message}"
            );
        }
    }

    #[test]
    fn host_port_round_trips() {
        for raw in [
            "httpbin.example.org:443",
            "10.0.0.1:1",
            "[2001:db8::1]:65535",
        ] {
            assert_eq!(HostPort::parse(raw).unwrap().to_string(), raw);
        }
        for (bad, fragment) in [
            ("httpbin.example.org", "is not host:port"),
            (":443", "is not host:port"),
            ("2001:db8::1:443", "is not host:port"),
            ("h:0", "invalid port `0`"),
            ("h:65536", "invalid port `65536`"),
            ("h:", "invalid port ``"),
            ("h:+80", "invalid port `+80`"),
            ("h!:80", "is neither an IP address nor a DNS name"),
            ("[nope]:80", "is neither an IP address nor a DNS name"),
        ] {
            let message = HostPort::parse(bad).unwrap_err().to_string();
            assert!(message.contains(fragment), "{bad}: {message}");
        }
    }

    #[test]
    fn ports_from_integers() {
        assert_eq!(Port::from_int(8443).unwrap().get(), 8443);
        for bad in [0, -1, 65536] {
            let message = Port::from_int(bad).unwrap_err().to_string();
            assert!(
                message.contains(&format!("invalid port `{bad}`")),
                "{message}"
            );
        }
    }

    fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn service_tags_rules() {
        let ok = ServiceTags::parse(tags(&[
            (SERVICE_TAG, "backend_kuma-demo_svc_8080"),
            ("version", "v1"),
        ]))
        .unwrap();
        assert_eq!(ok.service(), "backend_kuma-demo_svc_8080");
        assert_eq!(ok.get("version"), Some("v1"));
        for (bad, fragment) in [
            (
                tags(&[("version", "v1")]),
                "tag `kuma.io/service` is required",
            ),
            (
                tags(&[(SERVICE_TAG, "")]),
                "tag `kuma.io/service` must not be empty",
            ),
            (tags(&[(SERVICE_TAG, "a{b")]), "must not contain `{`"),
            (tags(&[(SERVICE_TAG, "a,b")]), "must not contain `,`"),
            (tags(&[(SERVICE_TAG, "a}")]), "must not contain `}`"),
            (
                tags(&[(SERVICE_TAG, "s"), ("", "x")]),
                "the key must not be empty",
            ),
            (
                tags(&[(SERVICE_TAG, "s"), ("k", "")]),
                "the value must not be empty",
            ),
            (
                tags(&[(SERVICE_TAG, "s"), ("k", "a b")]),
                "must not contain whitespace",
            ),
        ] {
            let message = ServiceTags::parse(bad).unwrap_err().to_string();
            assert!(message.contains(fragment), "{message}");
        }
    }
}
