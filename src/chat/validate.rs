//! Field validation rules (SPEC §2.2). Each returns the reason a value is
//! refused; callers prefix it with the field name.

const TEL_MIN_DIGITS: usize = 3;
const TEL_MAX_DIGITS: usize = 20;
const USER_NAME_MAX_CHARS: usize = 32;
const PASSWORD_MIN_BYTES: usize = 6;
const PASSWORD_MAX_BYTES: usize = 128;
const AVATAR_URL_MAX_BYTES: usize = 512;
const ROOM_NAME_MAX_CHARS: usize = 64;

/// `+` optional, then 3–20 ASCII digits.
pub fn user_tel(value: &str) -> Result<(), &'static str> {
    let digits = value.strip_prefix('+').unwrap_or(value);
    let well_formed = (TEL_MIN_DIGITS..=TEL_MAX_DIGITS).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit());
    if well_formed {
        Ok(())
    } else {
        Err("must be 3-20 digits, optionally preceded by +")
    }
}

/// A phone number as typed: ASCII spaces and dashes (`138 0013-8000`) are
/// layout, not part of the number, at register and at login alike.
pub fn normalize_tel(value: &str) -> std::borrow::Cow<'_, str> {
    if value.bytes().any(|b| b == b' ' || b == b'-') {
        std::borrow::Cow::Owned(value.chars().filter(|c| !matches!(c, ' ' | '-')).collect())
    } else {
        std::borrow::Cow::Borrowed(value)
    }
}

/// The number a client parsing `user_tel` into a 32-bit `Int` can take
/// (the original Android app does, and fails the whole login otherwise):
/// the registered text when it is the canonical decimal form of an
/// integer from 0 to `i32::MAX`.
pub fn tel_as_i32(tel: &str) -> Option<i32> {
    let canonical = !tel.is_empty()
        && tel.bytes().all(|b| b.is_ascii_digit())
        && (tel == "0" || !tel.starts_with('0'));
    if canonical {
        tel.parse().ok()
    } else {
        None
    }
}

/// Whether a password could ever have been registered: at login a
/// password outside the rule is simply wrong, not a malformed request.
pub fn could_be_password(value: &str) -> bool {
    user_password(value).is_ok()
}

/// 1–32 Unicode scalar values, no control characters, not only whitespace.
pub fn user_name(value: &str) -> Result<(), &'static str> {
    display_text(value, USER_NAME_MAX_CHARS, "must be 1-32 characters")
}

/// 6–128 bytes.
pub fn user_password(value: &str) -> Result<(), &'static str> {
    if (PASSWORD_MIN_BYTES..=PASSWORD_MAX_BYTES).contains(&value.len()) {
        Ok(())
    } else {
        Err("must be 6-128 bytes")
    }
}

/// Empty, or an http:// or https:// URL of at most 512 bytes.
pub fn user_avatar_url(value: &str) -> Result<(), &'static str> {
    if value.is_empty() {
        return Ok(());
    }
    if value.len() > AVATAR_URL_MAX_BYTES {
        return Err("must be at most 512 bytes");
    }
    // Clients put this string straight into an <img src>, so anything that
    // could break out of the attribute or hide a different URL is refused.
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain whitespace or control characters");
    }
    let after_scheme = strip_prefix_ignore_ascii_case(value, "http://")
        .or_else(|| strip_prefix_ignore_ascii_case(value, "https://"));
    match after_scheme {
        Some(rest) if rest.starts_with(|c: char| !matches!(c, '/' | '?' | '#')) => Ok(()),
        _ => Err("must be an http:// or https:// URL"),
    }
}

/// 1–64 Unicode scalar values, no control characters, not only whitespace.
pub fn room_name(value: &str) -> Result<(), &'static str> {
    display_text(value, ROOM_NAME_MAX_CHARS, "must be 1-64 characters")
}

/// The shared rule for names shown to other people: a length in characters
/// (not bytes, so non-Latin scripts get the same allowance), nothing that
/// would garble a terminal or a log line, and something visible.
fn display_text(
    value: &str,
    max_chars: usize,
    length_reason: &'static str,
) -> Result<(), &'static str> {
    let chars = value.chars().count();
    if chars == 0 || chars > max_chars {
        return Err(length_reason);
    }
    if value.chars().any(char::is_control) {
        return Err("must not contain control characters");
    }
    if value.chars().all(char::is_whitespace) {
        return Err("must not be only whitespace");
    }
    Ok(())
}

fn strip_prefix_ignore_ascii_case<'a>(value: &'a str, prefix: &str) -> Option<&'a str> {
    let head = value.get(..prefix.len())?;
    if head.eq_ignore_ascii_case(prefix) {
        value.get(prefix.len()..)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_spaces_and_dashes_are_removed_from_phone_numbers() {
        assert_eq!(normalize_tel("138 0013-8000"), "13800138000");
        assert_eq!(normalize_tel("+86 138-0013-8000"), "+8613800138000");
        assert!(matches!(
            normalize_tel("13800138000"),
            std::borrow::Cow::Borrowed(_)
        ));
        // Other separators are not layout the rule knows: still refused.
        assert!(user_tel(&normalize_tel("138.0013.8000")).is_err());
        assert!(user_tel(&normalize_tel("138\t0013")).is_err());
    }

    #[test]
    fn only_canonical_decimals_within_i32_become_numbers() {
        assert_eq!(tel_as_i32("0"), Some(0));
        assert_eq!(tel_as_i32("12345"), Some(12345));
        assert_eq!(tel_as_i32("2147483647"), Some(i32::MAX));
        assert_eq!(tel_as_i32("2147483648"), None);
        assert_eq!(tel_as_i32("13800138000"), None);
        assert_eq!(tel_as_i32("+8612345"), None);
        assert_eq!(tel_as_i32("012345"), None);
        assert_eq!(tel_as_i32("00"), None);
        assert_eq!(tel_as_i32(""), None);
    }

    #[test]
    fn tel_accepts_3_to_20_digits_with_optional_plus() {
        assert_eq!(user_tel("123"), Ok(()));
        assert_eq!(user_tel("+123"), Ok(()));
        assert_eq!(user_tel("13800000000"), Ok(()));
        assert_eq!(user_tel(&"9".repeat(20)), Ok(()));
        assert_eq!(user_tel(&format!("+{}", "9".repeat(20))), Ok(()));
    }

    #[test]
    fn tel_refuses_wrong_lengths_and_characters() {
        let reason = Err("must be 3-20 digits, optionally preceded by +");
        assert_eq!(user_tel(""), reason);
        assert_eq!(user_tel("+"), reason);
        assert_eq!(user_tel("12"), reason);
        assert_eq!(user_tel("+12"), reason);
        assert_eq!(user_tel(&"9".repeat(21)), reason);
        assert_eq!(user_tel(&format!("+{}", "9".repeat(21))), reason);
        assert_eq!(user_tel("++123"), reason);
        assert_eq!(user_tel("123+"), reason);
        assert_eq!(user_tel("12 34"), reason);
        assert_eq!(user_tel("12a4"), reason);
        assert_eq!(user_tel("-1234"), reason);
        // Non-ASCII digits (Arabic-Indic) are digits to Unicode but not to us.
        assert_eq!(user_tel("١٢٣٤"), reason);
    }

    #[test]
    fn user_name_length_counts_characters_not_bytes() {
        assert_eq!(user_name("a"), Ok(()));
        assert_eq!(user_name(&"a".repeat(32)), Ok(()));
        // 32 three-byte characters: 96 bytes, still within the rule.
        assert_eq!(user_name(&"张".repeat(32)), Ok(()));
        assert_eq!(user_name(&"😀".repeat(32)), Ok(()));
        let too_long = Err("must be 1-32 characters");
        assert_eq!(user_name(""), too_long);
        assert_eq!(user_name(&"a".repeat(33)), too_long);
        assert_eq!(user_name(&"张".repeat(33)), too_long);
    }

    #[test]
    fn user_name_refuses_control_characters_and_blank_names() {
        let control = Err("must not contain control characters");
        assert_eq!(user_name("a\nb"), control);
        assert_eq!(user_name("a\u{0}"), control);
        assert_eq!(user_name("\u{7f}x"), control);
        assert_eq!(user_name("x\u{85}"), control);
        let blank = Err("must not be only whitespace");
        assert_eq!(user_name(" "), blank);
        assert_eq!(user_name("  \u{3000} "), blank);
        assert_eq!(user_name(" Alice Smith "), Ok(()));
    }

    #[test]
    fn password_is_6_to_128_bytes() {
        let reason = Err("must be 6-128 bytes");
        assert_eq!(user_password(""), reason);
        assert_eq!(user_password("12345"), reason);
        assert_eq!(user_password("123456"), Ok(()));
        assert_eq!(user_password(&"p".repeat(128)), Ok(()));
        assert_eq!(user_password(&"p".repeat(129)), reason);
        // Two characters but six bytes: the rule is in bytes.
        assert_eq!(user_password("张三"), Ok(()));
        // 43 three-byte characters = 129 bytes.
        assert_eq!(user_password(&"张".repeat(43)), reason);
    }

    #[test]
    fn avatar_url_accepts_empty_and_http_urls() {
        assert_eq!(user_avatar_url(""), Ok(()));
        assert_eq!(user_avatar_url("http://a"), Ok(()));
        assert_eq!(user_avatar_url("https://example.com/a.png"), Ok(()));
        assert_eq!(user_avatar_url("HTTPS://EXAMPLE.COM/A.PNG"), Ok(()));
        assert_eq!(user_avatar_url("Http://example.com"), Ok(()));
    }

    #[test]
    fn avatar_url_refuses_other_schemes_and_missing_hosts() {
        let reason = Err("must be an http:// or https:// URL");
        assert_eq!(user_avatar_url("ftp://example.com/a.png"), reason);
        assert_eq!(user_avatar_url("javascript:alert(1)"), reason);
        assert_eq!(user_avatar_url("example.com/a.png"), reason);
        assert_eq!(user_avatar_url("http:/example.com"), reason);
        assert_eq!(user_avatar_url("http://"), reason);
        assert_eq!(user_avatar_url("https://"), reason);
        assert_eq!(user_avatar_url("http:///path"), reason);
        assert_eq!(user_avatar_url("http://?q"), reason);
        assert_eq!(user_avatar_url("//example.com"), reason);
        // A multi-byte character where the scheme would end must not panic.
        assert_eq!(user_avatar_url("http:/é"), reason);
        assert_eq!(user_avatar_url("ééé"), reason);
    }

    #[test]
    fn avatar_url_is_at_most_512_bytes() {
        let prefix = "https://example.com/";
        let at_limit = format!("{prefix}{}", "a".repeat(512 - prefix.len()));
        assert_eq!(at_limit.len(), 512);
        assert_eq!(user_avatar_url(&at_limit), Ok(()));
        let over = format!("{at_limit}a");
        assert_eq!(user_avatar_url(&over), Err("must be at most 512 bytes"));
    }

    #[test]
    fn avatar_url_refuses_whitespace_and_control_characters() {
        let reason = Err("must not contain whitespace or control characters");
        assert_eq!(user_avatar_url("http://a b"), reason);
        assert_eq!(user_avatar_url("http://a\tb"), reason);
        assert_eq!(user_avatar_url("http://a\r\nb"), reason);
        assert_eq!(user_avatar_url("http://a\u{0}"), reason);
        assert_eq!(user_avatar_url(" http://a"), reason);
    }

    #[test]
    fn room_name_is_1_to_64_characters() {
        assert_eq!(room_name("r"), Ok(()));
        assert_eq!(room_name(&"r".repeat(64)), Ok(()));
        assert_eq!(room_name(&"房".repeat(64)), Ok(()));
        let reason = Err("must be 1-64 characters");
        assert_eq!(room_name(""), reason);
        assert_eq!(room_name(&"r".repeat(65)), reason);
        assert_eq!(room_name(&"房".repeat(65)), reason);
    }

    #[test]
    fn room_name_refuses_control_characters_and_blank_names() {
        assert_eq!(
            room_name("lobby\u{1b}[2J"),
            Err("must not contain control characters")
        );
        assert_eq!(room_name("\t"), Err("must not contain control characters"));
        assert_eq!(room_name("   "), Err("must not be only whitespace"));
        assert_eq!(room_name("the lobby"), Ok(()));
    }
}
