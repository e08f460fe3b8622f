//! `--redis redis://[[user]:password@]host[:port][/db]`.
//!
//! Only what a plain TCP link needs. Anything else in the URL (TLS, a unix
//! socket, query parameters) is refused by name rather than ignored, so an
//! operator who asked for it learns that it is not there.

use std::fmt;

/// The port Redis listens on unless told otherwise.
pub const DEFAULT_PORT: u16 = 6379;

/// Where and as whom to connect.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl {
    /// A name, an IPv4 address, or an IPv6 address without its brackets.
    pub host: String,
    pub port: u16,
    /// The database `SELECT`ed after connecting (0 needs no `SELECT`).
    pub db: u32,
    /// An ACL user (Redis 6+); `None` authenticates as `default`.
    pub username: Option<String>,
    /// Sent with `AUTH` after connecting.
    pub password: Option<String>,
}

/// Why a URL was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UrlError(pub &'static str);

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid Redis URL: {}", self.0)
    }
}

impl std::error::Error for UrlError {}

impl RedisUrl {
    pub fn parse(text: &str) -> Result<RedisUrl, UrlError> {
        let Some((scheme, rest)) = text.split_once("://") else {
            return Err(UrlError("expected redis://HOST:PORT[/DB]"));
        };
        match scheme.to_ascii_lowercase().as_str() {
            "redis" => {}
            "rediss" => return Err(UrlError("TLS (rediss://) is not supported")),
            "unix" | "redis+unix" => return Err(UrlError("unix sockets are not supported")),
            _ => return Err(UrlError("the scheme must be redis://")),
        }
        if rest.contains(['?', '#']) {
            return Err(UrlError("query parameters and fragments are not supported"));
        }
        let (authority, path) = match rest.find('/') {
            Some(slash) => (&rest[..slash], &rest[slash + 1..]),
            None => (rest, ""),
        };
        let (userinfo, host_port) = match authority.rfind('@') {
            Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
            None => (None, authority),
        };
        let (username, password) = match userinfo {
            None => (None, None),
            Some(userinfo) => {
                let Some((user, password)) = userinfo.split_once(':') else {
                    return Err(UrlError("user info without a password (use :PASSWORD@)"));
                };
                let user = percent_decode(user)?;
                let password = percent_decode(password)?;
                ((!user.is_empty()).then_some(user), Some(password))
            }
        };
        let (host, port) = split_host_port(host_port)?;
        let db = match path {
            "" => 0,
            digits if digits.bytes().all(|byte| byte.is_ascii_digit()) => digits
                .parse()
                .map_err(|_| UrlError("the database number is too large"))?,
            _ => return Err(UrlError("the path must be a database number")),
        };
        Ok(RedisUrl {
            host,
            port,
            db,
            username,
            password,
        })
    }

    /// `host:port` for `ToSocketAddrs`, with brackets around an IPv6
    /// address.
    pub fn host_port(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Shows the URL with the password masked, fit for logs.
impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("redis://")?;
        if self.username.is_some() || self.password.is_some() {
            write!(f, "{}:***@", self.username.as_deref().unwrap_or(""))?;
        }
        write!(f, "{}/{}", self.host_port(), self.db)
    }
}

/// Same as Display: a password must not reach a log through `{:?}` either.
impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

fn split_host_port(text: &str) -> Result<(String, u16), UrlError> {
    let (host, port) = if let Some(bracketed) = text.strip_prefix('[') {
        let Some((host, after)) = bracketed.split_once(']') else {
            return Err(UrlError("unclosed [ in the IPv6 address"));
        };
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(UrlError("malformed IPv6 address"));
        }
        let port = match after {
            "" => None,
            _ => match after.strip_prefix(':') {
                Some(port) => Some(port),
                None => return Err(UrlError("unexpected text after the IPv6 address")),
            },
        };
        (host, port)
    } else {
        match text.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    if host.is_empty() {
        return Err(UrlError("no host"));
    }
    let valid_host_byte = |byte: u8| byte.is_ascii_alphanumeric() || b"-._:".contains(&byte);
    if !host.bytes().all(valid_host_byte) {
        return Err(UrlError("the host has characters a host name cannot have"));
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(digits) if !digits.is_empty() && digits.bytes().all(|byte| byte.is_ascii_digit()) => {
            match digits.parse::<u16>() {
                Ok(port) if port != 0 => port,
                _ => return Err(UrlError("the port must be 1-65535")),
            }
        }
        Some(_) => return Err(UrlError("the port must be 1-65535")),
    };
    Ok((host.to_owned(), port))
}

/// `%XX` escapes, as a URL carries a password holding `@`, `:` or `/`.
fn percent_decode(text: &str) -> Result<String, UrlError> {
    const BAD: UrlError = UrlError("malformed %-escape in the user info");
    let mut bytes = Vec::with_capacity(text.len());
    let mut rest = text.as_bytes();
    while let Some((&byte, after)) = rest.split_first() {
        if byte == b'%' {
            let (Some(high), Some(low)) = (
                after.first().and_then(|&digit| hex_value(digit)),
                after.get(1).and_then(|&digit| hex_value(digit)),
            ) else {
                return Err(BAD);
            };
            bytes.push(high << 4 | low);
            rest = &after[2..];
        } else {
            bytes.push(byte);
            rest = after;
        }
    }
    String::from_utf8(bytes).map_err(|_| UrlError("the user info is not UTF-8"))
}

fn hex_value(digit: u8) -> Option<u8> {
    char::from(digit)
        .to_digit(16)
        .and_then(|value| u8::try_from(value).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(host: &str, port: u16, db: u32) -> RedisUrl {
        RedisUrl {
            host: host.into(),
            port,
            db,
            username: None,
            password: None,
        }
    }

    #[test]
    fn host_port_and_db() {
        assert_eq!(
            RedisUrl::parse("redis://localhost"),
            Ok(url("localhost", 6379, 0))
        );
        assert_eq!(
            RedisUrl::parse("redis://localhost/"),
            Ok(url("localhost", 6379, 0))
        );
        assert_eq!(
            RedisUrl::parse("redis://127.0.0.1:6380/2"),
            Ok(url("127.0.0.1", 6380, 2))
        );
        assert_eq!(
            RedisUrl::parse("REDIS://cache.internal:7000"),
            Ok(url("cache.internal", 7000, 0))
        );
        assert_eq!(
            RedisUrl::parse("redis://[::1]:6379/15"),
            Ok(url("::1", 6379, 15))
        );
        assert_eq!(RedisUrl::parse("redis://[::1]"), Ok(url("::1", 6379, 0)));
        assert_eq!(
            RedisUrl::parse("redis://[::1]:1/0").map(|u| u.host_port()),
            Ok("[::1]:1".into())
        );
        assert_eq!(
            RedisUrl::parse("redis://h:1/3").map(|u| u.host_port()),
            Ok("h:1".into())
        );
    }

    #[test]
    fn passwords_and_users() {
        let parsed = RedisUrl::parse("redis://:s3cret@h:6379/1");
        assert_eq!(
            parsed,
            Ok(RedisUrl {
                password: Some("s3cret".into()),
                ..url("h", 6379, 1)
            })
        );
        let parsed = RedisUrl::parse("redis://chat:p%40ss%3Aw%2Fd@h");
        assert_eq!(
            parsed,
            Ok(RedisUrl {
                username: Some("chat".into()),
                password: Some("p@ss:w/d".into()),
                ..url("h", 6379, 0)
            })
        );
        // An unescaped @ in the password: the last @ ends the user info.
        let parsed = RedisUrl::parse("redis://:a@b@h");
        assert_eq!(parsed.map(|u| u.password), Ok(Some("a@b".into())));
        // The password never reaches Display or Debug.
        let parsed = RedisUrl::parse("redis://chat:hunter2@h:1/2").expect("valid");
        assert_eq!(parsed.to_string(), "redis://chat:***@h:1/2");
        assert!(!format!("{parsed:?}").contains("hunter2"));
        let parsed = RedisUrl::parse("redis://:hunter2@h").expect("valid");
        assert_eq!(parsed.to_string(), "redis://:***@h:6379/0");
    }

    #[test]
    fn refused_urls_say_why() {
        for (text, reason) in [
            ("localhost:6379", "expected redis://HOST:PORT[/DB]"),
            ("http://h", "the scheme must be redis://"),
            ("rediss://h", "TLS (rediss://) is not supported"),
            ("unix:///tmp/redis.sock", "unix sockets are not supported"),
            (
                "redis://h?db=1",
                "query parameters and fragments are not supported",
            ),
            ("redis://", "no host"),
            ("redis://:6379", "no host"),
            ("redis://h:", "the port must be 1-65535"),
            ("redis://h:0", "the port must be 1-65535"),
            ("redis://h:65536", "the port must be 1-65535"),
            ("redis://h:+1", "the port must be 1-65535"),
            ("redis://h:1:2", "the port must be 1-65535"),
            ("redis://h/x", "the path must be a database number"),
            ("redis://h/1/2", "the path must be a database number"),
            ("redis://h/-1", "the path must be a database number"),
            ("redis://h/99999999999", "the database number is too large"),
            (
                "redis://user@h",
                "user info without a password (use :PASSWORD@)",
            ),
            ("redis://:%4@h", "malformed %-escape in the user info"),
            ("redis://:%zz@h", "malformed %-escape in the user info"),
            ("redis://:%ff@h", "the user info is not UTF-8"),
            ("redis://[::1", "unclosed [ in the IPv6 address"),
            ("redis://[nope]:1", "malformed IPv6 address"),
            ("redis://[::1]x", "unexpected text after the IPv6 address"),
            (
                "redis://h st",
                "the host has characters a host name cannot have",
            ),
        ] {
            assert_eq!(RedisUrl::parse(text), Err(UrlError(reason)), "{text}");
        }
        assert_eq!(
            UrlError("no host").to_string(),
            "invalid Redis URL: no host"
        );
    }
}
