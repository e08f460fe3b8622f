//! Placeholder types of the message log; the log itself lands with the
//! `msglog` branch, which replaces this file.

/// One chat message as the log stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRecord {
    pub room: String,
    pub seq: u64,
    pub ts: u64,
    pub user_name: String,
    pub user_avatar: String,
    pub msg: String,
}

/// Caller-chosen id of one `append`.
pub type AppendId = u64;

/// What replay found for one room: its last seq ever assigned and the
/// retained messages, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoomLog {
    pub last_seq: u64,
    pub messages: Vec<MessageRecord>,
}
