//! Which addresses the fetcher connects to. A URI is a tenant's, and the agent's
//! network position is not: by default the fetcher refuses loopback, link-local
//! (169.254.0.0/16 and fe80::/10, where clouds serve instance metadata and
//! credentials), unspecified addresses, AWS's IPv6 metadata address and the agent's
//! own addresses, each unless `--fetcher-allowed-networks` lists it. Names are checked
//! in the resolver the HTTP client connects through, so what is checked is what is
//! connected to (no rebinding between the two); IP-literal URLs, which skip the
//! resolver, are checked by the caller with [`AddressPolicy::check_host`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// A network `--fetcher-allowed-networks` lists: a CIDR (`10.1.0.0/16`) or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllowedNetwork(ipnet::IpNet);

impl FromStr for AllowedNetwork {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        text.parse::<ipnet::IpNet>()
            .or_else(|_| text.parse::<IpAddr>().map(ipnet::IpNet::from))
            .map(|net| Self(net.trunc()))
            .map_err(|_| format!("{text:?} is not a network (such as 10.1.0.0/16) or an address"))
    }
}

impl std::fmt::Display for AllowedNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// AWS's instance metadata service on IPv6 (a unique local address, not link-local).
/// Alibaba Cloud's instance metadata service (outside link-local).
const ALIBABA_METADATA: Ipv4Addr = Ipv4Addr::new(100, 100, 100, 200);
const AWS_METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254);

/// An address the fetcher refused, and why.
#[derive(Debug)]
pub(super) struct Refused {
    /// The name that resolved to `addr`; none for an IP-literal URL.
    name: Option<String>,
    addr: IpAddr,
    what: &'static str,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self { name, addr, what } = self;
        match name {
            Some(name) => write!(f, "{name} resolves to {addr}, ")?,
            None => write!(f, "{addr} is ")?,
        }
        write!(
            f,
            "{what} address the fetcher refuses (--fetcher-allowed-networks admits it)"
        )
    }
}

impl std::error::Error for Refused {}

/// The fetcher's rule for addresses.
#[derive(Debug, Clone, Default)]
pub(super) struct AddressPolicy {
    allowed: Vec<AllowedNetwork>,
}

impl AddressPolicy {
    pub(super) fn new(allowed: &[AllowedNetwork]) -> Self {
        Self {
            allowed: allowed.to_vec(),
        }
    }

    /// Why `addr` is refused, if it is; `own` are the agent's addresses.
    pub(super) fn refusal(&self, addr: IpAddr, own: &[IpAddr]) -> Option<&'static str> {
        let addr = addr.to_canonical();
        if self.allowed.iter().any(|net| net.0.contains(&addr)) {
            return None;
        }
        refused_kind(addr)
            .or_else(|| own.contains(&addr).then_some("this agent's own"))
            .or_else(|| match addr {
                // A refused IPv4 address carried inside an IPv6 one is still refused.
                IpAddr::V6(v6) => embedded_v4(v6).and_then(|v4| self.refusal(v4.into(), own)),
                IpAddr::V4(_) => None,
            })
    }

    /// Checks a URL's host when it is an IP literal (names go through the resolver).
    pub(super) fn check_host(&self, host: &str) -> Result<(), Refused> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let Ok(addr) = bare.parse::<IpAddr>() else {
            return Ok(());
        };
        match self.refusal(addr, &own_addresses()) {
            Some(what) => Err(Refused {
                name: None,
                addr: addr.to_canonical(),
                what,
            }),
            None => Ok(()),
        }
    }
}

/// The IPv4 address an IPv6 one carries on to an IPv4 host: NAT64 (64:ff9b::/96),
/// 6to4 (2002::/16), Teredo (2001::/32: its client's address, inverted, in the low
/// 32 bits) and the old IPv4-compatible form (::a.b.c.d).
fn embedded_v4(addr: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = addr.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(low),
        [0x2001, 0, ..] => Some(Ipv4Addr::from(!u32::from(low))),
        [0x2002, hi, lo, ..] => Some(Ipv4Addr::new(
            (hi >> 8) as u8,
            hi as u8,
            (lo >> 8) as u8,
            lo as u8,
        )),
        [0, 0, 0, 0, 0, 0, _, _] if u32::from(low) > 1 => Some(low),
        _ => None,
    }
}

/// The kind of address refused by default, if `addr` is one.
fn refused_kind(addr: IpAddr) -> Option<&'static str> {
    match addr {
        IpAddr::V4(a) if a.is_loopback() => Some("a loopback"),
        IpAddr::V4(a) if a.is_link_local() => Some("a link-local"),
        // 0.0.0.0/8: "this network"; connecting to 0.0.0.0 reaches the host itself.
        IpAddr::V4(a) if a.octets()[0] == 0 => Some("an unspecified"),
        IpAddr::V4(a) if a.is_broadcast() || a.is_multicast() => Some("a broadcast or multicast"),
        IpAddr::V6(a) if a.is_loopback() => Some("a loopback"),
        IpAddr::V6(a) if a.is_unicast_link_local() => Some("a link-local"),
        IpAddr::V6(a) if a.is_unspecified() => Some("an unspecified"),
        IpAddr::V6(a) if a.is_multicast() => Some("a multicast"),
        IpAddr::V6(a) if a == AWS_METADATA_V6 => Some("a cloud metadata"),
        // 64:ff9b:1::/48 (RFC 8215): a site's own translator, which may place the IPv4
        // address at any of RFC 6052's offsets; none can be told apart, so the whole
        // prefix is refused unless allowed.
        IpAddr::V6(a) if a.segments()[..3] == [0x64, 0xff9b, 1] => Some("a local-use NAT64"),
        IpAddr::V4(a) if a == ALIBABA_METADATA => Some("a cloud metadata"),
        _ => None,
    }
}

/// The addresses of this machine's interfaces, read afresh (they change).
pub(super) fn own_addresses() -> Vec<IpAddr> {
    let Ok(interfaces) = nix::ifaddrs::getifaddrs() else {
        tracing::warn!("cannot list this agent's addresses; refusing none of them");
        return Vec::new();
    };
    interfaces
        .filter_map(|i| i.address)
        .filter_map(|a| {
            a.as_sockaddr_in()
                .map(|v4| IpAddr::V4(v4.ip()))
                .or_else(|| a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
        })
        .collect()
}

/// The HTTP client's resolver: a name's refused addresses are dropped, and a name
/// with none left fails with the reason. The client connects only to what this
/// returns.
pub(super) struct GuardedResolver {
    pub(super) policy: Arc<AddressPolicy>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let own = own_addresses();
            let mut refused = None;
            let admitted: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| match policy.refusal(a.ip(), &own) {
                    Some(what) => {
                        refused.get_or_insert((a.ip().to_canonical(), what));
                        false
                    }
                    None => true,
                })
                .collect();
            match (admitted.is_empty(), refused) {
                (false, _) => Ok(Box::new(admitted.into_iter()) as Addrs),
                (true, Some((addr, what))) => {
                    let name = Some(host);
                    Err(Box::new(Refused { name, addr, what }) as _)
                }
                (true, None) => Err(format!("{host} resolves to no address").into()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(policy: &AddressPolicy, addr: &str) -> Option<&'static str> {
        policy.refusal(addr.parse().unwrap(), &["192.0.2.9".parse().unwrap()])
    }

    #[test]
    fn refused_kinds_of_address_unless_allowed() {
        let default = AddressPolicy::default();
        let cases = [
            ("127.0.0.1", Some("a loopback")),
            ("127.8.9.10", Some("a loopback")),
            ("::1", Some("a loopback")),
            ("::ffff:127.0.0.1", Some("a loopback")),
            ("169.254.169.254", Some("a link-local")),
            ("fe80::1", Some("a link-local")),
            ("0.0.0.0", Some("an unspecified")),
            ("::", Some("an unspecified")),
            ("fd00:ec2::254", Some("a cloud metadata")),
            ("192.0.2.9", Some("this agent's own")),
            ("::ffff:192.0.2.9", Some("this agent's own")),
            ("64:ff9b::a9fe:a9fe", Some("a link-local")),
            ("2002:7f00:1::", Some("a loopback")),
            ("::7f00:1", Some("a loopback")),
            ("64:ff9b::c000:209", Some("this agent's own")),
            ("100.100.100.200", Some("a cloud metadata")),
            ("64:ff9b::5db8:d822", None),
            ("64:ff9b:1::5db8:d822", Some("a local-use NAT64")),
            ("64:ff9b:1:ab00::7f00:1", Some("a local-use NAT64")),
            // Teredo: client 127.0.0.1 (inverted: 80ff:fffe) behind a public server.
            ("2001:0:4136:e378:8000:63bf:80ff:fffe", Some("a loopback")),
            ("2001:0:4136:e378:8000:63bf:a247:2ddd", None),
            ("10.1.2.3", None),
            ("93.184.216.34", None),
            ("2001:db8::1", None),
        ];
        for (addr, kind) in cases {
            assert_eq!(refusal(&default, addr), kind, "{addr}");
        }
        let nets: Vec<AllowedNetwork> = ["127.0.0.0/8", "192.0.2.9"]
            .iter()
            .map(|n| n.parse().unwrap())
            .collect();
        let allowing = AddressPolicy::new(&nets);
        assert_eq!(refusal(&allowing, "127.0.0.1"), None);
        assert_eq!(refusal(&allowing, "192.0.2.9"), None);
        assert_eq!(refusal(&allowing, "::1"), Some("a loopback"));
        assert_eq!(refusal(&allowing, "169.254.169.254"), Some("a link-local"));
    }

    #[test]
    fn allowed_networks_parse_as_cidrs_or_addresses() {
        let parse = |s: &str| s.parse::<AllowedNetwork>().map(|n| n.to_string());
        assert_eq!(parse("10.1.2.3/16"), Ok("10.1.0.0/16".into()));
        assert_eq!(parse(" 127.0.0.2 "), Ok("127.0.0.2/32".into()));
        assert_eq!(parse("fd00::/8"), Ok("fd00::/8".into()));
        assert_eq!(
            parse("10.0.0.0/33"),
            Err("\"10.0.0.0/33\" is not a network (such as 10.1.0.0/16) or an address".into())
        );
    }
}
