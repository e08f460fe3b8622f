//! Users, rooms, seats and field validation.

pub mod state;
pub mod validate;
