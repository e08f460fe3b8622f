//! Client packets from arbitrary text: any error is fine, a panic is not, and
//! an accepted packet satisfies the checks the error table promises.
#![no_main]

use chatroom::chat::packet::{self, PacketKind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(packet) = packet::parse(text) {
        assert!(!packet.user_name.is_empty());
        assert!(!packet.room_name.is_empty());
        if packet.kind == PacketKind::Msg {
            assert!(!packet.msg.is_empty());
        }
    }
});
