//! Where a request's rate-limit key comes from.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use axum::extract::ConnectInfo;
use http::request::Parts;
use http::HeaderName;

/// An IP network (`10.0.0.0/8`, `::1/128`, or a bare address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// True when `ip` lies inside this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - u32::from(self.prefix))
                };
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - u32::from(self.prefix))
                };
                u128::from(net) & mask == u128::from(ip) & mask
            }
            (IpAddr::V6(_), IpAddr::V4(v4)) => self.contains(IpAddr::V6(v4.to_ipv6_mapped())),
            (IpAddr::V4(_), IpAddr::V6(v6)) => v6
                .to_ipv4_mapped()
                .is_some_and(|v4| self.contains(IpAddr::V4(v4))),
        }
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (address, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let network: IpAddr = address
            .trim()
            .parse()
            .map_err(|e| format!("invalid address {address:?}: {e}"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("invalid prefix length in {s:?}"))?,
            None => max,
        };
        Ok(Self { network, prefix })
    }
}

type KeyFn = Arc<dyn Fn(&Parts) -> Option<String> + Send + Sync>;

/// How a request maps to a rate-limit key. `None` from an extractor lets the request through
/// unlimited (and logs it), as Envoy does for a request that yields no descriptor.
#[derive(Clone)]
pub enum KeyExtractor {
    /// The client IP: the peer address, or for requests from a trusted proxy the right-most
    /// `X-Forwarded-For` entry that is not itself a trusted proxy.
    PeerIp {
        /// Proxies whose `X-Forwarded-For` is believed.
        trusted_proxies: Arc<[Cidr]>,
    },
    /// The value of a header (e.g. an API key).
    Header(HeaderName),
    /// The request path.
    Path,
    /// Anything else.
    Custom(KeyFn),
}

impl std::fmt::Debug for KeyExtractor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyExtractor::PeerIp { trusted_proxies } => f
                .debug_struct("PeerIp")
                .field("trusted_proxies", trusted_proxies)
                .finish(),
            KeyExtractor::Header(h) => f.debug_tuple("Header").field(h).finish(),
            KeyExtractor::Path => f.write_str("Path"),
            KeyExtractor::Custom(_) => f.write_str("Custom"),
        }
    }
}

impl KeyExtractor {
    /// The peer IP, trusting no proxy.
    pub fn peer_ip() -> Self {
        KeyExtractor::PeerIp {
            trusted_proxies: Arc::from(Vec::new()),
        }
    }

    /// The client IP, believing `X-Forwarded-For` from these proxies only.
    pub fn peer_ip_behind(trusted_proxies: Vec<Cidr>) -> Self {
        KeyExtractor::PeerIp {
            trusted_proxies: Arc::from(trusted_proxies),
        }
    }

    /// A key computed by `f`.
    pub fn custom(f: impl Fn(&Parts) -> Option<String> + Send + Sync + 'static) -> Self {
        KeyExtractor::Custom(Arc::new(f))
    }

    /// The key for this request, if it has one.
    pub fn extract(&self, parts: &Parts) -> Option<String> {
        match self {
            KeyExtractor::PeerIp { trusted_proxies } => {
                client_ip(parts, trusted_proxies).map(|ip| ip.to_string())
            }
            KeyExtractor::Header(name) => parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty()),
            KeyExtractor::Path => Some(parts.uri.path().to_string()),
            KeyExtractor::Custom(f) => f(parts),
        }
    }
}

/// The peer address from axum's `ConnectInfo`, or a plain `SocketAddr` extension (hyper).
pub fn peer_addr(parts: &Parts) -> Option<IpAddr> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .or_else(|| parts.extensions.get::<SocketAddr>().map(|a| a.ip()))
}

fn client_ip(parts: &Parts, trusted: &[Cidr]) -> Option<IpAddr> {
    let peer = peer_addr(parts)?;
    if !trusted.iter().any(|c| c.contains(peer)) {
        return Some(peer);
    }
    let mut forwarded: Vec<IpAddr> = Vec::new();
    for value in parts.headers.get_all("x-forwarded-for") {
        let Ok(text) = value.to_str() else {
            return Some(peer);
        };
        for item in text.split(',') {
            match item.trim().parse::<IpAddr>() {
                Ok(ip) => forwarded.push(ip),
                // A malformed chain cannot be trusted: fall back to the proxy itself.
                Err(_) => return Some(peer),
            }
        }
    }
    Some(
        forwarded
            .into_iter()
            .rev()
            .find(|ip| !trusted.iter().any(|c| c.contains(*ip)))
            .unwrap_or(peer),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(peer: &str, xff: &[&str]) -> Parts {
        let mut builder = http::Request::get("/api/x");
        for v in xff {
            builder = builder.header("x-forwarded-for", *v);
        }
        let (mut parts, ()) = builder.body(()).expect("request").into_parts();
        parts
            .extensions
            .insert(ConnectInfo::<SocketAddr>(peer.parse().expect("addr")));
        parts
    }

    #[test]
    fn cidrs_parse_and_match() {
        let net: Cidr = "10.0.0.0/8".parse().expect("cidr");
        assert!(net.contains("10.1.2.3".parse().expect("ip")));
        assert!(!net.contains("11.0.0.1".parse().expect("ip")));
        assert!(net.contains("::ffff:10.0.0.1".parse().expect("ip")));
        let one: Cidr = "::1".parse().expect("cidr");
        assert!(one.contains("::1".parse().expect("ip")));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nope".parse::<Cidr>().is_err());
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let untrusted = KeyExtractor::peer_ip();
        assert_eq!(
            untrusted
                .extract(&parts("1.2.3.4:5", &["9.9.9.9"]))
                .as_deref(),
            Some("1.2.3.4")
        );
        let behind = KeyExtractor::peer_ip_behind(vec!["10.0.0.0/8".parse().expect("cidr")]);
        // Spoofed left-most entry is ignored: the right-most untrusted hop is the client.
        let p = parts("10.0.0.5:5", &["6.6.6.6, 7.7.7.7", "10.0.0.9"]);
        assert_eq!(behind.extract(&p).as_deref(), Some("7.7.7.7"));
        assert_eq!(
            behind
                .extract(&parts("10.0.0.5:5", &["garbage"]))
                .as_deref(),
            Some("10.0.0.5")
        );
        assert_eq!(
            behind.extract(&parts("10.0.0.5:5", &[])).as_deref(),
            Some("10.0.0.5")
        );
    }

    #[test]
    fn header_and_path_keys() {
        let (parts, ()) = http::Request::get("/p?q=1")
            .header("x-api-key", "k1")
            .body(())
            .expect("req")
            .into_parts();
        assert_eq!(
            KeyExtractor::Header(HeaderName::from_static("x-api-key"))
                .extract(&parts)
                .as_deref(),
            Some("k1")
        );
        assert_eq!(KeyExtractor::Path.extract(&parts).as_deref(), Some("/p"));
        assert_eq!(
            KeyExtractor::Header(HeaderName::from_static("x-none")).extract(&parts),
            None
        );
    }
}
