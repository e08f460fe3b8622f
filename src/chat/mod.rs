//! Users, rooms, seats and field validation.

pub mod validate;
