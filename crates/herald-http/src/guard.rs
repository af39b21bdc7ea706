//! The SSRF guard for hosts a user chose. Three checks, each at the point where it cannot be
//! bypassed:
//! - the URL: scheme, userinfo, control characters, host length, port, and IP literals (which
//!   never reach a resolver), after WHATWG parsing has turned `0x7f000001`, `0177.1` or
//!   `2130706433` into the address they mean;
//! - the resolver: every address a name resolves to is checked, and the connector dials only those
//!   addresses, so a DNS answer that changes between check and use (rebinding) cannot slip through;
//! - every redirect hop: the same URL checks again, at most 3 hops, http and https only.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use url::Url;

/// Why a destination was refused. Its message names the reason and never carries credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("refused destination: {0}")]
pub struct Blocked(pub String);

/// A CIDR range, e.g. `10.0.0.0/8` or `fd00::/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Option<Cidr> {
        let (addr, len) = s.trim().split_once('/')?;
        let addr: IpAddr = addr.parse().ok()?;
        let len: u8 = len.parse().ok()?;
        (len <= if addr.is_ipv4() { 32 } else { 128 }).then_some(Cidr { addr, len })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => prefix_eq(&net.octets(), &ip.octets(), self.len),
            (IpAddr::V6(net), IpAddr::V6(ip)) => prefix_eq(&net.octets(), &ip.octets(), self.len),
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

fn prefix_eq(a: &[u8], b: &[u8], len: u8) -> bool {
    let (full, rest) = ((len / 8) as usize, len % 8);
    a[..full] == b[..full] && (rest == 0 || (a[full] ^ b[full]) >> (8 - rest) == 0)
}

/// IPv4-mapped and IPv4-compatible IPv6 addresses become the IPv4 address they carry, so
/// `[::ffff:169.254.169.254]` is judged as `169.254.169.254`.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

const V4_BLOCKED: &[(&str, &str)] = &[
    ("0.0.0.0/8", "\"this\" network"),
    ("10.0.0.0/8", "private network"),
    ("100.64.0.0/10", "carrier-grade NAT (includes cloud metadata at 100.100.100.200)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local (includes cloud metadata at 169.254.169.254)"),
    ("172.16.0.0/12", "private network"),
    ("192.0.0.0/24", "IETF protocol assignments"),
    ("192.0.2.0/24", "documentation"),
    ("192.88.99.0/24", "6to4 relay anycast"),
    ("192.168.0.0/16", "private network"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),
];

const V6_BLOCKED: &[(&str, &str)] = &[
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("::/96", "IPv4-compatible"),
    ("64:ff9b::/96", "NAT64"),
    ("64:ff9b:1::/48", "NAT64"),
    ("100::/64", "discard"),
    ("2001::/23", "IETF protocol assignments"),
    ("2001:db8::/32", "documentation"),
    ("2002::/16", "6to4"),
    ("fc00::/7", "unique local (private)"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local"),
    ("ff00::/8", "multicast"),
];

/// The reason `ip` is not a public unicast address, if it is not.
pub fn forbidden_reason(ip: IpAddr) -> Option<&'static str> {
    let ip = canonical(ip);
    let table = if ip.is_ipv4() { V4_BLOCKED } else { V6_BLOCKED };
    table.iter().find(|(cidr, _)| Cidr::parse(cidr).is_some_and(|c| c.contains(ip))).map(|(_, why)| *why)
}

/// What the guard lets through beyond public addresses on ports 80 and 443.
#[derive(Debug, Clone, Default)]
pub struct GuardConfig {
    /// Ranges opened for intranets and tests (`HERALD_ALLOW_PRIVATE_NETWORKS`).
    pub allow_networks: Vec<Cidr>,
    /// Ports allowed besides 80 and 443.
    pub allow_ports: Vec<u16>,
}

/// The checks, shared by the URL check, the resolver and the redirect policy.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    config: Arc<GuardConfig>,
}

impl Guard {
    pub fn new(config: GuardConfig) -> Guard {
        Guard { config: Arc::new(config) }
    }

    fn opened(&self, ip: IpAddr) -> bool {
        self.config.allow_networks.iter().any(|c| c.contains(ip))
    }

    /// The checked addresses of `host`, for connections that are not HTTP (WebSocket relays,
    /// SMTP servers a user chose): every address must pass, as in the HTTP resolver.
    pub async fn resolve(&self, lookup: &dyn Lookup, host: &str, port: u16) -> Result<Vec<SocketAddr>, Blocked> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let ips = match host.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => {
                lookup.lookup(host.to_string()).await.map_err(|e| Blocked(format!("{host} does not resolve ({e})")))?
            }
        };
        if ips.is_empty() {
            return Err(Blocked(format!("{host} does not resolve")));
        }
        for ip in &ips {
            self.check_ip(*ip).map_err(|b| Blocked(format!("{host} resolves to {}", b.0)))?;
        }
        Ok(ips.into_iter().map(|ip| SocketAddr::new(ip, port)).collect())
    }

    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Blocked> {
        if self.opened(ip) {
            return Ok(());
        }
        match forbidden_reason(ip) {
            Some(why) => Err(Blocked(format!(
                "{ip} is {why}; only public addresses are allowed (HERALD_ALLOW_PRIVATE_NETWORKS opens ranges)"
            ))),
            None => Ok(()),
        }
    }

    /// Checks a URL before any connection: everything that can be judged without DNS.
    pub fn check_url(&self, raw: &str) -> Result<Url, Blocked> {
        if raw.chars().any(|c| c.is_control()) {
            return Err(Blocked("the URL contains control characters".into()));
        }
        let url = Url::parse(raw).map_err(|e| Blocked(format!("not a valid URL ({e})")))?;
        self.check_parsed(&url)?;
        Ok(url)
    }

    pub fn check_parsed(&self, url: &Url) -> Result<(), Blocked> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Blocked(format!("the scheme `{}` is not allowed; use http or https", url.scheme())));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(Blocked("URLs with a user or password in them are not allowed".into()));
        }
        let port = url.port_or_known_default().unwrap_or(0);
        // An address inside an opened network is trusted on every port (an intranet's services
        // and the test fakes run on odd ports); names still need HERALD_ALLOW_PORTS.
        let opened_literal = match url.host() {
            Some(url::Host::Ipv4(ip)) => self.opened(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => self.opened(IpAddr::V6(ip)),
            _ => false,
        };
        if port != 80 && port != 443 && !opened_literal && !self.config.allow_ports.contains(&port) {
            return Err(Blocked(format!(
                "port {port} is not allowed; only 80 and 443 (HERALD_ALLOW_PORTS opens others)"
            )));
        }
        match url.host() {
            None => Err(Blocked("the URL has no host".into())),
            Some(url::Host::Ipv4(ip)) => self.check_ip(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => self.check_ip(IpAddr::V6(ip)),
            Some(url::Host::Domain(d)) if d.len() > 253 => {
                Err(Blocked("the host name is longer than 253 characters".into()))
            }
            Some(url::Host::Domain(_)) => Ok(()),
        }
    }
}

/// How names become addresses; tests substitute a stub (for DNS rebinding).
pub trait Lookup: Send + Sync + 'static {
    fn lookup(&self, host: String) -> std::pin::Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send>>;
}

/// The system resolver.
pub struct SystemLookup;

impl Lookup for SystemLookup {
    fn lookup(&self, host: String) -> std::pin::Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send>> {
        Box::pin(async move { Ok(tokio::net::lookup_host((host.as_str(), 0)).await?.map(|a| a.ip()).collect()) })
    }
}

/// The resolver reqwest connects through: it refuses the name when any of its addresses is not
/// allowed, and hands the connector only checked addresses.
pub(crate) struct GuardedResolver {
    pub guard: Guard,
    pub lookup: Arc<dyn Lookup>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = self.guard.clone();
        let lookup = self.lookup.clone();
        let host = name.as_str().to_string();
        type BoxError = Box<dyn std::error::Error + Send + Sync>;
        Box::pin(async move {
            let ips = lookup
                .lookup(host.clone())
                .await
                .map_err(|e| -> BoxError { Box::new(Blocked(format!("{host} does not resolve ({e})"))) })?;
            if ips.is_empty() {
                return Err(Box::new(Blocked(format!("{host} does not resolve"))) as BoxError);
            }
            for ip in &ips {
                guard
                    .check_ip(*ip)
                    .map_err(|b| -> BoxError { Box::new(Blocked(format!("{host} resolves to {}", b.0))) })?;
            }
            let addrs: Vec<SocketAddr> = ips.into_iter().map(|ip| SocketAddr::new(ip, 0)).collect();
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Finds a [`Blocked`] anywhere in an error's source chain (reqwest wraps resolver and redirect
/// errors).
pub fn blocked_in(e: &(dyn std::error::Error + 'static)) -> Option<Blocked> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(b) = err.downcast_ref::<Blocked>() {
            return Some(b.clone());
        }
        cur = err.source();
    }
    None
}
