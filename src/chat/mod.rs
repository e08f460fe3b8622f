//! Users, rooms, seats and field validation.

pub mod packet;
pub mod state;
pub mod validate;
