//! Remote-address white-list patterns of RocketMQ's plain ACL (`RemoteAddressStrategyFactory`): `*` (any
//! address), an exact address (IPv4 or IPv6), IPv4 octet patterns with `*` wildcards and `lo-hi` ranges
//! (`192.168.1.*`, `192.168.*`, `192.168.1.1-100`), brace lists (`192.168.1.{1,2,3}`) and comma-separated
//! lists of any of these. An empty pattern matches nothing.

use std::net::IpAddr;

/// One octet of an IPv4 pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Octet {
    Any,
    Range(u8, u8),
}

impl Octet {
    fn matches(self, v: u8) -> bool {
        match self {
            Octet::Any => true,
            Octet::Range(lo, hi) => (lo..=hi).contains(&v),
        }
    }
}

/// One alternative of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Alt {
    Any,
    V4([Octet; 4]),
    Exact(IpAddr),
}

/// A parsed white-list pattern: matches when any alternative does.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AddressPattern {
    alts: Vec<Alt>,
}

impl AddressPattern {
    /// Parses `text`, allowing at most `entries_max` alternatives in total (commas and braces expanded).
    pub fn parse(text: &str, entries_max: usize) -> Result<AddressPattern, String> {
        Self::parse_list(&[text], entries_max)
    }

    /// Parses several patterns into one, allowing at most `entries_max` alternatives in total.
    pub fn parse_list<S: AsRef<str>>(texts: &[S], entries_max: usize) -> Result<AddressPattern, String> {
        let mut alts = Vec::new();
        for text in texts {
            for part in split_outside_braces(text.as_ref()).into_iter().map(str::trim).filter(|p| !p.is_empty()) {
                let expanded = expand_braces(part)?;
                if alts.len() + expanded.len() > entries_max {
                    return Err(format!("more than {entries_max} white-list entries"));
                }
                for e in expanded {
                    alts.push(parse_one(&e)?);
                }
            }
        }
        Ok(AddressPattern { alts })
    }

    /// Number of alternatives (0: matches nothing).
    pub fn len(&self) -> usize {
        self.alts.len()
    }

    /// True when the pattern matches nothing.
    pub fn is_empty(&self) -> bool {
        self.alts.is_empty()
    }

    /// True when `ip` matches. IPv4-mapped IPv6 addresses count as IPv4.
    pub fn matches(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        self.alts.iter().any(|a| match a {
            Alt::Any => true,
            Alt::Exact(e) => *e == ip,
            Alt::V4(p) => match ip {
                IpAddr::V4(v4) => p.iter().zip(v4.octets()).all(|(o, v)| o.matches(v)),
                IpAddr::V6(_) => false,
            },
        })
    }
}

/// Splits at commas that are not inside `{...}`.
fn split_outside_braces(text: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

/// `192.168.1.{1,2,3}` → three addresses; other text unchanged.
fn expand_braces(part: &str) -> Result<Vec<String>, String> {
    let Some(open) = part.find('{') else { return Ok(vec![part.to_string()]) };
    let close = part.rfind('}').filter(|c| *c == part.len() - 1 && *c > open);
    let Some(close) = close else { return Err(format!("white-list entry {part:?}: a brace list must end the entry")) };
    let prefix = &part[..open];
    if !prefix.ends_with('.') || prefix.contains('{') {
        return Err(format!("white-list entry {part:?}: a brace list must be the last octet"));
    }
    Ok(part[open + 1..close].split(',').map(|o| format!("{prefix}{}", o.trim())).collect())
}

fn parse_one(e: &str) -> Result<Alt, String> {
    if e == "*" || e == "*.*.*.*" {
        return Ok(Alt::Any);
    }
    if let Ok(ip) = e.parse::<IpAddr>() {
        return Ok(Alt::Exact(ip));
    }
    let bad = |why: &str| Err(format!("white-list entry {e:?}: {why}"));
    let parts: Vec<&str> = e.split('.').collect();
    if parts.len() > 4 || !(e.contains('*') || e.contains('-')) {
        return bad("not an address, `*`, an IPv4 pattern with `*` or `lo-hi`, or a {a,b} list");
    }
    let mut octets = [Octet::Any; 4];
    let mut wildcard_seen = false;
    for (i, p) in parts.iter().enumerate() {
        let o = if *p == "*" {
            wildcard_seen = true;
            Octet::Any
        } else if wildcard_seen {
            return bad("only `*` may follow a `*`");
        } else if let Some((lo, hi)) = p.split_once('-') {
            match (lo.parse::<u8>(), hi.parse::<u8>()) {
                (Ok(lo), Ok(hi)) if lo <= hi => Octet::Range(lo, hi),
                _ => return bad("a range must be lo-hi with 0 <= lo <= hi <= 255"),
            }
        } else {
            match p.parse::<u8>() {
                Ok(v) => Octet::Range(v, v),
                Err(_) => return bad("an octet must be 0..=255, `*` or lo-hi"),
            }
        };
        octets[i] = o;
    }
    if parts.len() < 4 && !wildcard_seen {
        return bad("fewer than four octets without a trailing `*`");
    }
    Ok(Alt::V4(octets))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn p(s: &str) -> AddressPattern {
        AddressPattern::parse(s, 64).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn rocketmq_pattern_forms_match_as_documented() {
        assert!(p("*").matches(ip("10.1.2.3")) && p("*.*.*.*").matches(ip("::1")));
        assert!(p("").is_empty() && !p("").matches(ip("127.0.0.1")));
        assert!(p("127.0.0.1").matches(ip("127.0.0.1")) && !p("127.0.0.1").matches(ip("127.0.0.2")));
        assert!(p("::1").matches(ip("::1")));
        assert!(p("127.0.0.1").matches(ip("::ffff:127.0.0.1")), "mapped IPv6 counts as IPv4");
        let w = p("192.168.1.*");
        assert!(w.matches(ip("192.168.1.0")) && w.matches(ip("192.168.1.255")) && !w.matches(ip("192.168.2.1")));
        let short = p("10.10.*");
        assert!(short.matches(ip("10.10.200.7")) && !short.matches(ip("10.11.0.1")));
        let r = p("192.168.1.1-100");
        assert!(r.matches(ip("192.168.1.1")) && r.matches(ip("192.168.1.100")));
        assert!(!r.matches(ip("192.168.1.0")) && !r.matches(ip("192.168.1.101")));
        let b = p("192.168.1.{1,2, 3}");
        assert_eq!(b.len(), 3);
        assert!(b.matches(ip("192.168.1.3")) && !b.matches(ip("192.168.1.4")));
        let list = p("10.10.103.*, 192.168.0.*,127.0.0.1,10.0.0.{7,8}");
        assert_eq!(list.len(), 5);
        assert!(list.matches(ip("10.0.0.8")));
        assert!(list.matches(ip("127.0.0.1")) && list.matches(ip("192.168.0.9")) && !list.matches(ip("192.168.1.9")));
    }

    #[test]
    fn malformed_patterns_are_refused_with_the_reason() {
        for bad in ["192.168.1.300", "192.168.*.1", "192.168.1", "10.0.0.5-1", "abc", "1.2.3.{4,5", "1.{2,3}.4.5", "1.2.3.4.5"] {
            assert!(AddressPattern::parse(bad, 64).is_err(), "{bad}");
        }
    }

    #[test]
    fn entries_are_limited_after_expansion() {
        assert_eq!(AddressPattern::parse("1.1.1.{1,2,3,4}", 4).unwrap().len(), 4);
        let e = AddressPattern::parse("1.1.1.{1,2,3,4},2.2.2.2", 4).unwrap_err();
        assert!(e.contains("more than 4"), "{e}");
    }
}
