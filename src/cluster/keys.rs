//! Every Redis key name cluster mode uses, and nothing else: one place a
//! reviewer reads to see the layout (docs/cluster.md, "Keys").
//!
//! A room's keys share the hash tag `{r:<room>}`, so on Redis Cluster each
//! room's scripts run on one slot; users, rooms, tokens and node leases
//! each have a tag of their own. Names from clients are escaped (`%`, `{`
//! and `}` percent-encoded), so no name can end a tag early or make two
//! names share a key.

/// Prefix of every key, so a Redis database shared with other programs can
/// tell ours apart.
const PREFIX: &str = "chat:";

/// A client-chosen name made safe inside a key: `%`, `{`, `}` become
/// `%25`, `%7B`, `%7D`. Injective, so distinct names give distinct keys.
pub fn escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        match c {
            '%' => out.push_str("%25"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            c => out.push(c),
        }
    }
    out
}

/// The user record, by phone number.
pub fn user_by_tel(tel: &str) -> String {
    format!("{PREFIX}{{users}}:tel:{}", escape(tel))
}

/// The phone number, by user name (names are unique too).
pub fn user_by_name(name: &str) -> String {
    format!("{PREFIX}{{users}}:name:{}", escape(name))
}

/// Room name → its record (capacity, creation time).
pub fn rooms_index() -> String {
    format!("{PREFIX}{{rooms}}:index")
}

/// Room names in creation order.
pub fn rooms_order() -> String {
    format!("{PREFIX}{{rooms}}:order")
}

/// What a login token stands for; expires with the token.
pub fn token(token: &str) -> String {
    format!("{PREFIX}{{tokens}}:{}", escape(token))
}

/// A node's lease: present while the node is alive.
pub fn node_lease(node: &str) -> String {
    format!("{PREFIX}{{nodes}}:{}", escape(node))
}

/// One room's keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomKeys {
    tag: String,
}

impl RoomKeys {
    pub fn new(room: &str) -> RoomKeys {
        RoomKeys {
            tag: format!("{PREFIX}{{r:{}}}", escape(room)),
        }
    }

    /// User → seat (expiry, or held while connected).
    pub fn seats(&self) -> String {
        format!("{}:seats", self.tag)
    }

    /// `<node>|<conn>` → user: every WebSocket connection in the room.
    pub fn connections(&self) -> String {
        format!("{}:conns", self.tag)
    }

    /// user → the avatar their connection claimed at its join, shown where
    /// they registered none.
    pub fn avatars(&self) -> String {
        format!("{}:avatars", self.tag)
    }

    /// The room's last seq.
    pub fn seq(&self) -> String {
        format!("{}:seq", self.tag)
    }

    /// The retained messages: a stream whose entry ids are `<seq>-0`.
    pub fn log(&self) -> String {
        format!("{}:log", self.tag)
    }

    /// The pub/sub channel of the room's messages and seat events.
    pub fn channel(&self) -> String {
        format!("{}:ch", self.tag)
    }

    /// The room's last seat event number: it orders joins and leaves
    /// against one another as `seq` orders messages.
    pub fn events(&self) -> String {
        format!("{}:ev", self.tag)
    }
}

/// The hash tag Redis Cluster hashes a key by: the text between the first
/// `{` and the next `}`, when not empty; else the whole key.
/// The set of node ids that ever held a lease and were not yet swept.
pub fn nodes() -> String {
    format!("{PREFIX}{{nodes}}:all")
}

/// The rooms in which `node` has (or had) connections.
pub fn node_rooms(node: &str) -> String {
    format!("{PREFIX}{{nodes}}:{}:rooms", escape(node))
}

/// What the scripts that build key names themselves put first.
pub const KEY_PREFIX: &str = PREFIX;

pub fn hash_tag(key: &str) -> &str {
    let Some(open) = key.find('{') else {
        return key;
    };
    let rest = &key[open + 1..];
    match rest.find('}') {
        Some(close) if close > 0 => &rest[..close],
        _ => key,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rooms_keys_share_one_tag_whatever_its_name() {
        for room in ["lobby", "a}b", "{x}", "%7D", "房间 1", "}", "{", ""] {
            let keys = RoomKeys::new(room);
            let all = [
                keys.seats(),
                keys.connections(),
                keys.seq(),
                keys.log(),
                keys.channel(),
            ];
            let tag = hash_tag(&all[0]).to_string();
            assert_eq!(tag, format!("r:{}", escape(room)), "{room:?}");
            for key in &all {
                assert_eq!(hash_tag(key), tag, "{key}");
            }
        }
    }

    #[test]
    fn names_cannot_collide_or_forge_a_tag() {
        // Without escaping, "a}" and "a%7D" style names could meet; with it
        // every pair of distinct names gives distinct keys.
        let names = [
            "a", "a}", "a%7D", "a%", "a%25", "{a}", "%7Ba%7D", "a}:seats",
        ];
        let mut seen = std::collections::BTreeSet::new();
        for name in names {
            let keys = RoomKeys::new(name);
            for key in [keys.seats(), keys.connections(), keys.seq(), keys.log()] {
                assert!(seen.insert(key.clone()), "{key} twice");
            }
        }
        assert_eq!(escape("%{}"), "%25%7B%7D");
        assert_eq!(hash_tag(&user_by_tel("1{2}3")), "users");
        assert_eq!(hash_tag(&user_by_name("}")), "users");
        assert_eq!(hash_tag(&token("t}")), "tokens");
        assert_eq!(hash_tag(&node_lease("n")), "nodes");
        assert_eq!(hash_tag(&rooms_index()), hash_tag(&rooms_order()));
    }

    #[test]
    fn hash_tags_follow_redis_cluster_rules() {
        assert_eq!(hash_tag("plain"), "plain");
        assert_eq!(
            hash_tag("a{}b"),
            "a{}b",
            "an empty tag hashes the whole key"
        );
        assert_eq!(hash_tag("a{b}c{d}"), "b", "the first tag counts");
        assert_eq!(hash_tag("a{b"), "a{b");
    }
}
