//! Field validation rules (SPEC §2.2). Each returns the reason a value is
//! refused; callers prefix it with the field name.
//!
//! INTERFACE SKELETON — the implementation replaces the bodies.

/// `+` optional, then 3–20 ASCII digits.
pub fn user_tel(_value: &str) -> Result<(), &'static str> {
    unimplemented!()
}
/// 1–32 Unicode scalar values, no control characters, not only whitespace.
pub fn user_name(_value: &str) -> Result<(), &'static str> {
    unimplemented!()
}
/// 6–128 bytes.
pub fn user_password(_value: &str) -> Result<(), &'static str> {
    unimplemented!()
}
/// Empty, or an http:// or https:// URL of at most 512 bytes.
pub fn user_avatar_url(_value: &str) -> Result<(), &'static str> {
    unimplemented!()
}
/// 1–64 Unicode scalar values, no control characters, not only whitespace.
pub fn room_name(_value: &str) -> Result<(), &'static str> {
    unimplemented!()
}
