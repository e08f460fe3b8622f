//! Users, rooms and seats: the in-memory model, rebuilt from the store at
//! start-up. Pure: time comes in as `now`.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use super::history::RoomHistory;
use crate::store::{Replayed, RoomRecord, UserRecord};

pub type UserId = u32;
pub type RoomId = u32;
/// A WebSocket connection, as the reactor names it.
pub type ConnId = u64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub tel: String,
    pub name: String,
    pub password_hash: String,
    pub avatar_url: String,
}

/// A seat's life: held while its user has a WebSocket connection in the
/// room, otherwise until `expires`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seat {
    connections: u32,
    expires: Option<Instant>,
}

#[derive(Debug, Clone)]
pub struct Room {
    pub name: String,
    pub capacity: u32,
    seats: HashMap<UserId, Seat>,
    /// Connections subscribed to the room and the user each is bound to.
    members: Vec<(ConnId, UserId)>,
    history: RoomHistory,
}

impl Room {
    pub fn population(&self) -> usize {
        self.seats.len()
    }

    pub fn members(&self) -> &[(ConnId, UserId)] {
        &self.members
    }

    pub fn is_full(&self) -> bool {
        self.seats.len() >= self.capacity as usize
    }

    /// Every seat's user and whether that user has a WebSocket connection
    /// in the room now.
    pub fn seats(&self) -> impl Iterator<Item = (UserId, bool)> + '_ {
        self.seats
            .iter()
            .map(|(user, seat)| (*user, seat.connections > 0))
    }

    pub fn history(&self) -> &RoomHistory {
        &self.history
    }
}

/// Whether a join opened the room or joined people already in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinKind {
    /// The room had no seats taken before this join.
    Create,
    Join,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// Both the phone number and the name are free: they are now reserved.
    Reserved,
    /// The phone number or the name belongs to someone (or to a registration
    /// still being written).
    Exists,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomReservation {
    Reserved,
    Exists,
    TooMany,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// A seat was taken, or the user's seat was refreshed.
    Joined,
    Full,
}

#[derive(Debug)]
pub struct ChatState {
    users: Vec<User>,
    user_by_tel: HashMap<String, UserId>,
    user_by_name: HashMap<String, UserId>,
    rooms: Vec<Room>,
    room_by_name: HashMap<String, RoomId>,
    // Names claimed by a register/create whose record is still being
    // written: a second claim must see them as taken.
    pending_tels: HashSet<String>,
    pending_user_names: HashSet<String>,
    pending_rooms: HashSet<String>,
    seat_expiry: BTreeSet<(Instant, RoomId, UserId)>,
    /// Seats a WebSocket `leave` gave back, remembered for one TTL so that the
    /// documented HTTP leave that follows still answers "leave chatroom"
    /// (SPEC §3). Keyed both ways so lookups and expiry are both cheap.
    left_over_ws: HashMap<(RoomId, UserId), Instant>,
    left_over_ws_expiry: BTreeSet<(Instant, RoomId, UserId)>,
    seats_held: usize,
    seat_ttl: Duration,
}

/// What removing a connection from a room did to its user's seat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Departure {
    /// The connection was not in the room.
    NotMember,
    /// The user is still connected there, or its seat now waits for the TTL.
    SeatKept,
    /// The connection was the user's last one there and the seat is free.
    SeatReleased,
}

impl ChatState {
    pub fn new(seat_ttl: Duration) -> ChatState {
        ChatState {
            users: Vec::new(),
            user_by_tel: HashMap::new(),
            user_by_name: HashMap::new(),
            rooms: Vec::new(),
            room_by_name: HashMap::new(),
            pending_tels: HashSet::new(),
            pending_user_names: HashSet::new(),
            pending_rooms: HashSet::new(),
            seat_expiry: BTreeSet::new(),
            left_over_ws: HashMap::new(),
            left_over_ws_expiry: BTreeSet::new(),
            seats_held: 0,
            seat_ttl,
        }
    }

    pub fn from_replay(replayed: Replayed, seat_ttl: Duration) -> ChatState {
        let mut state = ChatState::new(seat_ttl);
        for user in replayed.users {
            state.add_user(user);
        }
        for room in replayed.rooms {
            state.add_room(room);
        }
        state
    }

    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    pub fn seats_held(&self) -> usize {
        self.seats_held
    }

    pub fn user(&self, id: UserId) -> Option<&User> {
        self.users.get(id as usize)
    }

    pub fn user_id_by_tel(&self, tel: &str) -> Option<UserId> {
        self.user_by_tel.get(tel).copied()
    }

    pub fn user_id_by_name(&self, name: &str) -> Option<UserId> {
        self.user_by_name.get(name).copied()
    }

    pub fn room_id(&self, name: &str) -> Option<RoomId> {
        self.room_by_name.get(name).copied()
    }

    pub fn room(&self, id: RoomId) -> Option<&Room> {
        self.rooms.get(id as usize)
    }

    pub fn room_named(&self, name: &str) -> Option<&Room> {
        self.room_id(name).and_then(|id| self.room(id))
    }

    pub fn history_mut(&mut self, id: RoomId) -> Option<&mut RoomHistory> {
        self.rooms
            .get_mut(id as usize)
            .map(|room| &mut room.history)
    }

    /// Rooms in creation order.
    pub fn rooms(&self) -> impl Iterator<Item = &Room> {
        self.rooms.iter()
    }

    /// Claims a phone number and a name for a registration in flight.
    pub fn reserve_user(&mut self, tel: &str, name: &str) -> Taken {
        if self.user_by_tel.contains_key(tel)
            || self.user_by_name.contains_key(name)
            || self.pending_tels.contains(tel)
            || self.pending_user_names.contains(name)
        {
            return Taken::Exists;
        }
        self.pending_tels.insert(tel.to_string());
        self.pending_user_names.insert(name.to_string());
        Taken::Reserved
    }

    /// Gives back a claim whose registration did not reach the disk.
    pub fn release_user(&mut self, tel: &str, name: &str) {
        self.pending_tels.remove(tel);
        self.pending_user_names.remove(name);
    }

    /// Adds a user whose record is durable, ending its claim.
    pub fn add_user(&mut self, record: UserRecord) -> UserId {
        self.release_user(&record.tel, &record.name);
        let id = self.users.len() as UserId;
        self.user_by_tel.insert(record.tel.clone(), id);
        self.user_by_name.insert(record.name.clone(), id);
        self.users.push(User {
            tel: record.tel,
            name: record.name,
            password_hash: record.password_hash,
            avatar_url: record.avatar_url,
        });
        id
    }

    pub fn reserve_room(&mut self, name: &str, max_rooms: usize) -> RoomReservation {
        if self.room_by_name.contains_key(name) || self.pending_rooms.contains(name) {
            return RoomReservation::Exists;
        }
        if self.rooms.len() + self.pending_rooms.len() >= max_rooms {
            return RoomReservation::TooMany;
        }
        self.pending_rooms.insert(name.to_string());
        RoomReservation::Reserved
    }

    pub fn release_room(&mut self, name: &str) {
        self.pending_rooms.remove(name);
    }

    pub fn add_room(&mut self, record: RoomRecord) -> RoomId {
        self.release_room(&record.name);
        let id = self.rooms.len() as RoomId;
        self.room_by_name.insert(record.name.clone(), id);
        self.rooms.push(Room {
            name: record.name,
            capacity: record.capacity,
            seats: HashMap::new(),
            members: Vec::new(),
            history: RoomHistory::default(),
        });
        id
    }

    pub fn holds_seat(&self, room: RoomId, user: UserId) -> bool {
        self.room(room).is_some_and(|r| r.seats.contains_key(&user))
    }

    /// An admission (`/chatroom/room` status 1): takes a seat, or refreshes
    /// the one the user holds, which then lives for another TTL unless the
    /// user is connected.
    pub fn admit(&mut self, room_id: RoomId, user: UserId, now: Instant) -> Admission {
        let expires = now + self.seat_ttl;
        let Some(room) = self.rooms.get_mut(room_id as usize) else {
            return Admission::Full;
        };
        if let Some(seat) = room.seats.get_mut(&user) {
            if seat.connections == 0 {
                if let Some(old) = seat.expires.replace(expires) {
                    self.seat_expiry.remove(&(old, room_id, user));
                }
                self.seat_expiry.insert((expires, room_id, user));
            }
            return Admission::Joined;
        }
        if room.seats.len() >= room.capacity as usize {
            return Admission::Full;
        }
        room.seats.insert(
            user,
            Seat {
                connections: 0,
                expires: Some(expires),
            },
        );
        self.seat_expiry.insert((expires, room_id, user));
        self.seats_held += 1;
        self.forget_ws_leave(room_id, user);
        Admission::Joined
    }

    /// Releases a seat, unsubscribing the user's connections from the room;
    /// returns those connections, or `None` if the user held no seat there.
    pub fn release_seat(&mut self, room_id: RoomId, user: UserId) -> Option<Vec<ConnId>> {
        let room = self.rooms.get_mut(room_id as usize)?;
        let seat = room.seats.remove(&user)?;
        if let Some(expires) = seat.expires {
            self.seat_expiry.remove(&(expires, room_id, user));
        }
        self.seats_held -= 1;
        let mut evicted = Vec::new();
        room.members.retain(|&(conn, member)| {
            if member == user {
                evicted.push(conn);
            }
            member != user
        });
        Some(evicted)
    }

    /// Subscribes a connection of `user` to a room, taking a seat if the
    /// user holds none. The caller has checked that the room is not full
    /// for this user. While connected, the seat does not expire.
    pub fn subscribe(&mut self, room_id: RoomId, conn: ConnId, user: UserId) -> Option<JoinKind> {
        let room = self.rooms.get_mut(room_id as usize)?;
        let kind = if room.seats.is_empty() {
            JoinKind::Create
        } else {
            JoinKind::Join
        };
        match room.seats.get_mut(&user) {
            Some(seat) => {
                seat.connections += 1;
                if let Some(expires) = seat.expires.take() {
                    self.seat_expiry.remove(&(expires, room_id, user));
                }
            }
            None => {
                room.seats.insert(
                    user,
                    Seat {
                        connections: 1,
                        expires: None,
                    },
                );
                self.seats_held += 1;
            }
        }
        room.members.push((conn, user));
        self.forget_ws_leave(room_id, user);
        Some(kind)
    }

    /// A WebSocket `leave`: removes the connection and, when it was its
    /// user's last one in the room, frees the seat at once (SPEC §3).
    pub fn leave(&mut self, room_id: RoomId, conn: ConnId, now: Instant) -> Departure {
        let Some(room) = self.rooms.get_mut(room_id as usize) else {
            return Departure::NotMember;
        };
        let Some(index) = room.members.iter().position(|(member, _)| *member == conn) else {
            return Departure::NotMember;
        };
        let (_, user) = room.members.swap_remove(index);
        let Some(seat) = room.seats.get_mut(&user) else {
            return Departure::SeatKept;
        };
        seat.connections = seat.connections.saturating_sub(1);
        if seat.connections > 0 {
            return Departure::SeatKept;
        }
        if let Some(expires) = seat.expires {
            self.seat_expiry.remove(&(expires, room_id, user));
        }
        room.seats.remove(&user);
        self.seats_held -= 1;
        let remembered_until = now + self.seat_ttl;
        if let Some(old) = self.left_over_ws.insert((room_id, user), remembered_until) {
            self.left_over_ws_expiry.remove(&(old, room_id, user));
        }
        self.left_over_ws_expiry
            .insert((remembered_until, room_id, user));
        Departure::SeatReleased
    }

    /// The HTTP leave that follows a WebSocket `leave`: true (once) if a
    /// `leave` freed this user's seat in the room within the last TTL.
    pub fn take_recent_ws_leave(&mut self, room_id: RoomId, user: UserId, now: Instant) -> bool {
        match self.left_over_ws.get(&(room_id, user)) {
            Some(&until) if until > now => {
                self.forget_ws_leave(room_id, user);
                true
            }
            _ => false,
        }
    }

    fn forget_ws_leave(&mut self, room_id: RoomId, user: UserId) {
        if let Some(until) = self.left_over_ws.remove(&(room_id, user)) {
            self.left_over_ws_expiry.remove(&(until, room_id, user));
        }
    }

    /// Removes a connection from a room. The seat stays; when it was the
    /// user's last connection there, its TTL starts.
    pub fn unsubscribe(&mut self, room_id: RoomId, conn: ConnId, now: Instant) {
        let expires = now + self.seat_ttl;
        let Some(room) = self.rooms.get_mut(room_id as usize) else {
            return;
        };
        let Some(index) = room.members.iter().position(|(member, _)| *member == conn) else {
            return;
        };
        let (_, user) = room.members.swap_remove(index);
        if let Some(seat) = room.seats.get_mut(&user) {
            seat.connections = seat.connections.saturating_sub(1);
            if seat.connections == 0 && seat.expires.is_none() {
                seat.expires = Some(expires);
                self.seat_expiry.insert((expires, room_id, user));
            }
        }
    }

    /// The earliest moment a seat, or the memory of a WebSocket leave,
    /// may expire.
    pub fn next_seat_expiry(&self) -> Option<Instant> {
        let seat = self.seat_expiry.first().map(|(at, _, _)| *at);
        let left = self.left_over_ws_expiry.first().map(|(at, _, _)| *at);
        match (seat, left) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Releases every seat whose TTL has run out; returns them.
    pub fn expire_seats(&mut self, now: Instant) -> Vec<(RoomId, UserId)> {
        while let Some(&(at, room_id, user)) = self.left_over_ws_expiry.first() {
            if at > now {
                break;
            }
            self.left_over_ws_expiry.pop_first();
            self.left_over_ws.remove(&(room_id, user));
        }
        let mut expired = Vec::new();
        while let Some(&(at, room_id, user)) = self.seat_expiry.first() {
            if at > now {
                break;
            }
            self.seat_expiry.pop_first();
            if let Some(room) = self.rooms.get_mut(room_id as usize) {
                if room
                    .seats
                    .get(&user)
                    .is_some_and(|seat| seat.expires == Some(at))
                {
                    room.seats.remove(&user);
                    self.seats_held -= 1;
                    expired.push((room_id, user));
                }
            }
        }
        expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(60);

    fn user(tel: &str, name: &str) -> UserRecord {
        UserRecord {
            tel: tel.into(),
            name: name.into(),
            password_hash: "$argon2id$...".into(),
            avatar_url: String::new(),
            created_ms: 0,
        }
    }

    fn room(name: &str, capacity: u32) -> RoomRecord {
        RoomRecord {
            name: name.into(),
            capacity,
            created_ms: 0,
        }
    }

    #[test]
    fn phone_and_name_are_both_unique_including_pending_claims() {
        let mut state = ChatState::new(TTL);
        assert_eq!(state.reserve_user("100", "ann"), Taken::Reserved);
        assert_eq!(state.reserve_user("100", "bob"), Taken::Exists);
        assert_eq!(state.reserve_user("200", "ann"), Taken::Exists);
        state.add_user(user("100", "ann"));
        assert_eq!(state.reserve_user("100", "bob"), Taken::Exists);
        assert_eq!(state.reserve_user("200", "ann"), Taken::Exists);
        assert_eq!(state.reserve_user("200", "bob"), Taken::Reserved);
        state.release_user("200", "bob");
        assert_eq!(state.reserve_user("200", "bob"), Taken::Reserved);
    }

    #[test]
    fn room_limit_counts_pending_creations() {
        let mut state = ChatState::new(TTL);
        assert_eq!(state.reserve_room("a", 2), RoomReservation::Reserved);
        assert_eq!(state.reserve_room("a", 2), RoomReservation::Exists);
        assert_eq!(state.reserve_room("b", 2), RoomReservation::Reserved);
        assert_eq!(state.reserve_room("c", 2), RoomReservation::TooMany);
        state.add_room(room("a", 10));
        state.release_room("b");
        assert_eq!(state.reserve_room("a", 2), RoomReservation::Exists);
        assert_eq!(state.reserve_room("c", 2), RoomReservation::Reserved);
    }

    #[test]
    fn seats_fill_refresh_and_release() {
        let now = Instant::now();
        let mut state = ChatState::new(TTL);
        let ann = state.add_user(user("1", "ann"));
        let bob = state.add_user(user("2", "bob"));
        let small = state.add_room(room("small", 1));
        assert_eq!(state.admit(small, ann, now), Admission::Joined);
        assert_eq!(
            state.admit(small, ann, now),
            Admission::Joined,
            "refresh, not a second seat"
        );
        assert_eq!(state.admit(small, bob, now), Admission::Full);
        assert_eq!(state.room(small).unwrap().population(), 1);
        assert_eq!(state.release_seat(small, ann), Some(vec![]));
        assert_eq!(state.release_seat(small, ann), None);
        assert_eq!(state.seats_held(), 0);
        assert_eq!(state.admit(small, bob, now), Admission::Joined);
    }

    #[test]
    fn seats_expire_after_the_ttl_and_refresh_pushes_expiry() {
        let start = Instant::now();
        let mut state = ChatState::new(TTL);
        let ann = state.add_user(user("1", "ann"));
        let bob = state.add_user(user("2", "bob"));
        let hall = state.add_room(room("hall", 10));
        state.admit(hall, ann, start);
        state.admit(hall, bob, start);
        assert_eq!(state.next_seat_expiry(), Some(start + TTL));
        state.admit(hall, ann, start + Duration::from_secs(30));
        assert!(state
            .expire_seats(start + TTL - Duration::from_millis(1))
            .is_empty());
        assert_eq!(state.expire_seats(start + TTL), vec![(hall, bob)]);
        assert_eq!(state.room(hall).unwrap().population(), 1);
        assert_eq!(
            state.expire_seats(start + Duration::from_secs(90)),
            vec![(hall, ann)]
        );
        assert_eq!(state.seats_held(), 0);
        assert_eq!(state.next_seat_expiry(), None);
    }

    #[test]
    fn connections_hold_seats_and_their_departure_starts_the_ttl() {
        let start = Instant::now();
        let mut state = ChatState::new(TTL);
        let ann = state.add_user(user("1", "ann"));
        let bob = state.add_user(user("2", "bob"));
        let hall = state.add_room(room("hall", 10));
        assert_eq!(state.subscribe(hall, 100, ann), Some(JoinKind::Create));
        assert_eq!(
            state.subscribe(hall, 101, ann),
            Some(JoinKind::Join),
            "second tab, same seat"
        );
        assert_eq!(state.subscribe(hall, 200, bob), Some(JoinKind::Join));
        assert_eq!(state.room(hall).unwrap().population(), 2);
        assert_eq!(state.room(hall).unwrap().members().len(), 3);
        assert_eq!(
            state.next_seat_expiry(),
            None,
            "connected seats do not expire"
        );
        state.unsubscribe(hall, 100, start);
        assert_eq!(state.next_seat_expiry(), None, "ann still has a tab open");
        state.unsubscribe(hall, 101, start);
        assert_eq!(state.next_seat_expiry(), Some(start + TTL));
        assert_eq!(state.subscribe(hall, 102, ann), Some(JoinKind::Join));
        assert_eq!(
            state.next_seat_expiry(),
            None,
            "reconnecting stops the clock"
        );
        assert_eq!(state.release_seat(hall, bob), Some(vec![200]));
        assert_eq!(state.room(hall).unwrap().members(), &[(102, ann)]);
        assert!(state.expire_seats(start + TTL * 2).is_empty());
    }

    #[test]
    fn admitted_seat_of_a_user_who_connects_does_not_expire() {
        let start = Instant::now();
        let mut state = ChatState::new(TTL);
        let ann = state.add_user(user("1", "ann"));
        let hall = state.add_room(room("hall", 10));
        state.admit(hall, ann, start);
        assert_eq!(
            state.subscribe(hall, 1, ann),
            Some(JoinKind::Join),
            "an admitted seat was taken already"
        );
        assert!(state.expire_seats(start + TTL).is_empty());
        assert_eq!(state.seats_held(), 1);
    }

    #[test]
    fn replay_restores_order_and_lookups() {
        let replayed = Replayed {
            users: vec![user("1", "ann"), user("2", "bob")],
            rooms: vec![room("z", 5), room("a", 7)],
        };
        let state = ChatState::from_replay(replayed, TTL);
        assert_eq!(state.user_id_by_name("bob"), Some(1));
        assert_eq!(state.user_id_by_tel("1"), Some(0));
        let names: Vec<_> = state.rooms().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["z", "a"]);
        assert_eq!(state.room(state.room_id("a").unwrap()).unwrap().capacity, 7);
    }
}
