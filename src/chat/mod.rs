//! Users, rooms, seats and field validation.

pub mod history;
pub mod packet;
pub mod state;
pub mod validate;
