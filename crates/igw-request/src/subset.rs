//! The endpoint subset hint: which endpoints a request may go to.
//!
//! The gateway sends it as a list of `ip:port` strings in Envoy metadata
//! (`envoy.lb.subset_hint` / `x-gateway-destination-endpoint-subset`); some filters flatten it to
//! one comma-separated string, and the standalone proxy takes it as a header. Both forms are
//! accepted. The same syntax (`ip` or `ip:port`, IPv6 with or without brackets) is used by the
//! `test-epp-endpoint-selection` header.

use std::net::{IpAddr, SocketAddr};

/// A parsed subset hint. Present but empty means "no candidates" (the request gets a 503).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointSubset {
    entries: Vec<(IpAddr, Option<u16>)>,
    exact: bool,
}

impl EndpointSubset {
    /// Parses a list of entries; each entry may itself be a comma-separated string. Entries that
    /// are not an address are ignored.
    pub fn from_list<'a>(items: impl IntoIterator<Item = &'a str>) -> Self {
        let entries = items.into_iter().flat_map(|s| s.split(',')).filter_map(parse_entry).collect();
        EndpointSubset { entries, exact: false }
    }

    /// Parses the conformance steering header `test-epp-endpoint-selection`: like
    /// [`from_comma_separated`](Self::from_comma_separated), but an entry with a port selects that
    /// rank only ([`admits`](Self::admits) matches exactly).
    pub fn steering(s: &str) -> Self {
        EndpointSubset { exact: true, ..Self::from_comma_separated(s) }
    }

    /// A subset of exactly these addresses.
    pub fn of_addresses(addrs: impl IntoIterator<Item = SocketAddr>) -> Self {
        EndpointSubset { entries: addrs.into_iter().map(|a| (a.ip(), Some(a.port()))).collect(), exact: true }
    }

    /// Whether `addr` is eligible: [`allows_exact`](Self::allows_exact) for a steering subset,
    /// [`allows`](Self::allows) (IP only) for a gateway subset hint.
    pub fn admits(&self, addr: SocketAddr) -> bool {
        if self.exact { self.allows_exact(addr) } else { self.allows(addr) }
    }

    /// Parses one comma-separated string.
    pub fn from_comma_separated(s: &str) -> Self {
        Self::from_list([s])
    }

    /// The parsed entries: an IP and, when given, a port.
    pub fn entries(&self) -> &[(IpAddr, Option<u16>)] {
        &self.entries
    }

    /// True if no entry parsed: no endpoint is eligible.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// True if `addr`'s IP is listed, whatever the port (upstream matches by IP only, so every
    /// rank of a multi-port pod stays eligible).
    pub fn allows(&self, addr: SocketAddr) -> bool {
        self.entries.iter().any(|(ip, _)| *ip == addr.ip())
    }

    /// True if `addr` is listed exactly: same IP, and same port when the entry names one.
    pub fn allows_exact(&self, addr: SocketAddr) -> bool {
        self.entries.iter().any(|(ip, port)| *ip == addr.ip() && port.is_none_or(|p| p == addr.port()))
    }
}

fn parse_entry(s: &str) -> Option<(IpAddr, Option<u16>)> {
    let s = s.trim();
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some((sa.ip(), Some(sa.port())));
    }
    let bare = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')).unwrap_or(s);
    bare.parse::<IpAddr>().ok().map(|ip| (ip, None))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn list_and_string_forms() {
        let a = EndpointSubset::from_list(["10.0.0.1:8000", "10.0.0.2:8000", "junk"]);
        let b = EndpointSubset::from_comma_separated("10.0.0.1:8000, 10.0.0.2:8000,");
        assert_eq!(a, b);
        assert_eq!(a.entries().len(), 2);
    }

    #[test]
    fn matches_by_ip() {
        let s = EndpointSubset::from_comma_separated("10.0.0.1:8000,[fd00::1]:9000,fd00::2,[fd00::3],10.0.0.9");
        assert!(s.allows(sa("10.0.0.1:8001")), "any port of a listed IP");
        assert!(!s.allows_exact(sa("10.0.0.1:8001")));
        assert!(s.allows_exact(sa("10.0.0.1:8000")));
        assert!(s.allows_exact(sa("[fd00::1]:9000")));
        assert!(s.allows_exact(sa("[fd00::2]:1")) && s.allows_exact(sa("[fd00::3]:1")));
        assert!(s.allows_exact(sa("10.0.0.9:1234")));
        assert!(!s.allows(sa("10.0.0.2:8000")));
    }

    #[test]
    fn steering_matches_ranks_exactly() {
        let s = EndpointSubset::steering("10.0.0.1:8000, 10.0.0.2");
        assert!(s.admits(sa("10.0.0.1:8000")));
        assert!(!s.admits(sa("10.0.0.1:8001")), "a port names one rank");
        assert!(s.admits(sa("10.0.0.2:9")), "a bare IP admits every rank");
        let hint = EndpointSubset::from_comma_separated("10.0.0.1:8000");
        assert!(hint.admits(sa("10.0.0.1:8001")), "gateway hints match by IP, as upstream");
        let only = EndpointSubset::of_addresses([sa("10.0.0.3:1")]);
        assert!(only.admits(sa("10.0.0.3:1")) && !only.admits(sa("10.0.0.3:2")));
    }

    #[test]
    fn empty_means_no_candidates() {
        assert!(EndpointSubset::from_list([]).is_empty());
        assert!(EndpointSubset::from_comma_separated("not-an-ip, ").is_empty());
        assert!(!EndpointSubset::default().allows(sa("10.0.0.1:1")));
    }
}
