//! The egress policy: which addresses the server may connect to on a tenant's behalf
//! (actions' `fetch`, auth providers' key sets).
//!
//! Public internet addresses are always allowed. Loopback, private, link-local (cloud
//! metadata lives at 169.254.169.254), shared, documentation, multicast and unspecified
//! addresses are refused unless `--egress-allow` names the host, the address, or a CIDR
//! block holding it. The check runs on the addresses actually connected to (after DNS
//! resolution, in [`EgressResolver`]), so a name that resolves differently the second
//! time (DNS rebinding) gains nothing; addresses written in a URL never reach a resolver
//! and are checked by [`EgressPolicy::check_literal`].

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

/// Which destinations outbound requests may reach (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct EgressPolicy {
    allowed_hosts: Vec<String>,
    allowed_nets: Vec<IpNet>,
}

impl EgressPolicy {
    /// Each entry is a host name, an IP address or a CIDR block (`10.0.0.0/8`).
    pub fn new(allowed: impl IntoIterator<Item = String>) -> EgressPolicy {
        let mut policy = EgressPolicy::default();
        for entry in allowed {
            let entry = entry.trim().to_ascii_lowercase();
            let bare = entry.trim_start_matches('[').trim_end_matches(']');
            if entry.is_empty() {
                continue;
            }
            if let Ok(net) = bare.parse::<IpNet>() {
                policy.allowed_nets.push(net);
            } else if let Ok(ip) = bare.parse::<IpAddr>() {
                policy.allowed_nets.push(IpNet::from(ip));
            } else {
                policy.allowed_hosts.push(entry);
            }
        }
        policy
    }

    /// Whether `ip`, reached under the name `host`, may be connected to.
    pub(crate) fn allows(&self, host: &str, ip: IpAddr) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        is_public(ip)
            || self.allowed_nets.iter().any(|net| net.contains(&ip))
            || self
                .allowed_hosts
                .iter()
                .any(|h| h.eq_ignore_ascii_case(host))
    }

    /// Refuses a URL whose host is an address the policy forbids (names are checked when
    /// they are resolved).
    pub(crate) fn check_literal(&self, url: &reqwest::Url) -> Result<(), String> {
        let ip = match url.host() {
            Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
            Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
            _ => return Ok(()),
        };
        if self.allows(&ip.to_string(), ip) {
            Ok(())
        } else {
            Err(format!(
                "{url}: {ip} is not a public address, and the server's egress policy refuses it \
                 (an operator can allow it with --egress-allow {ip})"
            ))
        }
    }
}

/// An address on the public internet (not loopback, private, link-local, shared,
/// documentation, multicast or unspecified).
fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80)
        }
    }
}

/// Resolves names for an HTTP client, dropping the addresses the policy forbids.
pub(crate) struct EgressResolver {
    policy: EgressPolicy,
}

impl EgressResolver {
    pub(crate) fn new(policy: EgressPolicy) -> EgressResolver {
        EgressResolver { policy }
    }
}

impl reqwest::dns::Resolve for EgressResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|addr| policy.allows(&host, addr.ip()))
                .collect();
            if found.is_empty() {
                return Err(format!(
                    "{host} resolves to no address the server's egress policy allows (private \
                     and loopback addresses need --egress-allow {host})"
                )
                .into());
            }
            let addrs: reqwest::dns::Addrs = Box::new(found.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse()
            .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
    }

    #[test]
    fn private_addresses_need_an_allowance() {
        let none = EgressPolicy::default();
        for address in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!none.allows("h", ip(address)), "{address}");
        }
        assert!(none.allows("h", ip("93.184.216.34")));
        let local = EgressPolicy::new(["127.0.0.1".to_string(), "Issuer.Local".to_string()]);
        let loopback = ip("127.0.0.1");
        assert!(local.allows("127.0.0.1", loopback));
        assert!(local.allows("issuer.local", loopback));
        assert!(
            local.allows("other.local", loopback),
            "the address itself is allowed"
        );
        assert!(!local.allows("other.local", ip("127.0.0.2")));
    }

    #[test]
    fn cidr_blocks_allow_every_address_inside() {
        let policy = EgressPolicy::new(["10.0.0.0/8".to_string(), "fd00::/8".to_string()]);
        assert!(policy.allows("x", ip("10.200.1.1")));
        assert!(policy.allows("x", ip("fd12::1")));
        assert!(!policy.allows("x", ip("192.168.0.1")));
        let literal = |u: &str| reqwest::Url::parse(u).map_err(|e| e.to_string());
        let refused = literal("http://192.168.0.1:8080/x").and_then(|u| policy.check_literal(&u));
        assert!(
            refused
                .as_ref()
                .is_err_and(|e| e.contains("--egress-allow 192.168.0.1")),
            "{refused:?}"
        );
        assert!(literal("http://10.1.1.1/")
            .and_then(|u| policy.check_literal(&u))
            .is_ok());
        assert!(literal("http://[::1]/")
            .and_then(|u| EgressPolicy::default().check_literal(&u))
            .is_err());
    }
}
