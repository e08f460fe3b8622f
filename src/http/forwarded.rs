//! Which address a request comes from when it arrives through a reverse
//! proxy (SPEC §7, `--trusted-proxy`).
//!
//! Behind nginx every connection's peer is the proxy, so without this the
//! per-address limit on failed logins would count every client together.
//! A proxy whose address is trusted reports the client in `X-Forwarded-For`
//! (each hop appends the address it received the request from) or
//! `X-Real-IP`. Anything left of the last entry a trusted proxy appended was
//! written by the client or by hops we know nothing about, so the walk goes
//! right to left and stops at the first address that is not a trusted proxy.
//!
//! Pure: peer address and header values in, client address out. No
//! allocation, so the reactor can ask on every request.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use super::request::Request;

/// An address range in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`); a bare
/// address is the range of that one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// An IPv4-mapped IPv6 range (`::ffff:10.0.0.0/104`) is kept as the IPv4
    /// range it maps, so that it matches IPv4 peers as written.
    network: IpAddr,
    prefix_len: u8,
}

impl Cidr {
    /// Whether `ip` is inside the range. An IPv4-mapped IPv6 address (how a
    /// dual-stack socket reports an IPv4 peer) is the IPv4 address it maps.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(network), IpAddr::V4(ip)) => {
                u32::from(ip) & v4_mask(self.prefix_len) == u32::from(network)
            }
            (IpAddr::V6(network), ip) => {
                let ip = match ip {
                    IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                    IpAddr::V6(v6) => v6,
                };
                u128::from(ip) & v6_mask(self.prefix_len) == u128::from(network)
            }
            (IpAddr::V4(_), IpAddr::V6(_)) => false,
        }
    }
}

fn v4_mask(prefix_len: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(prefix_len.min(32)))
        .unwrap_or(0)
}

fn v6_mask(prefix_len: u8) -> u128 {
    u128::MAX
        .checked_shl(128 - u32::from(prefix_len.min(128)))
        .unwrap_or(0)
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Cidr, String> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = address.parse().map_err(|_| {
            format!("`{address}` is not an IP address (expected a range such as 127.0.0.1/32 or fd00::/8)")
        })?;
        let max_len: u8 = if network.is_ipv4() { 32 } else { 128 };
        let prefix_len = match prefix {
            None => max_len,
            // Digits only: `u8::from_str` would also take `+8`.
            Some(digits) if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => {
                match digits.parse::<u8>() {
                    Ok(len) if len <= max_len => len,
                    _ => {
                        return Err(format!(
                        "`/{digits}` in `{text}` is longer than the {max_len} bits of the address"
                    ))
                    }
                }
            }
            Some(other) => {
                return Err(format!(
                    "`/{other}` in `{text}` is not a prefix length (a number of bits such as /24)"
                ))
            }
        };
        let host_bits_clear = match network {
            IpAddr::V4(v4) => u32::from(v4) & !v4_mask(prefix_len) == 0,
            IpAddr::V6(v6) => u128::from(v6) & !v6_mask(prefix_len) == 0,
        };
        if !host_bits_clear {
            // `10.0.0.1/8` more likely means a typo than 10.0.0.0/8, and a
            // trust setting should not be guessed at.
            let network = match network {
                IpAddr::V4(v4) => IpAddr::V4(Ipv4Addr::from(u32::from(v4) & v4_mask(prefix_len))),
                IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & v6_mask(prefix_len))),
            };
            return Err(format!(
                "`{text}` has address bits set past the /{prefix_len} prefix; the range is written {network}/{prefix_len}"
            ));
        }
        Ok(match network {
            IpAddr::V6(v6) if prefix_len >= 96 => match v6.to_ipv4_mapped() {
                Some(v4) => Cidr {
                    network: IpAddr::V4(v4),
                    prefix_len: prefix_len - 96,
                },
                None => Cidr {
                    network,
                    prefix_len,
                },
            },
            _ => Cidr {
                network,
                prefix_len,
            },
        })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

/// The address ranges of the reverse proxies whose forwarding headers are
/// believed (`--trusted-proxy`, repeatable). Empty by default: then every
/// peer is its own client and the headers are never read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<Cidr>);

impl TrustedProxies {
    pub fn new(ranges: Vec<Cidr>) -> TrustedProxies {
        TrustedProxies(ranges)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn ranges(&self) -> &[Cidr] {
        &self.0
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|range| range.contains(ip))
    }
}

/// The address a request is attributed to, and how it was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAddress {
    /// The peer itself: it is not a trusted proxy, or it is one that named
    /// no client (no header, or only trusted addresses in it).
    Peer(IpAddr),
    /// Named by a trusted proxy in `X-Forwarded-For` or `X-Real-IP`.
    Forwarded(IpAddr),
    /// A trusted proxy sent a header that could not be read; the peer's own
    /// address stands, as SPEC §7 asks.
    Malformed(IpAddr),
}

impl ClientAddress {
    pub fn ip(self) -> IpAddr {
        match self {
            ClientAddress::Peer(ip)
            | ClientAddress::Forwarded(ip)
            | ClientAddress::Malformed(ip) => ip,
        }
    }
}

/// The client a request from `peer` is attributed to.
///
/// `forwarded_for` holds the values of every `X-Forwarded-For` line in the
/// order received (several lines are one comma-separated list), `real_ip`
/// those of `X-Real-IP`. From a peer outside `trusted` neither is read.
///
/// From a trusted peer: walking `X-Forwarded-For` from the right, trusted
/// addresses are skipped (more proxies of ours) and the first other address
/// is the client. Only the entries walked are judged: one that is not a
/// bare IP address (a port, brackets, `unknown`) before the client is found
/// makes the header malformed. Entries left of the client were written by
/// the client itself and are never read, so garbage a client writes there
/// cannot make its request count as the proxy's. Empty list
/// elements are skipped (RFC 9110 §5.6.1); a header with nothing else counts
/// as absent. If the walk ends without a client (no header, or every entry
/// trusted), a single well-formed `X-Real-IP` names it; several are
/// malformed. Without either, the peer is the client.
pub fn client_address<'h>(
    peer: IpAddr,
    trusted: &TrustedProxies,
    forwarded_for: impl DoubleEndedIterator<Item = &'h [u8]>,
    mut real_ip: impl Iterator<Item = &'h [u8]>,
) -> ClientAddress {
    if !trusted.contains(peer) {
        return ClientAddress::Peer(peer);
    }
    for line in forwarded_for.rev() {
        for entry in line.rsplit(|&byte| byte == b',') {
            let entry = entry.trim_ascii();
            if entry.is_empty() {
                continue;
            }
            let Some(hop) = parse_ip(entry) else {
                return ClientAddress::Malformed(peer);
            };
            if !trusted.contains(hop) {
                return ClientAddress::Forwarded(hop);
            }
        }
    }
    match (real_ip.next(), real_ip.next()) {
        (None, _) => ClientAddress::Peer(peer),
        (Some(value), None) => match parse_ip(value.trim_ascii()) {
            Some(ip) => ClientAddress::Forwarded(ip),
            None => ClientAddress::Malformed(peer),
        },
        (Some(_), Some(_)) => ClientAddress::Malformed(peer),
    }
}

/// `client_address` over a parsed request's headers. With no trusted proxy
/// (the default) it returns at once: the common path reads no header.
pub fn client_of_request(
    peer: IpAddr,
    trusted: &TrustedProxies,
    request: &Request,
) -> ClientAddress {
    if trusted.is_empty() {
        return ClientAddress::Peer(peer);
    }
    // Names are stored lower-cased by the parser.
    let values = |name: &'static str| {
        request
            .headers
            .iter()
            .filter(move |header| header.name == name)
            .map(|header| header.value.as_slice())
    };
    client_address(
        peer,
        trusted,
        values("x-forwarded-for"),
        values("x-real-ip"),
    )
}

/// A bare IPv4 or IPv6 address; an IPv4-mapped one is given as IPv4, so a
/// client is counted the same whichever way a proxy wrote it.
fn parse_ip(text: &[u8]) -> Option<IpAddr> {
    let ip: IpAddr = std::str::from_utf8(text).ok()?.parse().ok()?;
    Some(ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn trusting(ranges: &[&str]) -> TrustedProxies {
        TrustedProxies::new(ranges.iter().map(|r| r.parse().unwrap()).collect())
    }

    /// The client of a request from `peer` with these header lines.
    fn resolve(
        peer: &str,
        trusted: &[&str],
        forwarded_for: &[&str],
        real_ip: &[&str],
    ) -> ClientAddress {
        client_address(
            ip(peer),
            &trusting(trusted),
            forwarded_for.iter().map(|v| v.as_bytes()),
            real_ip.iter().map(|v| v.as_bytes()),
        )
    }

    const NGINX: &[&str] = &["127.0.0.1/32"];

    #[test]
    fn cidr_parses_ranges_and_bare_addresses() {
        let range: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(range.contains(ip("10.1.255.7")));
        assert!(!range.contains(ip("10.2.0.1")));
        assert_eq!(range.to_string(), "10.1.0.0/16");

        let host: Cidr = "127.0.0.1".parse().unwrap();
        assert_eq!(host.to_string(), "127.0.0.1/32");
        assert!(host.contains(ip("127.0.0.1")));
        assert!(!host.contains(ip("127.0.0.2")));

        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")));
        assert!(!v6.contains(ip("2001:db9::1")));
        assert!(
            !v6.contains(ip("32.1.13.184")),
            "IPv4 is not in a non-mapped IPv6 range"
        );
        let v6_host: Cidr = "::1".parse().unwrap();
        assert_eq!(v6_host.to_string(), "::1/128");
        assert!(v6_host.contains(ip("::1")));
        assert!(!v6_host.contains(ip("127.0.0.1")));
    }

    #[test]
    fn cidr_zero_prefix_is_everything_of_its_family() {
        let all_v4: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all_v4.contains(ip("203.0.113.9")));
        assert!(all_v4.contains(ip("::ffff:203.0.113.9")));
        assert!(!all_v4.contains(ip("2001:db8::1")));
        let all_v6: Cidr = "::/0".parse().unwrap();
        assert!(all_v6.contains(ip("2001:db8::1")));
    }

    #[test]
    fn ipv4_mapped_addresses_match_ipv4_ranges_and_back() {
        let loopback: Cidr = "127.0.0.1/32".parse().unwrap();
        assert!(loopback.contains(ip("::ffff:127.0.0.1")));
        assert!(!loopback.contains(ip("::ffff:127.0.0.2")));
        // A range written in mapped form means the IPv4 range.
        let mapped: Cidr = "::ffff:10.0.0.0/104".parse().unwrap();
        assert_eq!(mapped.to_string(), "10.0.0.0/8");
        assert!(mapped.contains(ip("10.9.8.7")));
        assert!(mapped.contains(ip("::ffff:10.9.8.7")));
        let mapped_host: Cidr = "::ffff:127.0.0.1".parse().unwrap();
        assert_eq!(mapped_host.to_string(), "127.0.0.1/32");
    }

    #[test]
    fn cidr_errors_say_what_is_wrong() {
        for (text, says) in [
            ("", "not an IP address"),
            ("localhost", "not an IP address"),
            ("127.0.0.1:80", "not an IP address"),
            ("10.0.0.0/", "not a prefix length"),
            ("10.0.0.0/+8", "not a prefix length"),
            ("10.0.0.0/eight", "not a prefix length"),
            ("10.0.0.0/33", "longer than the 32 bits"),
            ("::/129", "longer than the 128 bits"),
            ("10.0.0.0/256", "longer than the 32 bits"),
            ("10.0.0.1/8", "the range is written 10.0.0.0/8"),
            ("2001:db8::1/32", "the range is written 2001:db8::/32"),
            ("10.0.0.0/8/8", "not a prefix length"),
        ] {
            let error = text.parse::<Cidr>().unwrap_err();
            assert!(error.contains(says), "{text:?}: {error}");
        }
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        for trusted in [&[][..], NGINX, &["10.0.0.0/8"]] {
            assert_eq!(
                resolve("198.51.100.7", trusted, &["203.0.113.5"], &["203.0.113.6"]),
                ClientAddress::Peer(ip("198.51.100.7")),
                "trusting {trusted:?}"
            );
        }
        // Not even a malformed header is looked at.
        assert_eq!(
            resolve("198.51.100.7", NGINX, &["not an address"], &["nor this"]),
            ClientAddress::Peer(ip("198.51.100.7"))
        );
        // Claiming to be a trusted proxy's client changes nothing either.
        assert_eq!(
            resolve("198.51.100.7", NGINX, &["127.0.0.1"], &[]),
            ClientAddress::Peer(ip("198.51.100.7"))
        );
    }

    #[test]
    fn a_trusted_proxy_names_the_client() {
        assert_eq!(
            resolve("127.0.0.1", NGINX, &["203.0.113.5"], &["203.0.113.5"]),
            ClientAddress::Forwarded(ip("203.0.113.5"))
        );
        assert_eq!(
            resolve("127.0.0.1", NGINX, &["2001:db8::5"], &[]),
            ClientAddress::Forwarded(ip("2001:db8::5"))
        );
    }

    #[test]
    fn a_dual_stack_peer_matches_its_ipv4_range() {
        assert_eq!(
            resolve("::ffff:127.0.0.1", NGINX, &["203.0.113.5"], &[]),
            ClientAddress::Forwarded(ip("203.0.113.5"))
        );
    }

    #[test]
    fn a_forged_entry_left_of_the_proxys_is_ignored() {
        // nginx appends the address it saw to whatever the client sent.
        assert_eq!(
            resolve("127.0.0.1", NGINX, &["10.1.1.1, 203.0.113.5"], &[]),
            ClientAddress::Forwarded(ip("203.0.113.5"))
        );
        // Claiming to be the proxy itself only skips that claim.
        assert_eq!(
            resolve("127.0.0.1", NGINX, &["127.0.0.1, 203.0.113.5"], &[]),
            ClientAddress::Forwarded(ip("203.0.113.5"))
        );
        // Garbage the client wrote is never read, so it cannot make the
        // request fall back to the proxy's address.
        assert_eq!(
            resolve(
                "127.0.0.1",
                NGINX,
                &["<script>, 1.2.3.4:80, 203.0.113.5"],
                &[]
            ),
            ClientAddress::Forwarded(ip("203.0.113.5"))
        );
    }

    #[test]
    fn a_chain_of_trusted_proxies_is_walked_from_the_right() {
        let ours = &["127.0.0.1/32", "10.0.0.0/8"];
        // client -> edge proxy 10.0.0.2 -> inner proxy 10.0.0.3 -> us (from 127.0.0.1)
        assert_eq!(
            resolve(
                "127.0.0.1",
                ours,
                &["198.51.100.1, 203.0.113.5, 10.0.0.2, 10.0.0.3"],
                &[]
            ),
            ClientAddress::Forwarded(ip("203.0.113.5"))
        );
        // Only the proxies we trust are skipped: an unknown hop is the client.
        assert_eq!(
            resolve("127.0.0.1", NGINX, &["203.0.113.5, 10.0.0.2"], &[]),
            ClientAddress::Forwarded(ip("10.0.0.2"))
        );
    }

    #[test]
    fn several_header_lines_are_one_list_in_order() {
        assert_eq!(
            resolve(
                "127.0.0.1",
                &["127.0.0.1/32", "10.0.0.0/8"],
                &["198.51.100.1", "203.0.113.5, 10.0.0.2", "10.0.0.3"],
                &[]
            ),
            ClientAddress::Forwarded(ip("203.0.113.5"))
        );
        assert_eq!(
            resolve("127.0.0.1", NGINX, &["203.0.113.5", "198.51.100.1"], &[]),
            ClientAddress::Forwarded(ip("198.51.100.1")),
            "the last line is the rightmost"
        );
    }

    #[test]
    fn whitespace_and_empty_elements_are_tolerated() {
        assert_eq!(
            resolve("127.0.0.1", NGINX, &["10.1.1.1 ,\t203.0.113.5 \t"], &[]),
            ClientAddress::Forwarded(ip("203.0.113.5"))
        );
        assert_eq!(
            resolve("127.0.0.1", NGINX, &[", 203.0.113.5,,"], &[]),
            ClientAddress::Forwarded(ip("203.0.113.5"))
        );
    }

    #[test]
    fn an_ipv4_mapped_entry_is_its_ipv4_address() {
        assert_eq!(
            resolve("127.0.0.1", NGINX, &["::ffff:203.0.113.5"], &[]),
            ClientAddress::Forwarded(ip("203.0.113.5"))
        );
        // ... and a mapped form of a trusted address is still trusted.
        assert_eq!(
            resolve("127.0.0.1", NGINX, &["203.0.113.5, ::ffff:127.0.0.1"], &[]),
            ClientAddress::Forwarded(ip("203.0.113.5"))
        );
    }

    #[test]
    fn a_malformed_entry_before_the_client_falls_back_to_the_peer() {
        for value in [
            "203.0.113.5:4711",
            "[2001:db8::5]",
            "[2001:db8::5]:4711",
            "unknown",
            "fe80::1%eth0",
            "203.0.113.5 198.51.100.1",
            "203.0.113.256",
            "203.0.113.5, garbage",
            "203.0.113.5, 127.0.0.1:80",
        ] {
            assert_eq!(
                resolve("127.0.0.1", NGINX, &[value], &["198.51.100.9"]),
                ClientAddress::Malformed(ip("127.0.0.1")),
                "X-Forwarded-For: {value}"
            );
        }
        // Bytes that are not UTF-8 at all.
        assert_eq!(
            client_address(
                ip("127.0.0.1"),
                &trusting(NGINX),
                [&b"203.0.113.\xff"[..]].into_iter(),
                std::iter::empty(),
            ),
            ClientAddress::Malformed(ip("127.0.0.1"))
        );
    }

    #[test]
    fn without_an_untrusted_entry_x_real_ip_names_the_client() {
        // No X-Forwarded-For, an empty one, or one of only trusted hops.
        for forwarded_for in [
            &[][..],
            &[""],
            &[" , "],
            &["127.0.0.1"],
            &["127.0.0.1", "::ffff:127.0.0.1"],
        ] {
            assert_eq!(
                resolve("127.0.0.1", NGINX, forwarded_for, &[" 203.0.113.5 "]),
                ClientAddress::Forwarded(ip("203.0.113.5")),
                "X-Forwarded-For {forwarded_for:?}"
            );
            assert_eq!(
                resolve("127.0.0.1", NGINX, forwarded_for, &[]),
                ClientAddress::Peer(ip("127.0.0.1")),
                "X-Forwarded-For {forwarded_for:?} and no X-Real-IP"
            );
        }
        assert_eq!(
            resolve("::ffff:127.0.0.1", NGINX, &[], &[]),
            ClientAddress::Peer(ip("::ffff:127.0.0.1")),
            "the peer is given back as it came"
        );
    }

    #[test]
    fn a_malformed_or_repeated_x_real_ip_falls_back_to_the_peer() {
        for real_ip in [
            &["203.0.113.5:80"][..],
            &[""],
            &["203.0.113.5, 198.51.100.1"],
            &["203.0.113.5", "203.0.113.5"],
        ] {
            assert_eq!(
                resolve("127.0.0.1", NGINX, &[], real_ip),
                ClientAddress::Malformed(ip("127.0.0.1")),
                "X-Real-IP {real_ip:?}"
            );
        }
    }

    #[test]
    fn requests_are_read_by_their_lower_cased_header_names() {
        use super::super::request::{Event, HttpLimits, RequestParser};
        let mut parser = RequestParser::new(HttpLimits::default());
        let bytes = b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 10.1.1.1\r\nx-forwarded-for: 203.0.113.5, 127.0.0.1\r\nX-Real-IP: 198.51.100.1\r\n\r\n";
        let Ok((_, Some(Event::Request(request)))) = parser.parse(bytes) else {
            panic!("the test request parses");
        };
        let peer = ip("127.0.0.1");
        assert_eq!(
            client_of_request(peer, &trusting(NGINX), &request),
            ClientAddress::Forwarded(ip("203.0.113.5"))
        );
        assert_eq!(
            client_of_request(peer, &TrustedProxies::default(), &request),
            ClientAddress::Peer(peer),
            "nothing is trusted by default"
        );
    }
}
